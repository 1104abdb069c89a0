"""TLS end to end: a replica (`servegate model serve`) and a gateway (`servegate up`) started with
--tls-cert/--tls-key, reached over https and gRPC with TLS by httpx, both tritonclients, the SDK and
the CLI, with a CA made at test time; a client without that CA is refused. Also the loopback rules
on real servers: a foreign Host header gets 403, and an exposed server without authentication does
not start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from predictors.examples import make_mlp_onnx, mlp_forward
from serving.auth.tls import TlsFiles
from serving.client import Client, ServegateError
from tests.conftest import MLP_SIZES
from tests.gateway_helpers import mlp_body, mlp_isvc, storage_roots
from tests.servers import ROOT, GatewayProcess, ReplicaProcess, TlsCertificates, make_certificates, until

pytestmark = pytest.mark.integration

ROWS = np.arange(2 * MLP_SIZES[0], dtype=np.float32).reshape(2, MLP_SIZES[0]) / 10


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    """Another CA and certificate, which must not be trusted in place of `certs`."""
    return make_certificates(tmp_path_factory.mktemp("stranger"))


@pytest.fixture(scope="module")
def replica(certs: TlsCertificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    model = make_mlp_onnx(tmp_path_factory.mktemp("model") / "mlp.onnx", MLP_SIZES)
    with ReplicaProcess("--model-name", "mlp", "--model-uri", str(model), tls=certs) as server:
        server.wait_ready()
        yield server


def _expected() -> np.ndarray:
    return mlp_forward(ROWS, MLP_SIZES)


def _v2_body() -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": list(ROWS.shape), "data": ROWS.ravel().tolist()}
        ]
    }


# -- the replica ---------------------------------------------------------------------------------


def test_the_replica_serves_https_to_a_client_with_the_ca(
    replica: ReplicaProcess, certs: TlsCertificates
) -> None:
    assert replica.url.startswith("https://")
    with httpx.Client(base_url=replica.url, verify=certs.context(), trust_env=False) as http:
        response = http.post("/v2/models/mlp/infer", json=_v2_body())
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(output["shape"]), _expected(), rtol=1e-5, atol=1e-5
    )
    assert "https://" in replica.output()


def test_a_client_without_the_ca_is_refused(replica: ReplicaProcess, stranger: TlsCertificates) -> None:
    for verify in (True, stranger.context()):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(replica.url + "/v2/health/live", verify=verify, trust_env=False)
    # Plain HTTP to the TLS port gets no answer the client can read.
    with pytest.raises(httpx.TransportError):
        httpx.get(replica.url.replace("https://", "http://") + "/v2/health/live", trust_env=False)


def test_the_replica_refuses_a_foreign_host_header(replica: ReplicaProcess, certs: TlsCertificates) -> None:
    with httpx.Client(base_url=replica.url, verify=certs.context(), trust_env=False) as http:
        refused = http.get("/v2/health/live", headers={"host": "evil.example"})
        allowed = http.get("/v2/health/live", headers={"host": f"localhost:{replica.http_port}"})
    assert refused.status_code == 403
    assert "DNS rebinding" in refused.json()["error"]
    assert allowed.status_code == 200


def test_tritonclient_http_over_tls(replica: ReplicaProcess, certs: TlsCertificates) -> None:
    client = httpclient.InferenceServerClient(
        replica.url.removeprefix("https://"),
        ssl=True,
        ssl_options={"ca_certs": str(certs.ca)},
    )
    try:
        assert client.is_server_live()
        tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=True)
        result = client.infer("mlp", [tensor])
        np.testing.assert_allclose(result.as_numpy("output"), _expected(), rtol=1e-5, atol=1e-5)
    finally:
        client.close()


def test_tritonclient_grpc_over_tls(replica: ReplicaProcess, certs: TlsCertificates) -> None:
    with grpcclient.InferenceServerClient(
        replica.grpc_url, ssl=True, root_certificates=str(certs.ca)
    ) as client:
        assert client.is_server_live()
        tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("mlp", [tensor])
        np.testing.assert_allclose(result.as_numpy("output"), _expected(), rtol=1e-5, atol=1e-5)


def test_grpc_without_the_ca_or_without_tls_fails(replica: ReplicaProcess, stranger: TlsCertificates) -> None:
    attempts = [
        grpcclient.InferenceServerClient(replica.grpc_url, ssl=True, root_certificates=str(stranger.ca)),
        grpcclient.InferenceServerClient(replica.grpc_url),
    ]
    for client in attempts:
        with client, pytest.raises(InferenceServerException):
            client.is_server_live(client_timeout=5.0)


def test_the_sdk_predicts_over_grpc_with_tls(replica: ReplicaProcess, certs: TlsCertificates) -> None:
    with Client(replica.url, ca_cert=certs.ca) as client:
        result = client.predict("mlp", ROWS.tolist(), protocol="grpc", grpc_url=replica.grpc_url)
        np.testing.assert_allclose(np.array(result["output"]), _expected(), rtol=1e-5, atol=1e-5)
        output = client.predict("mlp", ROWS.tolist(), protocol="v2")["outputs"][0]
        np.testing.assert_allclose(
            np.array(output["data"]).reshape(output["shape"]), _expected(), rtol=1e-5, atol=1e-5
        )


def test_workers_serve_tls_too(certs: TlsCertificates, tmp_path: Path) -> None:
    model = make_mlp_onnx(tmp_path / "mlp.onnx", MLP_SIZES)
    args = ("--model-name", "mlp", "--model-uri", str(model), "--workers", "2", "--drain-timeout", "5")
    with ReplicaProcess(*args, tls=certs) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, verify=certs.context(), trust_env=False) as http:
            for _ in range(4):
                assert http.post("/v2/models/mlp/infer", json=_v2_body()).status_code == 200
        with grpcclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(certs.ca)
        ) as grpc:
            # Each worker loads the model itself: the one this connection reached may still be at it.
            until(lambda: grpc.is_model_ready("mlp"), 30, "the gRPC worker's model to be ready")
        assert server.stop() == 0, server.output()[-5000:]


def test_the_sdk_names_an_unverifiable_certificate(
    replica: ReplicaProcess, stranger: TlsCertificates
) -> None:
    with (
        Client(replica.url, ca_cert=stranger.ca) as client,
        pytest.raises(ServegateError, match="certificate"),
    ):
        client.predict("mlp", ROWS.tolist(), protocol="v2")


# -- the CLI's refusals ----------------------------------------------------------------------------


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "serving",
        "model",
        "serve",
        "--model-name",
        "m",
        "--model-uri",
        "m.onnx",
    ]
    return subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_model_serve_on_every_interface_without_authentication_does_not_start() -> None:
    result = _serve("--host", "0.0.0.0")
    assert result.returncode == 2
    assert "--insecure" in result.stderr and "0.0.0.0" in result.stderr


def test_model_serve_with_half_a_tls_pair_does_not_start(
    certs: TlsCertificates, stranger: TlsCertificates
) -> None:
    result = _serve("--tls-cert", str(certs.cert))
    assert result.returncode == 2 and "--tls-cert and --tls-key together" in result.stderr
    result = _serve("--tls-cert", str(certs.cert), "--tls-key", str(stranger.key))
    assert result.returncode == 2 and "cannot use --tls-cert" in result.stderr


# -- the gateway -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    certs: TlsCertificates, tmp_path_factory: pytest.TempPathFactory, model_repo: Path
) -> Iterator[GatewayProcess]:
    state = tmp_path_factory.mktemp("gateway") / "state"
    roots = storage_roots(state, model_repo)
    server = GatewayProcess(state, "--no-auth", "--drain-timeout", "5", *roots, tls=certs)
    try:
        server.wait_live()
        yield server
    finally:
        assert server.stop() == 0, server.output()[-5000:]


def test_the_sdk_lists_services_over_https(gateway: GatewayProcess, certs: TlsCertificates) -> None:
    with Client(gateway.url, ca_cert=certs.ca) as client:
        assert client.list("inferenceservices") == []
    with Client(gateway.url) as client, pytest.raises(ServegateError, match="certificate"):
        client.list("inferenceservices")


def test_the_cli_takes_a_ca_cert(
    gateway: GatewayProcess, certs: TlsCertificates, stranger: TlsCertificates
) -> None:
    from serving.cli.main import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["get", "isvc", "-o", "json", "--url", gateway.url, "--ca-cert", str(certs.ca)])
    assert ok.exit_code == 0, ok.output
    from_env = runner.invoke(
        cli, ["get", "isvc", "-o", "json", "--url", gateway.url], env={"SERVEGATE_CA_CERT": str(certs.ca)}
    )
    assert from_env.exit_code == 0, from_env.output
    refused = runner.invoke(cli, ["get", "isvc", "--url", gateway.url, "--ca-cert", str(stranger.ca)])
    assert refused.exit_code == 1 and "certificate" in refused.output


def test_a_transformer_calls_its_predictor_through_the_gateway_over_tls(
    gateway: GatewayProcess, certs: TlsCertificates, model_repo: Path
) -> None:
    # The transformer's replica calls the gateway back over https, trusting exactly its certificate.
    transformer = {
        "model": {"modelFormat": {"name": "python"}, "storageUri": "tests.gateway_models:ScaleAndLabel"}
    }
    with Client(gateway.url, ca_cert=certs.ca, timeout=120) as client:
        client.apply(mlp_isvc("tls-scaled", model_repo, transformer=transformer))
        client.wait_ready("tls-scaled", timeout=120)
        x = np.random.default_rng(0).random((2, MLP_SIZES[0]), dtype=np.float32)
        answer = client.predict("tls-scaled", mlp_body(x * 255.0))
        client.delete("inferenceservices", "tls-scaled")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["output"]["shape"] == [2, MLP_SIZES[-1]] and "label" in outputs


def test_the_gateway_grpc_health_over_tls(gateway: GatewayProcess, certs: TlsCertificates) -> None:
    with grpcclient.InferenceServerClient(
        gateway.grpc_url, ssl=True, root_certificates=str(certs.ca)
    ) as client:
        assert client.is_server_live()
        assert client.is_server_ready()


def test_the_gateway_refuses_a_foreign_host_header(gateway: GatewayProcess, certs: TlsCertificates) -> None:
    with httpx.Client(base_url=gateway.url, verify=certs.context(), trust_env=False) as http:
        assert http.get("/v2/health/live", headers={"host": "evil.example"}).status_code == 403
        assert (
            http.get("/api/v1/inferenceservices", headers={"host": "rebind.evil.example"}).status_code == 403
        )
        assert http.get("/v2/health/live").status_code == 200


def test_the_gateway_can_reach_its_own_metrics_by_its_certificate(
    gateway: GatewayProcess, certs: TlsCertificates, stranger: TlsCertificates
) -> None:
    # What the autoscaler does: its own certificate, pinned, by whatever address it listens on.
    pinned = TlsFiles(certs.cert, certs.key).self_context()
    response = httpx.get(gateway.url + "/metrics", verify=pinned, trust_env=False)
    assert response.status_code == 200
    other = TlsFiles(stranger.cert, stranger.key).self_context()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(gateway.url + "/metrics", verify=other, trust_env=False)
    assert "cannot scrape" not in gateway.output()


def test_the_gateway_logs_https(gateway: GatewayProcess) -> None:
    assert f"https://127.0.0.1:{gateway.http_port}" in gateway.output()
