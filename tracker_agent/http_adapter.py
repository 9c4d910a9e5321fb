"""The requests adapter of the sessions tracker-agent creates: its urllib3 connections attach
themselves to the current request's deadline (tracker_agent.deadline), so the watchdog can shut
their socket while a request waits to connect, for headers or for the body.

Imported on the first request (it imports requests and urllib3). A SOCKS proxy keeps its own
connection classes, so there only the body is covered (through the response, see transport).
"""

from __future__ import annotations

from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from tracker_agent.deadline import current_watch, shutdown_socket

__all__ = ["DeadlineAdapter"]


def _attach(conn: HTTPConnection) -> None:
    """Make `conn` the way the current request (if watched) is cut off. The closer holds the
    socket object itself: http.client drops `conn.sock` once the headers of an answer that
    closes the connection are in, while the body is still read from that socket."""
    watch = current_watch()
    if watch is None:
        return
    sock = conn.sock
    if sock is None:  # not connected yet: whatever socket it has when the deadline passes
        watch.attach(lambda: shutdown_socket(conn.sock))
    else:  # also fires at once if the deadline passed while it connected
        watch.attach(lambda: shutdown_socket(sock))


class WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        _attach(self)
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)  # a kept-alive connection: connect() is not called again
        super().request(*args, **kwargs)


class WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        _attach(self)
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


def _watch_pools(manager: PoolManager) -> None:
    if manager.pool_classes_by_scheme.get("http") is HTTPConnectionPool:  # not SOCKS's own
        manager.pool_classes_by_scheme = dict(_POOL_CLASSES)


class DeadlineAdapter(HTTPAdapter):
    """HTTPAdapter whose connections (direct or through an HTTP proxy) are watched."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: Any, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _watch_pools(manager)
        return manager
