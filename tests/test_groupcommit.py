"""Group commit: callers share rounds, each returns only after its own item is written."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_for

from tracker_agent.outbox.groupcommit import GroupCommitter


def test_single_caller_writes_in_its_own_thread():
    seen: list[tuple[str, list[int]]] = []

    def write(items):
        seen.append((threading.current_thread().name, list(items)))
        return [None] * len(items)

    committer = GroupCommitter(write)
    committer.submit(1)
    committer.submit(2)
    me = threading.current_thread().name
    assert seen == [(me, [1]), (me, [2])]


def test_waiting_callers_are_written_together_and_each_returns_after_its_write():
    rounds: list[list[int]] = []
    written: set[int] = set()
    gate = threading.Event()
    first_round = threading.Event()

    def write(items):
        if not rounds:
            first_round.set()
            gate.wait(5)  # hold the first round so that others queue behind it
        rounds.append(list(items))
        written.update(items)
        return [None] * len(items)

    committer = GroupCommitter(write)
    returned_before_written: list[int] = []

    def call(i: int) -> None:
        committer.submit(i)
        if i not in written:
            returned_before_written.append(i)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert first_round.wait(5)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 9)]
    for t in others:
        t.start()
    assert wait_for(lambda: committer.queued == 8, timeout=5)
    gate.set()
    for t in [first, *others]:
        t.join(5)
    assert rounds[0] == [0]
    assert sorted(i for r in rounds[1:] for i in r) == list(range(1, 9))
    assert len(rounds) < 9  # at least some callers shared a commit
    assert returned_before_written == []


def test_each_caller_gets_its_own_error_and_a_failed_round_fails_everyone_in_it():
    def write(items):
        if "boom" in items:
            raise OSError("disk full")
        return [ValueError(f"bad {i}") if i == "bad" else None for i in items]

    committer = GroupCommitter(write)
    committer.submit("ok")
    with pytest.raises(ValueError, match="bad bad"):
        committer.submit("bad")
    with pytest.raises(OSError, match="disk full"):
        committer.submit("boom")
    committer.submit("ok again")  # the committer recovers after a failed round


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt raised in a caller blocked in submit()."""


@pytest.mark.parametrize("when", ["while waiting", "just after the lead passed to it"])
def test_a_caller_interrupted_in_line_does_not_stall_the_others(monkeypatch, when):
    from tracker_agent.outbox import groupcommit

    gate = threading.Event()
    written: list[int] = []

    def write(items):
        if not written:
            gate.wait(5)  # hold the first round so that the others queue behind it
        written.extend(items)
        return [None] * len(items)

    class InterruptedRequest(groupcommit._Request):
        """The wake lock of the first queued caller raises instead of returning."""

        def __init__(self, item):
            super().__init__(item)
            if item == 1:
                real = self.wake

                class Wake:
                    def acquire(self, blocking=True):
                        if blocking and when != "while waiting":
                            real.acquire()  # the lead (or the result) arrives, then Ctrl-C
                            real.release()
                        if blocking:
                            raise Interrupt
                        return real.acquire(blocking=False)

                    def release(self):
                        real.release()

                self.wake = Wake()

    monkeypatch.setattr(groupcommit, "_Request", InterruptedRequest)
    committer = GroupCommitter(write)
    leader = threading.Thread(target=committer.submit, args=(0,))
    leader.start()
    while not committer._leading:
        time.sleep(0.001)
    outcome: list[BaseException] = []

    def interrupted_caller():
        try:
            committer.submit(1)
        except Interrupt as exc:
            outcome.append(exc)

    first = threading.Thread(target=interrupted_caller)
    first.start()
    assert wait_for(lambda: committer.queued > 0 or not first.is_alive(), timeout=5)
    second = threading.Thread(target=committer.submit, args=(2,))
    second.start()
    while committer.queued < (2 if first.is_alive() else 1):
        time.sleep(0.001)
    gate.set()
    for thread in (leader, first, second):
        thread.join(5)
        assert not thread.is_alive()
    assert len(outcome) == 1
    assert written == [0, 2]  # the interrupted caller's item was not written; the next one was
    committer.submit(3)  # and the committer still works
    assert written == [0, 2, 3]
