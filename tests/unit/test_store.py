"""The state store on SQLite and PostgreSQL: its interface, the change counter, writers sharing one
database, and a `state.db` left by the sqlite3-era store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.sqldb import DatabaseError
from serving.store import Event, ResourceRow, Rollout, Store, default_url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def test_resources_are_created_configured_and_deleted(store: Store) -> None:
    assert store.put_resource("InferenceService", "b", {"spec": 1}) == "created"
    assert store.put_resource("InferenceService", "b", {"spec": 1}) == "unchanged"
    assert store.put_resource("InferenceService", "b", {"spec": 2}) == "configured"
    assert store.put_resource("TrainedModel", "a", {"spec": 1}) == "created"
    assert store.put_resource("InferenceService", "a", {"spec": 1}) == "created"

    row = store.resource("InferenceService", "b")
    assert isinstance(row, ResourceRow)
    assert (row.manifest, row.generation) == ({"spec": 2}, 2) and row.updated >= row.created
    assert store.resource("InferenceService", "missing") is None
    assert [r.name for r in store.resources("InferenceService")] == ["a", "b"]  # by name
    assert [(r.kind, r.name) for r in store.resources()] == [  # by creation
        ("InferenceService", "b"),
        ("TrainedModel", "a"),
        ("InferenceService", "a"),
    ]
    assert store.delete_resource("TrainedModel", "a") is True
    assert store.delete_resource("TrainedModel", "a") is False
    assert store.resource("TrainedModel", "a") is None


def test_revisions_are_numbered_per_component_and_unpin_the_rollout(store: Store) -> None:
    first = store.add_revision("iris", "predictor", "k1", {"image": "a"})
    assert (first.name, first.number, first.spec) == ("iris-predictor-00001", 1, {"image": "a"})
    store.add_revision("iris", "transformer", "t1", {})
    store.set_rollout("iris", "predictor", Rollout(latest=first.name, pinned=True))
    assert store.rollout("iris", "predictor") == Rollout(first.name, None, True)

    second = store.add_revision("iris", "predictor", "k2", {"image": "b"})
    assert second.name == "iris-predictor-00002"
    assert store.rollout("iris", "predictor") == Rollout(first.name, None, False)  # a new revision unpins
    assert [(r.number, r.key, r.spec) for r in store.revisions("iris", "predictor")] == [
        (1, "k1", {"image": "a"}),
        (2, "k2", {"image": "b"}),
    ]
    store.set_rollout("iris", "predictor", Rollout(second.name, first.name))
    assert store.rollout("iris", "predictor") == Rollout(second.name, first.name, False)
    assert store.rollout("other", "predictor") == Rollout()


def test_deleting_a_service_takes_its_revisions_rollouts_and_events(store: Store) -> None:
    store.put_resource("InferenceService", "iris", {})
    store.add_revision("iris", "predictor", "k", {})
    store.set_rollout("iris", "predictor", Rollout("iris-predictor-00001"))
    store.add_event("InferenceService", "iris", "Normal", "Created", "made")
    store.add_event("InferenceService", "kept", "Normal", "Created", "made")

    assert store.delete_resource("InferenceService", "iris")
    assert store.revisions("iris", "predictor") == []
    assert store.rollout("iris", "predictor") == Rollout()
    assert store.events("InferenceService", "iris") == []
    assert len(store.events("InferenceService", "kept")) == 1


def test_events_come_oldest_first_and_keep_the_newest(store: Store) -> None:
    for i in range(5):
        store.add_event("InferenceService", "iris", "Normal", "Step", f"m{i}", actor="ops" if i else "")
    store.add_event("InferenceService", "other", "Warning", "Bad", "x")
    got = store.events("InferenceService", "iris", limit=3)
    assert [e.message for e in got] == ["m2", "m3", "m4"]
    assert got[0] == Event(got[0].time, "Normal", "Step", "m2", "ops")
    assert store.events("InferenceService", "iris")[0].actor == ""


def test_the_version_counts_changes_seen_from_another_store(store: Store, database_url: str) -> None:
    other = Store(database_url)
    try:
        start = other.version()
        store.put_resource("InferenceService", "iris", {"a": 1})
        assert other.version() == start + 1
        store.put_resource("InferenceService", "iris", {"a": 1})  # unchanged
        store.add_event("InferenceService", "iris", "Normal", "Seen", "no state change")
        assert other.version() == start + 1
        store.add_revision("iris", "predictor", "k", {})
        store.set_rollout("iris", "predictor", Rollout("iris-predictor-00001"))
        store.put_resource("InferenceService", "iris", {"a": 2})
        assert other.version() == start + 4
        assert not store.delete_resource("TrainedModel", "missing")
        assert other.version() == start + 4
        assert store.delete_resource("InferenceService", "iris")
        assert other.version() == start + 5
    finally:
        other.close()


def test_a_store_tells_another_gateways_changes_from_its_own(store: Store, database_url: str) -> None:
    """A gateway reloads the shared state only for what another one changed."""
    other = Store(database_url)
    try:
        seen = store.version()
        store.put_resource("InferenceService", "iris", {"a": 1})
        store.add_revision("iris", "predictor", "k", {})
        seen, theirs = store.changed_elsewhere(seen)
        assert (seen, theirs) == (store.version(), False)
        other.set_rollout("iris", "predictor", Rollout("iris-predictor-00001"))
        store.put_resource("InferenceService", "iris", {"a": 2})  # after the other's: still theirs seen
        seen, theirs = store.changed_elsewhere(seen)
        assert theirs
        assert store.changed_elsewhere(seen) == (seen, False)  # nothing since
    finally:
        other.close()


def test_writers_in_two_stores_never_reuse_a_number_or_generation(database_url: str) -> None:
    """Two gateways on one database: add_revision's number and put_resource's generation are read
    then written, under the counter's lock."""
    stores = [Store(database_url), Store(database_url)]
    per_writer = 15
    numbers: list[int] = []
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def write(store: Store, who: int) -> None:
        try:
            start.wait()
            for i in range(per_writer):
                numbers.append(store.add_revision("iris", "predictor", f"{who}-{i}", {}).number)
                results.append(store.put_resource("InferenceService", "iris", {"who": who, "i": i}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert sorted(numbers) == list(range(1, 2 * per_writer + 1))
        row = stores[0].resource("InferenceService", "iris")
        assert row is not None and row.generation == results.count("configured") + 1
        assert results.count("created") == 1
    finally:
        for s in stores:
            s.close()


def test_a_path_means_a_sqlite_file_and_a_bad_url_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "deep" / "state.db")
    store.put_resource("InferenceService", "iris", {})
    store.close()
    again = Store(default_url(tmp_path / "deep"))
    assert [r.name for r in again.resources()] == ["iris"]
    again.close()
    with pytest.raises(DatabaseError, match="bad state database URL"):
        Store("not a url")
    with pytest.raises(DatabaseError, match="no database driver"):
        Store("nosuchdb://host/x")


# -- a state.db written by the sqlite3-era store ----------------------------------------------------

_LEGACY_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, manifest TEXT NOT NULL,
    generation INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE revisions (
    name TEXT PRIMARY KEY, service TEXT NOT NULL, component TEXT NOT NULL,
    number INTEGER NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX revisions_by_service ON revisions (service, component, number);
CREATE TABLE rollouts (
    service TEXT NOT NULL, component TEXT NOT NULL,
    latest TEXT, previous TEXT, pinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (service, component));
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL,
    time REAL NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL
    {actor});
CREATE INDEX events_by_object ON events (kind, name, id);
"""


def _legacy_file(path: Path, version: int) -> None:
    """What the sqlite3 store of schema `version` (1: events without actor) left behind."""
    actor = ", actor TEXT NOT NULL DEFAULT ''" if version >= 2 else ""
    db = sqlite3.connect(path)
    with db:
        db.executescript(_LEGACY_SCHEMA.replace("{actor}", actor))
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
        db.execute("INSERT INTO resources VALUES ('InferenceService', 'iris', '{\"a\": 1}', 3, 10.0, 20.0)")
        db.execute(
            "INSERT INTO revisions VALUES ('iris-predictor-00001', 'iris', 'predictor', 1, 'k', '{}', 11.0)"
        )
        db.execute("INSERT INTO rollouts VALUES ('iris', 'predictor', 'iris-predictor-00001', NULL, 1)")
        db.execute(
            "INSERT INTO events (kind, name, time, type, reason, message) "
            "VALUES ('InferenceService', 'iris', 12.0, 'Normal', 'Created', 'made')"
        )
    db.close()


@pytest.mark.parametrize("legacy_version", [1, 2])
def test_a_sqlite3_era_state_file_is_adopted_with_its_data(tmp_path: Path, legacy_version: int) -> None:
    path = tmp_path / "state.db"
    _legacy_file(path, legacy_version)
    for _ in range(2):  # migrated once, then opened as it is
        store = Store(path)
        assert store.resources() == [ResourceRow("InferenceService", "iris", {"a": 1}, 3, 10.0, 20.0)]
        assert [r.name for r in store.revisions("iris", "predictor")] == ["iris-predictor-00001"]
        assert store.rollout("iris", "predictor") == Rollout("iris-predictor-00001", None, True)
        assert store.events("InferenceService", "iris") == [Event(12.0, "Normal", "Created", "made", "")]
        store.close()

    store = Store(path)
    assert store.put_resource("InferenceService", "iris", {"a": 2}) == "configured"
    assert store.resource("InferenceService", "iris").generation == 4  # type: ignore[union-attr]
    assert store.add_revision("iris", "predictor", "k2", {}).number == 2
    store.add_event("InferenceService", "iris", "Normal", "Configured", "again", actor="ops")
    assert [e.actor for e in store.events("InferenceService", "iris")] == ["", "ops"]
    assert store.version() == 2
    store.close()
    # The sqlite3-era code refuses versions above its own 2: an older servegate will not write here.
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(3,)]
    db.close()


def test_a_state_file_from_an_unknown_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _legacy_file(path, 2)
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE schema_version SET version = 7")
    db.close()
    with pytest.raises(DatabaseError, match="schema_version of 7"):
        Store(path)


# -- servegate up --state-url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "--state-url: bad state database URL 'not a url'"),
        ("nosuchdb://host/state", "--state-url: no database driver for 'nosuchdb'"),
        # nothing listens on port 1: refused at once
        ("postgresql+psycopg://nobody@127.0.0.1:1/state", "--state-url: cannot open the state database"),
    ],
)
def test_up_says_what_is_wrong_with_the_state_url(tmp_path: Path, url: str, message: str) -> None:
    from click.testing import CliRunner

    from serving.cli.main import cli

    result = CliRunner().invoke(cli, ["up", "--no-auth", "--state-dir", str(tmp_path), "--state-url", url])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_gateway_opens_the_state_url_or_the_state_dir(tmp_path: Path, database_url: str) -> None:
    from serving.gateway import Gateway, GatewayOptions

    shared = Gateway(GatewayOptions(state_dir=tmp_path / "a", state_url=database_url))
    shared.store.put_resource("InferenceService", "iris", {})
    shared.store.close()
    store = Store(database_url)
    assert [r.name for r in store.resources()] == ["iris"]
    store.close()
    local = Gateway(GatewayOptions(state_dir=tmp_path / "b"))
    local.store.close()
    assert (tmp_path / "b" / "state.db").is_file()
