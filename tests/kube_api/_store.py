"""The objects, one global resourceVersion counter, the watch history, deletion and garbage collection.

Thread-safe: the server's loop and the test's thread both write through it under one lock. A watch
lives in the server's loop; events reach it through `call_soon_threadsafe`, whoever wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tests.kube_api._errors import already_exists, bad_request, gone, not_found
from tests.kube_api._resources import Resource
from tests.kube_api._selectors import ObjectPredicate

ObjectKey = tuple[str, str]  # (namespace or "", name)


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(obj: dict) -> ObjectKey:
    metadata = obj["metadata"]
    return metadata.get("namespace", ""), metadata["name"]


@dataclass(frozen=True)
class Event:
    """One write, as the watch history keeps it; objects are never changed once stored."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: Resource
    obj: dict
    previous: dict | None


#: what a watch's queue carries besides (type, object): the end of the stream, clean or abrupt
END, ABORT = "END", "ABORT"


class Watch:
    """One open watch: a queue in the server's loop, fed (type, object) pairs by the store."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resource: Resource, namespace: str, matches: ObjectPredicate
    ) -> None:
        self.loop = loop
        self.resource = resource
        self.namespace = namespace
        self.matches = matches
        self.queue: asyncio.Queue = asyncio.Queue()

    def translate(self, event: Event) -> str | None:
        """The event type this watch sees: an object that starts or stops matching its selectors is
        ADDED or DELETED, as Kubernetes' watch cache reports it."""
        if event.resource.storage_key != self.resource.storage_key:
            return None
        if self.namespace and event.obj["metadata"].get("namespace") != self.namespace:
            return None
        now = self.matches(event.obj)
        if event.type != "MODIFIED" or event.previous is None:
            return event.type if now else None
        was = self.matches(event.previous)
        if was and now:
            return "MODIFIED"
        return "ADDED" if now else ("DELETED" if was else None)

    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def offer(self, event: Event) -> None:
        if kind := self.translate(event):
            self._put((kind, event.obj))

    def end(self, *, abort: bool = False) -> None:
        self._put(ABORT if abort else END)


