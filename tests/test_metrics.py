"""Prometheus metrics: /metrics of the daemon during a drain, the collector an app registers,
`status --format prometheus` (parsed by prometheus_client's own parser), the lazy import."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import cli_env, make_agent, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tracker_agent.cli import cli
from tracker_agent.exceptions import (
    AuthenticationError,
    BadRequestError,
    MissingDependencyError,
    OutboxError,
    ServerError,
    TransportError,
)
from tracker_agent.outcomes import request_outcome
from tracker_agent.prometheus import AgentCollector, parse_listen
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 20
HELD_SECONDS = 3.0  # the first batch's answer is held this long: the scrape happens meanwhile


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


@pytest.fixture
def env(fake: FakeExponea, tmp_path: Path) -> dict[str, str]:
    return cli_env(fake, f"sqlite:///{tmp_path / 'outbox.db'}", TRACKER_AGENT_REQUEST_TIMEOUT="10")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels), via prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def status_json(env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode("utf-8"))


def queue(fake: FakeExponea, path: Path, count: int) -> None:
    with make_agent(fake, path) as agent:
        for i in range(count):
            agent.tracking.add_event({"registered": f"u{i % 5}"}, "viewed", {"i": i})


def agrees_with_status(found: dict[Any, float], stats: dict[str, Any]) -> None:
    assert value(found, "tracker_agent_pending_commands") == stats["pending"]
    assert value(found, "tracker_agent_in_flight_commands") == stats["in_flight"]
    assert value(found, "tracker_agent_dead_letter_commands") == stats["dead"]
    assert value(found, "tracker_agent_queue_bytes") == stats["bytes"]
    assert value(found, "tracker_agent_delivered_total") == stats["delivered"]
    assert value(found, "tracker_agent_dead_lettered_total") == stats["dead_lettered"]
    assert value(found, "tracker_agent_dropped_total") == stats["dropped"]
    assert value(found, "tracker_agent_paused") == (1.0 if stats["paused_reason"] else 0.0)


# ---------------------------------------------------------------------------- the daemon


def test_metrics_scraped_during_a_drain_match_status_json(
    fake: FakeExponea, env: dict[str, str], tmp_path: Path
) -> None:
    queue(fake, tmp_path / "outbox.db", 120)  # three batches of 50
    fake.delay_next(
        1, seconds=HELD_SECONDS, path_contains="/batch"
    )  # the first batch stays in flight meanwhile
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker_agent", "run", "--metrics-listen", f"127.0.0.1:{port}"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp_path),
            "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
            **env,
        },  # fmt: skip
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        # The first batch is held on the wire; the drainer claims the next one behind it (it
        # waits for the first's settle): 100 leased, then nothing moves until the hold ends.
        assert wait_for(lambda: status_json(env)["in_flight"] == 100, PROCESS_TIMEOUT_SECONDS)
        during = samples(scrape(port))
        stats = status_json(env)  # the batch is still held: nothing moved in between
        assert stats["in_flight"] == 100 and stats["delivered"] == 0
        agrees_with_status(during, stats)
        assert value(during, "tracker_agent_oldest_pending_age_seconds") > 0
        assert value(during, "tracker_agent_requests_total", outcome="ok") == 0

        assert wait_for(lambda: len(fake.events) == 120, PROCESS_TIMEOUT_SECONDS)
        assert wait_for(lambda: status_json(env)["in_flight"] == 0, PROCESS_TIMEOUT_SECONDS)
        after = samples(scrape(port))
        stats = status_json(env)
        agrees_with_status(after, stats)
        assert stats["delivered"] == 120
        requests = value(after, "tracker_agent_requests_total", outcome="ok")
        assert requests >= 3
        assert value(after, "tracker_agent_request_duration_seconds_count") == requests
        # the held request took at least HELD_SECONDS: not in the buckets below that
        assert value(after, "tracker_agent_request_duration_seconds_bucket", le="2.5") < requests
        assert value(after, "tracker_agent_request_duration_seconds_sum") >= HELD_SECONDS
        assert value(after, "tracker_agent_last_success_timestamp_seconds") == pytest.approx(
            stats["last_success_at"]
        )
        assert ("process_resident_memory_bytes", ()) in after
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    assert proc.returncode == 0, err
    assert f"serving metrics at http://127.0.0.1:{port}/metrics" in err


def test_metrics_listen_on_a_port_in_use_fails_with_one_error_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["run", "--metrics-listen", f"127.0.0.1:{port}"], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("tracker-agent: error: ")
    assert "Address already in use" in result.stderr


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:", "127.0.0.1:99999", "a b:1", "h:x"])
def test_metrics_listen_refuses_what_is_not_host_port(env: dict[str, str], listen: str) -> None:
    result = CliRunner().invoke(cli, ["run", "--metrics-listen", listen], env=env)
    assert result.exit_code == 1
    assert "tracker-agent: error: metrics_listen:" in result.stderr


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        (":9464", ("0.0.0.0", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen_reads_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


# ---------------------------------------------------------------------------- the library


def test_collector_counts_an_apps_requests_by_outcome(fake: FakeExponea, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with make_agent(fake, tmp_path / "o.db", backoff_base=0.01, backoff_cap=0.02) as agent:
        registry.register(agent.metrics_collector())
        for i in range(60):
            agent.tracking.add_event({"registered": "a"}, "viewed", {"i": i})
        fake.fail_next(1, status=503, path_contains="/batch")
        assert agent.flush(timeout=10).ok
        found = samples(generate_latest(registry).decode())
        stats = agent.stats()
    agrees_with_status(found, stats)
    assert value(found, "tracker_agent_requests_total", outcome="retry") == 1
    assert value(found, "tracker_agent_requests_total", outcome="ok") == 2
    assert value(found, "tracker_agent_request_duration_seconds_count") == 3
    assert value(found, "tracker_agent_rate_limit_wait_seconds_total") >= 0
    assert value(found, "tracker_agent_outbox_up") == 1


def test_collector_shows_pause_and_dead_letters(fake: FakeExponea, tmp_path: Path) -> None:
    with make_agent(fake, tmp_path / "o.db") as agent:
        collector = agent.metrics_collector()
        agent.tracking.add_event({"registered": "a"}, "viewed")
        fake.reject_commands(lambda command: True, "bad command")
        agent.flush()
        fake.reject_commands(None)
        agent.tracking.add_event({"registered": "a"}, "viewed")
        fake.revoke_credentials()
        agent.flush()
        registry = CollectorRegistry()
        registry.register(collector)
        found = samples(generate_latest(registry).decode())
        stats = agent.stats()
    agrees_with_status(found, stats)
    assert value(found, "tracker_agent_paused") == 1
    assert value(found, "tracker_agent_dead_letter_commands") == 1
    assert value(found, "tracker_agent_dead_lettered_total") == 1
    assert value(found, "tracker_agent_requests_total", outcome="pause") == 1


def test_an_unreadable_outbox_scrapes_as_outbox_up_0() -> None:
    def broken() -> dict[str, Any]:
        raise OutboxError("disk I/O error")

    registry = CollectorRegistry()
    registry.register(AgentCollector(broken))
    found = samples(generate_latest(registry).decode())
    assert found == {("tracker_agent_outbox_up", ()): 0.0}


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ([{"success": True}], "ok"),
        ([{"success": False, "errors": ["no"]}], "ok"),
        (ServerError("down", status_code=503), "retry"),
        (TransportError("refused"), "retry"),
        (AuthenticationError("who", status_code=401), "pause"),
        (BadRequestError("bad", status_code=400), "refused"),
    ],
)
def test_request_outcome_names_what_the_drain_does(answer: Any, outcome: str) -> None:
    assert request_outcome(answer) == outcome


# ---------------------------------------------------------------------------- textfile


def test_status_format_prometheus_is_parsed_by_prometheus_client_and_matches_json(
    fake: FakeExponea, env: dict[str, str], tmp_path: Path
) -> None:
    queue(fake, tmp_path / "outbox.db", 7)
    result = CliRunner().invoke(cli, ["status", "--format", "prometheus"], env=env)
    assert result.exit_code == 0, result.output
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    assert families["tracker_agent_delivered"].type == "counter"
    assert families["tracker_agent_pending_commands"].type == "gauge"
    stats = status_json(env)
    found = samples(result.stdout)
    agrees_with_status(found, stats)
    assert stats["pending"] == 7
    assert not any(name.startswith("tracker_agent_request") for name, _ in found)


def test_status_json_and_format_prometheus_together_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["status", "--json", "--format", "prometheus"], env=env)
    assert result.exit_code == 2
    assert "give one of them" in result.stderr


# ---------------------------------------------------------------------------- the extra


def test_without_prometheus_client_the_package_works_and_metrics_say_what_to_install(
    fake: FakeExponea, tmp_path: Path
) -> None:
    script = f"""
