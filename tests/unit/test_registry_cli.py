"""`servegate registry ...` through click's CliRunner against a SQLite registry in tmp_path, plus
the pure parsing and formatting helpers. No servers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.testclient import TestClient

from predictors.examples import make_mlp_onnx
from serving.auth import Guard
from serving.cli._registry_args import parse_gate, parse_pairs, parse_ref
from serving.cli._registry_output import (
    describe_model,
    describe_version,
    format_size,
    history_rows,
    model_rows,
    registered_line,
    version_rows,
)
from serving.cli.main import cli
from serving.registry import (
    AuditEntry,
    Gate,
    ModelVersion,
    RegisteredModel,
    Registry,
    RegistryConfig,
    RegistryError,
    RegistryUri,
)
from serving.registry.api import registry_routes
from tests.cli_results import fails, ok

Run = Callable[..., Result]

# -- parsing --------------------------------------------------------------------------------------


def test_parse_pairs() -> None:
    assert parse_pairs([]) == {}
    assert parse_pairs(["a=1", "b = x=y", "c="]) == {"a": "1", "b": " x=y", "c": ""}
    assert parse_pairs(["acc=0.97", "n=3", "loss=-1e-3"], numeric=True) == {
        "acc": 0.97,
        "n": 3.0,
        "loss": -0.001,
    }


@pytest.mark.parametrize(
    ("values", "numeric", "says"),
    [
        (["novalue"], False, "'novalue' is not KEY=VALUE"),
        (["=1"], False, "'=1' is not KEY=VALUE"),
        (["a=1", "a=2"], False, "'a' is given twice"),
        (["acc=high"], True, "'acc=high': the value of a metric must be a number"),
        (["acc="], True, "must be a number"),
        (["acc=nan"], True, "finite"),
        (["acc=inf"], True, "finite"),
    ],
)
def test_parse_pairs_refuses(values: list[str], numeric: bool, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_pairs(values, numeric=numeric)
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("text", "gate"),
    [
        ("accuracy>=0.95", Gate("production", "accuracy", ">=", 0.95)),
        ("latency_ms < 20", Gate("production", "latency_ms", "<", 20.0)),
        (" f1 == 1 ", Gate("production", "f1", "==", 1.0)),
        ("loss<=1e-2", Gate("production", "loss", "<=", 0.01)),
        ("eval/auc>-0.5", Gate("production", "eval/auc", ">", -0.5)),
    ],
)
def test_parse_gate(text: str, gate: Gate) -> None:
    assert parse_gate(text, "production") == gate


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("accuracy", "is not METRIC OP THRESHOLD"),
        (">=0.9", "is not METRIC OP THRESHOLD"),
        ("accuracy>=", "is not METRIC OP THRESHOLD"),
        ("accuracy!=0.9", "unknown operator '!='"),
        ("accuracy=0.9", "unknown operator '='"),
        ("accuracy=>0.9", "unknown operator '=>'"),
        ("accuracy>=high", "threshold 'high' is not a number"),
        ("accuracy>=nan", "finite"),
    ],
)
def test_parse_gate_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_gate(text, "production")
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("mlp", RegistryUri("mlp")),
        ("mlp/3", RegistryUri("mlp", version=3)),
        ("mlp@production", RegistryUri("mlp", alias="production")),
        ("registry://mlp/2", RegistryUri("mlp", version=2)),
    ],
)
def test_parse_ref(text: str, ref: RegistryUri) -> None:
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text", ["mlp/", "mlp/x", "mlp/0", "mlp@Prod", "bad name", "registry://mlp"])
def test_parse_ref_refuses(text: str) -> None:
    with pytest.raises(RegistryError):
        parse_ref(text)


# -- formatting -----------------------------------------------------------------------------------

NOW = 1_700_000_000.0
VERSION = ModelVersion(
    model="mlp",
    version=3,
    format="onnx",
    sha256="0123456789abcdef" * 4,
    artifact_name="model.onnx",
    artifact_kind="file",
    size=2048,
    status="READY",
    created=NOW - 300,
    created_by="alice@host",
    signature={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    },
    metrics={"accuracy": 0.97},
    params={"lr": "0.001"},
    tags={"team": "search"},
    source={"uri": "/models/model.onnx", "run": "run-7"},
    aliases=("production", "staging"),
)
MODEL = RegisteredModel(
    "mlp",
    "",
    NOW - 86400 * 3,
    NOW - 60,
    3,
    {"production": 3, "staging": 3},
    (Gate("production", "accuracy", ">=", 0.95), Gate("production", "latency_ms", "<", 20)),
)


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**4)] == [
        "0B",
        "1023B",
        "1.0KiB",
        "1.5KiB",
        "5.0MiB",
        "3.0TiB",
    ]


def test_rows() -> None:
    assert registered_line(VERSION) == "registered mlp version 3 (sha256 0123456789ab…)"
    assert model_rows([MODEL], NOW) == [["mlp", "3", "production=3,staging=3", "60s"]]
    assert version_rows([VERSION], NOW) == [
        ["3", "onnx", "READY", "no", "production,staging", "0123456789ab", "2.0KiB", "accuracy=0.97", "5m"]
    ]
    entry = AuditEntry(
        1, "mlp", NOW, "bob", "alias-set", {"alias": "production", "version": 3, "previous": None}
    )
    [[when, actor, action, details]] = history_rows([entry])
    assert (actor, action, details) == ("bob", "alias-set", "alias=production, version=3, previous=null")
    assert when.startswith("2023-11-1")


def _words(text: str) -> list[str]:
    """Each line with its runs of spaces collapsed: what a test can match, whatever the widths."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_describe_model() -> None:
    lines = _words(describe_model(MODEL, [VERSION], NOW))
    for line in (
        "Name: mlp",
        "Latest version: 3",
        "production: 3",
        "staging: 3",
        "production: accuracy >= 0.95, latency_ms < 20",
        "VERSION FORMAT STATUS TRUSTED ALIASES SHA256 SIZE METRICS CREATED",
        "3 onnx READY no production,staging 0123456789ab 2.0KiB accuracy=0.97 5m",
    ):
        assert line in lines, line
    empty = describe_model(RegisteredModel("m", "", NOW, NOW, 0), [], NOW)
    assert "Aliases:\n  <none>" in empty and "Versions:\n  <none>" in empty


