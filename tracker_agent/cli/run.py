"""`tracker-agent run`: the daemon. Drains on the schedule until SIGTERM or SIGINT.

The first signal stops claiming, lets the request in flight finish (shutdown_grace), releases
the leases and exits 0. The same signal again within REPEAT_WINDOW_SECONDS is the same stop:
`timeout`, and a `kill` to the process group, deliver one SIGTERM twice (to the process, then
to its group). Any later signal, or a different one, exits at once with status 1. Talks to
systemd through sd_notify (READY, STATUS, WATCHDOG, STOPPING) when started with Type=notify.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from tracker_agent.cli import logs
from tracker_agent.cli.context import CliContext, pass_cli
from tracker_agent.config import ENV_METRICS_LISTEN
from tracker_agent.sdnotify import Notifier

log = logging.getLogger("tracker_agent.daemon")

#: Exit status after a second signal: the in-flight request was abandoned (leases expire).
EXIT_FORCED = 1
#: The same signal again this soon is the first one delivered twice, not an operator's second
#: Ctrl-C (a person needs longer to see that the stop takes its time).
REPEAT_WINDOW_SECONDS = 1.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_repeat(first: tuple[int, float], signum: int, now: float) -> bool:
    """Whether `signum` at `now` repeats the first stop signal (signum, monotonic time)."""
    first_signum, first_at = first
    return signum == first_signum and now - first_at < REPEAT_WINDOW_SECONDS


class _Shutdown:
    """Signal handlers: the first sets `stop`, a second one (not a repeat) ends the process."""

    def __init__(
        self,
        stop: threading.Event,
        notifier: Notifier,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop = stop
        self.notifier = notifier
        self.grace = grace
        self.clock = clock
        self.first: tuple[int, float] | None = None

    def install(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = self.clock()
        if self.first is None:
            self.first = (signum, now)
            log.info(
                "%s: stopping; the request in flight gets up to %gs (signal again after %gs to "
                "exit at once)",
                name,
                self.grace,
                REPEAT_WINDOW_SECONDS,
            )
            self.notifier.stopping("stopping")
            self.stop.set()
        elif is_repeat(self.first, signum, now):
            log.debug("%s again within %gs: the same stop", name, REPEAT_WINDOW_SECONDS)
        else:
            log.warning(
                "second signal (%s): exiting now; leased commands return after their lease", name
            )
            logging.shutdown()  # flush the handlers: os._exit skips every cleanup
            os._exit(EXIT_FORCED)


def _state_reporter(notifier: Notifier) -> Any:
    from tracker_agent.agent import DeliveryState

    def on_state_change(state: DeliveryState, detail: str | None) -> None:
        # systemd's STATUS only: the drain logs each change once already (a pause, a
        # backoff, a resume, a storage failure); a second line here would repeat it.
        notifier.status(f"{state.value}: {detail}" if detail else state.value)

    return on_state_change


@click.command()
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    envvar=ENV_METRICS_LISTEN,
    show_envvar=True,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; needs "
    "the metrics extra: pip install 'tracker-agent[metrics]').",
)
@pass_cli
def run(cli: CliContext, metrics_listen: str | None) -> None:
    """Run the daemon: deliver the outbox until SIGTERM/SIGINT, then exit 0.

    On the first signal it stops claiming, lets the request in flight finish within
    shutdown_grace and releases its leases. The same signal again within a second is the same
    stop (`timeout` and process-group kills deliver it twice); a signal after that, or a
    different one, exits at once with status 1.
    """
    settings = cli.settings()
    if metrics_listen:  # refuse a bad address or a missing library before opening anything
        from tracker_agent import prometheus

        prometheus.parse_listen(metrics_listen)
        prometheus.require_client("--metrics-listen")
    logs.add_secrets([settings.password, settings.public_key])
    notifier = Notifier(cli.env)
    stop = threading.Event()
    shutdown = _Shutdown(stop, notifier, settings.shutdown_grace)
    shutdown.install()
    from tracker_agent import agent as agent_module

    agent = cli.agent()  # opens and migrates the outbox before READY
    metrics = _serve_metrics(agent, metrics_listen) if metrics_listen else None
    from tracker_agent.outbox.backend import hide_password

    log.info(
        "tracker-agent running: %s -> %s (project %s)",
        hide_password(agent.database_url),
        settings.url,
        settings.project_token,
    )
    notifier.ready("running")

    def heartbeat() -> None:
        notifier.watchdog()

    interval = notifier.watchdog_interval  # WatchdogSec / 2, or None when not watched
    agent.run(
        stop,
        on_state_change=_state_reporter(notifier),
        heartbeat=heartbeat if interval is not None else None,
        heartbeat_interval=interval or agent_module.HEARTBEAT_SECONDS,
    )
    if metrics is not None:
        metrics.stop()
    log.info("stopped")


def _serve_metrics(agent: Any, listen: str) -> Any:
    """The /metrics endpoint of `agent`; if it cannot start, the agent is closed (nothing
    delivered) and the error goes up."""
    from tracker_agent.prometheus import serve

    try:
        return serve(listen, agent.metrics_collector())
    except BaseException:
        agent.close(timeout=0)
        raise
