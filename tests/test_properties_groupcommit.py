"""Property test of group commit: for random thread interleavings and per-item failures, each
submit returns if and only if its own item was written, and otherwise raises its own error."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from tracker_agent.outbox.groupcommit import GroupCommitter

THREADED = settings(max_examples=60, deadline=None)
JOIN_SECONDS = 10.0
PAUSES = (0.0, 0.0, 0.0001, 0.0005)  # seconds: most steps run straight, some yield the CPU

OK, ITEM_FAILS, ROUND_FAILS = "ok", "item fails", "round fails"
fates = st.sampled_from([OK, OK, OK, ITEM_FAILS, ROUND_FAILS])


@dataclass(frozen=True)
class Item:
    thread: int
    seq: int
    fate: str


class ItemError(Exception):
    def __init__(self, item: Item) -> None:
        super().__init__(f"{item} refused")
        self.item = item


class RoundError(Exception):
    """The whole transaction failed (think: disk full at COMMIT); nothing of the round written."""


@dataclass
class Log:
    written: list[Item] = field(default_factory=list)
    rounds: list[tuple[list[Item], RoundError | None]] = field(default_factory=list)
    active: int = 0
    overlapped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_write(log: Log, rnd: random.Random):
    pause_lock = threading.Lock()

    def pause() -> None:
        with pause_lock:  # random.Random is not meant to be shared by threads
            seconds = rnd.choice(PAUSES)
        time.sleep(seconds)

    def write(items):
        with log.lock:
            log.active += 1
            log.overlapped |= log.active > 1
        try:
            pause()
            round_items = list(items)
            if any(item.fate == ROUND_FAILS for item in round_items):
                error = RoundError(f"round of {len(round_items)} failed")
                with log.lock:
                    log.rounds.append((round_items, error))
                raise error
            results: list[BaseException | None] = []
            for item in round_items:
                if item.fate == ITEM_FAILS:
                    results.append(ItemError(item))
                else:
                    with log.lock:
                        log.written.append(item)
                    results.append(None)
            with log.lock:
                log.rounds.append((round_items, None))
            return results
        finally:
            with log.lock:
                log.active -= 1

    return write, pause


@THREADED
@given(
    st.lists(st.lists(fates, min_size=1, max_size=8), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=2**32),
)
def test_each_submit_returns_iff_its_item_was_written_else_raises_its_own_error(plan, seed):
    log = Log()
    # A plain Random for the pauses: Hypothesis' own randoms must not be drawn from threads.
    write, pause = make_write(log, random.Random(seed))
    committer = GroupCommitter(write)
    outcomes: dict[Item, BaseException | None] = {}
    start = threading.Barrier(len(plan))

    def caller(thread: int, thread_fates: list[str]) -> None:
        start.wait()
        for seq, fate in enumerate(thread_fates):
            item = Item(thread, seq, fate)
            pause()
            try:
                committer.submit(item)
            except (ItemError, RoundError) as exc:
                outcomes[item] = exc
            else:
                outcomes[item] = None

    threads = [threading.Thread(target=caller, args=(i, f)) for i, f in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a submit never returned"

    submitted = [Item(t, s, fate) for t, fs in enumerate(plan) for s, fate in enumerate(fs)]
    assert sorted(outcomes, key=repr) == sorted(submitted, key=repr)
    assert not log.overlapped  # one round at a time
    in_rounds = [item for items, _ in log.rounds for item in items]
    assert sorted(in_rounds, key=repr) == sorted(submitted, key=repr)  # each in exactly one round
    round_error = {item: error for items, error in log.rounds for item in items}
    written = set(log.written)
    assert len(written) == len(log.written)
    for item, outcome in outcomes.items():
        if outcome is None:
            assert item in written
        else:
            assert item not in written
            if round_error[item] is not None:
                assert outcome is round_error[item]  # the failure of its own round
            else:
                assert isinstance(outcome, ItemError) and outcome.item == item
    # Each thread's items were written in the order it submitted them.
    for thread in range(len(plan)):
        mine = [item.seq for item in log.written if item.thread == thread]
        assert mine == sorted(mine)