def test_describe_version() -> None:
    lines = _words(describe_version(VERSION, NOW))
    for line in (
        "URI: registry://mlp/3",
        "Status: READY",
        "Trusted: no",
        "Aliases: production, staging",
        "Artifact: model.onnx (file)",
        "SHA256: " + VERSION.sha256,
        "Size: 2.0KiB (2048 bytes)",
        "Created by: alice@host",
        "uri: /models/model.onnx",
        "run: run-7",
        "NAME DATATYPE SHAPE",
        "input input FP32 [-1,8]",
        "output output FP32 [-1,4]",
        "accuracy: 0.97",
        "lr: 0.001",
        "team: search",
    ):
        assert line in lines, line


# -- commands -------------------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return make_mlp_onnx(tmp_path / "src" / "model.onnx", (8, 16, 4))


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryConfig:
    for name in (
        "SERVEGATE_REGISTRY_URL",
        "SERVEGATE_ARTIFACTS",
        "SERVEGATE_STATE_DIR",
        "SERVEGATE_USER",
        "SERVEGATE_URL",
        "SERVEGATE_TOKEN",
        "SERVEGATE_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SERVEGATE_CACHE_DIR", str(tmp_path / "cache"))
    return RegistryConfig(f"sqlite:///{tmp_path / 'registry.db'}", str(tmp_path / "artifacts"))


