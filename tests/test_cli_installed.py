"""The installed `tracker-agent` console script end to end: track, status --json, flush.

Runs the real executable (the one pip put on PATH; `python -m tracker_agent` when the package
is only on PYTHONPATH) in subprocesses against FakeExponea, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROCESS_TIMEOUT_SECONDS = 60


@pytest.fixture
def run_cli(fake, tmp_path):
    script = shutil.which("tracker-agent")
    command = [script] if script else [sys.executable, "-m", "tracker_agent"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACKER_AGENT_")}
    config = tmp_path / "config.toml"
    config.write_text("# empty: everything comes from the environment\n")
    env.update(
        TRACKER_AGENT_CONFIG=str(config),
        TRACKER_AGENT_PROJECT_TOKEN=fake.project_token,
        TRACKER_AGENT_USERNAME=fake.username,
        TRACKER_AGENT_PASSWORD=fake.password,
        TRACKER_AGENT_URL=fake.url,
        TRACKER_AGENT_DATABASE_URL=f"sqlite:///{tmp_path / 'outbox.db'}",
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=PROCESS_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )

    return run


def test_track_status_flush_with_the_console_script(run_cli, fake, tmp_path: Path):
    for n in range(3):
        done = run_cli(
            "track", "event", "--customer", "registered=ops", "--type", "purchase",
            "--prop", f"n={n}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    update = run_cli("track", "customer", "--customer", "registered=ops", "--prop", "tier=gold")
    assert update.returncode == 0, update.stderr
    before = run_cli("status", "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["pending"] == 4
    assert fake.requests == []  # tracking only queued
    flushed = run_cli("flush", "--timeout", "30")
    assert flushed.returncode == 0, flushed.stderr
    after = json.loads(run_cli("status", "--json").stdout)
    assert (after["pending"], after["delivered"], after["dead"]) == (0, 4, 0)
    assert [e["properties"]["n"] for e in fake.events] == [0, 1, 2]
    assert fake.customer_updates[0]["properties"] == {"tier": "gold"}


def test_flush_exits_non_zero_when_something_is_left(run_cli, fake):
    assert run_cli("track", "event", "--customer", "registered=x", "--type", "t").returncode == 0
    fake.revoke_credentials()
    result = run_cli("flush", "--timeout", "2")
    assert result.returncode == 1
    assert "tracker-agent: error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert fake.password not in result.stderr + result.stdout
