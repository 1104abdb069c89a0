"""Kubernetes' informer loop, for the engine's pod watch and the operator's watches of KServe's
objects: list, then watch from the list's resourceVersion; a dropped watch goes on from the last
version it saw, a 410 Gone lists again, and an API that cannot be reached or refuses is tried again
with backoff, its failure logged once per distinct message (`Reporter`).

Blocking: each loop runs in its own thread until its `stop` event is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from serving.engines.kubernetes.api import KubeApi, KubernetesUnavailable

__all__ = ["BACKOFF", "Reporter", "list_then_watch"]

log = logging.getLogger(__name__)

#: backoff of a failing call: first delay, factor, ceiling (seconds).
BACKOFF = (0.5, 2.0, 30.0)


class Reporter:
    """Logs a failure once per distinct message, and when it clears; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}

    def failed(self, what: str, message: str) -> None:
        with self._lock:
            if self._failing.get(what) == message:
                return
            self._failing[what] = message
        log.warning("%s: %s; retrying", what, message)

    def recovered(self, what: str) -> None:
        with self._lock:
            if self._failing.pop(what, None) is None:
                return
        log.info("%s: working again", what)


def list_then_watch(
    list_once: Callable[[], tuple[list[dict[str, Any]], str]],
    watch_from: Callable[[str], Iterable[tuple[str, dict[str, Any], str]]],
    on_list: Callable[[list[dict[str, Any]]], None],
    on_event: Callable[[str, dict[str, Any]], None],
    stop: threading.Event,
    *,
    what: str,
    report: Reporter,
) -> None:
    """Until `stop`: `on_list(objects)` after each list (`list_once()`: the objects and the list's
    resourceVersion), `on_event(type, object)` for each event of the watch `watch_from(version)`
    (bookmarks only move the version on). `what` names the loop in the log."""
    version: str | None = None
    delay = BACKOFF[0]
    while not stop.is_set():
        started = time.monotonic()
        try:
            if version is None:
                objects, version = list_once()
                on_list(objects)
            if stop.is_set():
                return
            for event, obj, seen in watch_from(version):
                version = seen
                if event != "BOOKMARK":
                    on_event(event, obj)
                if stop.is_set():
                    return
            report.recovered(what)
        except KubeApi.Gone:
            log.info("%s: resourceVersion %s is too old; listing again", what, version)
            version = None
        except KubernetesUnavailable as exc:
            report.failed(what, str(exc))
            stop.wait(delay)
            delay = min(delay * BACKOFF[1], BACKOFF[2])
            continue
        delay = BACKOFF[0]
        if time.monotonic() - started < 1.0:
            stop.wait(1.0)  # a watch the server keeps cutting short is not made again at once
