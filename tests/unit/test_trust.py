"""Code trust: the rule (which format and artifact run code as they load), the trust policy's
prefix matching, the runtimes' refusals, the registry's `trusted` flag (migration, audit, API, client,
CLI) and the refusal at apply. No servers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression
from starlette.applications import Starlette
from starlette.testclient import TestClient

from predictors.metrics import ReplicaMetrics
from predictors.model import ModelState
from predictors.repository import ModelRepository
from predictors.runtimes.python import PythonRuntime
from predictors.spec import ModelSpec, RegistryOrigin, TrustPolicy
from predictors.storage import StorageConfig
from predictors.trust import (
    TRUSTED_SOURCES_ENV,
    local_needs_trust,
    needs_trust,
    source_of,
    torch_archive_kind,
)
from serving.api import api_routes, trust_problems
from serving.auth import Guard, Principal, Role, StaticTokens
from serving.cli.main import cli
from serving.controller.controller import Controller
from serving.errors import ModelFailure, ModelNotReady
from serving.registry import Registry, RegistryConfig, RegistryConflict
from serving.registry import db as registry_db
from serving.registry.api import registry_routes
from serving.registry.client import RegistryClient
from serving.spec import load_manifests
from serving.spec.isvc import Component
from serving.store import RevisionRow, Store
from tests.control_fakes import ApplyOnlyController

# -- the rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "artifact", "runs_code"),
    [
        # python: a file runs its code; an installed module is the operator's own code
        ("python", "/any/path/evil.py:Evil", True),
        ("python", "models/model.py:Model", True),
        ("python", "model.py", True),  # a registry version's artifact name
        ("custom", "x.py:Pre", True),
        ("python", "tests.python_models:Doubler", False),
        (None, "pkg/model.py:Model", True),
        (None, "tests.python_models:Doubler", False),
        # scikit-learn: pickles run code, skops files do not
        ("sklearn", "model.joblib", True),
        ("sklearn", "/m/model.pkl", True),
        ("sklearn", "MODEL.PICKLE", True),
        ("scikit-learn", "s3://bucket/iris/model.joblib", True),
        ("sklearn", "model.skops", False),
        ("sklearn", "gs://bucket/sklearn/model", False),  # a folder: the runtime looks inside
        (None, "model.pkl", True),
        # pytorch: torch.export archives unpickle, TorchScript does not
        ("pytorch", "model.pt2", True),
        ("torch", "https://host/models/net.pt2?sig=abc", True),
        ("pytorch", "model.pt", False),
        ("pytorch", "model.pth", False),
        ("pytorch", "model.ts", False),
        ("torchscript", "model.torchscript", False),
        (None, "net.pt2", True),
        # the rest
        ("onnx", "model.onnx", False),
        (None, "model.onnx", False),
        ("triton", "grpc://127.0.0.1:8001/mlp", False),
    ],
)
def test_which_formats_and_artifacts_run_code(fmt: str | None, artifact: str, runs_code: bool) -> None:
    assert needs_trust(fmt, artifact) is runs_code


@pytest.mark.parametrize(
    ("fmt", "uri", "sources", "refused"),
    [
        ("python", "/srv/models/evil.py:Evil", (), True),
        ("python", "/srv/models/evil.py:Evil", ("/srv/models/",), False),
        ("python", "/srv/models/evil.py:Evil", ("/srv/models/evil.py",), False),
        ("python", "/srv/models/evil.py:Evil", ("/srv/other/",), True),
        ("python", "tests.python_models:Doubler", (), False),
        ("sklearn", "/srv/models/iris.joblib", (), True),
        ("sklearn", "/srv/models/iris.joblib", ("file:///srv/models",), False),
        ("sklearn", "/srv/models/iris.skops", (), False),
        ("sklearn", "s3://bucket/prod/iris.pkl", ("s3://bucket/prod/",), False),
        ("sklearn", "s3://bucket/dev/iris.pkl", ("s3://bucket/prod/",), True),
        ("pytorch", "/srv/models/net.pt2", (), True),
        ("pytorch", "/srv/models/net.pt2", ("/srv/",), False),
        ("pytorch", "/srv/models/net.pt", (), False),
        ("onnx", "/srv/models/mlp.onnx", (), False),
    ],
)
def test_format_suffix_and_source_decide(fmt: str, uri: str, sources: tuple[str, ...], refused: bool) -> None:
    policy = TrustPolicy(sources)
    assert (local_needs_trust(fmt, uri) and not policy.trusts(source_of(fmt, uri))) is refused


def test_a_python_models_source_is_its_file() -> None:
    assert source_of("python", "/srv/m.py:Model") == "/srv/m.py"
    assert source_of(None, "pkg/m.py:Model") == "pkg/m.py"
    assert source_of("sklearn", "/srv/a:b.joblib") == "/srv/a:b.joblib"


# -- prefixes -------------------------------------------------------------------------------------


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    folder = tmp_path / "trusted"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "trusted-evil").mkdir()
    return folder


def test_local_prefixes_compare_resolved_paths(tmp_path: Path, trusted: Path) -> None:
    policy = TrustPolicy((f"{trusted}/",))
    assert policy.trusts(str(trusted / "m.py"))
    assert policy.trusts(str(trusted / "sub" / "deep" / "m.py"))
    assert policy.trusts(str(trusted))
    assert policy.trusts(str(trusted / "sub" / ".." / "m.py"))
    assert not policy.trusts(f"{trusted}/../evil.py")
    assert not policy.trusts(f"{trusted}/sub/../../evil.py")
    assert not policy.trusts(str(tmp_path / "trusted-evil" / "x.py"))
    assert not policy.trusts(str(tmp_path / "trustedx.py"))
    assert not policy.trusts(str(tmp_path))
    # Without the trailing slash it is still a folder, not a string prefix.
    assert not TrustPolicy((str(trusted),)).trusts(str(tmp_path / "trusted-evil" / "x.py"))


def test_symlinks_out_of_a_trusted_folder_are_not_trusted(tmp_path: Path, trusted: Path) -> None:
    (tmp_path / "evil.py").write_text("")
    (trusted / "link.py").symlink_to(tmp_path / "evil.py")
    assert not TrustPolicy((str(trusted),)).trusts(str(trusted / "link.py"))
    # ... while a trusted folder reached through a symlink stays trusted.
    (tmp_path / "alias").symlink_to(trusted)
    assert TrustPolicy((str(tmp_path / "alias"),)).trusts(str(trusted / "m.py"))


def test_file_uris_and_paths_are_the_same_source(trusted: Path) -> None:
    by_path, by_uri = TrustPolicy((str(trusted),)), TrustPolicy((trusted.as_uri(),))
    for policy in (by_path, by_uri):
        assert policy.trusts(str(trusted / "m.pkl"))
        assert policy.trusts((trusted / "m.pkl").as_uri())
        assert policy.trusts(f"file://localhost{trusted}/m.pkl")
        assert not policy.trusts(f"file://otherhost{trusted}/m.pkl")
        assert not policy.trusts(f"{trusted.as_uri()}/../evil.pkl")


def test_relative_paths_are_from_the_working_directory(
    tmp_path: Path, trusted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert TrustPolicy(("trusted",)).trusts(str(trusted / "m.py"))
    assert TrustPolicy((str(trusted),)).trusts("trusted/sub/m.py")
    assert not TrustPolicy(("trusted",)).trusts("trusted/../evil.py")
    assert TrustPolicy(("~",)).trusts(str(Path.home() / "m.py"))


@pytest.mark.parametrize(
    ("prefix", "uri", "trusted"),
    [
        ("s3://bucket/models/", "s3://bucket/models/iris/model.pkl", True),
        ("s3://bucket/models", "s3://bucket/models/model.pkl", True),
        ("s3://bucket/models/", "s3://bucket/models-evil/model.pkl", False),
        ("s3://bucket/models/", "s3://bucket/models/../secret/model.pkl", False),
        ("s3://bucket/models/", "s3://bucket/models/%2e%2e/secret/model.pkl", False),
        ("s3://bucket/models/", "s3://other/models/model.pkl", False),
        ("s3://bucket/models/", "S3://BUCKET/models/model.pkl", True),
        ("s3://bucket/", "s3://bucket/anything/model.pkl", True),
        ("s3://", "s3://any-bucket/model.pkl", True),
        ("s3://", "https://host/model.pkl", False),
        ("https://host/m", "https://host/m/net.pt2?sig=1", True),
        ("https://host/m", "https://host/m2/net.pt2", False),
        ("https://host/m", "https://host.evil/m/net.pt2", False),
        ("https://host/m", "http://host/m/net.pt2", False),
        ("https://host/m", "/m/net.pt2", False),
        ("/m", "https://host/m/net.pt2", False),
        ("registry://", "registry://fraud/3", False),
        ("registry://fraud", "registry://fraud/3", False),
        ("", "/anything.pkl", False),
    ],
)
def test_uri_prefixes_compare_whole_segments(prefix: str, uri: str, trusted: bool) -> None:
    assert TrustPolicy((prefix,)).trusts(uri) is trusted


def test_trust_all_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrustPolicy(trust_all=True).trusts("/anything/evil.py")
    assert not TrustPolicy().trusts("/anything/evil.py")
    monkeypatch.setenv(TRUSTED_SOURCES_ENV, " /a, s3://b/ ,,/a")
    policy = TrustPolicy.from_env(["/flag"])
    assert policy.sources == ("/flag", "/a", "s3://b/")
    assert policy.env() == {TRUSTED_SOURCES_ENV: "/flag,/a,s3://b/"}
    monkeypatch.delenv(TRUSTED_SOURCES_ENV)
    assert TrustPolicy.from_env().sources == ()


# -- the python runtime ---------------------------------------------------------------------------

_EVIL = """
import pathlib

