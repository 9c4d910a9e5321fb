"""The tracker-agent command: parsing and output with CliRunner, `run` and signals in subprocesses.

Everything talks to a real FakeExponea on 127.0.0.1 and a real SQLite outbox in tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import FAST_BACKOFF_ENV, Invoke, both_backends, cli_env, cli_invoker, wait_for

from tracker_agent.cli import cli, logs
from tracker_agent.cli.run import REPEAT_WINDOW_SECONDS, is_repeat
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
TOKEN, USERNAME, PASSWORD = "test-project", "key-id", "secret"
PROCESS_TIMEOUT_SECONDS = 20


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


@pytest.fixture
def env(fake: FakeExponea, database_url: str) -> dict[str, str]:
    return cli_env(fake, database_url, **FAST_BACKOFF_ENV)


@pytest.fixture
def invoke(env: dict[str, str]) -> Invoke:
    return cli_invoker(env)


def status_json(invoke: Invoke) -> dict[str, Any]:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    """The one "tracker-agent: error: ..." line an expected failure ends with (log lines aside)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("tracker-agent: error: ")]
    assert errors == lines[-1:], result.stderr
    assert "Traceback" not in result.output
    return lines[-1]


# ---------------------------------------------------------------------------- basics


def test_help_lists_every_command(invoke: Invoke) -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in (
        "run",
        "status",
        "flush",
        "track",
        "import",
        "dead-letters",
        "migrate",
        "check",
        "config",
    ):
        assert f"  {command} " in result.stdout


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracker_agent", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tracker-agent, version ")


