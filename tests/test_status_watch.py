"""`tracker-agent status --watch`: in a pseudo-terminal, refreshed in place with the delivery
rate and the backlog's ETA; Ctrl-C exits 0 quietly."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_agent, sqlite_url

from tracker_agent.cli import cli
from tracker_agent.cli.watch import delivery_rate, eta_text, watch
from tracker_agent.exceptions import OutboxError
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
READ_TIMEOUT_SECONDS = 20
HOME = "\x1b[H"


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


class Terminal:
    """A child process on a pseudo-terminal (its controlling terminal: Ctrl-C reaches it)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            try:
                os.execve(sys.executable, [sys.executable, *argv], env)
            finally:
                os._exit(127)
        self.output = ""

    def read_until(self, done: Any) -> str:
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while not done(self.output):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; output so far: {self.output!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                self.output += chunk.decode("utf-8", "replace")
        return self.output

    def wait(self) -> int:
        self.read_until(lambda _: False)  # to EOF
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def screens(output: str) -> list[str]:
    return [part for part in output.split(HOME)[1:] if "backlog ETA" in part]


def field(screen: str, label: str) -> str:
    match = re.search(rf"^{label} +(.*?)\x1b\[K", screen, re.MULTILINE)
    assert match, (label, screen)
    return match.group(1)


def test_watch_refreshes_in_place_in_a_terminal_and_ctrl_c_exits_0(
    fake: FakeExponea, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "TERM": "xterm"}  # fmt: skip
    with make_agent(fake, db) as agent:
        for i in range(100):
            agent.tracking.add_event({"registered": f"u{i % 3}"}, "viewed", {"i": i})
        term = Terminal(
            ["-m", "tracker_agent", "status", "--watch", "0.2", "--database-url", sqlite_url(db)],
            env,
        )
        try:
            first = screens(term.read_until(lambda out: len(screens(out)) >= 1))[0]
            assert field(first, "pending") == "100"
            assert field(first, "delivery rate") == "measuring..."
            assert agent.flush(timeout=10).ok
            # a later refresh: everything delivered, a rate measured, no backlog left
            term.read_until(lambda out: "100" in field(screens(out)[-1], "delivered"))
            term.read_until(lambda out: "/s" in field(screens(out)[-1], "delivery rate"))
        finally:
            os.write(term.fd, b"\x03")  # Ctrl-C, as the terminal sends it
            code = term.wait()
    shown = screens(term.output)
    assert len(shown) >= 2
    last = shown[-1]
    assert field(last, "pending") == "0"
    assert float(field(last, "delivery rate").removesuffix("/s").replace(",", "")) > 0
    assert field(last, "backlog ETA") == "-"
    assert code == 0, term.output
    assert "Aborted" not in term.output and "Traceback" not in term.output


@pytest.mark.parametrize(
    ("backlog", "rate", "paused", "expected"),
    [
        (0, None, False, "-"),
        (0, 5.0, True, "-"),
        (10, None, False, "measuring..."),
        (10, 0.0, False, "unknown (nothing delivered lately)"),
        (10, 5.0, True, "never while paused"),
        (100, 50.0, False, "2s"),
        (9000, 50.0, False, "3m 0s"),
    ],
)
def test_eta_of_the_backlog_at_the_measured_rate(
    backlog: int, rate: float | None, paused: bool, expected: str
) -> None:
    assert eta_text(backlog, rate, paused) == expected


def test_delivery_rate_over_the_window_of_samples() -> None:
    assert delivery_rate(deque([(0.0, 0)])) is None
    assert delivery_rate(deque([(1.0, 10), (1.0, 20)])) is None  # no time passed
    assert delivery_rate(deque([(0.0, 0), (1.0, 50), (2.0, 150)])) == 75.0
    assert delivery_rate(deque([(0.0, 10), (2.0, 0)])) == 0.0  # a counter never goes back


def _stats(pending: int, delivered: int) -> dict[str, Any]:
    return {"pending": pending, "in_flight": 0, "dead": 0, "bytes": 0, "delivered": delivered,
            "dead_lettered": 0, "oldest_pending_age_s": None}  # fmt: skip


def test_watch_piped_prints_tables_one_after_another(capsys: pytest.CaptureFixture[str]) -> None:
    reads = iter([_stats(100, 0), _stats(50, 50), _stats(0, 100)])
    ticks = iter([0.0, 1.0, 2.0])
    watch(lambda now: next(reads), 1.0, in_place=False, clock=lambda: next(ticks),
          sleep=lambda s: None, rounds=3)  # fmt: skip
    out = capsys.readouterr().out
    assert HOME not in out
    assert out.count("backlog ETA") == 3
    assert "delivery rate   50.0/s" in out  # 50 delivered in the second second
    assert "backlog ETA     1s" in out  # 50 left at 50/s


def test_watch_shows_a_failed_read_in_place_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    answers: list[Any] = [_stats(1, 0), OutboxError("database is locked"), _stats(0, 1)]

    def read(now: float) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    watch(read, 0.1, in_place=True, sleep=lambda s: None, rounds=3)
    out = capsys.readouterr().out
    assert out.count(HOME) == 3
    assert "database is locked" in out
    assert not answers


def test_watch_of_a_missing_outbox_fails_at_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "absent.db")
    result = CliRunner().invoke(cli, ["status", "--watch", "--database-url", url])
    assert result.exit_code == 1
    assert "tracker-agent: error: no outbox at" in result.stderr


@pytest.mark.parametrize("extra", [["--json"], ["--format", "prometheus"], ["--fail-if-paused"]])
def test_watch_with_script_options_is_a_usage_error(tmp_path: Path, extra: list[str]) -> None:
    url = sqlite_url(tmp_path / "o.db")
    result = CliRunner().invoke(cli, ["status", "--watch", "1", *extra, "--database-url", url])
    assert result.exit_code == 2
    assert "--watch shows the table to a person" in result.stderr


def test_watch_interval_below_a_tenth_of_a_second_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--watch", "0.01"])
    assert result.exit_code == 2
