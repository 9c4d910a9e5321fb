"""Offline bundles (issue 14): pending commands moved out of one outbox into a file and
imported into another, with nothing lost at any crash and nothing queued twice.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import both_backends, make_agent, sqlite_url

from tracker_agent import bundle
from tracker_agent.cli import cli
from tracker_agent.exceptions import BundleError
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent


def fill(agent: Any, count: int, first: int = 0) -> None:
    for start in range(first, first + count, 500):
        agent.tracking.batch_commands(
            [
                {"name": "customers/events",
                 "data": {"customer_ids": {"registered": f"c{n % 7}"}, "event_type": "view",
                          "properties": {"n": n}}}
                for n in range(start, min(start + 500, first + count))
            ]
        )  # fmt: skip


def payloads(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    conn.close()
    return [json.loads(p) for (p,) in rows]


def numbers(db: Path) -> list[int]:
    return [p["properties"]["n"] for p in payloads(db)]


def test_a_round_trip_moves_every_command_with_its_original_timestamp(fake, tmp_path):
    a, b, out = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "queue.tab"
    with make_agent(fake, a) as source:
        fill(source, 5)
        source.tracking.update_customer_properties({"registered": "c1"}, {"plan": "gold"})
        before = payloads(a)
        report = source.export_bundle(out)
        assert (report.exported, report.path) == (6, out)
        assert source.stats()["pending"] == 0
    with make_agent(fake, b) as target:
        imported = target.import_bundle(out)
        assert (imported.queued, imported.skipped, imported.manifest.count) == (6, 0, 6)
        assert payloads(b) == before  # same commands, same order, same timestamps
        assert target.flush().delivered == 6
    assert [e["timestamp"] for e in fake.events] == [p["timestamp"] for p in before[:5]]


@both_backends
def test_a_bundle_exported_from_either_database_arrives_whole(fake, database_url, tmp_path):
    out = tmp_path / "queue.tab"
    with make_agent(fake, database_url) as source:
        fill(source, 5)
        assert source.export_bundle(out).exported == 5
        assert source.stats()["pending"] == 0 and source.stats()["in_flight"] == 0
    with make_agent(fake, tmp_path / "b.db") as target:
        assert target.import_bundle(out).queued == 5
        assert target.flush().delivered == 5
    assert sorted(e["properties"]["n"] for e in fake.events) == list(range(5))


@both_backends
def test_a_bundle_imported_into_either_database_arrives_once(fake, database_url, tmp_path):
    out = tmp_path / "queue.tab"
    with make_agent(fake, tmp_path / "a.db") as source:
        fill(source, 5)
        assert source.export_bundle(out).exported == 5
    with make_agent(fake, database_url) as target:
        assert target.import_bundle(out).queued == 5
        again = target.import_bundle(out)
        assert (again.queued, again.skipped) == (0, 5)
        assert target.flush().delivered == 5
    assert sorted(e["properties"]["n"] for e in fake.events) == list(range(5))


def test_importing_the_same_bundle_twice_adds_nothing(fake, tmp_path):
    out = tmp_path / "queue.tab"
    with make_agent(fake, tmp_path / "a.db") as source:
        fill(source, 3)
        source.export_bundle(out)
    with make_agent(fake, tmp_path / "b.db") as target:
        assert target.import_bundle(out).queued == 3
        again = target.import_bundle(out)
        assert (again.queued, again.skipped) == (0, 3)
        assert target.stats()["pending"] == 3


def test_a_dry_run_reports_and_queues_nothing(fake, tmp_path):
    out = tmp_path / "queue.tab"
    with make_agent(fake, tmp_path / "a.db") as source:
        fill(source, 4)
        source.export_bundle(out)
    with make_agent(fake, tmp_path / "b.db") as target:
        dry = target.import_bundle(out, dry_run=True)
        assert (dry.queued, dry.skipped, dry.dry_run) == (4, 0, True)
        assert target.stats()["pending"] == 0


def test_export_with_a_limit_moves_the_oldest_and_leaves_the_rest(fake, tmp_path):
    a, out = tmp_path / "a.db", tmp_path / "queue.tab"
    with make_agent(fake, a) as source:
        fill(source, 5)
        assert source.export_bundle(out, limit=2).exported == 2
    assert numbers(a) == [2, 3, 4]
    _, commands = bundle.read(out)
    assert [c.data["properties"]["n"] for c in commands] == [0, 1]


def test_an_empty_outbox_writes_no_bundle(fake, tmp_path):
    with make_agent(fake, tmp_path / "a.db") as source:
        report = source.export_bundle(tmp_path / "queue.tab")
    assert (report.exported, report.path) == (0, None)
    assert list(tmp_path.glob("*queue.tab*")) == []


@pytest.fixture
def good_bundle(fake: FakeExponea, tmp_path: Path) -> Path:
    out = tmp_path / "queue.tab"
    with make_agent(fake, tmp_path / "a.db") as source:
        fill(source, 50)
        source.export_bundle(out)
    return out


def rewrite(path: Path, edit: Any) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(edit(lines))))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def tamper_a_command(lines: list[bytes]) -> list[bytes]:
    return [lines[0], lines[1].replace(b'"n":0', b'"n":9'), *lines[2:]]


CORRUPTIONS = {
    "truncated file": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped byte": flip_a_byte,
    "not gzip": lambda p: p.write_bytes(b"hello, world\n"),
    "no end record": lambda p: rewrite(p, lambda lines: lines[:-1]),
    "a command cut off": lambda p: rewrite(p, lambda lines: [*lines[:10], *lines[11:]]),
    "a tampered command": lambda p: rewrite(p, tamper_a_command),
    "another format": lambda p: rewrite(
        p, lambda lines: [b'{"tracker_agent_bundle": 99}\n', *lines[1:]]
    ),
    "empty file": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_or_truncated_bundle_is_refused_with_one_clear_line(
    fake, tmp_path, good_bundle, corrupt
):
    corrupt(good_bundle)
    with make_agent(fake, tmp_path / "b.db") as target:
        with pytest.raises(BundleError) as caught:
            target.import_bundle(good_bundle)
        assert target.stats()["pending"] == 0
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(good_bundle))


def test_a_bundle_of_another_project_is_refused_unless_forced(fake, tmp_path, good_bundle):
    with make_agent(fake, tmp_path / "b.db", project="another-project") as target:
        with pytest.raises(BundleError, match="another project"):
            target.import_bundle(good_bundle)
        assert target.stats()["pending"] == 0
        assert target.import_bundle(good_bundle, force=True).queued == 50


def test_the_bundle_holds_no_secret(fake, tmp_path, good_bundle):
    text = gzip.decompress(good_bundle.read_bytes())
    assert fake.project_token.encode() not in text and fake.password.encode() not in text


# -- kill -9 at each step of an export -------------------------------------------------------

COUNT = 2500  # three export chunks: a kill after the first "deleted" leaves a partial delete
CHILD = """
import os, signal, sys
from tracker_agent import TrackerAgent
from tracker_agent.offline import export_bundle
stop_at = sys.argv[3]
def step(name):
    if name == stop_at:
        os.kill(os.getpid(), signal.SIGKILL)