pathlib.Path({marker!r}).write_text("ran")

from predictors.python_model import PythonModel


class Evil(PythonModel):
    def predict(self, data, context):
        return data["x"] * 2
"""


def _python_file(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "evil.py"
    path.write_text(_EVIL.format(marker=str(marker)))
    return path


async def _load_python(spec: ModelSpec) -> PythonRuntime:
    runtime = PythonRuntime(spec, None)
    try:
        await runtime.load()
    except BaseException:
        await runtime.unload()
        raise
    return runtime


async def test_python_file_outside_trusted_sources_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _python_file(tmp_path / "anywhere", marker)
    spec = ModelSpec(name="m", uri=f"{path}:Evil", format="python", trust=TrustPolicy((str(tmp_path / "t"),)))
    with pytest.raises(ModelFailure) as info:
        await _load_python(spec)
    message = info.value.message
    assert message.startswith(f"refusing to import {path}: a python model runs its file's code")
    assert f"--trust-source {path}" in message and "servegate up" in message
    assert TRUSTED_SOURCES_ENV in message
    assert not marker.exists()


async def test_python_file_from_a_trusted_source_loads(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _python_file(tmp_path / "trusted", marker)
    spec = ModelSpec(
        name="m", uri=f"{path}:Evil", format="python", trust=TrustPolicy((str(tmp_path / "trusted"),))
    )
    runtime = await _load_python(spec)
    await runtime.unload()
    assert marker.read_text() == "ran"


async def test_a_registry_versions_record_decides_not_the_prefixes(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = _python_file(tmp_path / "cache", marker)
    everything = TrustPolicy(("/",))
    untrusted = RegistryOrigin("registry://fraud/3", trusted=False)
    spec = ModelSpec(name="m", uri=f"{path}:Evil", format="python", trust=everything, origin=untrusted)
    with pytest.raises(ModelFailure, match=r"`servegate registry trust fraud/3`") as info:
        await _load_python(spec)
    assert "--trust-source" not in info.value.message and not marker.exists()

    vouched = RegistryOrigin("registry://fraud/3", trusted=True)
    runtime = await _load_python(ModelSpec(name="m", uri=f"{path}:Evil", format="python", origin=vouched))
    await runtime.unload()
    assert marker.exists()


async def test_python_modules_need_no_trust() -> None:
    runtime = await _load_python(ModelSpec(name="m", uri="tests.python_models:Doubler", format="python"))
    await runtime.unload()


# -- the pytorch runtime --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    root = tmp_path_factory.mktemp("torch")
    paths = {"export": root / "net.pt2", "script": root / "net.pt", "disguised": root / "folder" / "model.pt"}
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(Double(), (torch.ones(2, 3),), dynamic_shapes={"x": {0: batch}}), paths["export"]
    )
    torch.jit.save(torch.jit.script(Double()), paths["script"])
    paths["disguised"].parent.mkdir()
    shutil.copy(paths["export"], paths["disguised"])  # an export archive under a TorchScript name
    return paths


async def _load_torch(path: Path, **fields: Any) -> None:
    from predictors.runtimes.pytorch import TorchRuntime

    runtime = TorchRuntime(ModelSpec(name="net", uri=str(path), format="pytorch", **fields), path)
    try:
        await runtime.load()
    finally:
        await runtime.unload()


@pytest.mark.filterwarnings(r"ignore:`torch\.jit:DeprecationWarning")
async def test_pytorch_refuses_an_untrusted_export_archive_and_loads_torchscript(
    torch_files: dict[str, Path],
) -> None:
    for artifact in (torch_files["export"], torch_files["disguised"].parent):
        with pytest.raises(ModelFailure) as info:
            await _load_torch(artifact)
        message = info.value.message
        assert "refusing to load" in message and "torch.export.load unpickles" in message
        assert "torch.jit.save" in message and "--trust-source" in message
    await _load_torch(torch_files["script"])  # TorchScript: no trust needed
    await _load_torch(torch_files["export"], trust=TrustPolicy((str(torch_files["export"].parent),)))
    await _load_torch(torch_files["export"], origin=RegistryOrigin("registry://net/1", trusted=True))
    with pytest.raises(ModelFailure, match="servegate registry trust net/1"):
        await _load_torch(torch_files["export"], origin=RegistryOrigin("registry://net/1", trusted=False))


def test_torch_archives_are_told_apart_by_layout(torch_files: dict[str, Path]) -> None:
    assert torch_archive_kind(torch_files["export"]) == "export"
    assert torch_archive_kind(torch_files["disguised"]) == "export"
    assert torch_archive_kind(torch_files["script"]) == "torchscript"
    # What apply sees of local artifacts: the layout, whatever the name says.
    assert local_needs_trust("pytorch", str(torch_files["disguised"].parent))
    assert local_needs_trust(None, str(torch_files["disguised"]))
    assert not local_needs_trust("pytorch", str(torch_files["script"]))
    assert not local_needs_trust("pytorch", "/no/such/folder")


# -- the registry ---------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryConfig:
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SERVEGATE_USER", raising=False)
    return RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))


@pytest.fixture
def registry(config: RegistryConfig, tmp_path: Path) -> Iterator[Registry]:
    with Registry(config, cache_dir=tmp_path / "cache") as reg:
        yield reg


@pytest.fixture
def pickle_file(tmp_path: Path) -> Path:
    model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0], [0.0, 0.9], [1.0, 0.1]], [0, 1, 0, 1])
    path = tmp_path / "src" / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def test_versions_start_untrusted_and_trust_is_audited(registry: Registry, pickle_file: Path) -> None:
    v1 = registry.register("iris", str(pickle_file))
    assert v1.trusted is False and v1.as_dict()["trusted"] is False
    trusted = registry.trust("iris", 1, actor="root")
    assert trusted.trusted and registry.version("iris", 1).trusted
    assert registry.resolve("registry://iris/1").trusted
    with pytest.raises(RegistryConflict, match="already trusted"):
        registry.trust("iris", 1)
    assert registry.trust("iris", 1, False, actor="root").trusted is False
    with pytest.raises(RegistryConflict, match="already untrusted"):
        registry.trust("iris", 1, False)
    entries = [(e.action, e.actor, e.details.get("version")) for e in registry.history("iris")]
    assert entries[1:] == [("trusted", "root", 1), ("untrusted", "root", 1)]
    assert registry.history("iris")[1].details["sha256"] == v1.sha256


def test_schema_2_is_migrated_and_its_versions_are_untrusted(
    config: RegistryConfig, pickle_file: Path
) -> None:
    with Registry(config) as reg:
        reg.register("iris", str(pickle_file))
    path = config.url.removeprefix("sqlite:///")
    engine = sa.create_engine(config.url)
    with engine.begin() as conn:  # back to what the previous release left: schema 2, no column
        conn.execute(sa.text("ALTER TABLE registry_versions DROP COLUMN trusted"))
        conn.execute(sa.text("DELETE FROM registry_schema_version WHERE version = 3"))
    engine.dispose()
    assert os.path.exists(path)

    with Registry(config) as reg:
        assert reg.version("iris", 1).trusted is False
        assert reg.trust("iris", 1).trusted
    engine = sa.create_engine(config.url)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM registry_schema_version ORDER BY version"))
        assert [v for (v,) in versions] == [1, 2, 3] == list(range(1, registry_db.SCHEMA_VERSION + 1))
    engine.dispose()


def test_a_fresh_database_is_made_by_the_same_steps(tmp_path: Path) -> None:
    """_v1 makes the first release's versions table, so every database gets `trusted` from _v3."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.begin() as conn:
        registry_db._v1(conn)
        assert "trusted" not in {c["name"] for c in sa.inspect(conn).get_columns("registry_versions")}
        registry_db._v2(conn)
        registry_db._v3(conn)
        assert "trusted" in {c["name"] for c in sa.inspect(conn).get_columns("registry_versions")}
    engine.dispose()