class Store:
    """All objects by resource, every write numbered by one resourceVersion counter."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._objects: dict[tuple[str, str], dict[ObjectKey, dict]] = {}
        self._uids: dict[str, tuple[Resource, ObjectKey]] = {}
        self._rv = 0
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        self._floor = 0  # every event after this resourceVersion is still in the history
        self._watches: set[Watch] = set()
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` after every write, under the lock: it must only schedule work."""
        self._listeners.append(listener)

    # -- reading

    def get(self, resource: Resource, namespace: str, name: str) -> dict | None:
        with self.lock:
            obj = self._objects.get(resource.storage_key, {}).get((namespace, name))
            return copy.deepcopy(obj)

    def list(
        self, resource: Resource, namespace: str = "", matches: ObjectPredicate | None = None
    ) -> list[dict]:
        with self.lock:
            objects = self._objects.get(resource.storage_key, {})
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(objects.items())
                if (not namespace or key[0] == namespace) and (matches is None or matches(obj))
            ]

    def exists(self, uid: str) -> bool:
        return uid in self._uids

    def wait_until(self, check: Callable[[], object], timeout: float) -> object:
        """Block the calling (test) thread until `check()` is truthy, re-checking after every write.
        `check` runs without the lock held, so it may call the server over HTTP."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                seen = self._rv
            if result := check():
                return result
            with self._changed:
                while self._rv == seen:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"condition not met within {timeout}s")
                    self._changed.wait(left)

    # -- writing

    def _emit(self, kind: str, resource: Resource, obj: dict, previous: dict | None) -> None:
        event = Event(self._rv, kind, resource, obj, previous)
        self._history.append(event)
        while len(self._history) > self._history_limit:
            self._floor = self._history.popleft().rv
        for watch in list(self._watches):
            watch.offer(event)
        for listener in self._listeners:
            listener(event)
        self._changed.notify_all()

    def _stamp(self, obj: dict) -> dict:
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return obj

    def create(self, resource: Resource, obj: dict) -> dict:
        with self.lock:
            key = key_of(obj)
            objects = self._objects.setdefault(resource.storage_key, {})
            if key in objects:
                raise already_exists(resource, key[1])
            obj = self._stamp(obj)
            objects[key] = obj
            self._uids[obj["metadata"]["uid"]] = (resource, key)
            self._emit("ADDED", resource, obj, None)
            return copy.deepcopy(obj)

    def replace(self, resource: Resource, obj: dict) -> dict:
        """Store a new version; one being deleted whose finalizers are now empty goes away."""
        with self.lock:
            key = key_of(obj)
            previous = self._objects[resource.storage_key][key]
            if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
                return self._remove(resource, obj)
            obj = self._stamp(obj)
            self._objects[resource.storage_key][key] = obj
            self._emit("MODIFIED", resource, obj, previous)
            return copy.deepcopy(obj)

    def delete(self, resource: Resource, namespace: str, name: str, propagation: str) -> tuple[dict, bool]:
        """Delete (or, with finalizers, mark deleting); returns the object and whether it is gone."""
        with self.lock:
            obj = self._objects.get(resource.storage_key, {}).get((namespace, name))
            if obj is None:
                raise not_found(resource, name)
            uid = obj["metadata"]["uid"]
            if propagation == "Orphan":
                self._orphan(uid)
            elif propagation == "Foreground":
                self._collect(uid, "Foreground")
            return self._delete(resource, obj, propagation)

    def _delete(self, resource: Resource, obj: dict, propagation: str) -> tuple[dict, bool]:
        metadata = obj["metadata"]
        if metadata.get("finalizers"):
            if metadata.get("deletionTimestamp"):
                return copy.deepcopy(obj), False
            marked = copy.deepcopy(obj)
            marked["metadata"].update(deletionTimestamp=timestamp(), deletionGracePeriodSeconds=0)
            return self.replace(resource, marked), False
        return self._remove(resource, obj, propagation), True

    def _remove(self, resource: Resource, obj: dict, propagation: str = "Background") -> dict:
        key, uid = key_of(obj), obj["metadata"]["uid"]
        previous = self._objects[resource.storage_key].pop(key)
        self._uids.pop(uid, None)
        obj = self._stamp(obj)
        self._emit("DELETED", resource, obj, previous)
        if resource.plural == "namespaces" and not resource.group:
            self._empty_namespace(key[1])
        if propagation != "Orphan":
            self._collect(uid, propagation)
        return copy.deepcopy(obj)

    def _dependents(self, uid: str) -> list[tuple[Resource, dict]]:
        return [
            (resource, obj)
            for resource, key in list(self._uids.values())
            if (obj := self._objects[resource.storage_key].get(key))
            and any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ())
        ]

    def _collect(self, owner_uid: str, propagation: str) -> None:
        """Garbage collection: delete the dependents of a deleted owner that have no other live owner."""
        for resource, obj in self._dependents(owner_uid):
            current = self._objects[resource.storage_key].get(key_of(obj))
            if current is None or current["metadata"]["uid"] != obj["metadata"]["uid"]:
                continue  # already collected through another path
            owners = {ref.get("uid") for ref in current["metadata"].get("ownerReferences") or ()} - {
                owner_uid
            }
            if not any(self.exists(owner) for owner in owners):
                self._delete(resource, current, propagation)

    def _orphan(self, owner_uid: str) -> None:
        for resource, obj in self._dependents(owner_uid):
            orphaned = copy.deepcopy(obj)
            refs = [r for r in orphaned["metadata"]["ownerReferences"] if r.get("uid") != owner_uid]
            orphaned["metadata"]["ownerReferences"] = refs
            if not refs:
                del orphaned["metadata"]["ownerReferences"]
            self.replace(resource, orphaned)

    def _empty_namespace(self, namespace: str) -> None:
        for resource, key in list(self._uids.values()):
            obj = self._objects[resource.storage_key].get(key)
            if key[0] == namespace and obj is not None:
                self._delete(resource, obj, "Background")

    # -- watching

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        resource: Resource,
        namespace: str,
        matches: ObjectPredicate,
        since: str | None,
    ) -> tuple[Watch, list[tuple[str, dict]]]:
        """Open a watch, and return it with the events it starts with: the current objects as ADDED
        (no resourceVersion, or "0"), or what happened after `since`; 410 Gone if that is forgotten."""
        with self.lock:
            watch = Watch(loop, resource, namespace, matches)
            if since in (None, "", "0"):
                objects = self._objects.get(resource.storage_key, {})
                initial = [
                    ("ADDED", obj)
                    for key, obj in sorted(objects.items())
                    if (not namespace or key[0] == namespace) and matches(obj)
                ]
            else:
                try:
                    rv = int(since)
                except ValueError:
                    raise bad_request(f"invalid resource version: {since!r}") from None
                if rv < self._floor:
                    raise gone(f"too old resource version: {rv} ({self._floor + 1})")
                initial = [(kind, e.obj) for e in self._history if e.rv > rv and (kind := watch.translate(e))]
            self._watches.add(watch)
            return watch, initial

    def close(self, watch: Watch) -> None:
        with self.lock:
            self._watches.discard(watch)

    def drop_watches(self, *, abort: bool = False) -> None:
        with self.lock:
            for watch in self._watches:
                watch.end(abort=abort)
            self._watches.clear()

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion before now answers 410 Gone."""
        with self.lock:
            self._history.clear()
            self._floor = self._rv
