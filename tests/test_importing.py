"""Imports that can be run again: the ledger of imported lines (`tracker-agent import`,
TrackerAgent.import_lines and enqueue_once), bad lines reported, hostile input and processes.

Real SQLite outboxes in tmp_path; the store's ledger contract also on PostgreSQL
(@both_backends); delivery checked against FakeExponea on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Invoke,
    both_backends,
    cli_env,
    cli_invoker,
    is_postgresql,
    make_agent,
    wait_for,
)

from tracker_agent import importing
from tracker_agent.exceptions import ConfigError, OutboxError, ValidationError
from tracker_agent.outbox import ledger
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.store import NewCommand, OutboxStore
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 60
AGAIN = "fix and run the same import again (lines already queued are skipped)"


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def env(fake: FakeExponea, outbox: Path) -> dict[str, str]:
    return cli_env(fake, f"sqlite:///{outbox}")


@pytest.fixture
def invoke(env: dict[str, str]) -> Invoke:
    return cli_invoker(env)


def event(n: int, **properties: Any) -> dict[str, Any]:
    """An event line without a timestamp (the import fixes it), told apart by `n`."""
    return {
        "customer_ids": {"registered": f"u{n % 7}"},
        "event_type": "view",
        "properties": {"n": n, **properties},
    }


def write(path: Path, lines: list[Any]) -> str:
    """JSON Lines: dicts as compact JSON, str and bytes as they are."""
    encoded = [
        line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line))
        for line in lines
    ]
    path.write_bytes(b"".join((e if isinstance(e, bytes) else e.encode()) + b"\n" for e in encoded))
    return str(path)


def queued_payloads(outbox: Path) -> list[dict[str, Any]]:
    """What the outbox holds, in order (read without the agent)."""
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        conn.close()


def numbers(outbox: Path) -> list[int]:
    return [p["properties"]["n"] for p in queued_payloads(outbox)]


# ---------------------------------------------------------------------------- running again


def test_running_the_same_file_again_queues_nothing_twice(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(5)])
    assert invoke("import", path).stdout == "queued 5 commands\n"
    again = invoke("import", path)
    assert again.exit_code == 0, again.output
    assert again.stdout == "queued 0 commands, skipped 5 imported before\n"
    assert numbers(outbox) == [0, 1, 2, 3, 4]


def test_a_fixed_file_queues_the_fixed_line_once_and_keeps_first_timestamps(
    invoke: Invoke, fake: FakeExponea, outbox: Path, tmp_path: Path
) -> None:
    lines: list[Any] = [event(0), event(1), "{broken", event(3)]
    first = invoke("import", write(tmp_path / "in.jsonl", lines))
    assert first.exit_code == 1 and first.stdout == "queued 3 commands\n"
    assert "tracker-agent: line 3: Expecting property name" in first.stderr
    stamps = {p["properties"]["n"]: p["timestamp"] for p in queued_payloads(outbox)}
    lines[2] = event(2)
    fixed = invoke("import", write(tmp_path / "in.jsonl", lines))
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout == "queued 1 commands, skipped 3 imported before\n"
    assert invoke("flush").exit_code == 0
    delivered = {e["properties"]["n"]: e["timestamp"] for e in fake.events}
    assert sorted(e["properties"]["n"] for e in fake.events) == [0, 1, 2, 3]
    assert {n: delivered[n] for n in stamps} == stamps  # fixed at the first import


def test_identical_lines_are_each_queued_once_per_occurrence(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    a, b = event(1), event(2)
    assert invoke("import", write(tmp_path / "1.jsonl", [a, a, b])).stdout == "queued 3 commands\n"
    assert invoke("import", write(tmp_path / "2.jsonl", [a, b, a])).stdout == (
        "queued 0 commands, skipped 3 imported before\n"
    )
    third = invoke("import", write(tmp_path / "3.jsonl", [a, a, a, b]))
    assert third.stdout == "queued 1 commands, skipped 3 imported before\n"
    assert sorted(numbers(outbox)) == [1, 1, 1, 2]


def test_an_edited_line_is_queued_and_unchanged_lines_are_not(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    invoke("import", write(path, [event(0), event(1), event(2)]))
    edited = invoke("import", write(path, [event(0), event(1, price=9.5), event(2)]))
    assert edited.stdout == "queued 1 commands, skipped 2 imported before\n"
    assert queued_payloads(outbox)[-1]["properties"] == {"n": 1, "price": 9.5}


def test_layout_and_key_order_do_not_make_a_line_new(invoke: Invoke, tmp_path: Path) -> None:
    record = event(0, page="/", tags=["a", "b"])
    invoke("import", write(tmp_path / "in.jsonl", [json.dumps(record)]))
    reordered = dict(reversed(list(record.items())))
    relaid = "  " + json.dumps(reordered, separators=(" , ", " : "), ensure_ascii=True) + " \t"
    result = invoke("import", write(tmp_path / "relaid.jsonl", [relaid]))
    assert result.stdout == "queued 0 commands, skipped 1 imported before\n"


def test_stdin_is_remembered_like_a_file(invoke: Invoke) -> None:
    text = "".join(json.dumps(event(n)) + "\n" for n in range(3))
    assert invoke("import", "-", input=text).stdout == "queued 3 commands\n"
    assert invoke("import", "-", input=text).stdout == (
        "queued 0 commands, skipped 3 imported before\n"
    )


def test_reimport_queues_every_line_again_and_a_plain_run_still_skips(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(3)])
    invoke("import", path)
    assert invoke("import", path, "--reimport").stdout == "queued 3 commands\n"
    assert invoke("import", path).stdout == "queued 0 commands, skipped 3 imported before\n"
    assert sorted(numbers(outbox)) == [0, 0, 1, 1, 2, 2]


def test_dry_run_counts_what_would_be_queued_and_writes_nothing(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    invoke("import", write(tmp_path / "half.jsonl", [event(0), event(1)]))
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(4)] + ["[1]"])
    dry = invoke("import", path, "--dry-run")
    assert dry.exit_code == 1  # the bad line is reported as a real run would
    assert dry.stdout == "would queue 2 commands, skipped 2 imported before\n"
    assert "tracker-agent: line 5: expected a JSON object, got list" in dry.stderr
    assert numbers(outbox) == [0, 1]
    assert invoke("import", path).stdout == "queued 2 commands, skipped 2 imported before\n"


# ---------------------------------------------------------------------------- bad lines


def test_every_bad_line_is_reported_up_to_the_cap_then_counted(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    lines: list[Any] = [f"[{n}]" if n % 6 else event(n) for n in range(30)]  # 25 bad, 5 good
    result = invoke("import", write(tmp_path / "in.jsonl", lines), "--chunk-size", "2")
    shown = [line for line in result.stderr.splitlines() if line.startswith("tracker-agent: line")]
    bad_numbers = [n + 1 for n in range(30) if n % 6]
    assert shown == [
        f"tracker-agent: line {n}: expected a JSON object, got list"
        for n in bad_numbers[: importing.MAX_REPORTED_BAD_LINES]
    ]
    assert "tracker-agent: ... and 5 more bad lines\n" in result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == f"tracker-agent: error: 25 bad lines were not queued; {AGAIN}"
    )
    assert result.exit_code == 1
    assert numbers(outbox) == [0, 6, 12, 18, 24]


def test_invalid_utf8_is_a_bad_line_and_the_fixed_file_queues_only_it(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    lines: list[Any] = [event(0), b'{"event_type": "\xff\xfe"}', event(2)]
    result = invoke("import", write(path, lines))
    assert "tracker-agent: line 2: not UTF-8 text (byte 17 of the line)" in result.stderr
    lines[1] = event(1)
    fixed = invoke("import", write(path, lines))
    assert fixed.stdout == "queued 1 commands, skipped 2 imported before\n"
    assert sorted(numbers(outbox)) == [0, 1, 2]


def test_a_huge_line_stops_the_import_and_the_fixed_file_goes_on(
    invoke: Invoke, outbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importing, "MAX_IMPORT_LINE_BYTES", 1000)
    path = tmp_path / "in.jsonl"
    huge = json.dumps(event(2, padding="x" * 2000))
    lines: list[Any] = [event(0), event(1), huge, event(3)]
    result = invoke("import", write(path, lines))
    assert result.exit_code == 1 and result.stdout == "queued 2 commands\n"
    assert "line 3: longer than 1000 bytes; is it JSON Lines?; the import stopped" in (
        result.stderr
    )
    del lines[2]
    fixed = invoke("import", write(path, lines))
    assert fixed.stdout == "queued 1 commands, skipped 2 imported before\n"
    assert numbers(outbox) == [0, 1, 3]


def test_an_empty_file_queues_nothing_and_creates_nothing(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = invoke("import", str(path))
    assert (result.exit_code, result.stdout) == (0, "queued 0 commands\n")
    assert not outbox.exists()


def test_a_full_outbox_interrupts_the_import_and_the_run_again_goes_on(
    invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(12)])
    full = invoke("import", path, "--chunk-size", "2", TRACKER_AGENT_MAX_ROWS="5")
    assert full.exit_code == 1
    assert "is full" in full.stderr and "4 commands were queued before it" in full.stderr
    resumed = invoke("import", path, "--chunk-size", "2")
    assert resumed.stdout == "queued 8 commands, skipped 4 imported before\n"
    assert numbers(outbox) == list(range(12))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NaN", "NaN and Infinity are not JSON"),
        ("1e999", "NaN and Infinity are not JSON"),
        ('"\\udc00"', "contains text that is not valid Unicode"),
    ],
)
def test_values_json_cannot_carry_are_bad_lines(
    invoke: Invoke, tmp_path: Path, value: str, reason: str
) -> None:
    line = '{"customer_ids": {"registered": "a"}, "event_type": "t", "properties": {"x": %s}}'
    result = invoke("import", write(tmp_path / "in.jsonl", [line % value, event(1)]))
    assert result.stdout == "queued 1 commands\n"
    assert f"tracker-agent: line 1['data']['properties']['x']: {reason}\n" in result.stderr


def test_an_outbox_of_another_project_is_one_error_not_a_bad_line_each(
    invoke: Invoke, tmp_path: Path
) -> None:
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(3)])
    invoke("import", path)
    result = invoke("import", path, TRACKER_AGENT_PROJECT_TOKEN="another-project")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("tracker-agent: error: database_url: the outbox ")
    assert "belongs to project" in line


# ---------------------------------------------------------------------------- processes


def run_import(env: dict[str, str], *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tracker_agent", "import", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )


def test_two_processes_importing_the_same_lines_at_once_queue_each_line_once(
    env: dict[str, str], outbox: Path
) -> None:
    count = 10_000
    text = "".join(json.dumps(event(n)) + "\n" for n in range(count))
    # Both read stdin: the lines reach them at the same time, whenever each process started.
    # Chunks of 20 and 7 lines: a chunk can meet lines the other process queued in part.
    procs = [run_import(env, "-", "--chunk-size", n, stdin=subprocess.PIPE) for n in ("20", "7")]
    outputs: list[tuple[str, str]] = [("", "")] * 2

    def feed(index: int) -> None:
        outputs[index] = procs[index].communicate(text, timeout=PROCESS_TIMEOUT_SECONDS)

    feeders = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    for feeder in feeders:
        feeder.start()
    for feeder in feeders:
        feeder.join()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    counts = [
        [int(word) for word in out.replace(",", " ").split() if word.isdigit()]
        for out, _ in outputs
    ]
    assert [sum(figures) for figures in counts] == [count, count]  # queued + skipped
    assert sum(figures[0] for figures in counts) == count  # queued
    assert sorted(numbers(outbox)) == list(range(count))


def _rows(outbox: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_kill_9_in_the_middle_then_running_again_loses_nothing_and_doubles_nothing(
    env: dict[str, str], invoke: Invoke, outbox: Path, tmp_path: Path
) -> None:
    count = 60_000
    path = write(tmp_path / "in.jsonl", [event(n) for n in range(count)])
    proc = run_import(env, path, "--chunk-size", "50")
    try:
        assert wait_for(lambda: _rows(outbox) >= 500, timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    assert proc.returncode == -signal.SIGKILL
    before = _rows(outbox)
    assert 0 < before < count  # killed in the middle
    again = invoke("import", path, "--chunk-size", "500")
    assert again.stdout == f"queued {count - before} commands, skipped {before} imported before\n"
    assert sorted(numbers(outbox)) == list(range(count))


# ---------------------------------------------------------------------------- the library


def test_import_lines_reports_what_it_did(fake: FakeExponea, tmp_path: Path) -> None:
    data = b"".join(json.dumps(event(n)).encode() + b"\n" for n in range(3)) + b"nope\n"
    with make_agent(fake, tmp_path / "o.db") as agent:
        report = agent.import_lines(io.BytesIO(data))
        assert (report.lines, report.queued, report.skipped, report.bad_count) == (4, 3, 0, 1)
        assert [(b.number, b.message[:20]) for b in report.bad] == [(4, "line 4: Expecting va")]
        assert not report.ok
        report = agent.import_lines(io.BytesIO(data))
        assert (report.queued, report.skipped) == (0, 3)
        assert agent.stats()["pending"] == 3


def test_enqueue_once_skips_commands_whose_key_was_queued(
    fake: FakeExponea, tmp_path: Path
) -> None:
    commands = [{"name": "customers/events", "data": event(n)} for n in range(3)]
    keys = [importing.ledger_key(b"my-bundles", b"bundle-7/%d" % n) for n in range(3)]
    with make_agent(fake, tmp_path / "o.db") as agent:
        assert agent.enqueue_once(commands[:2], keys[:2]) == 2
        assert agent.enqueue_once(commands, keys) == 1
        assert agent.enqueue_once(commands, keys, reimport=True) == 3
        assert agent.stats()["pending"] == 6
        with pytest.raises(ValidationError, match="one key"):
            agent.enqueue_once(commands, keys[:2])
        for bad in ("text", b"", b"k" * 256):
            with pytest.raises(ValidationError, match="bytes, 1 to 255 long"):
                agent.enqueue_once(commands[:1], [bad])  # type: ignore[list-item]


def test_ledger_keys_of_other_namespaces_never_meet() -> None:
    content = b'{"customer_ids":{"registered":"a"}}'
    assert importing.ledger_key(b"a", content) != importing.ledger_key(b"b", content)
    assert importing.ledger_key(b"a", content, 1) != importing.ledger_key(b"a", content, 2)


def test_import_ledger_days_is_a_setting_with_bounds(fake: FakeExponea, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="import_ledger_days"):
        make_agent(fake, tmp_path / "o.db", import_ledger_days=0)


# ---------------------------------------------------------------------------- the store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store(url: str, clock: Clock | None = None, **options: Any) -> OutboxStore:
    # On PostgreSQL too, the tests' clock stamps the ledger (db_clock=False).
    return OutboxStore(
        open_outbox(url), max_rows=1000, max_bytes=10**9, now=clock, db_clock=False, **options
    )


def shut(*stores: OutboxStore) -> None:
    for store in stores:
        store.close()
        store.engine.dispose()


def count_rows(store: OutboxStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


@contextmanager
def failing_outbox_inserts(store: OutboxStore) -> Iterator[None]:
    """Every INSERT into outbox fails ("disk on fire") while inside: on SQLite a TEMP trigger
    on the store's enqueue connection, on PostgreSQL a trigger of the database's."""
    if is_postgresql(str(store.engine.url)):
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS"
                " $$BEGIN RAISE EXCEPTION 'disk on fire'; END$$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER fail BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION fail()"
            )
        yield
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER fail ON outbox")
            conn.exec_driver_sql("DROP FUNCTION fail()")
        return
    driver, _cursor = store.backend._open_writer(store)  # type: ignore[attr-defined]
    driver.execute(
        "CREATE TEMP TRIGGER fail BEFORE INSERT ON main.outbox"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    yield
    driver.execute("DROP TRIGGER temp.fail")


def rows(count: int) -> list[NewCommand]:
    return [NewCommand("customers", '{"registered":"a"}', f'{{"n":{n}}}') for n in range(count)]


def keys(*names: str) -> list[bytes]:
    return [name.encode() for name in names]


@both_backends
def test_keys_older_than_the_retention_are_pruned_and_queue_again(database_url: str) -> None:
    clock = Clock()
    store = make_store(database_url, clock, ledger_retention=86_400)
    try:
        assert store.enqueue_once(rows(2), keys("a", "b")) == 2
        clock.now += 86_000
        assert store.prune_ledger() == 0
        assert store.enqueue_once(rows(2), keys("a", "b")) == 0
        clock.now += 401
        assert store.prune_ledger() == 2
        assert store.enqueue_once(rows(2), keys("a", "b")) == 2
    finally:
        shut(store)


@both_backends
def test_keys_moved_into_the_index_are_still_skipped_by_every_process(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger, "COMPACT_KEYS", 3)
    one, two = make_store(database_url), make_store(database_url)
    try:
        assert one.enqueue_once(rows(2), keys("a", "b")) == 2
        # two reads one's log row, logs "c": 3 keys in the log, moved into the index
        assert two.enqueue_once(rows(2), keys("b", "c")) == 1
        assert [count_rows(one, t) for t in ("import_ledger", "import_ledger_log")] == [3, 0]
        assert one.enqueue_once(rows(2), keys("c", "d")) == 1  # its log copy is gone
        assert two.enqueue_once(rows(4), keys("a", "b", "c", "d")) == 0  # its log copy is gone
        assert two.enqueue_once(rows(2), keys("d", "e")) == 1
        assert one.enqueue_once(rows(1), keys("e")) == 0
        assert one.known_keys(keys("a", "e", "z")) == set(keys("a", "e"))
        assert one.stats()["pending"] == 5
    finally:
        shut(one, two)


@both_backends
def test_a_rolled_back_enqueue_leaves_no_key_behind(database_url: str) -> None:
    store = make_store(database_url)
    try:
        assert store.enqueue_once(rows(1), keys("a")) == 1
        # The outbox insert comes after the keys are logged: it fails the whole transaction.
        with failing_outbox_inserts(store), pytest.raises(OutboxError):
            store.enqueue_once(rows(2), keys("b", "c"))
        assert store.enqueue_once(rows(3), keys("a", "b", "c")) == 2
        assert store.stats()["pending"] == 3
    finally:
        shut(store)


@both_backends
def test_stores_importing_the_same_keys_at_once_queue_each_key_once(database_url: str) -> None:
    """Two processes (two stores, on PostgreSQL two hosts) racing over the same keys: the
    lookup and the insert after it see no other importer in between."""
    stores = [make_store(database_url) for _ in range(4)]
    queued: list[int] = []
    names = [f"k{n}" for n in range(200)]

    def run(store: OutboxStore, order: list[str]) -> None:
        for start in range(0, len(order), 20):
            part = order[start : start + 20]
            queued.append(store.enqueue_once(rows(len(part)), keys(*part)))

    threads = [
        threading.Thread(target=run, args=(store, names if n % 2 else names[::-1]))
        for n, store in enumerate(stores)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=PROCESS_TIMEOUT_SECONDS)
        assert sum(queued) == len(names) == stores[0].stats()["pending"]
        assert stores[0].known_keys(keys(*names)) == set(keys(*names))
    finally:
        for store in stores:
            shut(store)


@both_backends
def test_duplicate_keys_in_one_request_queue_one_command(database_url: str) -> None:
    store = make_store(database_url)
    try:
        assert store.enqueue_once(rows(3), keys("a", "a", "b")) == 2
        with pytest.raises(ValueError, match="1 to 255 bytes"):
            store.enqueue_once(rows(1), [b""])
    finally:
        shut(store)