def test_config_option_reads_the_toml_file(invoke: Invoke, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[tracker_agent]\nbatch_size = 7\n")
    result = invoke("--config", str(cfg), "config", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch_size"] == 7
    missing = invoke("--config", str(tmp_path / "nope.toml"), "config")
    assert "nope.toml (from --config) does not exist" in one_error_line(missing)


def test_bad_setting_in_env_is_one_error_line_naming_field_and_variable(invoke: Invoke) -> None:
    line = one_error_line(invoke("config", TRACKER_AGENT_BATCH_SIZE="100"))
    assert "batch_size (environment variable TRACKER_AGENT_BATCH_SIZE)" in line


def test_command_line_option_beats_environment_and_is_named_as_source(invoke: Invoke) -> None:
    result = invoke("--url", "http://example.com", "config")
    assert "url (command-line option): plain http://" in one_error_line(result)


# ---------------------------------------------------------------------------- track, flush


@both_backends
def test_track_event_then_flush_delivers_it_with_parsed_values(
    invoke: Invoke, fake: FakeExponea
) -> None:
    result = invoke(
        "track",
        "event",
        "--customer",
        "registered=007",
        "--type",
        "purchase",
        "--prop",
        "price=9.5",
        "--prop",
        "name=alice",
        "--prop",
        "tags=[1,2]",
        "--prop",
        "zip=01234",
    )
    assert result.exit_code == 0, result.output
    assert status_json(invoke)["pending"] == 1
    result = invoke("flush")
    assert result.exit_code == 0, result.output
    assert "delivered 1, dead-lettered 0, remaining 0" in result.stdout
    [event] = fake.events
    assert event["customer_ids"] == {"registered": "007"}  # ids stay strings
    assert event["event_type"] == "purchase"
    assert event["properties"] == {"price": 9.5, "name": "alice", "tags": [1, 2], "zip": "01234"}


def test_track_event_json_is_merged_with_options(invoke: Invoke, fake: FakeExponea) -> None:
    doc = {
        "customer_ids": {"registered": "bob"},
        "event_type": "view",
        "properties": {"page": "/", "n": 1},
        "timestamp": 1700000000.25,
    }
    result = invoke("track", "event", "--json", json.dumps(doc), "--prop", "n=2")
    assert result.exit_code == 0, result.output
    assert invoke("flush").exit_code == 0
    assert fake.events == [
        {
            "customer_ids": {"registered": "bob"},
            "event_type": "view",
            "timestamp": 1700000000.25,
            "properties": {"page": "/", "n": 2},
        }
    ]


def test_track_customer_update_is_delivered(invoke: Invoke, fake: FakeExponea) -> None:
    result = invoke("track", "customer", "--customer", "registered=carol", "--prop", "plan=pro")
    assert result.exit_code == 0, result.output
    assert invoke("flush").exit_code == 0
    [update] = fake.customer_updates
    assert update["customer_ids"] == {"registered": "carol"}
    assert update["properties"] == {"plan": "pro"}


@pytest.mark.parametrize(
    "args",
    [
        ("track", "event", "--customer", "registered=a"),  # no --type
        ("track", "event", "--type", "x", "--json", "[1]"),
        ("track", "event", "--type", "x", "--json", "{nope"),
        ("track", "event", "--type", "x", "--prop", "novalue"),
        ("track", "event", "--type", "x", "--json", '{"customer_ids": "alice"}'),
        ("track", "event", "--type", "x", "--json", '{"event": "typo"}'),
    ],
)
def test_track_usage_errors_exit_2(invoke: Invoke, args: tuple[str, ...]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_track_invalid_command_is_one_error_line(invoke: Invoke) -> None:
    line = one_error_line(invoke("track", "event", "--type", "purchase"))  # no customer ids
    assert "customer_ids" in line


@both_backends
def test_flush_with_the_api_down_exits_1_and_leaves_the_queue(
    invoke: Invoke, fake: FakeExponea
) -> None:
    assert invoke("track", "event", "--customer", "registered=a", "--type", "t").exit_code == 0
    fake.fail_next(1000, status=503)
    result = invoke("flush", "--timeout", "0.5")
    assert "1 commands remain" in one_error_line(result)
    assert "remaining 1" in result.stdout
    assert status_json(invoke)["pending"] == 1


# ---------------------------------------------------------------------------- status


def test_status_without_an_outbox_is_one_error_line(invoke: Invoke) -> None:
    assert "no outbox at" in one_error_line(invoke("status"))


def test_status_on_a_corrupt_file_is_one_error_line(invoke: Invoke, tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(b"this is not sqlite" * 100)
    assert "outbox.db" in one_error_line(invoke("status"))
    assert "outbox.db" in one_error_line(
        invoke("track", "event", "--customer", "a=b", "--type", "t")
    )


@both_backends
def test_status_table_and_json_agree(invoke: Invoke) -> None:
    for _ in range(3):
        invoke("track", "event", "--customer", "registered=a", "--type", "t")
    stats = status_json(invoke)
    for key in (
        "pending",
        "in_flight",
        "dead",
        "oldest_pending_age_s",
        "delivered",
        "last_success_at",
        "last_error",
        "paused_reason",
    ):
        assert key in stats
    assert (stats["pending"], stats["in_flight"], stats["dead"], stats["delivered"]) == (3, 0, 0, 0)
    table = invoke("status").stdout
    assert "pending         3" in table and "paused          no" in table
    assert "last success    never" in table


@both_backends
def test_status_needs_no_credentials(invoke: Invoke, env: dict[str, str]) -> None:
    invoke("migrate")
    result = CliRunner().invoke(
        cli,
        ["status", "--json"],
        env={"TRACKER_AGENT_DATABASE_URL": env["TRACKER_AGENT_DATABASE_URL"]},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pending"] == 0


@both_backends
def test_status_max_age_alarm_exits_2(invoke: Invoke) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    time.sleep(0.05)
    assert invoke("status", "--max-age", "1h").exit_code == 0
    result = invoke("status", "--max-age", "0")
    assert result.exit_code == 2
    assert "alarm: oldest pending command" in result.stderr
    assert "pending" in result.stdout  # the report is still printed


@both_backends
def test_status_fail_if_paused_exits_2_when_credentials_are_refused(
    invoke: Invoke, fake: FakeExponea
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    assert invoke("status", "--fail-if-paused").exit_code == 0
    fake.revoke_credentials()
    assert invoke("flush").exit_code == 1
    result = invoke("status", "--fail-if-paused")
    assert result.exit_code == 2, result.output
    assert "delivery is paused" in result.stderr
    assert status_json(invoke)["pending"] == 1  # paused, never dead-lettered


@both_backends
def test_status_does_not_import_sqlalchemy_or_requests(invoke: Invoke, env: dict[str, str]) -> None:
    invoke("migrate")
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from tracker_agent.cli import main\n"
        "try:\n    main(['status', '--json'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'requests',"
        " 'alembic', 'apscheduler', 'urllib3'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        timeout=PROCESS_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr


# ---------------------------------------------------------------------------- import


def write_lines(path: Path, records: list[Any]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


@both_backends
def test_import_queues_every_line_in_chunks(
    invoke: Invoke, fake: FakeExponea, tmp_path: Path
) -> None:
    records = [
        {"customer_ids": {"registered": f"u{i}"}, "event_type": "view", "timestamp": 1700000000 + i}
        for i in range(7)
    ]
    records.append(
        {
            "name": "customers",
            "data": {"customer_ids": {"registered": "u0"}, "properties": {"a": 1}},
        }
    )
    records.insert(3, "   ")  # blank lines are skipped
    result = invoke("import", write_lines(tmp_path / "in.jsonl", records), "--chunk-size", "3")
    assert result.exit_code == 0, result.output
    assert "queued 8 commands" in result.stdout
    assert invoke("flush").exit_code == 0
    assert [e["customer_ids"]["registered"] for e in fake.events] == [f"u{i}" for i in range(7)]
    assert len(fake.customer_updates) == 1


def test_import_and_flush_show_a_progress_bar_on_a_terminal(
    env: dict[str, str], fake: FakeExponea, tmp_path: Path
) -> None:
    records = [{"customer_ids": {"registered": str(i)}, "event_type": "t"} for i in range(60)]
    path = write_lines(tmp_path / "in.jsonl", records)
    for args, label in ((["import", path], "importing"), (["flush"], "delivering")):
        main_fd, tty_fd = pty.openpty()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tracker_agent", *args],
                stderr=tty_fd,
                stdout=subprocess.PIPE,
                text=True,
                timeout=PROCESS_TIMEOUT_SECONDS,
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            )
            os.close(tty_fd)
            tty_fd = -1
            shown = _read_all(main_fd)
        finally:
            os.close(main_fd)
            if tty_fd >= 0:
                os.close(tty_fd)
        assert proc.returncode == 0, shown
        assert label in shown and "100%" in shown
    assert len(fake.events) == 60


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_import_reads_stdin(invoke: Invoke) -> None:
    lines = "\n".join(
        json.dumps({"customer_ids": {"registered": str(i)}, "event_type": "t"}) for i in range(4)
    )
    result = invoke("import", "-", input=lines)
    assert result.exit_code == 0, result.output
    assert status_json(invoke)["pending"] == 4


def test_import_bad_json_names_the_line_and_queues_every_other_line(
    invoke: Invoke, tmp_path: Path
) -> None:
    good = {"customer_ids": {"registered": "a"}, "event_type": "t"}
    path = write_lines(tmp_path / "in.jsonl", [good, good, good, "{broken", good])
    result = invoke("import", path, "--chunk-size", "2")
    assert "1 bad line was not queued" in one_error_line(result)
    assert "tracker-agent: line 4: Expecting property name" in result.stderr
    assert result.stdout == "queued 4 commands\n"
    assert status_json(invoke)["pending"] == 4  # line 3 shared a chunk with line 4


def test_import_invalid_command_names_its_line(invoke: Invoke, tmp_path: Path) -> None:
    good = {"customer_ids": {"registered": "a"}, "event_type": "t"}
    bad = {"customer_ids": "not-a-dict", "event_type": "t"}
    path = write_lines(tmp_path / "in.jsonl", [good, good, bad])
    result = invoke("import", path, "--chunk-size", "10")
    one_error_line(result)
    assert "tracker-agent: line 3['data']['customer_ids']: " in result.stderr
    assert status_json(invoke)["pending"] == 2  # the good lines of its chunk


# ---------------------------------------------------------------------------- dead letters


@pytest.fixture
def dead_letters(invoke: Invoke, fake: FakeExponea) -> None:
    for who in ("good", "bad1", "bad2"):
        invoke("track", "event", "--customer", f"registered={who}", "--type", "t")
    fake.reject_commands(
        lambda c: c["data"]["customer_ids"]["registered"].startswith("bad"),
        error="property too long",
    )
    assert invoke("flush").exit_code == 2  # everything left the queue, two dead-lettered
    fake.reject_commands(None)


@pytest.mark.usefixtures("dead_letters")
@both_backends
def test_dead_letters_list_shows_reason_and_filters(invoke: Invoke) -> None:
    result = invoke("dead-letters", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("property too long") == 2 and "bad1" in result.stdout
    rows = [json.loads(x) for x in invoke("dead-letters", "list", "--json").stdout.splitlines()]
    assert [r["customer_ids"]["registered"] for r in rows] == ["bad1", "bad2"]
    assert invoke("dead-letters", "list", "--error-contains", "nothing-like-it").stdout.startswith(
        "no dead letters"
    )
    assert "no dead letters" in invoke("dead-letters", "list", "--older-than", "1h").stdout


@pytest.mark.usefixtures("dead_letters")
@both_backends
def test_dead_letters_retry_requeues_and_delivers(invoke: Invoke, fake: FakeExponea) -> None:
    rows = [json.loads(x) for x in invoke("dead-letters", "list", "--json").stdout.splitlines()]
    result = invoke("dead-letters", "retry", "--id", str(rows[1]["id"]))
    assert result.exit_code == 0 and "re-queued 1 commands" in result.stdout
    assert invoke("flush").exit_code == 0
    assert [e["customer_ids"]["registered"] for e in fake.events] == ["good", "bad2"]
    assert status_json(invoke)["dead"] == 1


@pytest.mark.usefixtures("dead_letters")
@both_backends
def test_dead_letters_retry_and_purge_need_a_selection(invoke: Invoke) -> None:
    assert invoke("dead-letters", "retry").exit_code == 2
    assert invoke("dead-letters", "purge", "--yes").exit_code == 2
    assert status_json(invoke)["dead"] == 2


@pytest.mark.usefixtures("dead_letters")
@both_backends
def test_dead_letters_purge_asks_unless_yes(invoke: Invoke) -> None:
    result = invoke("dead-letters", "purge", "--all", input="n\n")
    assert result.exit_code == 1 and status_json(invoke)["dead"] == 2
    result = invoke("dead-letters", "purge", "--error-contains", "too long", "--yes")
    assert result.exit_code == 0 and "purged 2 dead letters" in result.stdout
    assert status_json(invoke)["dead"] == 0


# ------------------------------------------------------------------ migrate, check, config


def test_migrate_creates_then_reports_head(invoke: Invoke, tmp_path: Path) -> None:
    first = invoke("migrate")
    assert first.exit_code == 0 and "migrated from nothing to" in first.stdout
    assert (tmp_path / "outbox.db").exists()
    assert "already at revision" in invoke("migrate").stdout


def _track(invoke: Invoke, customer: str, n: int) -> None:
    doc = {"customer_ids": {"registered": customer}, "event_type": "e", "properties": {"n": n}}
    assert invoke("track", "event", "--json", json.dumps(doc)).exit_code == 0


def test_migrate_repair_recovers_an_outbox_edited_by_hand(
    invoke: Invoke, fake: FakeExponea, tmp_path: Path
) -> None:
    # A DELETE typed into the sqlite3 shell: no trigger counts it down or hands the flag of
    # the customer's oldest row on (outbox/removal.py), so alice's queue is lost to the claim.
    for n in range(3):
        _track(invoke, "alice", n)
        _track(invoke, "bob", n)
    conn = sqlite3.connect(tmp_path / "outbox.db")
    with conn:
        conn.execute("DELETE FROM outbox WHERE id IN (1, 2)")  # alice's oldest, bob's oldest
    conn.close()
    assert status_json(invoke)["pending"] == 6  # the counters still count the two rows
    stuck = invoke("flush")  # neither customer has a flagged row: nothing is claimed
    assert stuck.exit_code == 1 and "commands remain" in stuck.output
    assert fake.events == []
    assert "queue flags were exact" not in invoke("migrate").stdout  # no repair unasked
    repaired = invoke("migrate", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "recounted 4 commands" in repaired.stdout and "moved 2 queue flags" in repaired.stdout
    assert status_json(invoke)["pending"] == 4
    assert invoke("flush").exit_code == 0
    delivered = sorted((e["customer_ids"]["registered"], e["properties"]["n"]) for e in fake.events)
    assert delivered == [("alice", 1), ("alice", 2), ("bob", 1), ("bob", 2)]
    again = invoke("migrate", "--repair")
    assert "counters and flags were exact (0 commands)" in again.stdout


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_migrate_repair_on_postgresql_has_nothing_to_do(invoke: Invoke) -> None:
    result = invoke("migrate", "--repair")
    assert result.exit_code == 0, result.output
    assert "nothing to repair: PostgreSQL's triggers keep" in result.stdout


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_migrate_on_postgresql_names_the_database_without_its_password(
    invoke: Invoke, database_url: str
) -> None:
    with_password = database_url.replace("postgres@", "postgres:hunter2@")  # trust auth
    first = invoke("migrate", TRACKER_AGENT_DATABASE_URL=with_password)
    assert first.exit_code == 0, first.output
    assert "migrated from nothing to" in first.stdout and "postgres:***@" in first.stdout
    again = invoke("migrate", TRACKER_AGENT_DATABASE_URL=with_password)
    assert "already at revision" in again.stdout
    assert "hunter2" not in first.output + again.output


def test_check_passes_against_the_api_and_prints_clock_skew(invoke: Invoke) -> None:
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert "ok   connectivity" in result.stdout
    assert re.search(
        r"ok   clock: this host is 0\.\d{3} s (behind|ahead of) the server", result.stdout
    )
    assert "ok   project token and credentials: tracking accepted (private key)" in result.stdout
    assert "ok   data API" in result.stdout


@pytest.mark.parametrize(
    "bad",
    [{"TRACKER_AGENT_PASSWORD": "wrong"}, {"TRACKER_AGENT_PROJECT_TOKEN": "other-project"}],
)
def test_check_fails_on_wrong_credentials_or_token_although_time_answers(
    invoke: Invoke, bad: dict[str, str]
) -> None:
    result = invoke("check", **bad)
    assert "ok   connectivity" in result.stdout
    assert "FAIL project token and credentials" in result.stdout
    assert "wrong" not in result.output
    one_error_line(result)


def test_check_warns_about_clock_skew_without_failing(env: dict[str, str]) -> None:
    with FakeExponea(
        project_token=TOKEN, username=USERNAME, password=PASSWORD, time=lambda: time.time() - 30
    ) as skewed:
        result = CliRunner().invoke(cli, ["check"], env={**env, "TRACKER_AGENT_URL": skewed.url})
    assert result.exit_code == 0, result.output
    skew_line = r"warn clock: this host is (29\.9|30\.0)\d\d s ahead of the server"
    assert re.search(skew_line, result.stdout)
    assert "enable NTP" in result.stderr


def test_check_with_a_public_key_proves_tracking_only(invoke: Invoke) -> None:
    result = invoke(
        "check",
        TRACKER_AGENT_USERNAME="",
        TRACKER_AGENT_PASSWORD="",
        TRACKER_AGENT_PUBLIC_KEY="public-key",
    )
    assert result.exit_code == 0, result.output
    assert "tracking accepted (public key)" in result.stdout
    assert "data API" not in result.stdout


def test_check_without_credentials_fails(invoke: Invoke) -> None:
    result = invoke("check", TRACKER_AGENT_USERNAME="", TRACKER_AGENT_PASSWORD="")
    assert "no credentials to check" in one_error_line(result)


def test_check_unreachable_api_is_one_error_line(invoke: Invoke) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    result = invoke(
        "check", TRACKER_AGENT_URL=f"http://127.0.0.1:{port}", TRACKER_AGENT_READ_RETRIES="0"
    )
    assert "the API is not reachable" in one_error_line(result)
    assert "FAIL connectivity" in result.stdout


def test_config_shows_redacted_settings_and_sources(invoke: Invoke) -> None:
    result = invoke("config")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert 'password             = "***"' in result.stdout
    assert "# environment variable TRACKER_AGENT_USERNAME" in result.stdout
    shown = json.loads(invoke("config", "--json").stdout)
    assert shown["password"] == "***" and shown["username"] == USERNAME


def test_json_logs_carry_warnings_without_secrets(invoke: Invoke, tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret-value\n")
    secret_file.chmod(0o644)
    result = CliRunner().invoke(
        cli,
        ["--log-format", "json", "config"],
        env={
            "TRACKER_AGENT_PROJECT_TOKEN": TOKEN,
            "TRACKER_AGENT_USERNAME": USERNAME,
            "TRACKER_AGENT_PASSWORD_FILE": str(secret_file),
        },
    )
    assert result.exit_code == 0, result.output
    [entry] = [json.loads(line) for line in result.stderr.splitlines()]
    assert entry["level"] == "warning" and "readable by every user" in entry["message"]
    assert "s3cret-value" not in result.output


def test_log_redaction_masks_known_secrets_headers_and_url_credentials() -> None:
    logs.add_secrets(["hunter2-secret"])
    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "auth %s failed; Authorization: Basic a2V5OnNlY3JldA== at %s",
        ("hunter2-secret", "https://id:pw@host/x"),
        None,
    )
    text = logs.TextFormatter().format(record)
    entry = json.loads(logs.JsonFormatter().format(record))
    for line in (text, entry["message"]):
        assert "hunter2-secret" not in line and "a2V5OnNlY3JldA" not in line
        assert ":pw@" not in line and "https://id:***@host/x" in line


def test_journald_lines_carry_a_priority_prefix() -> None:
    record = logging.LogRecord("tracker_agent.x", logging.WARNING, __file__, 1, "a\nb", (), None)
    assert logs.TextFormatter(journal=True).format(record) == "<4>tracker_agent.x: a\n<4>b"


# ---------------------------------------------------------------------------- run (subprocesses)


class Daemon:
    """`python -m tracker_agent run` with a notify socket, as systemd would start it."""

    def __init__(
        self,
        env: dict[str, str],
        tmp_path: Path,
        *,
        prefix: tuple[str, ...] = (),
        new_session: bool = False,
        **extra_env: str,
    ) -> None:
        self.socket_path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.sock.settimeout(PROCESS_TIMEOUT_SECONDS)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tracker_agent", "run"],
            start_new_session=new_session,
            env={
                "PATH": os.environ.get("PATH", ""),
                "HOME": str(tmp_path),
                "PYTHONPATH": str(ROOT),
                "NOTIFY_SOCKET": self.socket_path,
                "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
                **env,
                **extra_env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )

    def expect(self, message: bytes) -> None:
        while True:
            got = self.sock.recv(4096)
            if message in got.split(b"\n"):
                return

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
        return self.proc.returncode, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.sock.close()


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**options: Any) -> Daemon:
        started.append(Daemon(env, tmp_path, **options))
        return started[-1]

    yield start
    for d in started:
        d.close()


def test_run_delivers_notifies_systemd_and_exits_0_on_sigterm(
    invoke: Invoke, fake: FakeExponea, daemon: Callable[..., Daemon]
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "before-start")
    d = daemon(WATCHDOG_USEC="2000000")
    d.expect(b"READY=1")
    assert wait_for(lambda: len(fake.events) == 1, PROCESS_TIMEOUT_SECONDS)
    invoke("track", "event", "--customer", "registered=a", "--type", "while-running")
    assert wait_for(lambda: len(fake.events) == 2, PROCESS_TIMEOUT_SECONDS)
    d.expect(b"WATCHDOG=1")
    d.proc.send_signal(signal.SIGTERM)
    d.expect(b"STOPPING=1")
    code, err = d.wait()
    assert code == 0, err
    assert "SIGTERM: stopping" in err and PASSWORD not in err


@both_backends
def test_run_sigterm_mid_drain_exits_0_and_loses_nothing(
    invoke: Invoke, fake: FakeExponea, daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    total = 120  # three batches of 50
    path = write_lines(
        tmp_path / "in.jsonl",
        [
            {"customer_ids": {"registered": f"u{i % 7}"}, "event_type": "e", "properties": {"i": i}}
            for i in range(total)
        ],
    )
    assert invoke("import", path).exit_code == 0
    fake.latency = 0.5  # every answer is late: the first batch is in flight when we signal
    # No clock correction: the latency would hold its first GET system/time as well; this
    # test is about a batch in flight when the signal comes.
    d = daemon(TRACKER_AGENT_CLOCK_CORRECTION="false")
    d.expect(b"READY=1")
    assert wait_for(
        lambda: any(r.path.endswith("/batch") for r in fake.requests), PROCESS_TIMEOUT_SECONDS
    )
    d.proc.send_signal(signal.SIGTERM)
    code, err = d.wait()
    assert code == 0, err
    delivered = len(fake.events)
    assert 0 < delivered < total  # stopped mid-drain, after the request in flight finished
    stats = status_json(invoke)
    assert stats["pending"] + delivered == total and stats["in_flight"] == 0
    fake.latency = 0
    assert invoke("flush").exit_code == 0
    assert sorted(e["properties"]["i"] for e in fake.events) == list(range(total))
    assert fake.duplicate_events == 0


def test_run_second_signal_exits_at_once_with_1(
    invoke: Invoke, fake: FakeExponea, daemon: Callable[..., Daemon]
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    fake.latency = 8.0  # longer than we are willing to wait
    # No clock correction: the latency would hold its first GET system/time as well; this
    # test is about a batch in flight when the signal comes.
    d = daemon(TRACKER_AGENT_CLOCK_CORRECTION="false")
    d.expect(b"READY=1")
    assert wait_for(
        lambda: any(r.path.endswith("/batch") for r in fake.requests), PROCESS_TIMEOUT_SECONDS
    )
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.expect(b"STOPPING=1")
    d.proc.send_signal(signal.SIGINT)
    code, err = d.wait()
    assert code == 1 and time.monotonic() - started < 4.0, err
    assert "second signal (SIGINT): exiting now" in err


def test_run_same_signal_again_within_the_window_is_the_same_graceful_stop(
    invoke: Invoke, fake: FakeExponea, daemon: Callable[..., Daemon]
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    fake.latency = 1.5  # a request is in flight when the signals come
    # No clock correction: the latency would hold its first GET system/time as well; this
    # test is about a batch in flight when the signal comes.
    d = daemon(TRACKER_AGENT_CLOCK_CORRECTION="false")
    d.expect(b"READY=1")
    assert wait_for(
        lambda: any(r.path.endswith("/batch") for r in fake.requests), PROCESS_TIMEOUT_SECONDS
    )
    d.proc.send_signal(signal.SIGTERM)
    d.expect(b"STOPPING=1")  # the first was handled; the second comes well within the window
    d.proc.send_signal(signal.SIGTERM)
    code, err = d.wait()
    assert code == 0, err
    assert err.count("SIGTERM: stopping") == 1 and "second signal" not in err
    assert len(fake.events) == 1  # the request in flight was let finish


def test_run_same_signal_after_the_window_exits_at_once_with_1(
    invoke: Invoke, fake: FakeExponea, daemon: Callable[..., Daemon]
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    fake.latency = 8.0
    # No clock correction: the latency would hold its first GET system/time as well; this
    # test is about a batch in flight when the signal comes.
    d = daemon(TRACKER_AGENT_CLOCK_CORRECTION="false")
    d.expect(b"READY=1")
    assert wait_for(
        lambda: any(r.path.endswith("/batch") for r in fake.requests), PROCESS_TIMEOUT_SECONDS
    )
    d.proc.send_signal(signal.SIGINT)
    d.expect(b"STOPPING=1")
    time.sleep(REPEAT_WINDOW_SECONDS + 0.2)  # an operator's deliberate second Ctrl-C
    started = time.monotonic()
    d.proc.send_signal(signal.SIGINT)
    code, err = d.wait()
    assert code == 1 and time.monotonic() - started < 3.0, err
    assert "second signal (SIGINT): exiting now" in err


def test_run_sigterm_to_the_process_and_then_its_group_is_one_stop(
    fake: FakeExponea, daemon: Callable[..., Daemon]
) -> None:
    d = daemon(new_session=True)  # its own process group, as under `timeout`
    d.expect(b"READY=1")
    os.kill(d.proc.pid, signal.SIGTERM)  # what `timeout` does: the child, then the group
    os.killpg(d.proc.pid, signal.SIGTERM)
    code, err = d.wait()
    assert code == 0, err
    assert err.count("SIGTERM: stopping") == 1 and "second signal" not in err


@pytest.mark.skipif(not shutil.which("timeout"), reason="coreutils timeout is not installed")
def test_run_under_timeout_stops_once_with_exit_0(daemon: Callable[..., Daemon]) -> None:
    d = daemon(prefix=("timeout", "--preserve-status", "3"))
    d.expect(b"READY=1")
    code, err = d.wait()  # timeout sends SIGTERM to the daemon and to its process group
    assert code == 0, err
    assert err.count("SIGTERM: stopping") == 1 and "second signal" not in err
    assert "stopped" in err


@pytest.mark.parametrize(
    ("first", "signum", "after", "repeat"),
    [
        (signal.SIGTERM, signal.SIGTERM, 0.0, True),
        (signal.SIGTERM, signal.SIGTERM, REPEAT_WINDOW_SECONDS - 0.01, True),
        (signal.SIGTERM, signal.SIGTERM, REPEAT_WINDOW_SECONDS, False),
        (signal.SIGINT, signal.SIGINT, 5.0, False),
        (signal.SIGTERM, signal.SIGINT, 0.0, False),
        (signal.SIGINT, signal.SIGTERM, 0.1, False),
    ],
)
def test_a_repeat_is_the_same_signal_within_the_window(
    first: int, signum: int, after: float, repeat: bool
) -> None:
    assert is_repeat((first, 100.0), signum, 100.0 + after) is repeat


def test_run_with_bad_settings_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracker_agent", "run"],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "TRACKER_AGENT_PROJECT_TOKEN": TOKEN,
            "TRACKER_AGENT_URL": "http://example.com",
        },
        timeout=PROCESS_TIMEOUT_SECONDS,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "tracker-agent: error: url (environment variable TRACKER_AGENT_URL): plain http:// to "
        "'example.com' would send credentials unencrypted; use https://, a loopback host, or "
        "set allow_http = true"
    ]


# ---------------------------------------------------------------------------- demo


def test_demo_delivers_to_the_bundled_fake_through_a_separate_outbox(
    invoke: Invoke, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = invoke("demo", "--events", "30", "--failures", "1", XDG_STATE_HOME=str(state))
    assert result.exit_code == 0, result.output
    assert "the fake API received 31 commands" in result.stdout
    assert (state / "tracker-agent" / "demo.db").exists()
    assert not (tmp_path / "outbox.db").exists()  # the configured outbox is never touched
    assert "delivered       31" in result.stdout


@both_backends
def test_resume_makes_the_next_pass_probe_a_paused_outbox_at_once(
    invoke: Invoke, fake: FakeExponea
) -> None:
    invoke("track", "event", "--customer", "registered=a", "--type", "t")
    assert invoke("resume").output.strip() == "delivery is not paused"
    fake.revoke_credentials()
    assert invoke("flush").exit_code == 1  # paused; the next probe is a second or more away
    fake.restore_credentials()
    result = invoke("resume")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("paused (")
    assert "probes the API now" in result.output
    assert invoke("flush").exit_code == 0
    assert status_json(invoke)["pending"] == 0
    assert invoke("resume").output.strip() == "delivery is not paused"


def test_resume_without_an_outbox_says_so(invoke: Invoke) -> None:
    result = invoke("resume")
    assert result.exit_code == 1
    assert "no outbox at" in result.stderr
