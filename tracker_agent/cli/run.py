"""`tracker-agent run`: the daemon. Drains on the schedule until SIGTERM or SIGINT.

The first signal stops claiming, lets the request in flight finish (shutdown_grace), releases
the leases and exits 0; a second signal exits at once with status 1. Talks to systemd through
sd_notify (READY, STATUS, WATCHDOG, STOPPING) when started with Type=notify.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import click

from tracker_agent.cli import logs
from tracker_agent.cli.context import CliContext, pass_cli
from tracker_agent.sdnotify import Notifier

log = logging.getLogger("tracker_agent.daemon")

#: Exit status after a second signal: the in-flight request was abandoned (leases expire).
EXIT_FORCED = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Shutdown:
    """Signal handlers: the first sets `stop`, the second ends the process at once."""

    def __init__(self, stop: threading.Event, notifier: Notifier, grace: float) -> None:
        self.stop = stop
        self.notifier = notifier
        self.grace = grace
        self.received = 0

    def install(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received += 1
        if self.received > 1:
            log.warning(
                "second signal (%s): exiting now; leased commands return after their lease", name
            )
            logging.shutdown()  # flush the handlers: os._exit skips every cleanup
            os._exit(EXIT_FORCED)
        log.info(
            "%s: stopping; the request in flight gets up to %gs (signal again to exit at once)",
            name,
            self.grace,
        )
        self.notifier.stopping("stopping")
        self.stop.set()


def _state_reporter(notifier: Notifier) -> Any:
    from tracker_agent.agent import DeliveryState

    def on_state_change(state: DeliveryState, detail: str | None) -> None:
        text = f"{state.value}: {detail}" if detail else state.value
        notifier.status(text)
        # The drain already logs each backoff and each resume; say what only we know here.
        if state is DeliveryState.PAUSED:
            log.warning("delivery paused: %s", detail or "no reason given")
        elif not state.quiet and state is not DeliveryState.BACKING_OFF:
            log.warning("delivery state: %s", text)

    return on_state_change


@click.command()
@pass_cli
def run(cli: CliContext) -> None:
    """Run the daemon: deliver the outbox until SIGTERM/SIGINT, then exit 0.

    On the first signal it stops claiming, lets the request in flight finish within
    shutdown_grace and releases its leases; a second signal exits at once.
    """
    settings = cli.settings()
    logs.add_secrets([settings.password, settings.public_key])
    notifier = Notifier(cli.env)
    stop = threading.Event()
    shutdown = _Shutdown(stop, notifier, settings.shutdown_grace)
    shutdown.install()
    from tracker_agent import agent as agent_module

    agent = cli.agent()  # opens and migrates the outbox before READY
    log.info(
        "tracker-agent running: %s -> %s (project %s)",
        agent.database_url,
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
    log.info("stopped")