agent = TrackerAgent("test-project", database_url=sys.argv[1], drain=False, close_timeout=0)
export_bundle(agent.store, "test-project", sys.argv[2], step=step)
"""
STEPS = ["leased", "written", "fsynced", "renamed", "deleted"]


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_9_at_any_export_step_loses_nothing_and_imports_nothing_twice(fake, tmp_path, step):
    a, out = tmp_path / "a.db", tmp_path / "first.tab"
    with make_agent(fake, a) as source:
        fill(source, COUNT)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, sqlite_url(a), str(out), step],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    left = numbers(a)
    carried: list[int] = []
    if out.exists():  # complete, or not there at all
        carried = [c.data["properties"]["n"] for c in bundle.read(out)[1]]
    assert sorted(set(left) | set(carried)) == list(range(COUNT))  # nothing lost
    if step in ("leased", "written", "fsynced"):
        assert not out.exists() and len(left) == COUNT
    # What is left goes out in a second bundle (the dead exporter's leases are taken back);
    # importing both queues each command exactly once.
    with make_agent(fake, a) as source:
        second = source.export_bundle(tmp_path / "second.tab")
        assert second.exported == len(left)
    with make_agent(fake, tmp_path / "b.db") as target:
        for path in (out, tmp_path / "second.tab"):
            if path.exists():
                target.import_bundle(path)
        assert sorted(numbers(tmp_path / "b.db")) == list(range(COUNT))


# -- the command line ------------------------------------------------------------------------


def test_cli_export_then_import_with_dry_run_and_force(fake, tmp_path, isolated_cli):
    out = tmp_path / "queue.tab"
    env = {
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_DATABASE_URL": sqlite_url(tmp_path / "a.db"),
    }
    with make_agent(fake, tmp_path / "a.db") as source:
        fill(source, 3)
    runner = CliRunner()
    done = runner.invoke(cli, ["export", "--out", str(out), "--limit", "2"], env=env)
    assert done.exit_code == 0, done.output
    assert "exported 2 commands" in done.stdout
    env["TRACKER_AGENT_DATABASE_URL"] = sqlite_url(tmp_path / "b.db")
    dry = runner.invoke(cli, ["import", "--bundle", str(out), "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would queue 2" in dry.stdout, dry.output
    done = runner.invoke(cli, ["import", "--bundle", str(out)], env=env)
    assert done.exit_code == 0 and "queued 2" in done.stdout, done.output
    env["TRACKER_AGENT_PROJECT_TOKEN"] = "another-project"
    env["TRACKER_AGENT_DATABASE_URL"] = sqlite_url(tmp_path / "c.db")
    refused = runner.invoke(cli, ["import", "--bundle", str(out)], env=env)
    assert refused.exit_code != 0 and "another project" in refused.output
    assert len([line for line in refused.output.splitlines() if line.strip()]) == 1
    forced = runner.invoke(cli, ["import", "--bundle", str(out), "--force"], env=env)
    assert forced.exit_code == 0 and "queued 2" in forced.stdout, forced.output


def test_a_well_formed_bundle_with_a_command_the_agent_refuses_is_one_clear_line(
    fake, tmp_path, good_bundle
):
    """A crafted bundle (checksum right, content hostile): refused at the command."""
    lines = gzip.decompress(good_bundle.read_bytes()).splitlines(keepends=True)
    bad = json.dumps({"id": 999, "name": "customers/events", "data": {"event_type": "x"},
                      "created_at": 1.0}).encode() + b"\n"  # fmt: skip
    body = [*lines[1:-1], bad]
    trailer = {
        "end": True,
        "count": len(body),
        "sha256": hashlib.sha256(b"".join(body)).hexdigest(),
    }
    good_bundle.write_bytes(
        gzip.compress(b"".join([lines[0], *body, json.dumps(trailer).encode()]))
    )
    with make_agent(fake, tmp_path / "b.db") as target:
        with pytest.raises(BundleError) as caught:
            target.import_bundle(good_bundle)
    assert "\n" not in str(caught.value) and "refused" in str(caught.value)


def test_a_line_too_long_to_be_a_command_is_refused_without_reading_it_whole(fake, tmp_path):
    path = tmp_path / "bomb.tab"
    path.write_bytes(gzip.compress(b"x" * (bundle.MAX_LINE_BYTES + 10)))
    with (
        make_agent(fake, tmp_path / "b.db") as target,
        pytest.raises(BundleError, match="line over"),
    ):
        target.import_bundle(path)


def test_export_to_a_folder_that_does_not_exist_is_one_line_and_keeps_every_command(fake, tmp_path):
    a = tmp_path / "a.db"
    with make_agent(fake, a) as source:
        fill(source, 3)
        with pytest.raises(BundleError, match="cannot write") as caught:
            source.export_bundle(tmp_path / "no-such-folder" / "queue.tab")
        assert source.stats()["pending"] == 3 and source.stats()["in_flight"] == 0
    assert "\n" not in str(caught.value)
