"""TrackerAgent's hooks (on_dead_letter, on_error) and its dead-letter calls (list, retry,
purge with the filters of `tracker-agent dead-letters`)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_agent, wait_for

from tracker_agent import (
    AgentClosedError,
    DeadLetter,
    DeliveryError,
    TrackerAgent,
    ValidationError,
)
from tracker_agent.testing import FakeExponea


def is_bad(command: dict[str, Any]) -> bool:
    return str(command["data"]["customer_ids"]["registered"]).startswith("bad")


def track(agent: TrackerAgent, *who: str, event_type: str = "purchase") -> None:
    for name in who:
        agent.tracking.add_event({"registered": name}, event_type)


class Recorder:
    """A hook that records what it gets and in which thread."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.fail = fail

    def __call__(self, arg: Any) -> None:
        self.calls.append(arg)
        self.threads.append(threading.current_thread())
        if self.fail:
            raise RuntimeError("the hook is broken")


# -- on_dead_letter --------------------------------------------------------------------------


def test_on_dead_letter_gets_each_refused_command_with_its_reason_in_the_flushing_thread(
    fake, tmp_path
):
    letters = Recorder()
    fake.reject_commands(is_bad, error="property too long")
    with make_agent(fake, tmp_path / "outbox.db", on_dead_letter=letters) as agent:
        track(agent, "good", "bad1", "bad2")
        result = agent.flush()
        assert (result.delivered, result.dead_lettered) == (1, 2)
        assert all(isinstance(letter, DeadLetter) for letter in letters.calls)
        assert sorted(letter.customer_ids["registered"] for letter in letters.calls) == [
            "bad1", "bad2",
        ]  # fmt: skip
        assert all("property too long" in letter.reason for letter in letters.calls)
        assert [letter.id for letter in letters.calls] == [d.id for d in agent.dead_letters()]
        assert letters.threads == [threading.current_thread()] * 2
        agent.flush()
    assert len(letters.calls) == 2  # each once


def test_on_dead_letter_is_called_from_the_background_drain_thread(fake, tmp_path):
    letters = Recorder()
    fake.reject_commands(is_bad, error="bad customer")
    with make_agent(fake, tmp_path / "outbox.db", drain=True, on_dead_letter=letters) as agent:
        track(agent, "bad1")
        assert wait_for(lambda: len(letters.calls) == 1)
    assert letters.threads[0] is not threading.current_thread()
    assert letters.calls[0].reason == "rejected by the server: bad customer"


def test_on_dead_letter_reports_commands_that_ran_out_of_attempts(fake, tmp_path):
    letters = Recorder()
    fake.fail_next(1, status=503, path_contains="/batch")
    with make_agent(fake, tmp_path / "outbox.db", max_attempts=1, on_dead_letter=letters) as agent:
        track(agent, "ann")
        agent.flush()
    (letter,) = letters.calls
    assert letter.reason.startswith("gave up after 1 attempts") and letter.status_code == 503


def test_hooks_that_raise_are_logged_and_delivery_goes_on(fake, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="tracker_agent")
    letters, errors = Recorder(fail=True), Recorder(fail=True)
    fake.reject_commands(is_bad)
    fake.fail_next(1, status=503, path_contains="/batch")
    with make_agent(
        fake, tmp_path / "outbox.db", drain=True, backoff_base=0.05, backoff_cap=0.05,
        on_dead_letter=letters, on_error=errors,
    ) as agent:  # fmt: skip
        track(agent, "bad1", "good1")
        assert wait_for(lambda: len(fake.events) == 1)
        track(agent, "bad2", "good2")
        assert wait_for(lambda: len(fake.events) == 2)
        assert wait_for(lambda: len(letters.calls) == 2)
    assert len(errors.calls) == 1
    raised = [r for r in caplog.records if "callback raised; delivery goes on" in r.getMessage()]
    assert {r.getMessage() for r in raised} == {
        "the on_dead_letter callback raised; delivery goes on",
        "the on_error callback raised; delivery goes on",
    }
    assert all(r.exc_info is not None for r in raised)  # with the traceback


# -- on_error --------------------------------------------------------------------------------


def test_on_error_reports_a_failed_attempt_with_its_retry_time_once(fake, tmp_path):
    errors = Recorder()
    fake.fail_next(1, status=503, retry_after=30, path_contains="/batch")
    with make_agent(fake, tmp_path / "outbox.db", on_error=errors, backoff_cap=60.0) as agent:
        track(agent, "ann")
        before = time.time()
        assert agent.flush().remaining == 1
        agent.flush()  # the backoff is in force: no new attempt, no new error
    (error,) = errors.calls
    assert isinstance(error, DeliveryError)
    assert error.kind == "backing_off"
    assert "503" in error.message
    assert error.retry_at is not None and error.retry_at >= before + 29
    assert errors.threads == [threading.current_thread()]


