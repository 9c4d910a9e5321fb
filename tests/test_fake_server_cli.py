"""`python -m tracker_agent.testing`: FakeExponea as a process an operator points the daemon at;
and reject_commands, which judges only the commands it can (never a 500 for system/time).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from tracker_agent.cli import cli
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 20
LAST_LINE = "Serving until Ctrl-C or SIGTERM."


class Served:
    """A running `python -m tracker_agent.testing` and what it printed before serving."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracker_agent.testing", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        deadline = time.monotonic() + PROCESS_TIMEOUT_SECONDS
        while LAST_LINE not in self.lines and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
        assert LAST_LINE in self.lines, self.lines + [
            self.proc.stderr.read() if self.proc.stderr else ""
        ]

    def exports(self) -> dict[str, str]:
        """The variables of its `export NAME=VALUE` lines, as a shell would set them."""
        found = {}
        for line in self.lines:
            words = shlex.split(line)
            if words[:1] == ["export"]:
                name, _, value = words[1].partition("=")
                found[name] = value
        return found

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        _, err = self.proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
        return self.proc.returncode, err


@pytest.fixture
def serve() -> Iterator[type[Served]]:
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, *args: str) -> None:
            started.append(self)
            super().__init__(*args)

    yield Tracked
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_it_prints_url_and_credentials_then_serves_until_a_signal(
    serve: type[Served], signum: int
) -> None:
    served = serve()
    env = served.exports()
    url = env["TRACKER_AGENT_URL"]
    assert url.startswith("http://127.0.0.1:") and any(url in line for line in served.lines[:1])
    assert env["TRACKER_AGENT_PROJECT_TOKEN"] == "test-project"
    assert (env["TRACKER_AGENT_USERNAME"], env["TRACKER_AGENT_PASSWORD"]) == ("key-id", "secret")
    answer = requests.get(f"{url}/track/v2/projects/test-project/system/time", timeout=5)
    assert answer.status_code == 200 and answer.json()["success"] is True
    code, err = served.stop(signum)
    assert (code, err) == (0, "")
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)


def test_the_daemon_delivers_to_it_with_the_printed_environment(
    serve: type[Served], tmp_path: Path, isolated_cli: None
) -> None:
    served = serve("--project-token", "my-test", "--username", "me", "--password", "pw")
    env = served.exports()
    assert env["TRACKER_AGENT_PROJECT_TOKEN"] == "my-test" and env["TRACKER_AGENT_USERNAME"] == "me"
    assert env["TRACKER_AGENT_DATABASE_URL"].endswith("/fake-exponea-outbox.db")
    env["TRACKER_AGENT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fake-outbox.db'}"
    runner = CliRunner()
    checked = runner.invoke(cli, ["check"], env=env)
    assert checked.exit_code == 0, checked.output
    tracked = runner.invoke(cli, ["track", "event", "--customer", "registered=a", "--type", "t"],
                            env=env)  # fmt: skip
    assert tracked.exit_code == 0, tracked.output
    flushed = runner.invoke(cli, ["flush"], env=env)
    assert flushed.exit_code == 0 and "delivered 1," in flushed.stdout, flushed.output
    wrong = runner.invoke(cli, ["check"], env={**env, "TRACKER_AGENT_PASSWORD": "secret"})
    assert wrong.exit_code == 1  # the fake takes the password it was given, not the default
    assert served.stop(signal.SIGTERM)[0] == 0


def test_it_listens_on_the_port_it_is_given(serve: type[Served]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = serve("--port", str(port))
    assert served.exports()["TRACKER_AGENT_URL"] == f"http://127.0.0.1:{port}"
    assert served.stop(signal.SIGTERM)[0] == 0


def test_a_port_in_use_is_one_error_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tracker_agent.testing", "--port", str(port)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=PROCESS_TIMEOUT_SECONDS,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"python -m tracker_agent.testing: error: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    ]


# ---------------------------------------------------------------------------- reject_commands

TRACK = "/track/v2/projects/test-project"


def test_reject_commands_is_asked_only_about_tracking_commands(fake: FakeExponea) -> None:
    judged: list[dict[str, object]] = []

    def predicate(command: dict[str, object]) -> bool:
        judged.append(command)
        return command["data"]["customer_ids"]["registered"] == "bad"  # type: ignore[index]

    fake.reject_commands(predicate, error="bad customer")
    event = {"customer_ids": {"registered": "bad"}, "event_type": "t", "timestamp": 1.0}
    batch = [
        {"name": "system/time", "command_id": "time"},  # no "data": not the predicate's business
        {"name": "customers/events", "data": event, "command_id": "bad"},
        {"name": "customers/events", "data": "not an object", "command_id": "malformed"},
        {"name": "customers", "data": {"customer_ids": {"registered": "ok"}}, "command_id": "ok"},
    ]
    answer = requests.post(
        f"{fake.url}{TRACK}/batch", json={"commands": batch}, auth=("key-id", "secret"), timeout=5
    )
    assert answer.status_code == 200, answer.text
    results = {r["command_id"]: r for r in answer.json()["results"]}
    assert results["time"]["success"] is True and isinstance(results["time"]["time"], float)
    assert results["bad"] == {"success": False, "errors": ["bad customer"], "command_id": "bad"}
    assert results["malformed"]["errors"] == ["data must be an object"]
    assert results["ok"]["success"] is True
    assert [c["command_id"] for c in judged] == ["bad", "ok"]


def test_check_works_while_a_data_reading_predicate_rejects_commands(
    fake: FakeExponea, isolated_cli: None
) -> None:
    # `check` sends a system/time batch: before the fix the predicate's KeyError was a 500.
    fake.reject_commands(lambda c: c["data"]["customer_ids"]["registered"] == "bad")
    env = {
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
    }
    result = CliRunner().invoke(cli, ["check"], env=env)
    assert result.exit_code == 0, result.output
    assert all(r.status != 500 for r in fake.requests)
