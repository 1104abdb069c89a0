"""The resource commands (`servegate apply/get/describe/delete/promote/rollback/predict`) and
`serving.Client` against a real `servegate up`.

One gateway serves the module (state in a temporary folder). The CLI runs in process through
click's CliRunner with `--url`; each test uses services of its own, so the order does not matter.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result

from predictors.examples import mlp_forward
from serving import Client, ServegateError
from serving.cli.main import cli
from tests.conftest import MLP_SIZES
from tests.gateway_helpers import storage_roots
from tests.servers import GatewayProcess, free_port, until

pytestmark = pytest.mark.integration

X = (np.arange(2 * MLP_SIZES[0], dtype=np.float32).reshape(2, MLP_SIZES[0]) - 4) / 10
EXPECTED = mlp_forward(X, MLP_SIZES)


def isvc(name: str, storage: Path, **predictor: Any) -> dict[str, Any]:
    model = {"modelFormat": {"name": "onnx"}, "storageUri": str(storage), "protocolVersion": "v2"}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": {**predictor, "model": model}},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The module's gateway; it may read models from the session's temporary folders."""
    state = tmp_path_factory.mktemp("cli-gateway") / "state"
    with GatewayProcess(state, *storage_roots(state, tmp_path_factory.getbasetemp())) as gw:
        gw.wait_live()
        yield gw


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[Client]:
    with Client(gateway.url, token=gateway.token) as c:
        yield c


@pytest.fixture(scope="module")
def mlp_dir(model_repo: Path) -> Path:
    return model_repo / "mlp" / "1"


@pytest.fixture(scope="module")
def served(client: Client, mlp_dir: Path) -> str:
    """A Ready service for the data-plane tests, applied and awaited with the Client."""
    client.apply(isvc("served", mlp_dir))
    ready = client.wait_ready("served", timeout=60)
    assert ready["status"]["components"]["predictor"]["latestReadyRevision"] == "served-predictor-00001"
    return "served"


