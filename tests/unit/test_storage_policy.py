"""The storage policy: local paths under the roots only, no fetches into loopback, private or
link-local addresses unless allowed, redirects checked hop by hop, and the places that apply it
(storage fetches, the replica's load path, the control API's apply, the registry API)."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.testclient import TestClient

from predictors.examples import make_mlp_onnx
from predictors.metrics import ReplicaMetrics
from predictors.model import ModelState
from predictors.repository import ModelRepository
from predictors.storage import StorageConfig, StorageError, _PolicyBackend, fetch
from serving.api import api_routes
from serving.auth import Guard
from serving.auth.storage import (
    ALLOWED_HOSTS_ENV,
    STORAGE_ROOTS_ENV,
    StoragePolicy,
    StorageRefused,
    forbidden_reason,
    is_forbidden_address,
    resolve_host,
)
from serving.auth.storage_fields import storage_problems
from serving.errors import ErrorKind, InvalidInput, ModelNotReady
from serving.spec import load_manifests
from serving.store import Store
from tests.control_fakes import ApplyOnlyController
from tests.servers import FileServer, serve_files

PUBLIC = "93.184.216.34"


def resolver(table: dict[str, Sequence[str]]) -> Callable[[str, int], Sequence[str]]:
    """A fake DNS: names in `table` resolve to their addresses, others fail like an unknown name."""

    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


NO_DNS = resolver({})


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "a link-local address"),
        ("10.0.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.254", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("100.64.0.1", "not a public address"),  # shared (carrier-grade NAT) space
        ("224.0.0.1", "a multicast address"),
        ("::1", "a loopback address"),
        ("::", "the unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fd00::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "a link-local address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a link-local address"),  # NAT64 of 169.254.169.254
    ],
)
def test_forbidden_addresses(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_forbidden_address(ip)
    assert (forbidden_reason(ip) or "").startswith(reason)


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


# -- URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.1.2.3/model.onnx",
        "http://172.16.0.5:8080/model.onnx",
        "https://192.168.0.10/model.onnx",
        "http://127.0.0.1:8000/model.onnx",
        "http://[::1]/model.onnx",
        "http://[::ffff:127.0.0.1]/model.onnx",
        "http://0.0.0.0:9000/model.onnx",
    ],
)
def test_urls_to_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(StorageRefused, match="refusing to fetch"):
        StoragePolicy().check_url(url, NO_DNS)  # literal addresses: nothing is resolved


def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    dns = resolver({"models.example": [PUBLIC], "mixed.example": [PUBLIC, "10.0.0.7"]})
    policy = StoragePolicy()
    policy.check_url("https://models.example/mlp.onnx", dns)
    with pytest.raises(StorageRefused, match=r"'mixed.example' resolves to 10\.0\.0\.7, a private address"):
        policy.check_url("https://mixed.example/mlp.onnx", dns)
    with pytest.raises(StorageRefused, match="does not resolve"):
        policy.check_url("https://nowhere.example/mlp.onnx", dns)


@pytest.mark.parametrize("host", ["localhost", "2130706433", "127.1"])
def test_names_of_loopback_are_refused_with_the_system_resolver(host: str) -> None:
    # localhost comes from /etc/hosts; the others are numeric forms inet_aton reads as 127.0.0.1.
    with pytest.raises(StorageRefused, match="a loopback address"):
        StoragePolicy().check_url(f"http://{host}:8080/model.onnx", resolve_host)


def test_the_host_after_userinfo_is_the_one_checked() -> None:
    dns = resolver({"models.example": [PUBLIC]})
    policy = StoragePolicy()
    policy.check_url("https://user:secret@models.example/mlp.onnx", dns)
    with pytest.raises(StorageRefused, match=r"169\.254\.169\.254"):
        policy.check_url("http://models.example@169.254.169.254/latest/meta-data", dns)
    with pytest.raises(StorageRefused, match="ambiguous"):
        policy.check_url("http://169.254.169.254\\@models.example/", dns)


def test_only_http_and_https_are_fetched() -> None:
    with pytest.raises(StorageRefused, match="only http"):
        StoragePolicy().check_url("ftp://models.example/mlp.onnx", NO_DNS)
    with pytest.raises(StorageRefused, match="names no host"):
        StoragePolicy().check_url("http:///mlp.onnx", NO_DNS)


@pytest.mark.parametrize(
    ("allowed", "url", "ok"),
    [
        ("127.0.0.1:9000", "http://127.0.0.1:9000/m.onnx", True),
        ("127.0.0.1:9000", "http://127.0.0.1:9001/m.onnx", False),
        ("127.0.0.1", "http://127.0.0.1:9001/m.onnx", True),
        ("10.0.0.0/8", "http://10.20.30.40/m.onnx", True),
        ("10.0.0.0/8", "http://192.168.0.1/m.onnx", False),
        ("[::1]:9000", "http://[::1]:9000/m.onnx", True),
        ("::1", "http://[::1]:9000/m.onnx", True),
        ("minio.internal", "http://minio.internal:9000/m.onnx", True),  # a name trusts its addresses
        ("minio.internal:9000", "https://minio.internal/m.onnx", False),  # port 443
        ("models.internal", "http://minio.internal/m.onnx", False),
    ],
)
def test_allowed_hosts(allowed: str, url: str, ok: bool) -> None:
    policy = StoragePolicy(allowed_hosts=(allowed,))
    dns = resolver({"minio.internal": ["10.0.0.5"]})
    if ok:
        policy.check_url(url, dns)
    else:
        with pytest.raises(StorageRefused, match="--allow-host"):
            policy.check_url(url, dns)


@pytest.mark.parametrize("entry", ["", "a b", "host:99999", "host:port", "[::1", "[::1]x"])
def test_malformed_allowed_hosts(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        StoragePolicy(allowed_hosts=("ok.example", entry or ":"))


# -- paths ----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "mlp.onnx").write_bytes(b"onnx")
    (tmp_path / "secret").write_text("not for requests")
    return folder


def test_paths_inside_a_root_are_allowed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = StoragePolicy((root,))
    assert policy.check_path(root / "models" / "mlp.onnx") == (root / "models" / "mlp.onnx").resolve()
    assert policy.check_path(root) == root.resolve()
    policy.check_path(root / "models" / "not-there-yet")  # judged by where it is, existing or not
    monkeypatch.chdir(root)
    policy.check_path("models/mlp.onnx")
    policy.check_uri("models/mlp.onnx")


@pytest.mark.parametrize(
    "path",
    [
        "{root}/../secret",
        "{root}/models/../../secret",
        "/etc/passwd",
        "{root}-evil/model.onnx",  # a sibling whose name starts like the root
        "{root}/../../../../../../etc/passwd",
    ],
)
def test_path_traversal_is_refused(root: Path, path: str) -> None:
    with pytest.raises(StorageRefused, match="outside the storage roots") as caught:
        StoragePolicy((root,)).check_path(path.format(root=root))
    assert "--storage-root" in caught.value.message
    assert str(root.resolve()) in caught.value.message


@pytest.mark.parametrize("path", ["~no-such-user-here/model.onnx", "model\x00.onnx"])
def test_paths_that_cannot_be_resolved_are_refused(root: Path, path: str) -> None:
    with pytest.raises(StorageRefused, match="cannot be resolved"):
        StoragePolicy((root,)).check_path(path)


def test_relative_paths_resolve_from_the_working_directory(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root / "models")
    with pytest.raises(StorageRefused):
        StoragePolicy((root,)).check_uri("../../secret")


def test_a_symlink_out_of_a_root_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "models" / "link").symlink_to(tmp_path / "secret")
    (root / "models" / "folder-link").symlink_to(tmp_path)
    (root / "models" / "inside").symlink_to(root / "models" / "mlp.onnx")
    policy = StoragePolicy((root,))
    with pytest.raises(StorageRefused, match="resolved"):
        policy.check_path(root / "models" / "link")
    with pytest.raises(StorageRefused):
        policy.check_path(root / "models" / "folder-link" / "secret")
    assert policy.check_path(root / "models" / "inside") == (root / "models" / "mlp.onnx").resolve()


def test_a_root_given_through_a_symlink_is_its_target(root: Path, tmp_path: Path) -> None:
    (tmp_path / "alias").symlink_to(root)
    policy = StoragePolicy((tmp_path / "alias",))
    assert policy.roots == (root.resolve(),)
    policy.check_path(root / "models" / "mlp.onnx")


def test_uris_by_scheme(root: Path) -> None:
    policy = StoragePolicy((root,))
    policy.check_uri((root / "models" / "mlp.onnx").as_uri())
    with pytest.raises(StorageRefused, match="outside"):
        policy.check_uri("file:///etc/passwd")
    with pytest.raises(StorageRefused, match="names host"):
        policy.check_uri("file://evil/etc/passwd")
    with pytest.raises(StorageRefused, match="a link-local address"):
        policy.check_uri("http://169.254.169.254/latest/meta-data", NO_DNS)
    with pytest.raises(StorageRefused, match="a loopback address"):
        policy.check_uri("grpc://127.0.0.1:8001/resnet", NO_DNS)  # the triton format's server
    # The operator configures where these lead; unknown schemes are storage's to report.
    for uri in ("s3://bucket/model/", "registry://mlp/1", "registry://mlp@prod", "gs://bucket/model"):
        policy.check_uri(uri, NO_DNS)


def test_python_model_uris(root: Path) -> None:
    policy = StoragePolicy((root,))
    policy.check_uri(f"{root}/models/model.py:Doubler")
    with pytest.raises(StorageRefused, match="outside"):
        policy.check_uri("/tmp/evil.py:Evil")
    with pytest.raises(StorageRefused, match="outside"):
        policy.check_uri(f"{root}/../evil.py:Evil")
    policy.check_uri("tests.python_models:Doubler")  # an installed module: code trust's call


def test_refusals_are_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        StoragePolicy().check_path("/etc/passwd")
    assert caught.value.kind is ErrorKind.INVALID_INPUT and caught.value.http_status == 400


def test_environment_round_trip(root: Path, tmp_path: Path) -> None:
    policy = StoragePolicy((root, tmp_path / "state"), ("127.0.0.1:9000", "10.0.0.0/8"))
    env = policy.to_env()
    assert set(env) == {STORAGE_ROOTS_ENV, ALLOWED_HOSTS_ENV}
    assert StoragePolicy.from_env(env) == policy
    assert StoragePolicy.from_env({}) is None
    nothing = StoragePolicy.from_env({STORAGE_ROOTS_ENV: ""})
    assert nothing is not None and nothing.roots == ()
    with pytest.raises(StorageRefused):
        nothing.check_path(root)


# -- fetching -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redirecting(routes: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 answering 302 to `routes[path]`, 404 elsewhere; yields its base
    URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            target = routes.get(self.path)
            self.send_response(302 if target else 404)
            if target:
                self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def files(tmp_path: Path) -> Iterator[FileServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    with serve_files(folder) as server:
        yield server


def _config(tmp_path: Path, policy: StoragePolicy | None) -> StorageConfig:
    return StorageConfig(cache_dir=tmp_path / "cache", http_timeout_s=5.0, policy=policy)


def _allowing(url: str) -> StoragePolicy:
    return StoragePolicy(allowed_hosts=(url.removeprefix("http://"),))


def test_a_redirect_to_the_metadata_address_is_refused_at_fetch(tmp_path: Path) -> None:
    with redirecting({"/model.onnx": "http://169.254.169.254/latest/meta-data"}) as (base, asked):
        config = _config(tmp_path, _allowing(base))
        with pytest.raises(StorageRefused, match=r"169\.254\.169\.254.*link-local"):
            fetch(f"{base}/model.onnx", config)
        assert asked == ["/model.onnx"]


def test_a_redirect_to_another_loopback_port_is_refused(tmp_path: Path, files: FileServer) -> None:
    with redirecting({"/model.onnx": f"{files.url}/model.onnx"}) as (base, asked):
        with pytest.raises(StorageRefused, match="a loopback address"):
            fetch(f"{base}/model.onnx", _config(tmp_path, _allowing(base)))
        assert asked == ["/model.onnx"]
    assert files.gets == []  # refused before connecting
    assert not list((tmp_path / "cache").rglob("model.onnx"))


def test_redirects_within_the_policy_are_followed(tmp_path: Path, files: FileServer) -> None:
    routes = {"/a": "/b", "/b": f"{files.url}/model.onnx"}  # relative, then absolute
    with redirecting(routes) as (base, asked):
        policy = StoragePolicy(
            allowed_hosts=(base.removeprefix("http://"), files.url.removeprefix("http://"))
        )
        path = fetch(f"{base}/a", _config(tmp_path, policy))
        assert path.read_bytes() == b"weights"
        assert asked == ["/a", "/b"] and files.gets == ["/model.onnx"]


def test_redirects_without_a_policy_are_still_followed(tmp_path: Path, files: FileServer) -> None:
    with redirecting({"/a": f"{files.url}/model.onnx"}) as (base, _):
        assert fetch(f"{base}/a", _config(tmp_path, None)).read_bytes() == b"weights"


def test_redirect_loops_end(tmp_path: Path) -> None:
    with redirecting({"/a": "/b", "/b": "/a"}) as (base, asked):
        with pytest.raises(StorageError, match="more than 5 redirects"):
            fetch(f"{base}/a", _config(tmp_path, _allowing(base)))
        assert len(asked) == 6


def test_a_redirect_out_of_http_is_refused(tmp_path: Path) -> None:
    with (
        redirecting({"/a": "file:///etc/passwd"}) as (base, _),
        pytest.raises(StorageError, match="only http"),
    ):
        fetch(f"{base}/a", _config(tmp_path, None))


def test_fetch_checks_before_the_cache_and_the_network(tmp_path: Path, files: FileServer) -> None:
    url = f"{files.url}/model.onnx"
    assert fetch(url, _config(tmp_path, None)).read_bytes() == b"weights"  # the operator's, cached
    with pytest.raises(StorageRefused, match="a loopback address"):
        fetch(url, _config(tmp_path, StoragePolicy()))  # a request's: not even from the cache
    assert files.gets == ["/model.onnx"]


def test_local_fetches_stay_in_the_roots(tmp_path: Path, root: Path) -> None:
    config = _config(tmp_path, StoragePolicy((root,)))
    assert fetch(str(root / "models" / "mlp.onnx"), config).read_bytes() == b"onnx"
    with pytest.raises(StorageRefused):
        fetch(str(root / ".." / "secret"), config)
    with pytest.raises(StorageRefused):
        fetch((tmp_path / "secret").as_uri(), config)


def test_connections_go_only_to_the_addresses_checked() -> None:
    # DNS rebinding: the name resolved to a public address when checked, to loopback now.
    backend = _PolicyBackend(StoragePolicy(), resolver({"rebind.example": ["127.0.0.1"]}))
    with pytest.raises(StorageRefused, match=r"'rebind\.example' resolves to 127\.0\.0\.1"):
        backend.connect_tcp("rebind.example", 80)


# -- the replica's repository ---------------------------------------------------------------------


def _repository(
    tmp_path: Path, policy: StoragePolicy | None, check_start_models: bool = False
) -> ModelRepository:
    metrics = ReplicaMetrics(CollectorRegistry())
    return ModelRepository(metrics, _config(tmp_path, policy), check_start_models=check_start_models)


async def test_load_requests_go_through_the_policy(tmp_path: Path, root: Path) -> None:
    inside = make_mlp_onnx(root / "mlp.onnx", (4, 8, 2))
    repository = _repository(tmp_path, StoragePolicy((root,)))
    with pytest.raises(StorageRefused, match="outside the storage roots"):
        await repository.register("passwd", "/etc/passwd", "onnx")
    with pytest.raises(StorageRefused, match="a link-local address"):
        await repository.register("meta", "http://169.254.169.254/latest/meta-data", "onnx")
    assert repository.index() == []  # nothing registered
    await repository.register("mlp", str(inside), None)
    assert (await repository.load("mlp")).state is ModelState.READY
    await repository.close()


async def test_start_models_are_the_operators_unless_a_gateway_sent_them(tmp_path: Path, root: Path) -> None:
    from predictors.spec import ModelSpec

    outside = make_mlp_onnx(tmp_path / "elsewhere" / "mlp.onnx", (4, 8, 2))
    spec = ModelSpec(name="mlp", uri=str(outside))
    policy = StoragePolicy((root,))

    trusted = _repository(tmp_path, policy)
    await trusted.start([spec])
    assert trusted.get("mlp").state is ModelState.READY
    await trusted.close()

    sent = _repository(tmp_path, policy, check_start_models=True)
    with pytest.raises(ModelNotReady, match="outside the storage roots"):
        await sent.start([spec])
    model = sent.get("mlp")
    assert model.state is ModelState.FAILED and "outside the storage roots" in (model.reason or "")
    await sent.close()


async def test_python_files_from_requests_are_checked(tmp_path: Path, root: Path) -> None:
    repository = _repository(tmp_path, StoragePolicy((root,)))
    with pytest.raises(StorageRefused, match="outside"):
        await repository.register("evil", str(tmp_path / "evil.py") + ":Evil", "python")


# -- apply ----------------------------------------------------------------------------------------


def _isvc(name: str, uri: str, **predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}, **predictor}},
    }


def _resources(*docs: dict[str, Any]) -> list[Any]:
    import json

    return load_manifests("\n---\n".join(json.dumps(d) for d in docs), "<test>")


def test_manifest_fields_are_checked_by_path(root: Path) -> None:
    graph = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "g"},
        "spec": {
            "nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://10.0.0.1/v1"}]}}
        },
    }
    trained = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": "tm"},
        "spec": {
            "inferenceService": "ok",
            "model": {"framework": "onnx", "storageUri": "/etc/tm.onnx", "memory": "1Mi"},
        },
    }
    resources = _resources(
        _isvc("ok", str(root / "models" / "mlp.onnx")),
        _isvc("traversal", f"{root}/../secret"),
        _isvc(
            "logged",
            str(root / "models" / "mlp.onnx"),
            logger={"url": "http://169.254.169.254/log"},
        ),
        trained,
        graph,
    )
    problems = storage_problems(resources, StoragePolicy((root,)), NO_DNS)
    assert [p.path for p in problems] == [
        "InferenceService/traversal: spec.predictor.model.storageUri",
        "InferenceService/logged: spec.predictor.logger.url",
        "TrainedModel/tm: spec.model.storageUri",
        "InferenceGraph/g: spec.nodes.root.steps[0].serviceUrl",
    ]
    assert storage_problems(resources, None, NO_DNS) == []


def test_env_and_args_cannot_point_a_replica_elsewhere(root: Path) -> None:
    model = str(root / "models" / "mlp.onnx")
    doc = _isvc("sneaky", model)
    doc["spec"]["predictor"]["model"]["env"] = [
        {"name": "SERVEGATE_STORAGE_ROOTS", "value": "/"},
        {"name": "AWS_ENDPOINT_URL", "value": "http://169.254.169.254"},
        {"name": "S3_ENDPOINT", "value": "10.0.0.1:9000"},
        {"name": "OMP_NUM_THREADS", "value": "2"},
    ]
    doc["spec"]["predictor"]["model"]["args"] = [
        "--model-repository=/",
        "--s3-endpoint",
        "http://127.0.0.1:9000",
    ]
    problems = storage_problems(_resources(doc), StoragePolicy((root,)), NO_DNS)
    at = "InferenceService/sneaky: spec.predictor.model"
    assert [p.path for p in problems] == [
        f"{at}.env[0].name",
        f"{at}.env[1].value",
        f"{at}.env[2].value",
        f"{at}.args[0]",
        f"{at}.args[1]",
    ]


def test_apply_refuses_a_manifest_that_breaks_the_policy(tmp_path: Path, root: Path) -> None:
    import json

    store = Store(tmp_path / "state.db")
    controller = ApplyOnlyController(store, StoragePolicy((root,)))
    app = Starlette(routes=api_routes(controller, Guard(None)))  # type: ignore[arg-type]
    try:
        with TestClient(app) as client:
            bad = [_isvc("a", "/etc/passwd"), _isvc("b", "http://169.254.169.254/latest/meta-data")]
            response = client.post("/api/v1/apply", content="\n---\n".join(json.dumps(d) for d in bad))
            assert response.status_code == 400, response.text
            assert [p["path"] for p in response.json()["problems"]] == [
                "InferenceService/a: spec.predictor.model.storageUri",
                "InferenceService/b: spec.predictor.model.storageUri",
            ]
            assert "nothing applied" in response.json()["error"] and controller.applied == []

            good = json.dumps(_isvc("c", str(root / "models" / "mlp.onnx")))
            assert client.post("/api/v1/apply", content=good).status_code == 200
            assert [r.metadata.name for r in controller.applied] == ["c"]
    finally:
        store.close()


# -- the registry API -----------------------------------------------------------------------------


def test_registry_registration_sources_go_through_the_policy(tmp_path: Path, root: Path) -> None:
    from serving.registry.api import registry_routes
    from serving.registry.registry import Registry, RegistryConfig

    make_mlp_onnx(root / "models" / "real.onnx", (4, 8, 2))
    registry = Registry(
        RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts")),
        cache_dir=tmp_path / "cache",
    )
    app = Starlette(routes=registry_routes(registry, Guard(None), policy=StoragePolicy((root,))))
    try:
        with TestClient(app) as client:
            for source in ("/etc/passwd", f"{root}/../secret", "http://169.254.169.254/latest/meta-data"):
                response = client.post("/api/registry/models/mlp/versions", json={"source": source})
                assert response.status_code == 400, response.text
                assert response.json()["error"].startswith("source: ")
            assert client.get("/api/registry/models").json()["items"] == []
            real = {"source": str(root / "models" / "real.onnx")}
            ok = client.post("/api/registry/models/mlp/versions", json=real)
            assert ok.status_code == 201, ok.text
    finally:
        registry.close()


def test_registry_fetches_check_redirects(tmp_path: Path, root: Path) -> None:
    from serving.registry.registry import Registry, RegistryConfig
    from serving.registry.types import InvalidArtifact

    registry = Registry(
        RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts")),
        cache_dir=tmp_path / "cache",
        storage_policy=StoragePolicy(),
    )
    try:
        redirect = redirecting({"/m.onnx": "http://169.254.169.254/latest/meta-data"})
        with redirect as (base, _), pytest.raises(InvalidArtifact, match="a link-local address"):
            registry.storage_policy = _allowing(base)
            registry.register("mlp", f"{base}/m.onnx")
    finally:
        registry.close()
