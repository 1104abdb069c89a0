"""`serving.Client`: the Python SDK for a running `servegate up` gateway.

It speaks the control API under `/api/v1` (apply, get, list, delete, promote, rollback, events,
rollouts; pipeline runs and lineage), the model registry under `/api/registry`
(`client.registry`), and the data plane (KServe V1, Open Inference Protocol V2 over REST and
gRPC), like the CLI does.

    with Client("http://127.0.0.1:8080") as client:
        client.apply_files(["iris.yaml"])
        client.wait_ready("iris")
        client.predict("iris", [[5.1, 3.5, 1.4, 0.2]])

Every error the gateway reports, and a gateway that cannot be reached, is a `ServegateError`.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, urlsplit

import httpx

from serving.auth.tls import CA_CERT_ENV, ca_cert_from_env, client_context
from serving.spec.common import Problem

if TYPE_CHECKING:
    from serving.registry.client import RegistryClient

__all__ = [
    "DEFAULT_URL",
    "Applied",
    "ApplyResult",
    "Client",
    "GatewayUnreachable",
    "Problem",
    "ServegateError",
    "bearer_headers",
    "condition_status",
    "default_url",
    "gateway_http",
    "kind_of",
    "not_ready",
    "plural_of",
    "send",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_GRPC_PORT = 8081
#: how gRPC words a channel that cannot connect (its status, UNAVAILABLE, is not enough on its own).
_GRPC_UNREACHABLE = ("failed to connect", "errors resolving", "dns resolution failed", "connection refused")
#: gRPC refusals as the HTTP status REST would answer, so that callers (the CLI) treat both alike.
_GRPC_STATUS = {"StatusCode.UNAUTHENTICATED": 401, "StatusCode.PERMISSION_DENIED": 403}

#: URL plural -> manifest kind (the control API's resource types).
_KINDS = {
    "inferenceservices": "InferenceService",
    "trainedmodels": "TrainedModel",
    "inferencegraphs": "InferenceGraph",
}
#: every accepted spelling, lower-cased -> URL plural.
_ALIASES = {
    **{alias: plural for plural in _KINDS for alias in (plural, plural[:-1])},
    "isvc": "inferenceservices",
    "isvcs": "inferenceservices",
    "tm": "trainedmodels",
    "ig": "inferencegraphs",
}


def plural_of(kind: str) -> str:
    """The control API's plural for a kind: `isvc`, `inferenceservice(s)`, `InferenceService`, `tm`,
    `trainedmodel(s)`, `ig`, `inferencegraph(s)`. Raises ValueError for anything else."""
    try:
        return _ALIASES[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown resource type '{kind}'; use isvc, tm or ig (or the kind's name)") from None


def kind_of(kind: str) -> str:
    """The manifest kind (`InferenceService`, ...) for any spelling `plural_of` accepts."""
    return _KINDS[plural_of(kind)]


def default_url() -> str:
    """The gateway URL when none is given: `SERVEGATE_URL`, else http://127.0.0.1:8080."""
    return os.environ.get("SERVEGATE_URL") or DEFAULT_URL


