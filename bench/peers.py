"""Figure 3: the SDKs users come from, against servers on 127.0.0.1, for a burst of events.

(a) the original exponea-python-sdk's pattern: one synchronous requests.request() per event,
    a new Session (so a new connection) each time, to FakeExponea's single-event endpoint;
(b) segment-analytics-python and (c) posthog, default settings, pointed at bench.sink;
(d) tracker-agent: agent.start() (background drain, default settings), add_event per event.

For each: calls/s the app thread makes, p50/p99 call latency, events delivered per second
(burst start to last arrival) and events dropped (sent - received). Servers run in their own
process. The original pattern is slow enough to be capped in time (the rest is extrapolated).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import workload
from bench.common import (
    PASSWORD,
    TOKEN,
    USERNAME,
    Scale,
    Section,
    Target,
    agent_kwargs,
    fresh_outbox,
    ms,
    percentile,
    rate,
    remove_db,
)
from bench.servers import ServerProcess

POLL_SECONDS = 0.05
#: A peer that has delivered nothing new for this long is done (it dropped the rest).
STALL_SECONDS = 5.0
#: The original pattern blocks the app for minutes on a 20k burst: stop it after this long.
ORIGINAL_CAP_SECONDS = {False: 15.0, True: 3.0}
REQUEST_TIMEOUT_SECONDS = 10.0
SDK_LOGGERS = ("segment", "posthog", "backoff", "apscheduler")


@dataclass
class PeerResult:
    name: str
    sent: int
    call_seconds: float
    latencies: list[float]
    delivered: int
    deliver_seconds: float
    note: str = ""

    @property
    def dropped(self) -> int:
        return self.sent - self.delivered

    def row(self) -> list[str]:
        return [
            self.name,
            f"{self.sent:,}",
            rate(self.sent / self.call_seconds),
            ms(percentile(self.latencies, 50)),
            ms(percentile(self.latencies, 99)),
            rate(self.delivered / self.deliver_seconds) if self.deliver_seconds else "-",
            f"{self.dropped:,} ({self.dropped / self.sent:.0%})",
        ]


def _burst(
    call: Callable[[int], Any], count: int, cap: float | None = None
) -> tuple[int, float, list[float], list[Any]]:
    """Make up to `count` calls from this thread: (made, seconds, latencies, results)."""
    latencies: list[float] = []
    results: list[Any] = []
    start = time.perf_counter()
    deadline = None if cap is None else start + cap
    for i in range(count):
        before = time.perf_counter()
        results.append(call(i))
        after = time.perf_counter()
        latencies.append(after - before)
        if deadline is not None and after >= deadline:
            break
    return len(latencies), time.perf_counter() - start, latencies, results


def original_pattern(fake_url: str, count: int, cap: float) -> PeerResult:
    import requests
    from requests.auth import HTTPBasicAuth

    endpoint = f"{fake_url}/track/v2/projects/{TOKEN}/customers/events"
    auth = HTTPBasicAuth(USERNAME, PASSWORD)
    failures = 0

    def call(i: int) -> bool:
        nonlocal failures
        customer_ids, event_type, properties = workload.event_args(i)
        body = {
            "customer_ids": customer_ids,
            "event_type": event_type,
            "timestamp": time.time(),
            "properties": properties,
        }
        # What the original SDK does per call: requests.request (a new Session, a new
        # connection), JSON body, HTTP Basic auth, 10 s timeout.
        response = requests.request(
            "POST", endpoint, json=body, auth=auth, timeout=REQUEST_TIMEOUT_SECONDS
        )
        ok = response.status_code == 200
        failures += not ok
        return ok

    made, seconds, latencies, results = _burst(call, count, cap)
    delivered = sum(results)
    note = ""
    if made < count:
        note = (
            f"capped after {seconds:.0f} s: {made:,} of {count:,} events sent; at this rate "
            f"the {count:,}-event burst blocks the app thread for ~{count / made * seconds:.0f} s"
        )
    return PeerResult("original SDK pattern", made, seconds, latencies, delivered, seconds, note)


def _wait_for_sink(server: ServerProcess, expected: int, timeout: float) -> dict[str, Any]:
    """Poll the sink until `expected` events arrived, nothing arrived for STALL_SECONDS,
    or `timeout`; returns its last snapshot."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while True:
        snap = server.call("snapshot")
        now = time.monotonic()
        if snap["events"] != last_count:
            last_count, last_change = snap["events"], now
        if snap["events"] >= expected or now - last_change > STALL_SECONDS or now > deadline:
            return snap
        time.sleep(POLL_SECONDS)


