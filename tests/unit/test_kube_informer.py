"""The informer loop both Kubernetes watchers share: list, watch from the list's version, go on after
a dropped watch, list again on 410 Gone, and retry an unreachable API, reporting it once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from serving.engines.kubernetes.api import KubeApi, KubernetesUnavailable
from serving.engines.kubernetes.informer import Reporter, list_then_watch


def test_lists_watches_goes_on_lists_again_on_gone_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    seen: list[Any] = []
    lists = iter([KubernetesUnavailable("connection refused"), KubernetesUnavailable("connection refused")])

    def list_once() -> tuple[list[dict[str, Any]], str]:
        if (failure := next(lists, None)) is not None:
            raise failure
        seen.append(("list", len([s for s in seen if s[0] == "list"])))
        return [{"name": "a"}], "10"

    watches = iter(["dropped", "gone", "last"])

    def watch_from(version: str) -> Iterator[tuple[str, dict[str, Any], str]]:
        which = next(watches)
        seen.append(("watch", version))
        if which == "dropped":
            yield "ADDED", {"name": "b"}, "11"
            yield "BOOKMARK", {}, "12"  # moves the version on, nothing else
        elif which == "gone":
            raise KubeApi.Gone("too old")
        else:
            yield "DELETED", {"name": "a"}, "13"
            stop.set()

    def on_list(objects: list[dict[str, Any]]) -> None:
        seen.append(("listed", [o["name"] for o in objects]))

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen.append((kind, obj["name"]))

    with caplog.at_level(logging.INFO, logger="serving.engines.kubernetes.informer"):
        list_then_watch(
            list_once, watch_from, on_list, on_event, stop, what="watching things", report=Reporter()
        )
    assert seen == [
        ("list", 0),
        ("listed", ["a"]),
        ("watch", "10"),
        ("ADDED", "b"),
        ("watch", "12"),  # after the dropped watch: from the bookmark's version
        ("list", 1),  # 410 Gone: listed again
        ("listed", ["a"]),
        ("watch", "10"),
        ("DELETED", "a"),
    ]
    failures = [r.getMessage() for r in caplog.records if "connection refused" in r.getMessage()]
    assert failures == ["watching things: connection refused; retrying"]  # twice failed, said once
    assert any("watching things: working again" in r.getMessage() for r in caplog.records)
