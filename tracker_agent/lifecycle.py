"""What every agent of a process shares: the registry of open agents, the fork handlers that keep
a forked child off its parent's locks, sockets and drain thread, and the hook that delivers
at interpreter exit for agents left open."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config import Settings
    from .outbox.store import OutboxStore

__all__ = ["install_exit_hook", "register_fork_handler"]

log = logging.getLogger("tracker_agent.agent")


class Member(Protocol):
    """What these hooks need of an agent (a TrackerAgent; agent.py imports this module)."""

    settings: Settings
    store: OutboxStore
    _closed: bool

    def _after_fork_in_child(self) -> None: ...

    def _finish_at_exit(self) -> None: ...


# -- open agents and fork() ----------------------------------------------------------------

_agents: weakref.WeakSet[Member] = weakref.WeakSet()
_fork_hook_installed = False


def register_fork_handler(agent: Member) -> None:
    global _fork_hook_installed
    _agents.add(agent)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_hold_agents_for_fork,
            after_in_parent=_release_agents_after_fork,
            after_in_child=_reset_agents_in_child,
        )
        _fork_hook_installed = True


def _open_agents() -> list[Member]:
    return sorted((a for a in list(_agents) if not a._closed), key=id)


def _outbox_agents() -> list[Member]:
    """Open agents with an outbox (not in test mode)."""
    return [a for a in _open_agents() if a.settings.enabled]


_held_for_fork: list[Member] = []


def _hold_agents_for_fork() -> None:
    for agent in _outbox_agents():
        agent.store.hold_for_fork()
        _held_for_fork.append(agent)


def _release_agents_after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().store.release_after_fork()


def _reset_agents_in_child() -> None:
    _held_for_fork.clear()  # the child replaces those locks instead of releasing them
    for agent in _open_agents():
        agent._after_fork_in_child()


# -- interpreter exit ------------------------------------------------------------------------

_exit_hook_installed = False


def install_exit_hook() -> None:
    """Once per process: deliver at interpreter exit (see _deliver_at_exit).

    threading's exit hooks run before Python joins its threads and closes its thread pools
    (concurrent.futures refuses new work after that, and the drain sends through a pool);
    atexit's run after, too late. They run in reverse order of registration: ours, added
    when the first agent opens, after concurrent.futures.thread was imported (agent.py
    imports drain.py, which imports it), runs before its."""
    global _exit_hook_installed
    if _exit_hook_installed:
        return
    register = getattr(threading, "_register_atexit", None) or atexit.register
    try:
        register(_deliver_at_exit)
    except RuntimeError:  # the interpreter is shutting down already
        return
    _exit_hook_installed = True


def _deliver_at_exit() -> None:
    """Each open agent that delivers gets close_timeout seconds to send what is queued, then
    its background drain stops. Never raises: the interpreter's exit must go on."""
    for agent in _outbox_agents():
        try:
            agent._finish_at_exit()
        except BaseException:  # KeyboardInterrupt too: the exit goes on
            log.warning("delivery at exit failed for %r", agent, exc_info=True)
