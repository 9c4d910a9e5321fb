"""TrackerAgent: durable tracking calls, reads straight through, flush/start/close, fork safety."""

from __future__ import annotations

import os
import threading
import time
import traceback

import pytest
from conftest import make_agent, wait_for

from tracker_agent import AgentClosedError, ValidationError
from tracker_agent.durable import MonotonicTimestamps


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def agent(fake, db_url):
    with make_agent(fake, db_url) as a:
        yield a


def test_add_event_returns_true_once_queued_and_sends_nothing_yet(agent, fake):
    assert agent.tracking.add_event({"registered": "alice"}, "purchase", {"price": 9.5}) is True
    assert agent.stats()["pending"] == 1
    assert fake.requests == []


def test_timestamps_are_fixed_at_enqueue_and_strictly_increase_per_process(agent, fake):
    for n in range(5):
        agent.tracking.add_event({"registered": "alice"}, "view", {"n": n})
    agent.tracking.add_event({"registered": "alice"}, "given", timestamp=1_600_000_000.1234567)
    agent.tracking.update_customer_properties({"registered": "alice"}, {"tier": "gold"})
    before = time.time()
    assert agent.flush().ok
    stamps = [e["timestamp"] for e in fake.events[:5]]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert all(before - 5 < s <= before for s in stamps)  # stamped when queued, not when sent
    assert fake.events[5]["timestamp"] == 1_600_000_000.123457
    (update,) = fake.customer_updates
    assert stamps[-1] < update["update_timestamp"] <= before


def test_timestamp_source_rounds_to_microseconds_and_steps_when_the_clock_stalls_or_goes_back():
    t = 1_700_000_000
    readings = iter([t + 0.1234564, t + 0.1234561, t - 1.0, t + 1.5])
    stamps = MonotonicTimestamps(now=lambda: next(readings))
    got = [stamps.next() for _ in range(4)]
    assert got == [t + 0.123456, t + 0.123457, t + 0.123458, t + 1.5]
    assert all(round(s, 6) == s for s in got)  # six decimals, as the API stores them


def test_bad_input_is_refused_at_the_call_and_nothing_is_written(agent):
    with pytest.raises(ValidationError, match="customer_ids"):
        agent.tracking.add_event({}, "purchase")
    with pytest.raises(ValidationError, match="price"):
        agent.tracking.add_event({"registered": "a"}, "purchase", {"price": float("nan")})
    with pytest.raises(TypeError):
        agent.tracking.update_customer_properties({"registered": "a"}, {"x": object()})
    assert agent.stats()["pending"] == 0


def test_batch_commands_commits_all_or_nothing(agent, fake):
    good = agent.tracking.add_event({"registered": "a"}, "one", batch=True)
    update = agent.tracking.update_customer_properties({"registered": "a"}, {"x": 1}, batch=True)
    bad = {"name": "customers/events", "data": {"customer_ids": {"registered": "a"}}}
    with pytest.raises(ValidationError, match=r"commands\[2\]"):
        agent.tracking.batch_commands([good, update, bad])
    assert agent.stats()["pending"] == 0
    assert agent.tracking.batch_commands([good, update]) == [True, True]
    assert agent.flush().delivered == 2
    assert [e["event_type"] for e in fake.events] == ["one"]


def test_system_time_cannot_be_queued_but_is_read_directly(agent, fake):
    with pytest.raises(ValidationError, match="system/time"):
        agent.tracking.batch_commands([{"name": "system/time"}])
    assert isinstance(agent.tracking.get_system_time(), float)


def test_flush_delivers_everything_and_reports(agent, fake):
    for n in range(120):
        agent.tracking.add_event({"registered": f"c{n % 7}"}, "view", {"n": n})
    seen: list[tuple[int, int]] = []
    result = agent.flush(timeout=10, progress=lambda done, total: seen.append((done, total)))
    assert (result.delivered, result.remaining, result.ok, result.timed_out) == (
        120,
        0,
        True,
        False,
    )
    assert seen[-1] == (120, 120)
    assert sorted(e["properties"]["n"] for e in fake.events) == list(range(120))
    stats = agent.stats()
    assert (stats["pending"], stats["delivered"]) == (0, 120)


def test_flush_with_timeout_waits_out_a_backoff(fake, db_url):
    with make_agent(fake, db_url, backoff_base=0.2, backoff_cap=0.2) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        fake.fail_next(2, status=503, path_contains="/batch")
        result = agent.flush(timeout=10)
    assert result.ok and result.delivered == 1


def test_flush_without_timeout_returns_when_delivery_must_wait(fake, db_url):
    with make_agent(fake, db_url, backoff_base=30.0) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        fake.fail_next(1, status=503, path_contains="/batch")
        result = agent.flush()
    assert (result.ok, result.remaining, result.timed_out) == (False, 1, False)
    assert "ServerError" in result.last_error


def test_a_successful_flush_does_not_report_an_earlier_passes_error(fake, db_url):
    with make_agent(fake, db_url, backoff_base=0.05, backoff_cap=0.05) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        fake.fail_next(1, status=503, path_contains="/batch")
        assert "ServerError" in agent.flush().last_error
        time.sleep(0.1)  # past the backoff
        result = agent.flush()
    assert (result.ok, result.delivered, result.last_error) == (True, 1, None)