@pytest.fixture
def run(config: RegistryConfig) -> Run:
    def invoke(*args: str) -> Result:
        options = ["registry", "--registry", config.url, "--artifacts", config.artifacts]
        return CliRunner().invoke(cli, [*options, *args])

    return invoke


def test_register(run: Run, model_file: Path, config: RegistryConfig) -> None:
    out = ok(run("register", "mlp", str(model_file), "--metric", "accuracy=0.97", "--tag", "team=search"))
    assert out.startswith("registered mlp version 1 (sha256 ") and out.rstrip().endswith("…)")
    body = json.loads(
        ok(
            run(
                "register",
                "mlp",
                str(model_file),
                "--format",
                "ONNX",
                "--metric",
                "accuracy=0.98",
                "--param",
                "lr=0.01",
                "--description",
                "second",
                "--run",
                "run-7",
                "--dataset",
                "d41d8",
                "-o",
                "json",
            )
        )
    )
    assert body["version"] == 2 and body["format"] == "onnx" and body["description"] == "second"
    assert body["metrics"] == {"accuracy": 0.98} and body["params"] == {"lr": "0.01"}
    assert body["source"] == {"uri": str(model_file), "run": "run-7", "dataset": "d41d8"}
    with Registry(config) as registry:
        assert [v.version for v in registry.versions("mlp")] == [1, 2]
        assert registry.version("mlp", 1).tags == {"team": "search"}


def test_list(run: Run, model_file: Path) -> None:
    result = run("list")
    assert ok(result) == "" and "No models registered." in result.stderr
    ok(run("register", "mlp", str(model_file)))
    ok(run("register", "other", str(model_file)))
    ok(run("alias", "mlp", "production", "1"))
    lines = ok(run("list")).splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "ALIASES", "UPDATED"]
    assert lines[1].split()[:3] == ["mlp", "1", "production=1"]
    assert lines[2].split()[:2] == ["other", "1"]
    items = json.loads(ok(run("list", "-o", "json")))
    assert [m["name"] for m in items] == ["mlp", "other"]
    assert yaml.safe_load(ok(run("list", "-o", "yaml")))[0]["aliases"] == {"production": 1}


def test_show_model_and_version(run: Run, model_file: Path) -> None:
    ok(run("register", "mlp", str(model_file), "--metric", "accuracy=0.97"))
    ok(run("register", "mlp", str(model_file), "--metric", "accuracy=0.99", "--param", "lr=0.1"))
    ok(run("alias", "mlp", "production", "2"))
    lines = _words(ok(run("show", "mlp")))
    assert "Name: mlp" in lines and "production: 2" in lines
    rows = [line.split() for line in lines if line[:2] in ("1 ", "2 ")]
    assert rows[0][:4] == ["1", "onnx", "READY", "no"] and rows[1][4] == "production"
    body = json.loads(ok(run("show", "mlp", "-o", "json")))
    assert body["aliases"] == {"production": 2} and [v["version"] for v in body["versions"]] == [1, 2]

    detail = _words(ok(run("show", "mlp/2")))
    for line in (
        "URI: registry://mlp/2",
        "Signature:",
        "input input FP32 [-1,8]",
        "accuracy: 0.99",
        "lr: 0.1",
    ):
        assert line in detail, line
    assert json.loads(ok(run("show", "mlp@production", "-o", "json")))["version"] == 2
    assert yaml.safe_load(ok(run("show", "registry://mlp/1", "-o", "yaml")))["version"] == 1


def test_alias_set_move_delete(run: Run, model_file: Path) -> None:
    ok(run("register", "mlp", str(model_file)))
    ok(run("register", "mlp", str(model_file)))
    assert ok(run("alias", "mlp", "production", "1")).strip() == "mlp@production -> version 1"
    body = json.loads(ok(run("alias", "mlp", "production", "2", "-o", "json")))
    assert body["aliases"] == {"production": 2}
    assert ok(run("alias", "mlp", "production", "--delete")).strip() == "deleted alias production of mlp"
    assert json.loads(ok(run("show", "mlp", "-o", "json")))["aliases"] == {}