ADMIN, DEPLOYER = "admin-secret", "deployer-secret"


@pytest.fixture
def http(registry: Registry) -> Iterator[TestClient]:
    tokens = StaticTokens(
        {ADMIN: Principal.of_role("root", Role.ADMIN), DEPLOYER: Principal.of_role("ci", Role.DEPLOYER)}
    )
    with TestClient(Starlette(routes=registry_routes(registry, Guard(tokens)))) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_trust_route_is_for_admins(http: TestClient, registry: Registry, pickle_file: Path) -> None:
    registry.register("iris", str(pickle_file))
    url = "/api/registry/models/iris/versions/1/trust"
    assert http.post(url, json={"trusted": True}).status_code == 401
    assert http.post(url, json={"trusted": True}, headers=_bearer(DEPLOYER)).status_code == 403
    assert not registry.version("iris", 1).trusted
    response = http.post(url, json={"trusted": True}, headers=_bearer(ADMIN))
    assert response.status_code == 200, response.text
    assert response.json()["trusted"] is True and response.json()["uri"] == "registry://iris/1"
    assert registry.history("iris")[-1].actor == "root"  # the token's name, not a header
    assert http.post(url, json={"trusted": True}, headers=_bearer(ADMIN)).status_code == 409
    revoked = http.post(url, json={"trusted": False}, headers=_bearer(ADMIN))
    assert revoked.status_code == 200 and revoked.json()["trusted"] is False