def test_started_agent_delivers_in_the_background(agent, fake):
    agent.start()
    for n in range(10):
        agent.tracking.add_event({"registered": "bg"}, "view", {"n": n})
    assert wait_for(lambda: len(fake.events) == 10)
    assert [e["properties"]["n"] for e in fake.events] == list(range(10))


def test_full_batch_wakes_the_drain_before_the_interval(fake, db_url):
    with make_agent(fake, db_url, drain_interval=60.0) as agent:
        agent.start()
        assert wait_for(lambda: agent.background_drain_idle())  # the first run (at start)
        agent.tracking.batch_commands(
            [
                agent.tracking.add_event({"registered": "w"}, "v", {"n": n}, batch=True)
                for n in range(50)
            ]
        )
        assert wait_for(lambda: len(fake.events) == 50, timeout=5)


def test_closed_agent_refuses_calls_and_queued_commands_survive_for_the_next(fake, db_url):
    agent = make_agent(fake, db_url)
    agent.tracking.add_event({"registered": "a"}, "later")
    agent.close()
    agent.close()  # idempotent
    with pytest.raises(AgentClosedError):
        agent.tracking.add_event({"registered": "a"}, "refused")
    with make_agent(fake, db_url) as second:
        assert second.flush().delivered == 1
    assert [e["event_type"] for e in fake.events] == ["later"]


def test_reads_go_straight_to_the_api(agent, fake):
    agent.tracking.update_customer_properties({"registered": "r"}, {"first_name": "Ann"})
    agent.flush()
    assert agent.customer.get_customer({"registered": "r"})["properties"]["first_name"] == "Ann"


def test_stats_has_the_documented_keys(agent):
    assert set(agent.stats()) >= {
        "pending",
        "in_flight",
        "dead",
        "oldest_pending_age_s",
        "delivered",
        "last_success_at",
        "last_error",
        "paused_reason",
    }


def test_unknown_setting_is_a_clear_error(fake, db_url):
    with pytest.raises(ValueError, match="batch_sise"):
        make_agent(fake, db_url, batch_sise=10)


def test_repr_never_shows_the_password(agent, fake):
    assert fake.password not in repr(agent)
    assert fake.password not in repr(agent.client)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_gets_no_drain_thread_and_its_events_are_delivered_by_the_parent(agent, fake):
    agent.start()
    agent.tracking.add_event({"registered": "parent"}, "before-fork")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a pre-fork web worker
        code = 1
        try:
            drain_threads = [t for t in threading.enumerate() if "APScheduler" in t.name]
            agent.tracking.add_event({"registered": "child"}, "from-child")
            code = 0 if not agent.draining_in_background and not drain_threads else 2
        except BaseException:
            traceback.print_exc()
        finally:
            os.write(write, b"x")
            os._exit(code)
    os.close(write)
    os.read(read, 1)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert wait_for(lambda: {e["event_type"] for e in fake.events} == {"before-fork", "from-child"})


def test_oversized_command_is_refused_at_the_call_and_nothing_is_written(agent):
    big = {f"p{i}": "x" * 14_000 for i in range(60)}  # each value is fine, the whole is not
    with pytest.raises(ValidationError, match="limit"):
        agent.tracking.add_event({"registered": "a"}, "huge", big)
    with pytest.raises(ValidationError, match="limit"):
        agent.tracking.update_customer_properties({"registered": "a"}, big)
    assert agent.stats()["pending"] == 0


def test_enqueues_stay_synchronous_full_while_drain_bookkeeping_skips_its_fsync(agent):
    agent.tracking.add_event({"registered": "a"}, "e")
    agent.flush()
    writer = agent.store.backend._writer.driver_connection
    drain = agent.store._drain_conn.driver_connection
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert drain.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


@pytest.mark.parametrize("concurrent_batches", [1, 3])
def test_a_drain_thread_blocked_in_send_stops_the_watchdog_pings(fake, db_url, concurrent_batches):
    # With several drainers, the others' passes end (nothing else is due) and wait for the
    # stuck one's settle: the group shows no progress either.
    pings: list[float] = []
    release = threading.Event()
    settings = {"request_timeout": 0.2, "connect_timeout": 0.1, "busy_timeout": 0.2}
    settings["concurrent_batches"] = concurrent_batches
    with make_agent(fake, db_url, lease_seconds=5.0, **settings) as agent:
        real_send = agent.drainer.send_batch

        def stuck_send(batch):  # a hang no deadline ends (a wedged thread, a deadlock)
            release.wait(30)
            return real_send(batch)

        agent.drainer.send_batch = stuck_send
        stop = threading.Event()
        daemon = threading.Thread(
            target=agent.run,
            args=(stop,),
            kwargs={
                "heartbeat": lambda: pings.append(time.monotonic()),
                "heartbeat_interval": 0.05,
            },
        )
        daemon.start()
        try:
            assert wait_for(lambda: len(pings) >= 3, timeout=5)  # healthy and idle: pings
            agent.tracking.add_event({"registered": "a"}, "view")
            blocked_at = time.monotonic()
            assert wait_for(lambda: not agent.drain_is_alive(), timeout=10)
            time.sleep(0.3)
            silent_since = blocked_at + agent.stall_limit() + 0.1
            assert [t for t in pings if t > silent_since] == []
            release.set()  # unwedged: progress again, and the pings come back
            assert wait_for(lambda: pings[-1] > time.monotonic() - 0.5, timeout=10)
        finally:
            release.set()
            stop.set()
            daemon.join(10)
    assert len(fake.events) == 1