def test_archive(run: Run, model_file: Path) -> None:
    ok(run("register", "mlp", str(model_file)))
    assert ok(run("archive", "mlp/1")).strip() == "archived mlp version 1"
    assert json.loads(ok(run("show", "mlp/1", "-o", "json")))["status"] == "ARCHIVED"


def test_history(run: Run, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEGATE_USER", "carol")
    ok(run("register", "mlp", str(model_file)))
    ok(run("alias", "mlp", "production", "1"))
    lines = ok(run("history", "mlp")).splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "DETAILS"]
    assert [line.split()[2:4] for line in lines[1:]] == [["carol", "registered"], ["carol", "alias-set"]]
    entries = json.loads(ok(run("history", "mlp", "-o", "json")))
    assert [e["action"] for e in entries] == ["registered", "alias-set"]


def test_gates(run: Run, model_file: Path) -> None:
    ok(run("register", "mlp", str(model_file), "--metric", "accuracy=0.9", "--metric", "latency_ms=12"))
    ok(run("register", "mlp", str(model_file), "--metric", "accuracy=0.97", "--metric", "latency_ms=15"))
    out = ok(run("gate", "mlp", "accuracy>=0.95", "latency_ms < 20"))
    assert out.strip() == "gates of mlp@production: accuracy >= 0.95, latency_ms < 20"
    ok(run("gate", "mlp", "--alias", "staging", "accuracy>=0.5"))
    fails(run("alias", "mlp", "production", "1"), 1, "error: ")
    ok(run("alias", "mlp", "production", "2"))
    # Replacing one alias's gates keeps the other's.
    body = json.loads(ok(run("gate", "mlp", "accuracy>=0.96", "-o", "json")))
    assert {(g["alias"], g["metric"]) for g in body["gates"]} == {
        ("production", "accuracy"),
        ("staging", "accuracy"),
    }
    assert ok(run("gate", "mlp", "--clear")).strip() == "removed the gates of mlp@production"
    gates = json.loads(ok(run("show", "mlp", "-o", "json")))["gates"]
    assert gates == [{"alias": "staging", "metric": "accuracy", "op": ">=", "threshold": 0.5}]
    ok(run("alias", "mlp", "production", "1"))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["register", "mlp", "m.onnx", "--metric", "accuracy"], "'accuracy' is not KEY=VALUE"),
        (["register", "mlp", "m.onnx", "--metric", "accuracy=high"], "must be a number"),
        (["register", "mlp", "m.onnx", "--param", "=x"], "--param"),
        (["register", "mlp", "m.onnx", "--tag", "a"], "--tag"),
        (["register", "mlp", "m.onnx", "--format", "tensorflow"], "--format"),
        (["archive", "mlp"], "names no version"),
        (["archive", "mlp@production"], "names no version"),
        (["archive", "mlp/x"], "NAME/VERSION"),
        (["show", "mlp/0"], "names no version"),
        (["alias", "mlp", "production"], "give VERSION or --delete"),
        (["alias", "mlp", "production", "1", "--delete"], "not both"),
        (["alias", "mlp", "production", "0"], "VERSION"),
        (["gate", "mlp"], "give gate expressions or --clear"),
        (["gate", "mlp", "accuracy>=1", "--clear"], "not both"),
        (["gate", "mlp", "accuracy=1"], "unknown operator"),
    ],
)
def test_bad_arguments_are_usage_errors(run: Run, args: list[str], says: str) -> None:
    fails(run(*args), 2, says)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["show", "nope"], "error: model 'nope' is not registered"),
        (["show", "nope/1"], "error: model 'nope' is not registered"),
        (["history", "nope"], "error: model 'nope' is not registered"),
        (["alias", "nope", "production", "1"], "error: model 'nope' is not registered"),
        (["gate", "nope", "accuracy>=1"], "error: model 'nope' is not registered"),
        (["register", "mlp", "/no/such/model.onnx"], "error: cannot read the artifact"),
    ],
)
def test_registry_errors_exit_1(run: Run, args: list[str], says: str) -> None:
    fails(run(*args), 1, says)


