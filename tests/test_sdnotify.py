"""sd_notify: real AF_UNIX datagram sockets, path and abstract; watchdog interval rules."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker_agent.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path


def test_ready_with_status_arrives_as_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("draining\nqueue 3") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=draining queue 3"


def test_stopping_watchdog_and_status_messages(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    notifier.status("paused: credentials")
    notifier.stopping()
    assert [sock.recv(4096) for _ in range(3)] == [
        b"WATCHDOG=1",
        b"STATUS=paused: credentials",
        b"STOPPING=1",
    ]


def test_abstract_namespace_socket_is_addressed_with_a_nul_byte() -> None:
    name = f"tracker-agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert notifier.watchdog_interval is None


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False


def test_relative_socket_name_is_ignored() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_for_this_pid(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env) == expected


def test_notifier_has_no_watchdog_interval_without_a_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval is None
