"""Prometheus metrics: the collector an app registers in its own registry, the daemon's
/metrics endpoint (`tracker-agent run --metrics-listen`), and the text that `tracker-agent
status --format prometheus` writes for node_exporter's textfile collector.

Outbox metrics (queue depth, totals, pause) are read from the store at scrape time, so they
are the outbox's, shared by every process on the file and equal to `status --json`; request
metrics come from this process's drain (tally.py). prometheus_client (the `metrics` extra) is
imported here only, and only when a function needs it: the package works without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from .exceptions import ConfigError, MissingDependencyError, TrackerAgentError
from .tally import DeliveryTally, TallySnapshot

__all__ = ["AgentCollector", "parse_listen", "require_client", "serve", "status_text"]

log = logging.getLogger(__name__)

PREFIX = "tracker_agent_"
MAX_PORT = 65535
_NO_STATS: dict[str, Any] = {}


def require_client(feature: str = "Prometheus metrics") -> ModuleType:
    """prometheus_client, or MissingDependencyError naming the extra that installs it."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingDependencyError(feature, "prometheus_client", "metrics") from exc
    return prometheus_client


def parse_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:9464", "[::1]:9464" or ":9464" (every interface) -> (host, port); port 0
    takes any free port (the log says which)."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not int(port_text) <= MAX_PORT:
        raise ConfigError(
            f"metrics_listen: expected HOST:PORT (e.g. 127.0.0.1:9464), got {listen!r}"
        )
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() or c in "/[]" for c in host):
        raise ConfigError(f"metrics_listen: {host!r} is not a host name or address")
    return host or "0.0.0.0", int(port_text)


def _flag(value: object) -> float:
    return 1.0 if value else 0.0


def outbox_families(stats: dict[str, Any]) -> Iterator[Any]:
    """The outbox's metrics from `stats` (OutboxStore.stats / status --json); with no stats,
    the same families without samples (for describe())."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def gauge(name: str, doc: str, value: float | None) -> Any:
        family = GaugeMetricFamily(PREFIX + name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    def counter(name: str, doc: str, value: float | None) -> Any:
        family = CounterMetricFamily(PREFIX + name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    s = stats or None
    paused = s and bool(s.get("paused_reason"))
    yield gauge("pending_commands", "Commands queued and not in flight.", s and s["pending"])
    yield gauge("in_flight_commands", "Commands leased by a drainer now.", s and s["in_flight"])
    yield gauge("dead_letter_commands", "Commands in the dead-letter table now.", s and s["dead"])
    yield gauge("queue_bytes", "Payload bytes in the queue (pending and in flight).",
                s and s["bytes"])  # fmt: skip
    yield gauge("oldest_pending_age_seconds", "Age of the oldest queued command (0: none).",
                s and (s["oldest_pending_age_s"] or 0.0))  # fmt: skip
    yield counter("delivered", "Commands the API accepted.", s and s["delivered"])
    yield counter("dead_lettered", "Commands moved to the dead-letter table.",
                  s and s["dead_lettered"])  # fmt: skip
    yield counter("dropped", "Commands dropped to make room (overflow=drop_oldest).",
                  s and s["dropped"])  # fmt: skip
    yield gauge("paused", "1 while delivery is paused (credentials, configuration).",
                s and _flag(paused))  # fmt: skip
    yield gauge("backing_off", "1 while delivery waits out a backoff after a transient fault.",
                s and _flag(not paused and s.get("next_attempt_at")))  # fmt: skip
    yield gauge("last_success_timestamp_seconds",
                "When a batch was last accepted, Unix time (0: never).",
                s and float(s.get("last_success_at") or 0.0))  # fmt: skip


def tally_families(snap: TallySnapshot | None) -> Iterator[Any]:
    """This process's request metrics; with no snapshot, the families without samples."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    requests = CounterMetricFamily(
        PREFIX + "requests", "Batch requests by outcome (ok, retry, pause, refused).",
        labels=["outcome"],
    )  # fmt: skip
    duration = HistogramMetricFamily(
        PREFIX + "request_duration_seconds", "Batch request duration.", labels=[]
    )
    waited = CounterMetricFamily(
        PREFIX + "rate_limit_wait_seconds", "Time spent waiting for the host's rate limit."
    )
    if snap is not None:
        for outcome, count in snap.requests.items():  # every REQUEST_OUTCOMES, 0 included
            requests.add_metric([outcome], count)
        bounds = snap.bucket_bounds
        buckets = [(_bound(b), n) for b, n in zip(bounds, snap.duration_buckets, strict=True)]
        duration.add_metric([], [*buckets, ("+Inf", snap.duration_count)], snap.duration_sum)
        waited.add_metric([], snap.rate_limit_wait_seconds)
    yield from (requests, duration, waited)


def _bound(bound: float) -> str:
    return repr(float(bound))


class AgentCollector:
    """A prometheus_client custom collector: register it in any CollectorRegistry.

    `stats` returns the outbox's stats (TrackerAgent.stats); it runs at each scrape and costs
    a few index reads. `tally` adds this process's request metrics. An outbox that cannot be
    read at scrape time shows as tracker_agent_outbox_up 0 (the rest of the scrape works)."""

    def __init__(
        self, stats: Callable[[], dict[str, Any]], tally: DeliveryTally | None = None
    ) -> None:
        require_client()
        self._stats = stats
        self._tally = tally

    def describe(self) -> list[Any]:
        """The metric families, without reading the outbox (registration checks names)."""
        families = [*outbox_families(_NO_STATS), self._up(None)]
        if self._tally is not None:
            families += tally_families(None)
        return families

    def collect(self) -> Iterator[Any]:
        try:
            stats = self._stats()
        except TrackerAgentError as exc:
            log.warning("metrics: cannot read the outbox: %s", exc)
            stats = None
        if stats is not None:
            yield from outbox_families(stats)
        yield self._up(stats is not None)
        if self._tally is not None:
            yield from tally_families(self._tally.snapshot())

    @staticmethod
    def _up(readable: bool | None) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(PREFIX + "outbox_up", "1 if the outbox could be read.")
        if readable is not None:
            family.add_metric([], _flag(readable))
        return family


def status_text(stats: dict[str, Any]) -> str:
    """The Prometheus text exposition of the outbox's `stats` (status --format prometheus)."""
    client = require_client("status --format prometheus")
    registry = client.CollectorRegistry()
    registry.register(AgentCollector(lambda: stats))
    return str(client.generate_latest(registry).decode("utf-8"))


class MetricsServer:
    """The /metrics endpoint in a thread of its own; stop() closes it."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(listen: str, collector: AgentCollector) -> MetricsServer:
    """Serve `collector` (and this process's CPU and memory) at http://`listen`/metrics.
    OSError if the address cannot be bound."""
    client = require_client("--metrics-listen")
    host, port = parse_listen(listen)
    registry = client.CollectorRegistry()
    registry.register(collector)
    client.ProcessCollector(registry=registry)
    server, thread = client.start_http_server(port, addr=host, registry=registry)
    log.info("serving metrics at http://%s:%d/metrics", host, server.server_address[1])
    return MetricsServer(server, thread)