def servegate(gateway: GatewayProcess, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--url", gateway.url, "--token", gateway.token], input=input)


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def table(text: str) -> list[dict[str, str]]:
    """The rows of a plain table, cut where the header's columns start (cells may be empty)."""
    header, *lines = text.splitlines()
    columns = [(m.group(), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    ends = [start for _, start in columns[1:]] + [None]
    return [
        {name: line[start:end].strip() for (name, start), end in zip(columns, ends, strict=True)}
        for line in lines
    ]


# -- apply / get / describe / delete -----------------------------------------------------------------


def test_a_service_applied_from_a_file_is_shown_described_and_deleted(
    gateway: GatewayProcess, tmp_path: Path, mlp_dir: Path
) -> None:
    manifest = tmp_path / "file-svc.yaml"
    manifest.write_text(yaml.safe_dump(isvc("file-svc", mlp_dir, batcher={"maxBatchSize": 4})))
    applied = servegate(gateway, "apply", "-f", str(manifest), "--wait", "--timeout", "60")
    assert ok(applied).splitlines() == [
        "inferenceservice/file-svc created",
        "inferenceservice/file-svc ready",
    ]
    assert "waiting for inferenceservice/file-svc" in applied.stderr

    (row,) = table(ok(servegate(gateway, "get", "isvc", "file-svc")))
    assert row == {
        "NAME": "file-svc",
        "URL": f"{gateway.url}/v2/models/file-svc",
        "READY": "True",
        "PREV": "",
        "LATEST": "100",
        "PREVROLLEDOUTREVISION": "",
        "LATESTREADYREVISION": "file-svc-predictor-00001",
        "AGE": row["AGE"],
    }
    assert row["AGE"].endswith("s")

    as_json = json.loads(ok(servegate(gateway, "get", "inferenceservice", "file-svc", "-o", "json")))
    as_yaml = yaml.safe_load(ok(servegate(gateway, "get", "InferenceService", "file-svc", "-o", "yaml")))
    # Status aside: the gateway stamps each condition's lastTransitionTime with the time of the GET.
    assert {k: v for k, v in as_json.items() if k != "status"} == {
        k: v for k, v in as_yaml.items() if k != "status"
    }
    assert as_json["status"]["components"] == as_yaml["status"]["components"]
    assert {c["type"]: c["status"] for c in as_json["status"]["conditions"]}["Ready"] == "True"
    listing = json.loads(ok(servegate(gateway, "get", "isvc", "-o", "json")))
    assert listing["kind"] == "List"
    assert "file-svc" in [i["metadata"]["name"] for i in listing["items"]]

    described = ok(servegate(gateway, "describe", "isvc", "file-svc"))
    words = {" ".join(line.split()) for line in described.splitlines()}
    assert {
        "Name: file-svc",
        "Ready: True",
        "Format: onnx",
        f"Storage URI: {mlp_dir}",
        "Protocol: v2",
        "Batcher: maxBatchSize 4, maxLatency 5ms",
        "Transition: UpToDate",
        "Ready True",
    } <= words, described
    revisions = described.split("Revisions (predictor):\n")[1].split("\n\n")[0]
    assert table(revisions.replace("\n  ", "\n").strip())[0] == {
        "REVISION": "file-svc-predictor-00001",
        "TRAFFIC": "100%",
        "READY/DESIRED": "1/1",
        "RESTARTS": "0",
        "ROLE": "latest, ready, rolled out",
        "REASON": "",
    }
    events = table(described.split("Events:\n")[1].replace("\n  ", "\n").strip())
    assert [e["REASON"] for e in events][:2] == ["Created", "RevisionCreated"]
    # Who applied it: the token's name (the controller's own revision is nobody's).
    assert [e["BY"] for e in events][:2] == ["admin", "-"]

    assert ok(servegate(gateway, "delete", "isvc", "file-svc")) == "inferenceservice/file-svc deleted\n"
    gone = servegate(gateway, "get", "isvc", "file-svc")
    assert (gone.exit_code, gone.stderr) == (1, "error: InferenceService 'file-svc' not found\n")


def test_a_folder_applies_in_one_request_and_stdin_reapplies_unchanged(
    gateway: GatewayProcess, client: Client, tmp_path: Path, mlp_dir: Path
) -> None:
    # The TrainedModel names a service from the other file: both go in one request, so it is found.
    trained = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "TrainedModel",
        "metadata": {"name": "folder-tm"},
        "spec": {
            "inferenceService": "folder-svc",
            "model": {"framework": "onnx", "storageUri": str(mlp_dir), "memory": "64Mi"},
        },
    }
    (tmp_path / "a-model.yaml").write_text(yaml.safe_dump(trained))
    (tmp_path / "b-service.json").write_text(json.dumps(isvc("folder-svc", mlp_dir)))
    (tmp_path / "notes.txt").write_text("not a manifest")
    try:
        applied = ok(servegate(gateway, "apply", "-f", str(tmp_path)))
        assert applied.splitlines() == [
            "trainedmodel/folder-tm created",
            "inferenceservice/folder-svc created",
        ]
        again = servegate(gateway, "apply", "-f", "-", input=(tmp_path / "b-service.json").read_text())
        assert ok(again) == "inferenceservice/folder-svc unchanged\n"

        rows = table(ok(servegate(gateway, "get", "tm")))
        assert {"NAME": "folder-tm", "INFERENCESERVICE": "folder-svc", "FRAMEWORK": "onnx"}.items() <= rows[
            0
        ].items()
        assert rows[0]["STORAGEURI"] == str(mlp_dir)
    finally:
        client.delete("tm", "folder-tm")
        client.delete("isvc", "folder-svc")
    assert ok(servegate(gateway, "get", "trainedmodels")) == ""


def test_a_rejected_apply_prints_every_problem_and_changes_nothing(
    gateway: GatewayProcess, client: Client, tmp_path: Path, mlp_dir: Path
) -> None:
    good = isvc("untouched", mlp_dir)
    bad = isvc("rejected", mlp_dir, canaryTrafficPercent=150)
    bad["spec"]["predictor"]["model"]["modelFormat"]["name"] = "caffe"
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(yaml.safe_dump_all([good, bad]))

    result = servegate(gateway, "apply", "-f", str(manifest))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: 2 problems in the manifests; nothing applied",
        "  InferenceService/rejected: spec.predictor.canaryTrafficPercent: "
        "Input should be less than or equal to 100",
        "  InferenceService/rejected: spec.predictor.model.modelFormat.name: "
        "unknown model format 'caffe': servegate serves onnx, pytorch, sklearn, python, triton",
    ]
    assert [i["metadata"]["name"] for i in client.list("isvc")].count("untouched") == 0

    missing = servegate(gateway, "apply", "-f", str(tmp_path / "nope.yaml"), "-f", str(manifest))
    assert missing.exit_code == 1
    assert missing.stderr.splitlines() == [
        "error: 1 problem reading the manifests; nothing applied",
        f"  {tmp_path / 'nope.yaml'}: no such file or directory",
    ]


# -- rollout ---------------------------------------------------------------------------------------


def test_a_canary_shows_its_split_and_promote_moves_all_traffic(
    gateway: GatewayProcess, client: Client, tmp_path: Path, mlp_dir: Path
) -> None:
    copy = shutil.copytree(mlp_dir, tmp_path / "mlp-v2")
    client.apply(isvc("canary", mlp_dir))
    client.wait_ready("canary", timeout=60)
    try:
        client.apply(isvc("canary", copy, canaryTrafficPercent=30))

        def split() -> dict[str, str] | None:
            (row,) = table(ok(servegate(gateway, "get", "isvc", "canary")))
            return row if row["LATESTREADYREVISION"] == "canary-predictor-00002" else None

        row = until(split, 60, "the canary revision to be ready")
        assert (row["PREV"], row["LATEST"], row["PREVROLLEDOUTREVISION"]) == ("70", "30", "")

        promoted = ok(servegate(gateway, "promote", "canary"))
        assert promoted == "promote: revision canary-predictor-00002 takes 100% of traffic\n"
        (row,) = table(ok(servegate(gateway, "get", "isvc", "canary")))
        assert (row["PREV"], row["LATEST"], row["PREVROLLEDOUTREVISION"]) == (
            "",
            "100",
            "canary-predictor-00001",
        )
    finally:
        client.delete("isvc", "canary")


def test_promote_or_rollback_with_nothing_to_move_exits_1(gateway: GatewayProcess, served: str) -> None:
    promote = servegate(gateway, "promote", served)
    assert (promote.exit_code, promote.stderr) == (
        1,
        "error: revision served-predictor-00001 already takes all traffic\n",
    )
    rollback = servegate(gateway, "rollback", served)
    assert (rollback.exit_code, rollback.stderr) == (
        1,
        "error: there is no previous rolled-out revision to roll back to\n",
    )
    unknown = servegate(gateway, "promote", "no-such-service")
    assert (unknown.exit_code, unknown.stderr) == (1, "error: InferenceService 'no-such-service' not found\n")


# -- predict ---------------------------------------------------------------------------------------


def test_predict_v1_sends_rows_as_instances(gateway: GatewayProcess, served: str) -> None:
    out = json.loads(
        ok(servegate(gateway, "predict", served, "--protocol", "v1", "--data", json.dumps(X.tolist())))
    )
    np.testing.assert_allclose(out["predictions"], EXPECTED, rtol=1e-5, atol=1e-5)


def test_predict_v2_sends_a_request_file_as_it_is(
    gateway: GatewayProcess, served: str, tmp_path: Path
) -> None:
    request = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    out = json.loads(ok(servegate(gateway, "predict", served, "-f", str(tmp_path / "request.json"))))
    (output,) = out["outputs"]
    assert (output["name"], output["shape"]) == ("output", [2, MLP_SIZES[-1]])
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), EXPECTED, rtol=1e-5, atol=1e-5)