def _sdk_run(
    name: str,
    server: ServerProcess,
    count: int,
    wait: float,
    make: Callable[[str], Any],
    send: Callable[[Any, int], Any],
    accepted: Callable[[Any], bool],
    close: Callable[[Any], None],
) -> PeerResult:
    server.call("reset")
    client = make(server.url)
    try:
        start_mono = time.monotonic()
        made, seconds, latencies, results = _burst(lambda i: send(client, i), count)
        taken = sum(1 for r in results if accepted(r))
        snap = _wait_for_sink(server, taken, wait)
    finally:
        close(client)
    delivered = snap["events"]
    deliver_seconds = max(snap["last_event_at"] - start_mono, seconds) if delivered else 0.0
    note = f"{made - taken:,} refused at the call (in-memory queue full)" if made > taken else ""
    return PeerResult(name, made, seconds, latencies, delivered, deliver_seconds, note)


def segment(server: ServerProcess, count: int, wait: float) -> PeerResult:
    from segment.analytics import Client

    def send(client: Any, i: int) -> Any:
        customer_ids, event_type, properties = workload.event_args(i)
        return client.track(
            user_id=customer_ids["registered"], event=event_type, properties=properties
        )

    return _sdk_run(
        "segment-analytics-python",
        server,
        count,
        wait,
        make=lambda url: Client(write_key="bench-write-key", host=url),
        send=send,
        accepted=lambda result: bool(result[0]),
        close=lambda client: client.shutdown(),
    )


def _quiet(client: Any) -> Any:
    """PostHog sets its logger to WARNING when constructed: silence it again (one warning per
    dropped event otherwise)."""
    logging.getLogger("posthog").setLevel(logging.CRITICAL)
    return client


def posthog(server: ServerProcess, count: int, wait: float) -> PeerResult:
    from posthog import Posthog

    def send(client: Any, i: int) -> Any:
        customer_ids, event_type, properties = workload.event_args(i)
        return client.capture(
            event_type, distinct_id=customer_ids["registered"], properties=properties
        )

    return _sdk_run(
        "posthog",
        server,
        count,
        wait,
        make=lambda url: _quiet(Posthog("phc_bench_key", host=url)),
        send=send,
        accepted=lambda result: result is not None,
        close=lambda client: client.shutdown(),
    )


def tracker_agent(fake: ServerProcess, count: int, wait: float, workdir: str) -> PeerResult:
    from tracker_agent import TrackerAgent

    fake.call("reset")
    path = os.path.join(workdir, "peers.db")
    database_url = fresh_outbox(path)
    pool = workload.event_pool()
    with TrackerAgent(**agent_kwargs(fake.url, database_url)) as agent:
        agent.start()

        def call(i: int) -> bool:
            customer_ids, event_type, properties = pool[i % len(pool)]
            return agent.tracking.add_event(customer_ids, event_type, properties)

        start = time.perf_counter()
        made, seconds, latencies, _ = _burst(call, count)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            stats = agent.stats()
            if stats["pending"] + stats["in_flight"] == 0:
                break
            time.sleep(POLL_SECONDS)
        deliver_seconds = time.perf_counter() - start
    delivered = fake.call("count")["events"]
    remove_db(path)
    return PeerResult(
        "tracker-agent (durable)", made, seconds, latencies, delivered, deliver_seconds
    )


def run(scale: Scale, workdir: str) -> Section:
    section = Section(
        "peers",
        f"3. Peers: a burst of {scale.peer_burst:,} events from one app thread",
        [
            "client",
            "events sent",
            "calls/s (app thread)",
            "p50 call",
            "p99 call",
            "delivered/s",
            "dropped",
        ],
    )
    quiet = [logging.getLogger(name) for name in SDK_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # "queue is full" is logged once per dropped event
        logger.setLevel(logging.CRITICAL)
    try:
        with ServerProcess("fake") as fake, ServerProcess("sink") as sink:
            count, wait = scale.peer_burst, scale.peer_wait_seconds
            results = [
                original_pattern(fake.url, count, ORIGINAL_CAP_SECONDS[scale.quick]),
                segment(sink, count, wait),
                posthog(sink, count, wait),
                tracker_agent(fake, count, wait, workdir),
            ]
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    section.rows += [result.row() for result in results]
    section.notes += [f"{r.name}: {r.note}" for r in results if r.note]
    section.notes += [
        "delivered/s = events received by the server / (first call to last arrival); "
        "dropped = sent - received by the server.",
        "tracker-agent runs with its defaults (rate_limit 100 requests/s, drain_interval 1 s, "
        "synchronous=FULL): every call returns after its event is on disk.",
        "Segment and PostHog: default settings (in-memory queue of 10,000, background "
        "uploads of 100 events); their servers are bench.sink (counts events, answers 200).",
    ]
    ours = results[-1]
    section.targets.append(
        Target(
            "tracker-agent drops none of the burst",
            "0 dropped",
            f"{ours.dropped:,}",
            ours.dropped == 0,
        )
    )
    return section