import sys
sys.modules["prometheus_client"] = None  # import prometheus_client now raises ImportError
from tracker_agent import TrackerAgent, MissingDependencyError
agent = TrackerAgent({fake.project_token!r}, {fake.username!r}, {fake.password!r},
                     url={fake.url!r}, database_url={f"sqlite:///{tmp_path / 'o.db'}"!r},
                     drain=False)
agent.tracking.add_event({{"registered": "a"}}, "viewed")
assert agent.flush(timeout=10).ok
try:
    agent.metrics_collector()
except MissingDependencyError as exc:
    print(exc)
agent.close()
from tracker_agent.cli import main
sys.argv = ["tracker-agent", "status", "--format", "prometheus",
            "--database-url", {f"sqlite:///{tmp_path / 'o.db'}"!r}]
main()
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
        cwd=tmp_path,
    )
    hint = "needs the prometheus_client library: pip install 'tracker-agent[metrics]'"
    assert hint in result.stdout
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(hint)
    assert len(fake.events) == 1


def test_importing_the_package_and_draining_never_imports_prometheus_client() -> None:
    script = (
        "import sys, tracker_agent.agent, tracker_agent.cli, tracker_agent.drain\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_missing_dependency_error_is_an_import_error_with_the_extra() -> None:
    error = MissingDependencyError("x", "prometheus_client", "metrics")
    assert isinstance(error, ImportError) and error.extra == "metrics"
