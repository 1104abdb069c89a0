"""The dashboard's server side on a real `servegate up`: the page and its files, the login that makes a
session cookie, the cookie standing in for a token on the control API (CSRF token required to
change anything), a viewer's session that may look but not act, live updates, a service's metric
history and a replica's log. The page in a browser is tested in test_dashboard_browser.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_helpers import MLP_X, ControlApi, gateway_process, mlp_body, mlp_isvc, revision
from tests.servers import GatewayProcess, free_port, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(gateway: GatewayProcess, api: ControlApi, model_repo: object) -> str:
    api.apply(mlp_isvc("dash", model_repo))  # type: ignore[arg-type]
    api.wait_ready("dash")
    return "dash"


def _browser(gateway: GatewayProcess) -> httpx.Client:
    """A client that, like a browser, keeps cookies and sends no Authorization header."""
    return httpx.Client(base_url=gateway.url, timeout=30.0, trust_env=False)


def _token(http: httpx.Client, name: str, role: str) -> str:
    made = http.post("/api/v1/tokens", json={"name": name, "role": role})
    assert made.status_code == 201, made.text
    return made.json()["token"]


@pytest.fixture(scope="module")
def deployer(gateway: GatewayProcess, http: httpx.Client) -> Iterator[tuple[httpx.Client, str]]:
    with _browser(gateway) as browser:
        login = browser.post("/ui/login", json={"token": _token(http, "dash-deployer", "deployer")})
        assert login.status_code == 200, login.text
        yield browser, login.json()["csrf"]


def test_the_page_and_its_files_load_without_a_token_and_forbid_outside_content(
    gateway: GatewayProcess,
) -> None:
    with _browser(gateway) as browser:
        page = browser.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert browser.get("/ui/app.js").headers["content-type"].split(";")[0] in (
            "text/javascript",
            "application/javascript",
        )
        for path in ("/ui/nothing.js", "/ui/../gateway.py", "/ui/%2e%2e/routes.py"):
            assert browser.get(path).status_code == 404, path


def test_servegate_up_prints_the_dashboards_address(gateway: GatewayProcess) -> None:
    until(lambda: f"dashboard: {gateway.url}/" in gateway.output(), 10, "the dashboard's address")


def test_login_makes_a_strict_httponly_session_cookie(gateway: GatewayProcess) -> None:
    with _browser(gateway) as browser:
        assert browser.get("/api/v1/session").status_code == 401
        login = browser.post("/ui/login", json={"token": gateway.token})
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        me = browser.get("/api/v1/session").json()
        assert (me["name"], me["role"], me["canDeploy"], me["auth"]) == ("admin", "admin", True, True)
        assert me["csrf"] == login.json()["csrf"]


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (json.dumps({"token": "sgt_made_up"}), "application/json", 401),
        (json.dumps({"token": ""}), "application/json", 400),
        (json.dumps({"nothing": 1}), "application/json", 400),
        ("not json", "application/json", 400),
        ("token=sgt_x", "application/x-www-form-urlencoded", 415),  # what a cross-site form sends
    ],
)
def test_bad_logins_get_a_clear_error_and_no_cookie(
    gateway: GatewayProcess, body: str, content_type: str, status: int
) -> None:
    with _browser(gateway) as browser:
        response = browser.post("/ui/login", content=body, headers={"content-type": content_type})
        assert response.status_code == status, response.text
        assert response.json()["error"]
        assert "set-cookie" not in response.headers


def test_the_cookie_reads_but_acts_only_with_the_csrf_token(
    served: str, deployer: tuple[httpx.Client, str], api: ControlApi
) -> None:
    browser, csrf = deployer
    listed = browser.get("/api/v1/inferenceservices")
    assert listed.status_code == 200
    assert served in [item["metadata"]["name"] for item in listed.json()["items"]]
    # A page on another site can make the browser send the cookie, not the CSRF token.
    forged = browser.post(f"/api/v1/inferenceservices/{served}/rollback")
    assert forged.status_code == 403
    assert "CSRF" in forged.json()["error"]
    wrong = browser.post(f"/api/v1/inferenceservices/{served}/rollback", headers={"x-csrf-token": "guess"})
    assert wrong.status_code == 403
    # With it, the action reaches the API (nothing to roll back: its own message) and is audited.
    acted = browser.post(f"/api/v1/inferenceservices/{served}/promote", headers={"x-csrf-token": csrf})
    assert acted.status_code == 409, acted.text
    assert "already takes all traffic" in acted.json()["error"]


def test_a_viewers_session_sees_but_may_not_act(
    gateway: GatewayProcess, http: httpx.Client, served: str
) -> None:
    with _browser(gateway) as browser:
        login = browser.post("/ui/login", json={"token": _token(http, "dash-viewer", "viewer")})
        me = browser.get("/api/v1/session").json()
        assert (me["role"], me["canDeploy"]) == ("viewer", False)
        assert browser.get(f"/api/v1/inferenceservices/{served}").status_code == 200
        refused = browser.post(
            f"/api/v1/inferenceservices/{served}/promote", headers={"x-csrf-token": login.json()["csrf"]}
        )
        assert refused.status_code == 403
        assert "dash-viewer" in refused.json()["error"]


def test_revoking_the_token_or_logging_out_ends_the_session(
    gateway: GatewayProcess, http: httpx.Client
) -> None:
    with _browser(gateway) as browser:
        csrf = browser.post("/ui/login", json={"token": _token(http, "dash-short", "viewer")}).json()["csrf"]
        assert browser.get("/api/v1/inferenceservices").status_code == 200
        assert http.delete("/api/v1/tokens/dash-short").status_code == 200
        assert browser.get("/api/v1/inferenceservices").status_code == 401
        assert browser.get("/api/v1/session").status_code == 401
    with _browser(gateway) as browser:
        csrf = browser.post("/ui/login", json={"token": gateway.token}).json()["csrf"]
        assert browser.post("/ui/logout").status_code == 403  # logging someone out needs the CSRF token too
        assert browser.post("/ui/logout", headers={"x-csrf-token": csrf}).status_code == 200
        assert browser.get("/api/v1/session").status_code == 401


def test_live_updates_stream_the_services(
    gateway: GatewayProcess, deployer: tuple[httpx.Client, str], served: str
) -> None:
    browser, _ = deployer
    with browser.stream("GET", "/ui/live") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = data = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                break
    assert event == "services"
    assert served in [item["metadata"]["name"] for item in data["items"]]
    with _browser(gateway) as anonymous:
        assert anonymous.get("/ui/live").status_code == 401


def test_the_live_stream_ends_with_the_session(gateway: GatewayProcess, http: httpx.Client) -> None:
    with _browser(gateway) as browser:
        browser.post("/ui/login", json={"token": _token(http, "dash-live", "viewer")})
        seen: list[str] = []
        with browser.stream("GET", "/ui/live") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                    if seen == ["services"]:
                        assert http.delete("/api/v1/tokens/dash-live").status_code == 200
    assert seen[0] == "services" and seen[-1] == "ended"


def test_a_services_history_shows_its_traffic(
    gateway: GatewayProcess, deployer: tuple[httpx.Client, str], served: str
) -> None:
    browser, _ = deployer
    with httpx.Client(base_url=gateway.url, headers=gateway.headers, trust_env=False, timeout=30) as client:

        def traffic_seen() -> dict | None:
            for _ in range(20):
                assert client.post(f"/v2/models/{served}/infer", json=mlp_body(MLP_X)).status_code == 200
            history = browser.get(f"/api/v1/inferenceservices/{served}/history?minutes=5").json()
            lines = [s for s in history["series"] if any(r and r > 0 for r in s["rps"])]
            return history if lines else None

        history = until(traffic_seen, 30, "requests in the service's history")
    line = next(s for s in history["series"] if s["revision"] == revision(served, 1))
    assert (
        len(line["t"]) == len(line["rps"]) == len(line["p50"]) == len(line["p99"]) == len(line["errorRate"])
    )
    assert any(p is not None and p > 0 for p in line["p50"])
    (replicas,) = [r for r in history["replicas"] if r["revision"] == revision(served, 1)]
    assert replicas["ready"][-1] == replicas["desired"][-1] == 1
    assert history["decisions"] == [] or {"t", "revision", "direction", "reason"} <= set(
        history["decisions"][0]
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/inferenceservices/nothing/history", 404),
        ("/api/v1/inferenceservices/dash/history?minutes=0", 400),
        ("/api/v1/inferenceservices/dash/history?minutes=soon", 400),
        ("/api/v1/inferenceservices/dash/replicas/not-a-replica/log", 404),
        ("/api/v1/inferenceservices/dash/replicas/x/log?lines=-3", 400),
    ],
)
def test_bad_history_and_log_requests_get_clear_errors(
    deployer: tuple[httpx.Client, str], served: str, path: str, status: int
) -> None:
    response = deployer[0].get(path)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_a_replicas_log_tail(
    gateway: GatewayProcess, deployer: tuple[httpx.Client, str], api: ControlApi, served: str
) -> None:
    browser, _ = deployer
    pool = api.status(served)["components"]["predictor"]["replicas"][revision(served, 1)]
    replica = pool["replicas"][0]["id"]
    # The process engine appends the replica's stdout and stderr there.
    with (gateway.state_dir / "logs" / f"{replica}.log").open("a") as log:
        log.write("".join(f"line {i} of the test\n" for i in range(10)))
    tail = browser.get(f"/api/v1/inferenceservices/{served}/replicas/{replica}/log?lines=3")
    assert tail.status_code == 200, tail.text
    body = tail.json()
    assert body["revision"] == revision(served, 1)
    assert body["lines"] == [f"line {i} of the test" for i in (7, 8, 9)]


def test_charts_fall_back_to_the_gateways_history_when_prometheus_is_down(
    tmp_path_factory: pytest.TempPathFactory, model_repo: object
) -> None:
    state = tmp_path_factory.mktemp("dash-prom") / "state"
    down = f"http://127.0.0.1:{free_port()}"
    started = contextlib.contextmanager(gateway_process)
    with started(state, "--prometheus-url", down, storage_root=tmp_path_factory.getbasetemp()) as gateway:
        api = ControlApi(gateway.url, gateway.token)
        try:
            api.apply(mlp_isvc("charted", model_repo))  # type: ignore[arg-type]
        finally:
            api.close()
        with httpx.Client(
            base_url=gateway.url, headers=gateway.headers, trust_env=False, timeout=30
        ) as client:
            charts = client.get("/api/v1/inferenceservices/charted/history?minutes=600")
            assert charts.status_code == 200, charts.text  # Prometheus keeps more than an hour
            body = charts.json()
            assert body["source"] == "gateway"
            assert "unreachable" in body["warning"]
            assert client.get("/api/v1/inferenceservices/charted/history?minutes=20000").status_code == 400