def test_on_error_reports_a_pause_and_when_the_probe_is_due(fake, tmp_path):
    errors = Recorder()
    fake.revoke_credentials()
    with make_agent(fake, tmp_path / "outbox.db", on_error=errors) as agent:
        track(agent, "ann")
        agent.flush()
    (error,) = errors.calls
    assert error.kind == "paused"
    assert "authenticate" in error.message.lower()
    assert error.retry_at is not None and error.retry_at > time.time()


def test_on_error_reports_a_storage_failure_from_the_background_drain(fake, tmp_path):
    errors = Recorder()
    db = tmp_path / "outbox.db"
    with make_agent(fake, db, drain=True, on_error=errors) as agent:
        track(agent, "ann")
        with sqlite3.connect(db) as other:  # another project took the file over
            other.execute(
                "UPDATE agent_state SET value = ? WHERE key = 'project_token'",
                (json.dumps("another-project"),),
            )
        track(agent, "bob")
        assert wait_for(lambda: len(errors.calls) >= 1)
    assert errors.calls[0].kind == "storage"
    assert "another-project" in errors.calls[0].message
    assert errors.calls[0].exception is not None
    assert errors.threads[0] is not threading.current_thread()


# -- dead letters from the library -----------------------------------------------------------


@pytest.fixture
def dead(fake: FakeExponea, tmp_path: Path) -> Any:
    """An agent with three dead letters: two "too long", one "bad type"."""
    fake.reject_commands(lambda c: c["data"]["event_type"] != "ok", error="too long")
    with make_agent(fake, tmp_path / "outbox.db") as agent:
        track(agent, "a", "b", event_type="long")
        agent.flush()
        fake.reject_commands(lambda c: c["data"]["event_type"] != "ok", error="bad type")
        track(agent, "c", event_type="typo")
        agent.flush()
        fake.reject_commands(None)
        yield agent


def test_dead_letters_lists_them_oldest_first_with_the_clis_filters(dead):
    every = dead.dead_letters()
    assert [d.customer_ids["registered"] for d in every] == ["a", "b", "c"]
    assert [d.customer_ids["registered"] for d in dead.dead_letters(error_contains="TOO")] == [
        "a", "b",
    ]  # fmt: skip
    assert dead.dead_letters(ids=[every[2].id]) == [every[2]]
    assert dead.dead_letters(ids=[]) == []
    assert dead.dead_letters(older_than=0) == every
    assert dead.dead_letters(older_than=3600) == []
    assert dead.dead_letters(limit=1) == every[:1]
    assert dead.dead_letters(error_contains="too", ids=[every[2].id]) == []  # all must match


def test_retry_dead_letters_requeues_the_selection_and_it_is_delivered(dead, fake):
    moved = dead.retry_dead_letters(error_contains="too long")
    assert moved == 2
    assert dead.flush().delivered == 2
    assert [d.customer_ids["registered"] for d in dead.dead_letters()] == ["c"]
    assert {e["customer_ids"]["registered"] for e in fake.events} == {"a", "b"}


def test_purge_dead_letters_deletes_the_selection_for_good(dead):
    c = dead.dead_letters(error_contains="bad type")[0]
    assert dead.purge_dead_letters(ids=[c.id]) == 1
    assert [d.customer_ids["registered"] for d in dead.dead_letters()] == ["a", "b"]
    assert dead.purge_dead_letters(all=True) == 2
    assert dead.dead_letters() == []
    assert dead.stats()["pending"] == 0


@pytest.mark.parametrize("call", ["retry_dead_letters", "purge_dead_letters"])
def test_retry_and_purge_need_a_selection_or_all(dead, call):
    with pytest.raises(ValidationError, match="say which dead letters"):
        getattr(dead, call)()
    assert len(dead.dead_letters()) == 3


def test_dead_letter_filters_are_checked(dead):
    with pytest.raises(ValidationError, match="older_than"):
        dead.dead_letters(older_than=-1)
    with pytest.raises(ValidationError, match="older_than"):
        dead.purge_dead_letters(older_than=float("nan"))
    with pytest.raises(ValidationError, match="limit"):
        dead.dead_letters(limit=0)
    with pytest.raises(ValidationError, match="ids"):
        dead.retry_dead_letters(ids="12")
    assert len(dead.dead_letters()) == 3


def test_dead_letter_calls_on_a_closed_agent_raise(fake, tmp_path):
    agent = make_agent(fake, tmp_path / "outbox.db")
    agent.close()
    with pytest.raises(AgentClosedError):
        agent.dead_letters()
    with pytest.raises(AgentClosedError):
        agent.retry_dead_letters(all=True)
