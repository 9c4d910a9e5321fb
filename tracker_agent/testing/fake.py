"""FakeExponea: lifecycle, request recording and fault injection of the fake API."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time as _time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tracker_agent.testing.emulator import Emulator
from tracker_agent.testing.faults import FaultInjection, FaultQueue, fault_answer, mangle_results
from tracker_agent.testing.protocol import Call, Predicate
from tracker_agent.testing.records import RecordedRequest, StateAccess, command_count, parse_json
from tracker_agent.testing.server import JSON_TYPE, Incoming, LoopbackServer, Outgoing

log = logging.getLogger(__name__)

#: The credentials a FakeExponea accepts unless told otherwise (test values, not secrets).
DEFAULT_PROJECT_TOKEN = "test-project"
DEFAULT_USERNAME = "key-id"
DEFAULT_PASSWORD = "secret"
DEFAULT_PUBLIC_KEY = "public-key"
DEFAULT_HOST = "127.0.0.1"


class FakeExponea(StateAccess, FaultInjection):
    """A stateful Exponea API on a loopback port, for tests. See the package docstring.

    Example::

        with FakeExponea() as fake:
            client = Exponea("test-project", username="key-id", password="secret", url=fake.url)
            fake.fail_next(status=503, retry_after=2)   # the next request gets a 503
            ...                                          # exercise your code
            assert fake.events[0]["event_type"] == "purchase"

    Every accessor returns a copy taken under one lock, so tests may read while clients send.
    """

    def __init__(
        self,
        *,
        project_token: str = DEFAULT_PROJECT_TOKEN,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        public_key: str = DEFAULT_PUBLIC_KEY,
        host: str = DEFAULT_HOST,
        port: int = 0,
        time: Callable[[], float] = _time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._host, self._port = host, port
        self._api = Emulator(
            project_token=project_token,
            username=username,
            password=password,
            public_key=public_key,
            now=time,
        )
        self._faults = FaultQueue()
        self._latency = 0.0
        self._generation = 0  # bumped by reset(); requests still waiting from before are dropped
        self._requests: list[RecordedRequest] = []
        self._batches: list[list[Any]] = []
        self._server: LoopbackServer | None = None

    def __repr__(self) -> str:
        where = self.url if self._port else "not started"
        return f"FakeExponea({where}, project_token={self.project_token!r})"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def project_token(self) -> str:
        return self._api.project_token

    @property
    def username(self) -> str:
        """The accepted HTTP Basic user (the private key id)."""
        return self._api.username

    @property
    def password(self) -> str:
        """The accepted HTTP Basic password (the private key secret; a test value)."""
        return self._api.password

    @property
    def public_key(self) -> str:
        """The accepted "Authorization: Token" key (tracking endpoints only)."""
        return self._api.public_key

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port (0 before the first start() when an ephemeral port was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. "http://127.0.0.1:54321" (no trailing slash)."""
        if not self._port:
            raise RuntimeError("FakeExponea has no port yet: call start() first")
        return f"http://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeExponea:
        """Bind and serve (no-op if running). A restart keeps the port and all state."""
        if self._server is None:
            server = LoopbackServer((self._host, self._port), self._respond)
            self._port = server.port
            server.start()
            self._server = server
            log.debug("FakeExponea serving on %s", self.url)
        return self

    def stop(self) -> None:
        """Close the listening socket and every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.debug("FakeExponea on port %d stopped", self._port)

    def __enter__(self) -> FakeExponea:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all data, faults, settings and the request log, like a fresh fake."""
        with self._lock:
            self._api.reset()
            self._faults.clear()
            self._latency = 0.0
            self._generation += 1
            self._requests.clear()
            self._batches.clear()

    # -- serving ---------------------------------------------------------------------------

    def _respond(self, incoming: Incoming) -> Outgoing:
        parts = urlsplit(incoming.target)
        parsed = parse_json(incoming.body)
        headers = {name.title(): value for name, value in incoming.headers}
        count = command_count(parts.path, parsed)
        record = RecordedRequest(
            incoming.method, parts.path, headers, incoming.body, parsed, None, count,
            parts.query, _time.monotonic(),
        )  # fmt: skip
        # A second parse gives the store objects nobody else holds (cheaper than deepcopy).
        body = parse_json(incoming.body) if isinstance(parsed, dict) else None
        query = dict(parse_qsl(parts.query))
        with self._lock:
            self._requests.append(record)
            if count is not None and parts.path.endswith("/batch"):
                self._batches.append(parsed["commands"])
            fault = self._faults.take(parts.path)
            delay = self._latency
            if fault is not None and fault.answers_instead:
                record.status = None if fault.kind == "drop" else fault.status
                return self._watched(record, fault_answer(fault, delay))
            call = Call(incoming.method, parts.path, query, headers, body)
            keep = fault.keep if fault is not None and fault.kind == "mangle" else None
            if fault is not None:
                delay += fault.seconds
            if delay <= 0 or (fault is not None and fault.apply_first):
                out = self._process(record, call, keep)
                return self._watched(record, dataclasses.replace(out, delay=delay))
            generation = self._generation
        return Outgoing(
            None, delay=delay, then=lambda: self._process_later(record, call, generation, keep)
        )

    def _process(self, record: RecordedRequest, call: Call, keep: int | None = None) -> Outgoing:
        """Let the emulated API answer `call` (lock held); `keep`: mangle a batch answer."""
        status, payload = self._api.dispatch(call)
        record.status, record.processed = status, True
        if keep is not None:
            payload = mangle_results(payload, keep)
        return Outgoing(status, json.dumps(payload).encode(), (JSON_TYPE,))

    def _process_later(
        self, record: RecordedRequest, call: Call, generation: int, keep: int | None
    ) -> Outgoing:
        with self._lock:
            if generation != self._generation:
                return Outgoing(None)  # reset() while it waited: it belongs to an older test
            return self._watched(record, self._process(record, call, keep))

    def _watched(self, record: RecordedRequest, out: Outgoing) -> Outgoing:
        """`out`, noting in `record` when the client hangs up before it is written."""

        def hung_up() -> None:
            with self._lock:
                record.hung_up_at = _time.monotonic()

        return dataclasses.replace(out, on_hangup=hung_up)

    # -- settings --------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds every request waits before it is handled (0 by default); see delay_next."""
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = float(seconds)

    @property
    def max_batch_commands(self) -> int:
        """Batches with more commands are refused with 400 "too many commands" (default 50)."""
        with self._lock:
            return self._api.max_batch_commands

    @max_batch_commands.setter
    def max_batch_commands(self, value: int) -> None:
        with self._lock:
            self._api.max_batch_commands = value

    def reject_commands(self, predicate: Predicate | None, error: str = "rejected") -> None:
        """Fail each tracking command for which predicate(command) is true; None clears.

        The predicate is asked only about commands it can judge: "customers/events" and
        "customers" commands whose "data" is an object. It always gets {"name", "data": {...},
        "command_id"?}; a single tracking call is passed as {"name": ..., "data": body} and
        answers 400. Other commands (system/time, which has no data) and malformed ones are
        answered as the API answers them.
        """
        with self._lock:
            self._api.reject_command = None if predicate is None else (predicate, error)

    def reject_batches_containing(
        self, predicate: Predicate | None, status: int = 400, error: str = "bad command"
    ) -> None:
        """Refuse a whole batch (status, {"success": false, "errors": [error]}) if any command
        matches; None clears. Nothing of a refused batch is applied.

        Unlike reject_commands, the predicate is asked about every command object of the
        batch as sent, system/time ({"name": "system/time"}, no "data") included.
        """
        with self._lock:
            self._api.reject_batch = None if predicate is None else (predicate, status, error)

    def revoke_credentials(self) -> None:
        """From now on every authenticated endpoint answers 401 "Could not authenticate"."""
        with self._lock:
            self._api.revoked = True

    def restore_credentials(self) -> None:
        with self._lock:
            self._api.revoked = False
