"""Hostile input at the edge: each case ends as one "tracker-agent: error: ..." line, exit 1
(click's usage errors: exit 2), no traceback, no hang, and nothing written.

The CLI runs in-process with CliRunner against a FakeExponea on 127.0.0.1 and an outbox in
tmp_path; cases that hung the old code run in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import Invoke, cli_env, cli_invoker

from tracker_agent import TrackerAgent, importing
from tracker_agent.cli import cli
from tracker_agent.exceptions import ValidationError
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 30
HOSTILE_DEPTH = 100_000  # far beyond Python's recursion limit
DEEP_JSON = "[" * HOSTILE_DEPTH + "]" * HOSTILE_DEPTH
JUST_TOO_DEEP_JSON = "[" * 40 + "]" * 40  # parses, then validation refuses it
CUSTOMER = {"customer_ids": {"registered": "a"}}
EVENT = {**CUSTOMER, "event_type": "t"}


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


def one_error_line(result: Result) -> str:
    """The one "tracker-agent: error: ..." line an expected failure ends with (log lines aside)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("tracker-agent: error: ")]
    assert errors == lines[-1:], result.stderr
    assert "Traceback" not in result.output
    return lines[-1]


def pending(env: dict[str, str]) -> int:
    result = CliRunner().invoke(cli, ["status", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return int(json.loads(result.stdout)["pending"])


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, killed after PROCESS_TIMEOUT_SECONDS (a hang fails)."""
    return subprocess.run(
        [sys.executable, "-m", "tracker_agent", *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )


# ---------------------------------------------------------------------------- deep nesting


def test_import_of_json_nested_too_deeply_reports_the_line_and_queues_the_others(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(EVENT) + "\n" + DEEP_JSON + "\n")
    result = invoke("import", str(path))
    assert one_error_line(result) == (
        "tracker-agent: error: 1 bad line was not queued; fix and run the same import again "
        "(lines already queued are skipped)"
    )
    assert "tracker-agent: line 2: nested deeper than 32 levels\n" in result.stderr
    assert pending(env) == 1


def test_import_of_only_json_nested_too_deeply_creates_nothing(
    invoke: Invoke, tmp_path: Path, outbox: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(DEEP_JSON + "\n")
    result = invoke("import", str(path))
    one_error_line(result)
    assert "tracker-agent: line 1: nested deeper than 32 levels\n" in result.stderr
    assert not outbox.exists()


def test_import_of_json_just_too_deep_reports_the_line_and_queues_the_others(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    record = {**EVENT, "properties": {"deep": json.loads(JUST_TOO_DEEP_JSON)}}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(EVENT) + "\n" + json.dumps(record) + "\n")
    result = invoke("import", str(path))
    one_error_line(result)
    [bad] = [line for line in result.stderr.splitlines() if line.startswith("tracker-agent: line")]
    assert bad.startswith("tracker-agent: line 2") and "nested deeper than 32 levels" in bad
    assert pending(env) == 1


@pytest.mark.parametrize("nested", [DEEP_JSON, JUST_TOO_DEEP_JSON])
@pytest.mark.parametrize("command", ["event", "customer"])
def test_track_prop_nested_too_deeply_is_refused_and_creates_nothing(
    invoke: Invoke, outbox: Path, nested: str, command: str
) -> None:
    args = ["track", command, "--customer", "registered=a", "--prop", f"tags={nested}"]
    if command == "event":
        args += ["--type", "t"]
    line = one_error_line(invoke(*args))
    assert "tags" in line and "nested deeper than 32 levels" in line
    assert not outbox.exists()


def test_track_json_nested_too_deeply_names_the_option_and_creates_nothing(
    invoke: Invoke, outbox: Path
) -> None:
    doc = '{"properties": {"x": ' + DEEP_JSON + "}}"
    line = one_error_line(invoke("track", "event", "--type", "t", "--json", doc))
    assert line == "tracker-agent: error: --json: nested deeper than 32 levels"
    assert not outbox.exists()


def test_library_add_event_with_properties_nested_too_deeply_raises_validation_error(
    fake: FakeExponea, outbox: Path
) -> None:
    properties: dict = {"leaf": 1}
    for _ in range(HOSTILE_DEPTH):
        properties = {"a": properties}
    with TrackerAgent(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        database_url=f"sqlite:///{outbox}",
    ) as agent:
        with pytest.raises(ValidationError, match="nested deeper than 32 levels") as info:
            agent.tracking.add_event({"registered": "a"}, "t", properties)
        assert info.value.field.startswith("properties['a']")
        with pytest.raises(ValidationError, match="nested deeper"):
            agent.enqueue_many(
                [{"name": "customers", "data": {**CUSTOMER, "properties": properties}}]
            )
        assert agent.stats()["pending"] == 0


# ---------------------------------------------------------------------------- settings


def test_binary_config_file_is_one_error_line_naming_the_file(
    invoke: Invoke, tmp_path: Path, outbox: Path
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(bytes(range(256)))
    line = one_error_line(invoke("--config", str(cfg), "flush"))
    assert f"config file {cfg}: not UTF-8 text" in line
    assert not outbox.exists()


@pytest.mark.parametrize("url", ["https://[::1", "https://[zz]"])
def test_malformed_url_is_one_error_line_naming_field_and_source(
    invoke: Invoke, outbox: Path, url: str
) -> None:
    line = one_error_line(invoke("flush", TRACKER_AGENT_URL=url))
    assert "url (environment variable TRACKER_AGENT_URL): is not a valid URL" in line
    args = ("track", "event", "--customer", "registered=a", "--type", "t")
    line = one_error_line(invoke("--url", url, *args))
    assert "url (command-line option): is not a valid URL" in line
    assert not outbox.exists()


@pytest.mark.parametrize("rate", ["1e-300", "1e-6", "0", "-5", "nan", "1e9"])
def test_rate_limit_out_of_bounds_is_one_error_line_naming_the_bounds(
    invoke: Invoke, outbox: Path, rate: str
) -> None:
    line = one_error_line(invoke("flush", "--timeout", "5", TRACKER_AGENT_RATE_LIMIT=rate))
    assert (
        "rate_limit (environment variable TRACKER_AGENT_RATE_LIMIT): "
        "must be between 1 and 10000 requests/s, got " in line
    )
    assert not outbox.exists()


def test_password_file_that_never_ends_is_one_error_line(env: dict[str, str]) -> None:
    del env["TRACKER_AGENT_PASSWORD"]
    proc = run_cli("config", env={**env, "TRACKER_AGENT_PASSWORD_FILE": "/dev/zero"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "tracker-agent: error: password (environment variable TRACKER_AGENT_PASSWORD_FILE): "
        "file /dev/zero is larger than 65536 bytes; is it the right file?"
    ]


def test_password_file_from_process_substitution_still_works(
    invoke: Invoke, env: dict[str, str]
) -> None:
    read_end, write_end = os.pipe()  # what bash's <(echo s3cret) hands over as /dev/fd/N
    try:
        os.write(write_end, b"s3cret\n")
        os.close(write_end)
        del env["TRACKER_AGENT_PASSWORD"]
        result = invoke("config", "--json", TRACKER_AGENT_PASSWORD_FILE=f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["password"] == "***"


# ---------------------------------------------------------------------------- command options


@pytest.mark.parametrize("timeout", ["nan", "inf", "1e300", "-1"])
def test_flush_timeout_that_is_not_a_sane_number_of_seconds_is_a_usage_error(
    invoke: Invoke, outbox: Path, timeout: str
) -> None:
    result = invoke("flush", "--timeout", timeout)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout'" in result.stderr
    assert "Traceback" not in result.output
    assert not outbox.exists()


def test_import_of_non_utf8_text_reports_the_line_and_queues_the_others(
    invoke: Invoke, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    good = json.dumps(EVENT).encode()
    path.write_bytes(good + b"\n" + b'{"event_type": "\xff"}\n' + good + b"\n")
    result = invoke("import", str(path), "--chunk-size", "10")
    one_error_line(result)
    assert "tracker-agent: line 2: not UTF-8 text (byte 17 of the line)\n" in result.stderr
    assert pending(env) == 2  # lines 1 and 3 (identical lines are two commands)


def test_import_of_only_non_utf8_text_creates_nothing(
    invoke: Invoke, tmp_path: Path, outbox: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xff\xfe{}\n")
    result = invoke("import", str(path))
    one_error_line(result)
    assert "tracker-agent: line 1: not UTF-8 text (byte 1 of the line)\n" in result.stderr
    assert not outbox.exists()


def test_import_of_a_line_without_end_is_refused_at_the_line_limit(
    invoke: Invoke, tmp_path: Path, outbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importing, "MAX_IMPORT_LINE_BYTES", 1000)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\0" * 5000)  # /dev/zero's first bytes: no newline ever
    line = one_error_line(invoke("import", str(path)))
    assert "line 1: longer than 1000 bytes; is it JSON Lines?; the import stopped" in line
    assert not outbox.exists()


def test_import_of_dev_zero_ends_with_one_error_line(env: dict[str, str], outbox: Path) -> None:
    proc = run_cli("import", "/dev/zero", env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "tracker-agent: error: line 1: longer than 8388608 bytes; is it JSON Lines?; the import "
        "stopped at this line: fix it and run the same import again (lines already queued are "
        "skipped)"
    ]
    assert not outbox.exists()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp, "Is a directory"),
        (lambda tmp: tmp / "missing.jsonl", "No such file or directory"),
    ],
)
def test_import_of_an_unreadable_path_is_one_error_line(
    invoke: Invoke, tmp_path: Path, outbox: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    line = one_error_line(invoke("import", str(path)))
    assert line == f"tracker-agent: error: cannot read {path}: {reason}"
    assert not outbox.exists()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('"text"', "line 1: expected a JSON object, got str"),
        ("{broken", "line 1: Expecting property name"),
    ],
)
def test_import_of_a_line_that_is_not_an_object_is_one_error_line(
    invoke: Invoke, outbox: Path, record: str, message: str
) -> None:
    result = invoke("import", "-", input=record + "\n")
    assert one_error_line(result).startswith("tracker-agent: error: 1 bad line was not queued")
    assert f"tracker-agent: {message}" in result.stderr
    assert not outbox.exists()


def test_import_of_only_blank_lines_queues_nothing_and_creates_nothing(
    invoke: Invoke, outbox: Path
) -> None:
    result = invoke("import", "-", input="\n   \n\t\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "queued 0 commands\n"
    assert not outbox.exists()
