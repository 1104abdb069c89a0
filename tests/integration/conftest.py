"""Fixtures for the gateway tests: one `servegate up` per test module, and clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.pipelines.metadata import MetadataStore
from tests.gateway_helpers import ControlApi, gateway_process
from tests.servers import GatewayProcess


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test shows the end of its gateway's log: what the gateway decided, and why, is
    often the only account of a failure seen once on another machine."""
    outcome = yield
    report = outcome.get_result()
    gateway = getattr(item, "funcargs", {}).get("gateway")
    if report.failed and isinstance(gateway, GatewayProcess):
        report.sections.append(("gateway log (its end)", gateway.output()[-12000:]))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`servegate up` with its own state dir, shared by the tests of one module; it may read models
    from the session's temporary folders (`model_repo` among them)."""
    root = tmp_path_factory.getbasetemp()
    yield from gateway_process(tmp_path_factory.mktemp("gateway") / "state", storage_root=root)


@pytest.fixture(scope="module")
def api(gateway: GatewayProcess) -> Iterator[ControlApi]:
    client = ControlApi(gateway.url, gateway.token)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False, headers=gateway.headers) as client:
        yield client


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A pipeline run's state dir."""
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> Iterator[MetadataStore]:
    """The pipelines' metadata store in `state`."""
    with MetadataStore(f"sqlite:///{state / 'pipelines.db'}") as s:
        yield s