@pytest.mark.parametrize(
    ("url", "body", "status"),
    [
        ("/api/registry/models/iris/versions/1/trust", {"trusted": "yes"}, 400),
        ("/api/registry/models/iris/versions/1/trust", {}, 400),
        ("/api/registry/models/iris/versions/1/trust", {"trusted": True, "why": "x"}, 400),
        ("/api/registry/models/iris/versions/0/trust", {"trusted": True}, 400),
        ("/api/registry/models/iris/versions/9/trust", {"trusted": True}, 404),
        ("/api/registry/models/nope/versions/1/trust", {"trusted": True}, 404),
    ],
)
def test_trust_route_bad_input(
    http: TestClient, registry: Registry, pickle_file: Path, url: str, body: dict[str, Any], status: int
) -> None:
    registry.register("iris", str(pickle_file))
    response = http.post(url, json=body, headers=_bearer(ADMIN))
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_the_client_trusts_like_the_registry(registry: Registry, pickle_file: Path) -> None:
    registry.register("iris", str(pickle_file))
    with (
        TestClient(Starlette(routes=registry_routes(registry, Guard(None)))) as http,
        RegistryClient(http=http) as client,
    ):
        assert client.trust("iris", 1) == registry.version("iris", 1)
        assert client.version("iris", 1).trusted
        assert client.trust("iris", 1, False).trusted is False
        assert [e.action for e in client.history("iris")] == ["registered", "trusted", "untrusted"]


