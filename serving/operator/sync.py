"""The operator's sync loop: KServe's objects in the cluster -> the gateway, and the gateway's status
back onto them.

One thread per kind lists, then watches from the list's resourceVersion (a dropped connection goes on
from the last version seen, a 410 Gone lists again) and hands every event to the event loop, which
keeps the latest copy of each object and a set of the objects to look at again. One worker looks at
them one at a time:

- an object that is not being deleted gets the finalizer, then goes to the gateway's control API when
  its generation has not been applied yet; a spec the gateway refuses becomes a `Ready=False,
  reason=InvalidSpec` condition naming each problem's field;
- an object being deleted is deleted from the gateway (when the gateway's object of that name lives
  in the same namespace), then loses the finalizer;
- every `resync_s` seconds (and after each apply), each object's status is read from the gateway and
  merge-patched onto the object's status subresource when it changed; a refused spec is tried again
  (what it names may exist now), and an object the gateway lost is applied again.

Failures (an API or gateway that cannot be reached, a missing permission) are logged once per
distinct message and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from serving.client import Client, Problem, ServegateError
from serving.controller.status import rfc3339
from serving.engines.kubernetes.api import KubernetesUnavailable
from serving.engines.kubernetes.informer import BACKOFF, Reporter, list_then_watch
from serving.operator.kube import KINDS, Conflict, Kind, OperatorApi
from serving.operator.status import FINALIZER, cr_status, gateway_manifest, invalid_status, merge_patch

__all__ = ["Syncer"]

log = logging.getLogger(__name__)

#: seconds a watch request lasts before it is made again (the server may end it sooner).
_WATCH_S = 300
#: what the log calls the gateway.
_GATEWAY = "gateway"
#: what a gateway that refuses the operator's token needs.
_TOKEN_HINT = "the operator needs an admin token of the gateway: --token-file, or SERVEGATE_TOKEN"


class Key(NamedTuple):
    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Applied:
    """The gateway took the object's spec at `generation`."""

    generation: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The gateway refused the object's spec at `generation`, for `problems`, since `since` (RFC 3339)."""

    generation: int
    problems: tuple[Problem, ...]
    since: str