def test_predict_v2_builds_the_input_from_rows(gateway: GatewayProcess, served: str) -> None:
    out = json.loads(ok(servegate(gateway, "predict", served, "--data", json.dumps(X[0].tolist()))))
    np.testing.assert_allclose(out["outputs"][0]["data"], EXPECTED[0], rtol=1e-5, atol=1e-5)


def test_predict_over_grpc(gateway: GatewayProcess, served: str) -> None:
    args = ("--protocol", "grpc", "--grpc-url", gateway.grpc_url, "--data", json.dumps(X.tolist()))
    out = json.loads(ok(servegate(gateway, "predict", served, *args)))
    np.testing.assert_allclose(out["output"], EXPECTED, rtol=1e-5, atol=1e-5)


def test_predict_errors_from_the_model_exit_1(gateway: GatewayProcess, served: str) -> None:
    result = servegate(gateway, "predict", served, "--data", "[[1, 2]]")
    assert result.exit_code == 1
    assert result.stderr == "error: input 'input' has shape [1, 2] but the model expects [-1, 8]\n"
    unknown = servegate(gateway, "predict", "nothing-here", "--data", "[1]")
    assert (unknown.exit_code, unknown.stderr) == (
        1,
        "error: model 'nothing-here' is not served by this gateway\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --data and -f/--filename"),
        (("--data", "[1]", "-f", "-"), "give exactly one of --data and -f/--filename"),
        (("--data", "[1,"), "Invalid value for '--data': not valid JSON: Expecting value: line 1 column 4"),
        (("--protocol", "v3", "--data", "[1]"), "Invalid value for '--protocol': 'v3' is not one of"),
    ],
)
def test_bad_predict_arguments_are_usage_errors(
    gateway: GatewayProcess, args: tuple[str, ...], message: str
) -> None:
    result = servegate(gateway, "predict", "served", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_service_that_cannot_load_says_why(gateway: GatewayProcess, client: Client, tmp_path: Path) -> None:
    client.apply(isvc("unloadable", tmp_path / "no-model-here"))
    try:
        with pytest.raises(ServegateError) as caught:
            client.wait_ready("unloadable", timeout=2, poll=0.1)
        assert str(caught.value).startswith(
            "InferenceService 'unloadable' not ready after 2s: PredictorReady: "
        )
        assert "Ready: a component is not ready" in str(caught.value)
        # The gateway answers (UNAVAILABLE over gRPC): that is its message, not an unreachable gateway.
        for protocol in ("v2", "grpc"):
            args = ("--protocol", protocol, "--grpc-url", gateway.grpc_url, "--data", json.dumps(X.tolist()))
            result = servegate(gateway, "predict", "unloadable", *args)
            assert (result.exit_code, result.stderr) == (
                1,
                "error: InferenceService 'unloadable' has no ready revision\n",
            ), protocol
    finally:
        client.delete("isvc", "unloadable")


# -- errors ----------------------------------------------------------------------------------------


def test_an_unreachable_gateway_exits_1_with_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["get", "isvc", "--url", url])
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: cannot reach the gateway at {url} (is `servegate up` running?)\n",
    )


def test_an_unreachable_grpc_port_exits_1_with_a_hint(gateway: GatewayProcess) -> None:
    target = f"127.0.0.1:{free_port()}"
    result = servegate(
        gateway, "predict", "served", "--protocol", "grpc", "--grpc-url", target, "--data", "[1]"
    )
    assert (result.exit_code, result.stderr) == (
        1,
        f"error: cannot reach the gateway at grpc://{target} (is `servegate up` running?)\n",
    )


def test_an_unknown_resource_type_is_a_usage_error(gateway: GatewayProcess) -> None:
    result = servegate(gateway, "get", "pods")
    assert result.exit_code == 2
    assert "Invalid value for 'TYPE': unknown resource type 'pods'; use isvc, tm or ig" in result.stderr