# The SDK's own (not serving.spec's): reading errors off the wire needs no pydantic.
class ServegateError(Exception):
    """An error the gateway answered (`status` is its HTTP status), or one on the way to it (`status`
    is None). A rejected apply lists every reason in `problems`."""

    def __init__(self, message: str, status: int | None = None, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problems = list(problems)


class GatewayUnreachable(ServegateError):
    """No gateway answers at `url` (connection refused, unknown host, connect timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the gateway at {url}: {reason}")
        self.url = url


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    name: str
    #: created | configured | unchanged (kubectl's words).
    action: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} {self.action}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    results: list[Applied] = field(default_factory=list)
    #: fields the gateway kept but does not act on, one line each.
    warnings: list[str] = field(default_factory=list)


class Client:
    """A client for one gateway over one HTTP connection pool; close it, or use it as a context manager.

    `url`: the gateway (default `SERVEGATE_URL`, else http://127.0.0.1:8080); `timeout`: seconds
    each HTTP request may take. `transport` replaces the network (tests pass `httpx.MockTransport`).
    `ca_cert`: the CA bundle (PEM) an https gateway's certificate is checked against (default
    `SERVEGATE_CA_CERT`, else the system's); gRPC uses TLS too when it is given or the URL is https.
    `token`, `token_file`: the bearer token sent with every request (REST and gRPC); without
    either, `SERVEGATE_TOKEN`, `SERVEGATE_TOKEN_FILE`, or for a gateway on this machine the admin
    token of `servegate up`'s state dir (`serving._credentials.resolve_token`).
    """

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 30.0,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_cert: str | Path | None = None,
    ) -> None:
        self.timeout = timeout
        self.ca_cert = ca_cert_from_env(ca_cert)
        self._token, self._token_file = token, token_file
        self._http = gateway_http(
            url, timeout, token=token, token_file=token_file, transport=transport, ca_cert=self.ca_cert
        )
        self.url = str(self._http.base_url).rstrip("/")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @functools.cached_property
    def registry(self) -> RegistryClient:
        """The gateway's model registry (`/api/registry`): `serving.registry.Registry`'s methods."""
        from serving.registry.client import RegistryClient
        from serving.registry.types import default_actor

        return RegistryClient(http=self._http, actor=default_actor())

    # -- control API ------------------------------------------------------------------------------

    def apply(
        self, manifests: str | dict[str, Any] | Sequence[dict[str, Any]], source: str | None = None
    ) -> ApplyResult:
        """Apply manifests, all or nothing: YAML or JSON text, one object, or a list of objects.

        `source` names the text in problem paths. Raises ServegateError with every problem when
        any manifest is rejected; then nothing is applied.
        """
        if isinstance(manifests, str):
            text = manifests
        else:
            import yaml

            documents = [manifests] if isinstance(manifests, dict) else list(manifests)
            text = yaml.safe_dump_all(documents, sort_keys=False)
        params = {"source": source} if source else None
        body = self._call("POST", "/api/v1/apply", content=text.encode(), params=params)
        return ApplyResult(
            [Applied(r["kind"], r["name"], r["action"]) for r in body.get("results", [])],
            list(body.get("warnings", [])),
        )

    def apply_files(self, paths: str | Path | Iterable[str | Path]) -> ApplyResult:
        """Apply manifest files, folders (their *.yaml, *.yml, *.json) and `-` (stdin) in one request,
        so resources in one file may name those in another and a problem anywhere applies nothing."""
        from serving.spec import ManifestError, parse_documents, read_manifest_paths

        names = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
        sources: list[tuple[str, str]] = []
        problems: list[Any] = []
        for name in names:  # one at a time, so every unreadable path is reported, not just the first
            try:
                sources += read_manifest_paths([name])
            except ManifestError as exc:
                problems += exc.problems
        if len(sources) == 1 and not problems:
            # One file goes as written: the gateway's problems then name its lines and documents.
            return self.apply(sources[0][1], source=sources[0][0])
        documents: list[dict[str, Any]] = []
        for source, text in sources:
            try:
                documents += parse_documents(text, source)
            except ManifestError as exc:
                problems += exc.problems
        if problems:
            count = len(problems)
            raise ServegateError(
                f"{count} problem{'s' * (count != 1)} reading the manifests; nothing applied",
                problems=[Problem(p.path, p.message) for p in problems],
            )
        # Several files: their documents as one `kind: List`, which the gateway expands.
        listing = {"apiVersion": "v1", "kind": "List", "items": documents}
        return self.apply(json.dumps(listing), source=", ".join(source for source, _ in sources))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One resource: its manifest with `metadata.generation` and (InferenceService) `status`."""
        return self._call("GET", f"/api/v1/{plural_of(kind)}/{_segment(name)}")

    def list(self, kind: str) -> builtins.list[dict[str, Any]]:
        """Every resource of a kind, by name."""
        return list(self._call("GET", f"/api/v1/{plural_of(kind)}").get("items", []))

    def delete(self, kind: str, name: str) -> None:
        """Delete a resource (an InferenceService's replicas are stopped)."""
        self._call("DELETE", f"/api/v1/{plural_of(kind)}/{_segment(name)}")

    def promote(self, name: str) -> str:
        """Give the canary revision of an InferenceService all traffic; returns the gateway's message."""
        return str(self._call("POST", f"/api/v1/inferenceservices/{_segment(name)}/promote")["message"])

    def rollback(self, name: str) -> str:
        """Pin all traffic to the previous rolled-out revision; returns the gateway's message."""
        return str(self._call("POST", f"/api/v1/inferenceservices/{_segment(name)}/rollback")["message"])

    def rollout_status(self, name: str) -> dict[str, Any]:
        """The rollout of an InferenceService with a rollout strategy: canary and stable revisions,
        state, stages (the current one `stage`, counted from 0), failures, and each check's verdict."""
        return self._call("GET", f"/api/v1/inferenceservices/{_segment(name)}/rollout")

    def rollout_pause(self, name: str) -> str:
        """Hold an InferenceService's running rollout at its stage; returns the gateway's message."""
        return self._rollout("pause", name)

    def rollout_resume(self, name: str) -> str:
        """Go on with a paused rollout (its stage's hold starts again); returns the gateway's message."""
        return self._rollout("resume", name)

    def rollout_abort(self, name: str) -> str:
        """Stop a rollout and send all traffic back to the stable revision; returns the gateway's message."""
        return self._rollout("abort", name)

    def _rollout(self, command: str, name: str) -> str:
        path = f"/api/v1/inferenceservices/{_segment(name)}/rollout/{command}"
        return str(self._call("POST", path)["message"])

    def events(self, kind: str, name: str) -> builtins.list[dict[str, Any]]:
        """A resource's recent events, oldest first: {time (epoch seconds), type, reason, message}."""
        path = f"/api/v1/{plural_of(kind)}/{_segment(name)}/events"
        return list(self._call("GET", path).get("items", []))

    def wait_ready(
        self,
        name: str,
        timeout: float = 120.0,
        poll: float = 0.25,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll an InferenceService until its `Ready` condition is True; returns it then.

        `on_poll` sees the InferenceService after every poll (the CLI shows progress with it).
        Raises ServegateError on timeout, naming what is not ready, or when the service is unknown.
        """
        deadline = time.monotonic() + timeout
        while True:
            isvc = self.get("inferenceservices", name)
            if on_poll is not None:
                on_poll(isvc)
            if condition_status(isvc, "Ready") == "True":
                return isvc
            if time.monotonic() >= deadline:
                raise ServegateError(
                    f"InferenceService '{name}' not ready after {timeout:.3g}s: {'; '.join(not_ready(isvc))}"
                )
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))

    # -- pipelines (read-only) --------------------------------------------------------------------

    def pipeline_runs(self, limit: int = 50, pipeline: str | None = None) -> builtins.list[dict[str, Any]]:
        """The newest `limit` (at most 500) pipeline runs the gateway's metadata store holds, of
        `pipeline` if given: id, pipeline, status, executor, started, finished, duration_s, steps."""
        params: dict[str, Any] = {"limit": limit} | ({"pipeline": pipeline} if pipeline else {})
        return list(self._call("GET", "/api/v1/pipelines/runs", params=params).get("items", []))

    def pipeline_run(self, run_id: str) -> dict[str, Any]:
        """One run (or the one whose id starts with `run_id`) with its steps and DAG edges."""
        return self._call("GET", f"/api/v1/pipelines/runs/{_segment(run_id)}")

    def lineage(self, target: str, direction: str = "up") -> dict[str, Any]:
        """The lineage graph of a registry version (NAME@VERSION), an artifact sha256 or a run id,
        "up" to its data or "down" to what came of it, with the services serving its versions."""
        return self._call("GET", "/api/v1/lineage", params={"target": target, "direction": direction})

    # -- tokens (admin) ---------------------------------------------------------------------------

    def tokens(self) -> builtins.list[dict[str, Any]]:
        """Every token, by name: name, role, namespaces, services, created, expires, createdBy (no
        secrets)."""
        return list(self._call("GET", "/api/v1/tokens").get("items", []))

    def create_token(
        self,
        name: str,
        role: str,
        *,
        namespaces: Iterable[str] = (),
        services: Iterable[str] = (),
        expires: str | None = None,
    ) -> dict[str, Any]:
        """Make a token; the answer's `token` is its secret, shown this once. `role`: viewer,
        predictor, deployer or admin; `namespaces` / `services`: the only ones it may act on (none:
        all); `expires`: a duration such as `30d` (None: never)."""
        body = {
            "name": name,
            "role": role,
            "namespaces": list(namespaces),
            "services": list(services),
            "expires": expires,
        }
        return self._call("POST", "/api/v1/tokens", json=body)

    def revoke_token(self, name: str) -> dict[str, Any]:
        """Revoke a token: it stops working at once. Returns what it was."""
        return self._call("DELETE", f"/api/v1/tokens/{_segment(name)}")

    # -- data plane -------------------------------------------------------------------------------

    def predict(
        self, name: str, data: Any, protocol: str = "v2", grpc_url: str | None = None
    ) -> dict[str, Any]:
        """Run one inference request on model `name` and return the response.

        - `v1`: a dict is sent as the body; anything else as `{"instances": data}`.
        - `v2`: a dict is sent as the V2 request; an array (numpy or nested lists) becomes the
          model's only input, named and typed from the model's metadata. An array with one
          dimension less than the input gets a batch dimension of 1.
        - `grpc`: the same, over V2 gRPC to `grpc_url` (default `SERVEGATE_GRPC_URL`, else the
          gateway's host on port 8081); returns `{output name: nested list}`.
        """
        if protocol == "v1":
            body = data if isinstance(data, dict) else {"instances": _plain(data)}
            return self._call("POST", f"/v1/models/{_segment(name)}:predict", json=body)
        if protocol == "v2":
            body = data if isinstance(data, dict) else {"inputs": [self._v2_input(name, data)]}
            return self._call("POST", f"/v2/models/{_segment(name)}/infer", json=body)
        if protocol == "grpc":
            return self._predict_grpc(name, data, grpc_url or self._grpc_url())
        raise ValueError(f"unknown protocol '{protocol}'; use v1, v2 or grpc")

    def model_metadata(self, name: str) -> dict[str, Any]:
        """The V2 model metadata: name, versions, platform, inputs and outputs with datatypes and shapes."""
        return self._call("GET", f"/v2/models/{_segment(name)}")

    def _v2_input(self, name: str, data: Any) -> dict[str, Any]:
        spec = _only_input(name, self.model_metadata(name))
        array = _as_array(data, spec)
        return {
            "name": spec["name"],
            "datatype": spec["datatype"],
            "shape": list(array.shape),
            "data": _flat(array, spec["datatype"]),
        }

    def _grpc_url(self) -> str:
        configured = os.environ.get("SERVEGATE_GRPC_URL")
        if configured:
            return configured
        host = urlsplit(self.url).hostname or "127.0.0.1"
        return f"[{host}]:{DEFAULT_GRPC_PORT}" if ":" in host else f"{host}:{DEFAULT_GRPC_PORT}"

    def _predict_grpc(self, name: str, data: Any, grpc_url: str) -> dict[str, Any]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        scheme, _, target = grpc_url.rpartition("://")
        # TLS when asked for by the address, by an https gateway, or by a CA to check it with.
        tls = scheme in ("grpcs", "https") or self.url.startswith("https://") or self.ca_cert is not None
        ca = str(self.ca_cert) if self.ca_cert is not None else None
        tensors, wanted = _v2_tensors(data) if isinstance(data, dict) else ([], [])
        # Found again for the gRPC host: the admin token file is for this machine's gateway only.
        headers = bearer_headers(self._token, f"grpc://{target}", token_file=self._token_file) or None
        try:
            with grpcclient.InferenceServerClient(target, ssl=tls, root_certificates=ca) as triton:
                if not isinstance(data, dict):
                    metadata = triton.get_model_metadata(
                        name, headers=headers, as_json=True, client_timeout=self.timeout
                    )
                    spec = _only_input(name, metadata)
                    tensors = [(spec["name"], spec["datatype"], _as_array(data, spec))]
                inputs = []
                for tensor_name, datatype, array in tensors:
                    tensor = grpcclient.InferInput(tensor_name, list(array.shape), datatype)
                    tensor.set_data_from_numpy(array)
                    inputs.append(tensor)
                outputs = [grpcclient.InferRequestedOutput(o) for o in wanted] or None
                result = triton.infer(
                    name, inputs, outputs=outputs, headers=headers, client_timeout=self.timeout
                )
                names = wanted or [o["name"] for o in result.get_response(as_json=True).get("outputs", [])]
                return {o: _output_list(result.as_numpy(o)) for o in names}
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            # Only gRPC's own connection errors: the gateway also answers UNAVAILABLE itself (a
            # service with no ready revision), and that must read as the gateway's message.
            if any(sign in message.lower() for sign in _GRPC_UNREACHABLE):
                raise GatewayUnreachable(f"{'grpcs' if tls else 'grpc'}://{target}", message) from None
            raise ServegateError(message, _GRPC_STATUS.get(str(exc.status()))) from None

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response, body = send(self._http, self.url, method, path, **kwargs)
        if response.is_success:
            if not isinstance(body, dict):
                raise ServegateError(
                    f"{method} {path}: the gateway's answer is not a JSON object", response.status_code
                )
            return body
        raise _error_from(response, body)


def _error_from(response: httpx.Response, body: Any) -> ServegateError:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        problems = [
            Problem(str(p.get("path", "")), str(p.get("message", "")))
            for p in body.get("problems") or []
            if isinstance(p, dict)
        ]
        return ServegateError(body["error"], response.status_code, problems)
    text = response.text.strip()[:500] or response.reason_phrase
    return ServegateError(f"HTTP {response.status_code}: {text}", response.status_code)


def condition_status(isvc: dict[str, Any], type_: str) -> str:
    """The status ("True", "False") of one of an InferenceService's conditions; "Unknown" when absent."""
    for condition in (isvc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("status", "Unknown"))
    return "Unknown"


def not_ready(isvc: dict[str, Any]) -> list[str]:
    """Why an InferenceService is not ready: `TYPE: message` for each condition that is not True."""
    conditions = (isvc.get("status") or {}).get("conditions")
    if not conditions:
        return ["no status yet"]
    return [
        f"{c.get('type')}: {c.get('message') or c.get('reason') or 'not ready'}"
        for c in conditions
        if c.get("status") != "True"
    ]


def _segment(name: str) -> str:
    return quote(name, safe="")


def _only_input(name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    inputs = metadata.get("inputs") or []
    if len(inputs) != 1:
        raise ServegateError(
            f"model '{name}' has {len(inputs)} inputs; pass a V2 request dict naming each of them"
        )
    return dict(inputs[0])


def _v2_tensors(request: dict[str, Any]) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """A V2 JSON request's inputs as (name, datatype, array) and the output names it asks for."""
    import numpy as np

    from serving.protocol.datatypes import DATATYPES

    try:
        tensors = [
            (t["name"], t["datatype"], np.asarray(t["data"], DATATYPES[t["datatype"]]).reshape(t["shape"]))
            for t in request.get("inputs", [])
        ]
        return tensors, [o["name"] for o in request.get("outputs", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ServegateError(
            f"not a V2 request (inputs need name, datatype, shape and data): {exc!r}"
        ) from None


def _as_array(data: Any, spec: dict[str, Any]) -> Any:
    """`data` as a numpy array of the input's datatype; one dimension short gets a batch of 1."""
    import numpy as np

    from serving.protocol.datatypes import DATATYPES

    datatype = spec.get("datatype", "")
    if datatype not in DATATYPES:
        raise ServegateError(
            f"input '{spec.get('name')}' has datatype '{datatype}', which this client cannot build"
        )
    try:
        array = np.asarray(data, dtype=DATATYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise ServegateError(f"cannot make a {datatype} tensor of the data: {exc}") from None
    shape = spec.get("shape") or []
    if shape and array.ndim == len(shape) - 1:
        array = array[np.newaxis, ...]
    return array


def _flat(array: Any, datatype: str) -> list[Any]:
    import numpy as np

    if datatype == "BF16":
        array = array.astype(np.float32)
    if datatype == "BYTES":
        return [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel().tolist()]
    return array.ravel().tolist()


def _plain(data: Any) -> Any:
    """numpy arrays (and their scalars) as plain lists and numbers, ready for JSON."""
    tolist = getattr(data, "tolist", None)
    return tolist() if callable(tolist) else data


def _output_list(array: Any) -> Any:
    """A gRPC output tensor as nested lists, its values as the REST answers print them: float16/32
    in their shortest decimal form (4.35534, not 4.355340003967285), BYTES as text."""
    import numpy as np

    if array.dtype in (np.float16, np.float32):
        return array.astype(str).astype(np.float64).tolist()
    if array.dtype == object:
        return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _text(item: Any) -> Any:
    return item.decode(errors="backslashreplace") if isinstance(item, bytes) else item


def gateway_http(
    url: str | None,
    timeout: float,
    *,
    token: str | None = None,
    token_file: str | Path | None = None,
    transport: httpx.BaseTransport | None = None,
    ca_cert: str | Path | None = None,
) -> httpx.Client:
    """The HTTP client every SDK client of a gateway uses: `url` (default `SERVEGATE_URL`, http://
    when no scheme is given), certificates checked against `ca_cert` (or `SERVEGATE_CA_CERT`), and
    the caller's token on every request."""
    url = (url or default_url()).rstrip("/")
    url = url if "://" in url else f"http://{url}"
    try:
        verify = client_context(ca_cert_from_env(ca_cert))
    except ValueError as exc:
        raise ServegateError(str(exc)) from None
    return httpx.Client(
        base_url=url,
        timeout=timeout,
        transport=transport,
        verify=verify,
        headers=bearer_headers(token, url, token_file=token_file),
    )


def bearer_headers(token: str | None, url: str, *, token_file: str | Path | None = None) -> dict[str, str]:
    """`{"authorization": "Bearer <token>"}` for the token `resolve_token` finds for `url`, else {}.

    A token file that cannot be used (readable by others, empty) is a ServegateError saying why.
    """
    from serving._credentials import CredentialsError, resolve_token

    try:
        found = resolve_token(token, url, token_file=token_file)
    except CredentialsError as exc:
        raise ServegateError(str(exc)) from None
    return {"authorization": f"Bearer {found}"} if found else {}


def _certificate_refused(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under a connection error, if that is what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def send(
    http: httpx.Client, base_url: str, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, Any]:
    """One request to the gateway, and its body parsed as JSON (None when it is not JSON).

    A gateway that cannot be reached is GatewayUnreachable; a timeout or a broken connection is a
    ServegateError naming the request. Every client of the gateway's APIs sends through here.
    """
    try:
        response = http.request(method, path, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if (refused := _certificate_refused(exc)) is not None:
            raise ServegateError(
                f"the gateway at {base_url} has a certificate that cannot be verified "
                f"({refused.verify_message}); give the CA that issued it with --ca-cert or {CA_CERT_ENV}"
            ) from None
        raise GatewayUnreachable(base_url, str(exc) or type(exc).__name__) from None
    except httpx.TimeoutException:
        limit = http.timeout.read
        after = f" after {limit:g}s" if limit is not None else ""
        raise ServegateError(f"{method} {base_url}{path} timed out{after}") from None
    except httpx.TransportError as exc:
        raise ServegateError(f"{method} {base_url}{path} failed: {exc}") from None
    try:
        return response, response.json()
    except ValueError:
        return response, None
