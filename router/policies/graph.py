"""Runs one request through an InferenceGraph, as KServe's router does, with the calls injected.

Follows `routeStep` in KServe's `cmd/router/main.go`:

- Sequence: steps in order. A step gets the node's input, or with `data: $response` the previous
  step's reply. A step's `condition` is tested on the previous step's reply; when it does not
  match, the node stops there and answers that reply with status 200.
- Switch: the first step whose condition exists in the node's input; none matching ends the graph
  with 404.
- Ensemble: every step at once on the node's input; the reply is a JSON object of the parsed
  replies, keyed by step name (or index, for unnamed steps), status 200.
- Splitter: one step, drawn by weight.
- A step that raises ends the graph with 500, whatever its dependency. A `Hard` step with a
  non-2xx reply ends the graph with that status. A Soft (or unmarked) step's non-2xx reply is used
  like any other: passed on by Switch, Splitter and Sequence (the next `$response`, and the node's
  answer if it is the last step), and combined by Ensemble.

Where this differs from KServe: a failed Hard step ends the whole graph with `{"error": ...}`
naming the step (KServe returns the step's own body and leaves only the current node); a body that
is not JSON where a condition is tested answers 400 (KServe: 404 from a Switch, 500 from a
Sequence); the Splitter draws from [0, 100) (KServe draws from [0, 100] and fails on 100); an
Ensemble takes replies that are any JSON value, not only objects.

Headers are passed unchanged to every call; which ones go on the wire (KServe's
`PROPAGATE_HEADERS` patterns) is the caller's decision.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.policies import gjson
from serving.spec.common import ManifestError
from serving.spec.graph import ROOT_NODE, InferenceGraph, InferenceRouter, InferenceStep

__all__ = ["Caller", "GraphRunner", "StepReply"]

_JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class StepReply:
    """A reply: from one step's service, from a node, or from the whole graph."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


#: Calls a serviceName or serviceUrl step with a body and the request's headers.
Caller = Callable[[InferenceStep, bytes, Mapping[str, str]], Awaitable[StepReply]]


class _GraphError(Exception):
    """Ends the whole graph with `status`: KServe's error return, which every node passes up."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GraphRunner:
    """Runs requests through one graph. The graph must pass `check()`; `call` does the I/O."""

    def __init__(self, graph: InferenceGraph, call: Caller, rng: random.Random | None = None) -> None:
        problems = graph.check()
        if problems:
            raise ManifestError(problems)
        self._nodes = graph.spec.nodes
        self._call = call
        self._rng = rng if rng is not None else random.Random()
        self._conditions = {
            (name, i): gjson.parse(step.condition)
            for name, node in self._nodes.items()
            for i, step in enumerate(node.steps)
            if step.condition
        }
        self._routers = {
            "Sequence": self._sequence,
            "Switch": self._switch,
            "Ensemble": self._ensemble,
            "Splitter": self._splitter,
        }

    async def run(self, body: bytes, headers: Mapping[str, str]) -> StepReply:
        """The graph's reply to one request, starting at the root node. Never raises for a failed step."""
        try:
            reply = await self._node(ROOT_NODE, body, headers)
        except _GraphError as exc:
            return StepReply(exc.status, orjson.dumps({"error": exc.message}), _JSON)
        return StepReply(reply.status, reply.body, _JSON if _is_json(reply.body) else {})

    async def _node(self, name: str, body: bytes, headers: Mapping[str, str]) -> StepReply:
        node = self._nodes[name]
        return await self._routers[node.router_type](name, node, body, headers)

    async def _step(
        self, node: str, index: int, step: InferenceStep, body: bytes, headers: Mapping[str, str]
    ) -> StepReply:
        if step.node_name:
            reply = await self._node(step.node_name, body, headers)
        else:
            try:
                reply = await self._call(step, body, headers)
            except Exception as exc:
                raise _GraphError(500, f"{_describe(node, index, step)} failed: {_reason(exc)}") from exc
        if step.dependency == "Hard" and not reply.ok:
            raise _GraphError(
                reply.status,
                f"{_describe(node, index, step)} is a Hard dependency and answered {reply.status}: "
                f"{_excerpt(reply.body)}",
            )
        return reply

    async def _sequence(
        self, name: str, node: InferenceRouter, body: bytes, headers: Mapping[str, str]
    ) -> StepReply:
        reply: StepReply | None = None
        for i, step in enumerate(node.steps):
            condition = self._conditions.get((name, i))
            # check() keeps conditions off the first step, so a condition always has a reply to test.
            if condition is not None and reply is not None:
                before = f"the reply before {_describe(name, i, step)}"
                if not gjson.get(_document(reply.body, before, 400), condition).exists:
                    return StepReply(200, reply.body)
            data = reply.body if step.data == "$response" and reply is not None else body
            reply = await self._step(name, i, step, data, headers)
        if reply is None:
            raise _GraphError(500, f"Sequence node '{name}' has no steps")
        return reply

    async def _switch(
        self, name: str, node: InferenceRouter, body: bytes, headers: Mapping[str, str]
    ) -> StepReply:
        document = _document(body, f"the input of Switch node '{name}'", 400)
        for i, step in enumerate(node.steps):
            condition = self._conditions.get((name, i))
            if condition is not None and gjson.get(document, condition).exists:
                return await self._step(name, i, step, body, headers)
        raise _GraphError(404, f"no step of Switch node '{name}' matched its condition")

    async def _ensemble(
        self, name: str, node: InferenceRouter, body: bytes, headers: Mapping[str, str]
    ) -> StepReply:
        replies = await asyncio.gather(
            *(self._step(name, i, step, body, headers) for i, step in enumerate(node.steps)),
            return_exceptions=True,
        )
        combined: dict[str, Any] = {}
        for i, (step, reply) in enumerate(zip(node.steps, replies, strict=True)):
            if isinstance(reply, BaseException):
                raise reply  # the first failure in step order, as KServe reads the replies in order
            combined[step.name or str(i)] = _document(
                reply.body, f"the reply of {_describe(name, i, step)}", 500
            )
        return StepReply(200, orjson.dumps(combined))

    async def _splitter(
        self, name: str, node: InferenceRouter, body: bytes, headers: Mapping[str, str]
    ) -> StepReply:
        point = self._rng.randrange(100)
        end = 0
        for i, step in enumerate(node.steps):
            end += step.weight or 0
            if point < end:
                return await self._step(name, i, step, body, headers)
        raise _GraphError(500, f"the weights of Splitter node '{name}' do not sum to 100")


def _document(body: bytes, what: str, status: int) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _GraphError(status, f"{what} is not JSON: {_excerpt(body)}") from None


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def _describe(node: str, index: int, step: InferenceStep) -> str:
    label = f"step '{step.name}'" if step.name else f"step {index}"
    target = ", ".join(f"{kind} '{value}'" for kind, value in step.targets.items())
    return f"{label} of node '{node}' ({target})"


def _reason(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."