def _cli(config: RegistryConfig, *args: str) -> Any:
    options = ["registry", "--registry", config.url, "--artifacts", config.artifacts]
    return CliRunner().invoke(cli, [*options, *args])


def test_the_cli_trusts_and_revokes(config: RegistryConfig, registry: Registry, pickle_file: Path) -> None:
    registry.register("iris", str(pickle_file))
    result = _cli(config, "trust", "iris/1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "trusted iris version 1: it may run code as it loads"
    assert "Trusted: yes" in [
        " ".join(line.split()) for line in _cli(config, "show", "iris/1").stdout.splitlines()
    ]
    assert json.loads(_cli(config, "show", "iris", "-o", "json").stdout)["versions"][0]["trusted"] is True
    again = _cli(config, "trust", "iris/1")
    assert again.exit_code == 1 and "already trusted" in again.stderr
    revoked = _cli(config, "trust", "iris/1", "--revoke", "-o", "json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["trusted"] is False
    assert _cli(config, "trust", "iris").exit_code == 2  # a version must be named


# -- registry models on the replica ---------------------------------------------------------------


async def test_a_replica_serves_a_registry_pickle_only_once_trusted(
    config: RegistryConfig,
    registry: Registry,
    pickle_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register("iris", str(pickle_file))
    monkeypatch.setenv("SERVEGATE_REGISTRY_URL", config.url)
    monkeypatch.setenv("SERVEGATE_ARTIFACTS", config.artifacts)
    # Even a policy that trusts every path: the registry's cache is not where the version's trust comes from.
    template = ModelSpec(name="", uri="", trust=TrustPolicy(("/",)))
    repository = ModelRepository(
        ReplicaMetrics(CollectorRegistry()), StorageConfig(tmp_path / "cache"), None, template
    )
    try:
        with pytest.raises(ModelNotReady):
            await repository.start([ModelSpec(name="iris", uri="registry://iris/1", trust=template.trust)])
        model = repository.get("iris")
        assert model.state is ModelState.FAILED
        assert "refusing to unpickle model.joblib" in (model.reason or "")
        assert "`servegate registry trust iris/1`" in (model.reason or "")

        registry.trust("iris", 1)
        assert (await repository.load("iris")).state is ModelState.READY
    finally:
        await repository.close()


async def test_the_load_api_applies_the_rule(tmp_path: Path) -> None:
    """A repository load request with a storage URI (the replica's REST/gRPC `load`) builds its spec
    from the replica's own template, trust policy included."""
    marker = tmp_path / "ran"
    path = _python_file(tmp_path / "uploads", marker)
    template = ModelSpec(name="", uri="", trust=TrustPolicy((str(tmp_path / "trusted"),)))
    repository = ModelRepository(
        ReplicaMetrics(CollectorRegistry()), StorageConfig(tmp_path / "cache"), None, template
    )
    try:
        await repository.register("evil", f"{path}:Evil", "python")
        with pytest.raises(ModelNotReady, match="refusing to import"):
            await repository.load("evil")
        assert not marker.exists()
    finally:
        await repository.close()


# -- apply ----------------------------------------------------------------------------------------


def _isvc(name: str, fmt: str, uri: str, **model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": {"model": {"modelFormat": {"name": fmt}, "storageUri": uri, **model}}},
    }


def _trained(name: str, framework: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": name},
        "spec": {
            "inferenceService": "host",
            "model": {"framework": framework, "storageUri": uri, "memory": "1Mi"},
        },
    }


def _resources(*docs: dict[str, Any]) -> list[Any]:
    return load_manifests("\n---\n".join(json.dumps(d) for d in docs), "<test>")


def test_apply_refuses_code_from_untrusted_sources(tmp_path: Path, trusted: Path) -> None:
    (trusted / "ok.py").write_text("")
    resources = _resources(
        _isvc("evil", "python", "/any/path/evil.py:Evil"),
        _isvc("ok", "python", f"{trusted}/ok.py:Ok"),
        _isvc("module", "python", "tests.python_models:Doubler"),
        _isvc("traversal", "python", f"{trusted}/../evil.py:Evil"),
        _isvc("pickle", "sklearn", "s3://bucket/iris.joblib"),
        _isvc("skops", "sklearn", "s3://bucket/iris.skops"),
        _isvc("export", "pytorch", "https://host/net.pt2"),
        _isvc("onnx", "onnx", "/any/mlp.onnx"),
        _trained("tm", "sklearn", "/any/iris.pkl"),
    )
    problems = trust_problems(resources, TrustPolicy((str(trusted),)))
    assert [p.path for p in problems] == [
        "InferenceService/evil: spec.predictor.storageUri",
        "InferenceService/traversal: spec.predictor.storageUri",
        "InferenceService/pickle: spec.predictor.storageUri",
        "InferenceService/export: spec.predictor.storageUri",
        "TrainedModel/tm: spec.model.storageUri",
    ]
    evil = problems[0].message
    assert evil.startswith("refusing /any/path/evil.py: a python model runs its file's code as it loads")
    assert "--trust-source /any/path/evil.py" in evil and "servegate up" in evil
    assert trust_problems(resources, TrustPolicy(("/", "s3://bucket/", "https://host/"))) == []
    assert trust_problems(resources, TrustPolicy(trust_all=True)) == []


def test_apply_looks_inside_local_folders(tmp_path: Path, pickle_file: Path) -> None:
    resources = _resources(_isvc("folder", "sklearn", str(pickle_file.parent)))
    [problem] = trust_problems(resources, TrustPolicy())
    assert "a pickle (joblib, .pkl) runs code" in problem.message
    assert trust_problems(resources, TrustPolicy((str(pickle_file.parent),))) == []


def test_a_manifest_cannot_name_trusted_sources(tmp_path: Path) -> None:
    doc = _isvc(
        "sneaky",
        "onnx",
        "/any/mlp.onnx",
        args=["--trust-source=/"],
        env=[{"name": TRUSTED_SOURCES_ENV, "value": "/"}],
    )
    doc["spec"]["transformer"] = {
        "model": {
            "modelFormat": {"name": "python"},
            "storageUri": "tests.python_models:Doubler",
            "args": ["--trust-source", "/"],
        }
    }
    problems = trust_problems(_resources(doc), TrustPolicy(trust_all=True))
    assert [p.path for p in problems] == [
        "InferenceService/sneaky: spec.predictor.args",
        "InferenceService/sneaky: spec.predictor.env",
        "InferenceService/sneaky: spec.transformer.args",
    ]
    assert all("operator's to give" in p.message for p in problems)


def test_registry_versions_need_an_admins_trust(
    registry: Registry, tmp_path: Path, pickle_file: Path
) -> None:
    model = _python_file(tmp_path / "src", tmp_path / "ran")
    registry.register("py", f"{model}:Evil", format="python")
    registry.register("iris", str(pickle_file))
    registry.set_alias("iris", "production", 1)
    resources = _resources(
        _isvc("iris", "sklearn", "registry://iris@production"),
        _trained("py", "python", "registry://py/1"),
    )
    everything = TrustPolicy(("/",))  # prefixes do not count for registry versions
    problems = trust_problems(resources, everything, registry)
    assert [p.path for p in problems] == [
        "InferenceService/iris: spec.predictor.storageUri",
        "TrainedModel/py: spec.model.storageUri",
    ]
    assert "refusing registry://iris/1: a pickle" in problems[0].message  # the alias, resolved
    assert problems[1].message == (
        "refusing registry://py/1: a python model runs its file's code as it loads, and no admin has "
        "trusted it; an admin can trust this version with `servegate registry trust py/1`"
    )
    registry.trust("py", 1)
    registry.trust("iris", 1)
    assert trust_problems(resources, TrustPolicy(), registry) == []
    assert trust_problems(resources, TrustPolicy(), None) == []  # no registry: not checked here


def test_the_issues_attack_is_refused_at_apply(tmp_path: Path, trusted: Path) -> None:
    """One unauthenticated apply of a python model at /any/path/evil.py:Evil changes nothing."""
    store = Store(tmp_path / "state.db")
    controller = ApplyOnlyController(store, trust=TrustPolicy((str(trusted),)))
    app = Starlette(routes=api_routes(controller, Guard(None)))  # type: ignore[arg-type]
    try:
        with TestClient(app) as client:
            evil = json.dumps(_isvc("evil", "python", "/any/path/evil.py:Evil"))
            response = client.post("/api/v1/apply", content=evil)
            assert response.status_code == 400, response.text
            [problem] = response.json()["problems"]
            assert problem["path"] == "InferenceService/evil: spec.predictor.storageUri"
            assert "--trust-source" in problem["message"]
            assert controller.applied == []
            good = json.dumps(_isvc("good", "python", f"{trusted}/model.py:Model"))
            assert client.post("/api/v1/apply", content=good).status_code == 200
    finally:
        store.close()


def test_the_controller_hands_its_trusted_sources_to_replicas() -> None:
    controller = Controller(None, None, None, "http://127.0.0.1:1")  # type: ignore[arg-type]
    assert controller.trust == TrustPolicy()
    # A manifest's own value (refused at apply anyway) never wins over the operator's.
    component = Component(
        kind="predictor", format="onnx", storage_uri="/m.onnx", env=((TRUSTED_SOURCES_ENV, "/"),)
    )
    row = RevisionRow("svc-predictor-00001", "svc", "predictor", 1, "key", dataclasses.asdict(component), 0.0)
    assert dict(controller._replica_spec("svc", row).env)[TRUSTED_SOURCES_ENV] == ""
    controller.trust = TrustPolicy(("/srv/models", "s3://bucket/prod/"))
    env = dict(controller._replica_spec("svc", row).env)
    assert env[TRUSTED_SOURCES_ENV] == "/srv/models,s3://bucket/prod/"