@dataclass
class _State:
    """What the worker knows; touched only on the event loop."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[Key, Applied | Refused] = field(default_factory=dict)
    #: objects to look at again, in arrival order (a dict as an ordered set).
    dirty: dict[Key, None] = field(default_factory=dict)
    failures: dict[Key, int] = field(default_factory=dict)
    #: refused objects to apply again although their generation did not change.
    reapply: set[Key] = field(default_factory=set)
    listed: set[Kind] = field(default_factory=set)


class Syncer:
    """Syncs KServe's objects in `namespace` (None: every namespace) to the gateway behind `gateway`
    until cancelled. `synced` turns true once every kind was listed and everything listed was looked at."""

    def __init__(
        self, api: OperatorApi, gateway: Client, namespace: str | None, resync_s: float = 5.0
    ) -> None:
        self._api = api.sibling()
        self._watch_apis = {kind: api.sibling() for kind in KINDS}
        self._gateway = gateway
        self._namespace = namespace
        self.resync_s = resync_s
        self.synced = False
        self._state = _State()
        self._wake = asyncio.Event()
        self._report = Reporter()

    async def run(self) -> None:
        """Watch and sync until cancelled; the watch threads end with it."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def emit(kind: Kind, event: str, payload: Any) -> None:
            try:
                loop.call_soon_threadsafe(self._on_event, kind, event, payload)
            except RuntimeError:  # the loop has closed: this watch outlived its syncer
                stop.set()

        threads = [
            threading.Thread(
                target=self._watch, args=(kind, emit, stop), name=f"watch-{kind.plural}", daemon=True
            )
            for kind in KINDS
        ]
        for thread in threads:
            thread.start()
        where = f"namespace {self._namespace}" if self._namespace else "every namespace"
        log.info("syncing InferenceServices, TrainedModels and InferenceGraphs in %s", where)
        try:
            await self._work()
        finally:
            stop.set()
            for api in self._watch_apis.values():
                api.interrupt()
            self.synced = False

    # -- watching (one thread per kind) --------------------------------------------------------------

    def _watch(self, kind: Kind, emit: Callable[[Kind, str, Any], None], stop: threading.Event) -> None:
        api = self._watch_apis[kind]
        list_then_watch(
            lambda: api.list_objects(kind, self._namespace),
            lambda version: api.watch_objects(kind, self._namespace, version, _WATCH_S),
            lambda items: emit(kind, "LISTED", items),
            lambda event, obj: emit(kind, event, obj),
            stop,
            what=f"watching {kind.plural}",
            report=self._report,
        )

    def _on_event(self, kind: Kind, event: str, payload: Any) -> None:
        state = self._state
        if event == "LISTED":
            listed = {_key(kind, obj): obj for obj in payload}
            for key in [k for k in state.objects if k.kind == kind and k not in listed]:
                del state.objects[key]  # deleted while the watch was away
                self._mark(key)
            for key, obj in listed.items():
                state.objects[key] = obj
                self._mark(key)
            state.listed.add(kind)
        elif event in ("ADDED", "MODIFIED", "DELETED"):
            key = _key(kind, payload)
            if event == "DELETED":
                state.objects.pop(key, None)
            else:
                state.objects[key] = payload
            self._mark(key)
        self._wake.set()

    def _mark(self, key: Key) -> None:
        self._state.dirty[key] = None
        self._wake.set()

    # -- the worker ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        state = self._state
        resync_at = time.monotonic() + self.resync_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, resync_at - time.monotonic()))
            self._wake.clear()
            while state.dirty:
                key = next(iter(state.dirty))
                del state.dirty[key]
                await self._guarded(key, self._reconcile)
            if len(state.listed) == len(KINDS) and not self.synced:
                self.synced = True
                log.info("synced: %d objects", len(state.objects))
            if time.monotonic() >= resync_at:
                await self._resync()
                resync_at = time.monotonic() + self.resync_s

    async def _guarded(self, key: Key, step: Callable[[Key], Awaitable[None]]) -> None:
        """`step(key)`; when it fails, look at `key` again after a backoff."""
        state = self._state
        try:
            await step(key)
        except Exception as exc:
            failures = state.failures[key] = state.failures.get(key, 0) + 1
            delay = min(BACKOFF[0] * BACKOFF[1] ** (failures - 1), BACKOFF[2])
            if not isinstance(exc, KubernetesUnavailable | ServegateError):
                log.exception("%s: sync failed; retrying in %.1f s", key, delay)
            else:
                log.debug("%s: %s; retrying in %.1f s", key, exc, delay)
            asyncio.get_running_loop().call_later(delay, self._mark, key)
        else:
            state.failures.pop(key, None)

    async def _reconcile(self, key: Key) -> None:
        state = self._state
        obj = state.objects.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            state.reapply.discard(key)
        if obj is None:  # gone from the cluster without the finalizer's help
            if state.outcomes.pop(key, None) is not None:
                await self._delete_from_gateway(key)
            return
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                await self._delete_from_gateway(key)
                await self._set_finalizers(key, obj, [f for f in finalizers if f != FINALIZER])
            state.outcomes.pop(key, None)
            return
        if FINALIZER not in finalizers:
            if not await self._set_finalizers(key, obj, [*finalizers, FINALIZER]):
                return  # changed meanwhile: the watch brings the newer object
            obj = state.objects.get(key, obj)
        outcome = state.outcomes.get(key)
        if outcome is None or outcome.generation != _generation(obj) or key in state.reapply:
            await self._apply(key, obj)
            await self._sync_status(key)

    async def _resync(self) -> None:
        """Apply refused specs again, and copy every applied object's status, one list per kind."""
        state = self._state
        for key, outcome in state.outcomes.items():
            if isinstance(outcome, Refused) and key not in state.failures:
                state.reapply.add(key)  # what a refusal named may exist by now
                self._mark(key)
        for kind in KINDS:
            keys = [
                key
                for key, outcome in state.outcomes.items()
                if key.kind == kind and isinstance(outcome, Applied) and key not in state.failures
            ]
            if not keys:
                continue
            try:
                items = await self._call_gateway(self._gateway.list, kind.plural)
            except ServegateError as exc:  # down for every object alike: next round
                log.debug("resync stopped: %s", exc)
                return
            found = {item["metadata"]["name"]: item for item in items}
            for key in keys:
                if key in state.dirty:
                    continue  # the worker looks at it next
                try:
                    await self._write_status(key, found.get(key.name))
                except KubernetesUnavailable as exc:
                    log.debug("resync stopped: %s", exc)
                    return
                except Exception:
                    log.exception("%s: resync failed", key)

    # -- one object ------------------------------------------------------------------------------------

    async def _apply(self, key: Key, obj: dict[str, Any]) -> None:
        state = self._state
        generation = _generation(obj)
        try:
            result = await self._call_gateway(self._gateway.apply, gateway_manifest(obj), f"{key}")
        except ServegateError as exc:
            if exc.status not in (400, 413):
                raise
            problems = tuple(exc.problems) or (Problem("", exc.message),)
            before = state.outcomes.get(key)
            since = before.since if isinstance(before, Refused) else rfc3339(time.time())
            if not (isinstance(before, Refused) and before.problems == problems):
                log.info("%s (generation %d) refused: %s", key, generation, "; ".join(map(str, problems)))
            state.outcomes[key] = Refused(generation, problems, since)
            state.reapply.discard(key)
            return
        action = result.results[0].action if result.results else "applied"
        log.info("%s (generation %d): %s", key, generation, action)
        state.outcomes[key] = Applied(generation)
        state.reapply.discard(key)

    async def _sync_status(self, key: Key) -> None:
        found = None
        if isinstance(self._state.outcomes.get(key), Applied):
            try:
                found = await self._call_gateway(self._gateway.get, key.kind.plural, key.name)
            except ServegateError as exc:
                if exc.status != 404:
                    raise
        await self._write_status(key, found)

    async def _write_status(self, key: Key, found: dict[str, Any] | None) -> None:
        """Patch the object's status to what the gateway says of it (`found`; None: nothing) or to
        why its spec was refused, when that differs from what it is."""
        state = self._state
        obj, outcome = state.objects.get(key), state.outcomes.get(key)
        if obj is None or outcome is None or obj["metadata"].get("deletionTimestamp"):
            return
        if isinstance(outcome, Refused):
            desired = invalid_status(
                key.kind.kind, key.name, outcome.problems, outcome.generation, outcome.since
            )
        elif found is None:
            log.info("%s: the gateway has no such object (any more); applying it again", key)
            state.outcomes.pop(key, None)
            self._mark(key)
            return
        else:
            desired = cr_status(key.kind.kind, found, outcome.generation)
        patch = merge_patch(obj.get("status") or {}, desired)
        if not patch:
            return
        updated = await self._call_kube(self._api.patch_status, key.kind, key.namespace, key.name, patch)
        if updated is not None and key in state.objects:
            state.objects[key] = updated

    async def _delete_from_gateway(self, key: Key) -> None:
        try:
            found = await self._call_gateway(self._gateway.get, key.kind.plural, key.name)
            namespace = (found.get("metadata") or {}).get("namespace") or "default"
            if namespace != key.namespace:
                log.info("%s: the gateway's %s lives in namespace %s; left alone", key, key.name, namespace)
                return
            await self._call_gateway(self._gateway.delete, key.kind.plural, key.name)
        except ServegateError as exc:
            if exc.status != 404:
                raise
            return
        log.info("%s: deleted from the gateway", key)

    async def _set_finalizers(self, key: Key, obj: dict[str, Any], finalizers: list[str]) -> bool:
        """Write the object's finalizers if it is still the version read; whether it was."""
        meta = obj["metadata"]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        try:
            updated = await self._call_kube(self._api.patch_object, key.kind, key.namespace, key.name, patch)
        except Conflict:
            return False
        if updated is None:
            return False
        if key in self._state.objects:
            self._state.objects[key] = updated
        return True

    # -- calls, in threads -------------------------------------------------------------------------------

    async def _call_gateway(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            result = await asyncio.to_thread(function, *args)
        except ServegateError as exc:
            if exc.status in (400, 404, 413):  # an answer about the object, for the caller
                self._report.recovered(_GATEWAY)
            else:  # unreachable, refused the operator's token, or failing
                hint = f" ({_TOKEN_HINT})" if exc.status in (401, 403) else ""
                self._report.failed(_GATEWAY, f"{exc.message}{hint}")
            raise
        self._report.recovered(_GATEWAY)
        return result

    async def _call_kube(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            result = await asyncio.to_thread(function, *args)
        except KubernetesUnavailable as exc:
            self._report.failed("writing to the Kubernetes API", str(exc))
            raise
        self._report.recovered("writing to the Kubernetes API")
        return result


def _key(kind: Kind, obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return Key(kind, meta.get("namespace") or "default", meta.get("name", ""))


def _generation(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("generation") or 0)