def test_alias_on_an_archived_version_exits_1(run: Run, model_file: Path) -> None:
    ok(run("register", "mlp", str(model_file)))
    ok(run("archive", "mlp/1"))
    fails(run("alias", "mlp", "production", "1"), 1, "error: mlp/1 is archived")
    fails(run("archive", "mlp/1"), 1, "error: mlp/1 is already archived")


def test_default_registry_lives_in_the_state_dir(
    config: RegistryConfig, tmp_path: Path, model_file: Path
) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(
        cli, ["registry", "--state-dir", str(state), "register", "mlp", str(model_file)]
    )
    ok(result)
    assert (state / "registry.db").is_file() and (state / "artifacts").is_dir()
    env = {"SERVEGATE_STATE_DIR": str(state)}
    assert (
        json.loads(ok(CliRunner(env=env).invoke(cli, ["registry", "list", "-o", "json"])))[0]["name"] == "mlp"
    )


def test_a_gateway_url_goes_through_the_client(
    config: RegistryConfig, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.registry import client as client_module
    from serving.registry.api import registry_routes

    registry = Registry(config)
    http = TestClient(Starlette(routes=registry_routes(registry, Guard(None))))
    opened: list[str | None] = []
    real = client_module.RegistryClient

    def fake_client(url: str | None = None, **kwargs: Any) -> client_module.RegistryClient:
        opened.append(url)
        return real(http=http)

    monkeypatch.setattr(client_module, "RegistryClient", fake_client)
    gateway = ["registry", "--registry", "http://gateway.test:8080"]
    try:
        assert ok(CliRunner().invoke(cli, [*gateway, "register", "mlp", str(model_file)])).startswith(
            "registered mlp version 1"
        )
        result = CliRunner().invoke(cli, [*gateway, "show", "mlp/9"])
        fails(result, 1, "error: model mlp has no version 9")
    finally:
        http.close()
        registry.close()
    assert opened == ["http://gateway.test:8080", "http://gateway.test:8080"]
    with Registry(config) as direct:
        assert direct.version("mlp", 1).created_by.startswith("anonymous@")


def test_an_unreachable_gateway_exits_1(config: RegistryConfig) -> None:
    result = CliRunner().invoke(cli, ["registry", "--registry", "http://127.0.0.1:1", "list"])
    fails(result, 1, "error: cannot reach the gateway at http://127.0.0.1:1")


# -- which registry: one rule with the other gateway commands ------------------------------------


class Opened:
    """Every RegistryClient the CLI opens (its URL and keyword arguments), each one wired to the
    registry API in process."""

    def __init__(self, config: RegistryConfig) -> None:
        self.registry = Registry(config)
        self.http = TestClient(Starlette(routes=registry_routes(self.registry, Guard(None))))
        self.calls: list[tuple[str | None, dict[str, Any]]] = []


@pytest.fixture
def opened(config: RegistryConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[Opened]:
    from serving.registry import client as client_module

    opened = Opened(config)
    real = client_module.RegistryClient

    def fake_client(url: str | None = None, **kwargs: Any) -> client_module.RegistryClient:
        opened.calls.append((url, kwargs))
        return real(http=opened.http)

    monkeypatch.setattr(client_module, "RegistryClient", fake_client)
    try:
        yield opened
    finally:
        opened.http.close()
        opened.registry.close()


@pytest.mark.parametrize(
    ("flags", "env", "goes_to"),
    [
        ([], {"SERVEGATE_URL": "http://gw.test:8080"}, "http://gw.test:8080"),
        ([], {"SERVEGATE_URL": "gw.test:8080"}, "http://gw.test:8080"),
        (["--url", "http://flag.test"], {}, "http://flag.test"),
        (["--url", "http://flag.test"], {"SERVEGATE_REGISTRY_URL": "http://reg.test"}, "http://flag.test"),
        (
            [],
            {"SERVEGATE_REGISTRY_URL": "http://reg.test", "SERVEGATE_URL": "http://gw.test"},
            "http://reg.test",
        ),
        (["--registry", "http://reg.test", "--url", "http://flag.test"], {}, "http://reg.test"),
        (["--registry", "http://reg.test"], {"SERVEGATE_URL": "http://gw.test"}, "http://reg.test"),
    ],
)
def test_the_gateway_of_url_or_servegate_url_is_the_registry(
    opened: Opened, flags: list[str], env: dict[str, str], goes_to: str, tmp_path: Path
) -> None:
    result = CliRunner(env=env).invoke(cli, ["registry", *flags, "--state-dir", str(tmp_path / "s"), "list"])
    ok(result)
    assert [url for url, _ in opened.calls] == [goes_to]
    assert not (tmp_path / "s").exists()  # no local database made on the side


def test_a_database_named_wins_over_servegate_url(opened: Opened, config: RegistryConfig) -> None:
    env = {"SERVEGATE_URL": "http://gw.test:8080"}
    ok(
        CliRunner(env=env).invoke(
            cli, ["registry", "--registry", config.url, "--artifacts", config.artifacts, "list"]
        )
    )
    assert opened.calls == []


def test_without_a_gateway_the_registry_is_local(opened: Opened, tmp_path: Path) -> None:
    ok(CliRunner().invoke(cli, ["registry", "--state-dir", str(tmp_path / "s"), "list"]))
    assert opened.calls == []
    assert (tmp_path / "s" / "registry.db").is_file()


def test_the_token_goes_to_the_registry_gateway(
    opened: Opened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = ["registry", "--url", "http://gw.test:8080"]
    ok(CliRunner().invoke(cli, [*remote, "--token", "sgt_given", "list"]))
    monkeypatch.setenv("SERVEGATE_TOKEN", "sgt_env")
    ok(CliRunner().invoke(cli, [*remote, "list"]))
    monkeypatch.delenv("SERVEGATE_TOKEN")
    ok(CliRunner().invoke(cli, [*remote, "list"]))
    assert [kwargs["token"] for _, kwargs in opened.calls] == ["sgt_given", "sgt_env", None]


def test_the_admin_token_of_the_state_dir_goes_to_a_local_gateway_only(
    opened: Opened, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.token").write_text("sgt_0123456789ab_admin\n")
    (state / "admin.token").chmod(0o600)
    for url in ("http://127.0.0.1:8080", "http://gw.test:8080"):
        ok(CliRunner().invoke(cli, ["registry", "--url", url, "--state-dir", str(state), "list"]))
    assert [kwargs["token"] for _, kwargs in opened.calls] == ["sgt_0123456789ab_admin", None]
    (state / "admin.token").chmod(0o644)
    result = CliRunner().invoke(
        cli, ["registry", "--url", "http://127.0.0.1:8080", "--state-dir", str(state), "list"]
    )
    fails(result, 1, "chmod 600")


def test_a_401_from_the_registry_gateway_says_how_to_give_a_token(
    config: RegistryConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from serving.registry import client as client_module

    real = client_module.RegistryClient

    def refusing(url: str | None = None, **kwargs: Any) -> client_module.RegistryClient:
        answer = httpx.Response(401, json={"error": "this endpoint needs a token"})
        return real(url, transport=httpx.MockTransport(lambda request: answer))

    monkeypatch.setattr(client_module, "RegistryClient", refusing)
    result = CliRunner().invoke(cli, ["registry", "--url", "http://gw.test:8080", "list"])
    fails(result, 1, "error: this endpoint needs a token (give --token or --token-file, set SERVEGATE_TOKEN")
