"""The dashboard in a real browser (Debian's Chromium, headless, through Playwright) against a real
`servegate up`: log in with a token, see the services and a canary split, promote it and watch the
traffic bars move, open a pipeline run's graph and a step's log, a registry version's lineage back to
its run and forward to the service that serves it, an InferenceGraph drawn with its service; a
viewer sees no action buttons, a forged POST without the CSRF token is refused, a revoked token's
page goes back to the login form, unknown pages say so, and the page holds at 320 px wide and with
200 services.

Screenshots of each page land in `$SERVEGATE_TEST_ARTIFACTS/dashboard` (default
`test-artifacts/dashboard`), for a person to look at."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import chromium
from tests.gateway_helpers import ControlApi, mlp_isvc, revision
from tests.servers import GatewayProcess

pytestmark = pytest.mark.integration

expect.set_options(timeout=30_000)

ARTIFACTS = Path(os.environ.get("SERVEGATE_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
SERVICE = "web"
MODEL = "webmodel"
ROOT = Path(__file__).resolve().parents[2]


def _token(http: httpx.Client, name: str, role: str) -> str:
    made = http.post("/api/v1/tokens", json={"name": name, "role": role})
    assert made.status_code == 201, made.text
    return made.json()["token"]


@pytest.fixture(scope="module")
def run_id(gateway: GatewayProcess) -> str:
    """A pipeline run in the gateway's state dir that trains an MLP and registers it as `MODEL` v1."""
    done = subprocess.run(
        [sys.executable, "-m", "serving", "pipeline", "run",
         "tests/pipeline_components.py:train_and_register", "--param", f"name={MODEL}",
         "--state-dir", str(gateway.state_dir), "--parallel", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return next(
        w for line in done.stdout.splitlines() for w in line.split() if w.startswith("train_and_register-")
    )


@pytest.fixture(scope="module")
def canary(api: ControlApi, model_repo: Path, run_id: str) -> dict[str, int]:
    """`SERVICE` with its registered version as a 20% canary of the repository's MLP."""
    api.apply(mlp_isvc(SERVICE, model_repo))
    api.wait_ready(SERVICE)
    following = mlp_isvc(SERVICE, model_repo, predictor={"canaryTrafficPercent": 20})
    following["spec"]["predictor"]["model"]["storageUri"] = f"registry://{MODEL}/1"
    api.apply(following)
    split = {revision(SERVICE, 1): 80, revision(SERVICE, 2): 20}
    api.wait_traffic(SERVICE, split, timeout=90)
    api.wait_ready(SERVICE, timeout=90)
    return split


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium() as b:
        yield b


class Page:
    """A browser tab on the dashboard, and what its console said about broken rules (CSP, errors)."""

    def __init__(self, browser: Any, gateway: GatewayProcess, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.url = gateway.url
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc: object) -> None:
        self.context.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def by(self, testid: str, **data: str) -> Any:
        selector = f'[data-testid="{testid}"]' + "".join(f'[data-{k}="{v}"]' for k, v in data.items())
        return self.page.locator(selector)

    def open(self, hash_path: str = "") -> None:
        self.page.goto(f"{self.url}/{hash_path}")

    def log_in(self, token: str) -> None:
        self.open()
        self.by("login-token").fill(token)
        self.by("login-submit").click()
        expect(self.by("user")).not_to_be_empty()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_deployer_sees_the_canary_and_promotes_it(
    browser: Any, gateway: GatewayProcess, canary: dict[str, int]
) -> None:
    with Page(browser, gateway) as page:
        page.open()
        expect(page.by("login-token")).to_be_visible()
        page.shot("login")
        page.log_in(gateway.token or "")
        expect(page.by("user")).to_contain_text("admin")
        row = page.by("service-row", name=SERVICE)
        expect(row).to_be_visible()
        for rev, percent in canary.items():
            expect(row.locator(f'[data-testid="traffic-bar"][data-revision="{rev}"]')).to_have_attribute(
                "data-percent", str(percent)
            )
        expect(page.by("live-status")).to_have_text("live")
        page.shot("services")

        row.locator("a").first.click()
        expect(page.page).to_have_url(f"{gateway.url}/#/services/default/{SERVICE}")
        expect(page.by("manifest")).to_contain_text(f"registry://{MODEL}/1")
        expect(page.by("replica-row")).to_have_count(2)
        page.by("replica-log-link").first.click()
        expect(page.by("replica-log")).not_to_have_text("Loading…")
        page.shot("service-canary")

        page.by("promote").click()
        expect(page.by("action-message")).to_have_class("action-message ok")
        # The live feed moves the bars: the canary takes all the traffic, no reload.
        expect(page.by("traffic-bar", revision=revision(SERVICE, 2))).to_have_attribute("data-percent", "100")
        expect(page.by("traffic-bar", revision=revision(SERVICE, 1))).to_have_count(0)
        # ... and the action is on the record, with who did it.
        expect(page.by("event-row").filter(has_text="Promote").filter(has_text="admin")).to_have_count(1)
        page.shot("service-promoted")

        # A failed action shows the API's own message.
        page.by("promote").click()
        expect(page.by("action-message")).to_have_class("action-message bad")
        expect(page.by("action-message")).to_contain_text("already takes all traffic")
        assert page.problems == [], "\n".join(page.problems)


def test_a_pipeline_runs_graph_and_a_steps_log(browser: Any, gateway: GatewayProcess, run_id: str) -> None:
    with Page(browser, gateway) as page:
        page.log_in(gateway.token or "")
        page.open("#/pipelines")
        expect(page.by("run-row", run=run_id)).to_be_visible()
        page.shot("pipelines")
        page.by("run-row", run=run_id).locator("a").first.click()
        nodes = page.by("dag-node")
        expect(nodes).to_have_count(3)
        for step in ("make_numbers", "train_mlp", "register_mlp"):
            expect(page.by("dag-node", step=step)).to_have_attribute("data-state", "SUCCEEDED")
        page.by("dag-node", step="train_mlp").click()
        expect(page.by("step-detail", step="train_mlp")).to_be_visible()
        expect(page.by("step-log")).to_contain_text("training on 12 rows")
        page.shot("pipeline-run")
        assert page.problems == [], "\n".join(page.problems)


def test_a_registry_versions_lineage_reaches_its_run_and_its_service(
    browser: Any, gateway: GatewayProcess, run_id: str, canary: dict[str, int]
) -> None:
    with Page(browser, gateway) as page:
        page.log_in(gateway.token or "")
        page.open("#/registry")
        page.by("model-row", name=MODEL).locator("a").first.click()
        expect(page.by("version-row", version="1")).to_be_visible()
        page.shot("registry-model")
        page.by("version-row", version="1").locator("a").first.click()
        lineage = page.by("lineage")
        expect(lineage.locator(f'[data-testid="lineage-node"][data-id*="{run_id}"]')).not_to_have_count(0)
        expect(lineage.locator('[data-testid="lineage-node"][data-kind="service"]')).to_have_count(1)
        expect(page.by("version-metrics")).to_contain_text("0.93")
        page.shot("registry-version")
        assert page.problems == [], "\n".join(page.problems)


def test_an_inference_graph_is_drawn_with_its_services(
    browser: Any, gateway: GatewayProcess, api: ControlApi, canary: dict[str, int]
) -> None:
    step = {"serviceName": SERVICE, "name": "score", "data": "$request"}
    api.apply({
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "pipeline"},
        "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [step]}}},
    })  # fmt: skip
    with Page(browser, gateway) as page:
        page.log_in(gateway.token or "")
        page.open("#/graphs")
        page.by("graph-row", name="pipeline").locator("a").first.click()
        expect(page.by("graph-node", node="root")).to_be_visible()
        expect(page.by("graph-service", service=SERVICE)).to_contain_text("Ready")
        page.shot("inference-graph")
        page.by("graph-service", service=SERVICE).click()
        expect(page.page).to_have_url(f"{gateway.url}/#/services/default/{SERVICE}")
        assert page.problems == [], "\n".join(page.problems)


def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(
    browser: Any, gateway: GatewayProcess, http: httpx.Client, canary: dict[str, int]
) -> None:
    with Page(browser, gateway) as page:
        page.log_in(_token(http, "web-viewer", "viewer"))
        expect(page.by("user")).to_contain_text("viewer")
        page.open(f"#/services/default/{SERVICE}")
        expect(page.by("manifest")).not_to_be_empty()
        expect(page.by("promote")).to_have_count(0)
        expect(page.by("rollback")).to_have_count(0)
        page.shot("service-viewer")
    with Page(browser, gateway) as page:
        page.log_in(gateway.token or "")
        # What another site's form or script can make the browser send: the cookie, no CSRF token.
        forged = page.context.request.post(f"{gateway.url}/api/v1/inferenceservices/{SERVICE}/rollback")
        assert forged.status == 403
        assert "CSRF" in forged.json()["error"]


def test_a_revoked_tokens_page_goes_back_to_the_login_form(
    browser: Any, gateway: GatewayProcess, http: httpx.Client, canary: dict[str, int]
) -> None:
    with Page(browser, gateway) as page:
        page.log_in(_token(http, "web-short", "viewer"))
        page.open(f"#/services/default/{SERVICE}")
        expect(page.by("manifest")).not_to_be_empty()
        assert http.delete("/api/v1/tokens/web-short").status_code == 200
        expect(page.by("login-token")).to_be_visible()
        expect(page.by("login-error")).to_contain_text("log in again")


@pytest.mark.parametrize(
    "hash_path",
    ["#/services/default/nothing", "#/pipelines/no-such-run", "#/registry/nothing/1", "#/no/such/page"],
)
def test_unknown_things_get_a_not_found_page(
    browser: Any, gateway: GatewayProcess, canary: dict[str, int], hash_path: str
) -> None:
    with Page(browser, gateway) as page:
        page.log_in(gateway.token or "")
        page.open(hash_path)
        expect(page.by("not-found")).to_be_visible()
        if hash_path == "#/services/default/nothing":
            page.shot("not-found")


def test_the_page_fits_a_phone_and_holds_200_services(
    browser: Any, gateway: GatewayProcess, api: ControlApi, canary: dict[str, int]
) -> None:
    real = api.get(SERVICE)
    many = []
    for i in range(200):
        item = copy.deepcopy(real)
        item["metadata"] |= {"name": f"svc-{i:03d}", "namespace": f"team-{i % 4}"}
        many.append(item)
    with Page(browser, gateway, width=320) as page:
        page.log_in(gateway.token or "")
        expect(page.by("service-row", name=SERVICE)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        page.shot("services-320px")
        page.open(f"#/services/default/{SERVICE}")
        expect(page.by("manifest")).not_to_be_empty()
        assert page.evaluate("document.documentElement.scrollWidth") <= 320
        page.shot("service-320px")

    # 200 services: the list as the gateway would send it (the live stream off, so the page polls).
    def services(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps({"items": many}))

    with Page(browser, gateway) as page:
        page.page.route("**/ui/live", lambda route: route.abort())
        page.page.route("**/api/v1/inferenceservices", services)
        page.log_in(gateway.token or "")
        expect(page.by("service-row")).to_have_count(200)
        page.by("namespace-filter").select_option("team-1")
        expect(page.by("service-row")).to_have_count(50)
        expect(page.by("service-row", name="svc-001")).to_be_visible()
        page.shot("services-200")
        assert page.problems == [], "\n".join(page.problems)
