"""Servers in their own process (FakeExponea or the SDK sink), driven over stdin/stdout.

The server gets its own interpreter (its own GIL), as a real API would: the client side's
figures are not slowed by the server's Python work sharing the client's GIL.

    python -m bench.servers fake [--reset-every SECONDS]
    python -m bench.servers sink

The child prints {"url": ...} and then answers one JSON line per JSON command line:
"count", "arrivals" (fake), "snapshot" (sink), "reset", "stop".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from types import TracebackType
from typing import Any

from bench.common import PASSWORD, ROOT, TOKEN, USERNAME, child_env, cpu_seconds


class ServerProcess:
    """A server child process; `call(cmd)` sends a command and returns its JSON answer."""

    def __init__(self, kind: str, *args: str) -> None:
        self._argv = [sys.executable, "-m", "bench.servers", kind, *args]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        self._proc = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.url = self._read()["url"]
        return self

    def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server {self._argv[3:]} exited ({self._proc.wait()})")
        return json.loads(line)

    def call(self, cmd: str) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self._proc.stdin.flush()
        return self._read()["answer"]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def cpu(self) -> float:
        """CPU seconds the server process has used so far (see common.cpu_seconds)."""
        return cpu_seconds(self.pid) if self.pid is not None else 0.0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- the child -------------------------------------------------------------------------------


def _fake_answer(fake: Any, cmd: str) -> Any:
    if cmd == "count":
        return {"events": len(fake.events), "duplicates": fake.duplicate_events}
    if cmd == "arrivals":
        return _arrivals(fake.requests)
    if cmd == "reset":
        fake.reset()
        return True
    if cmd.startswith("latency:"):  # seconds every answer waits from now on
        fake.latency = float(cmd.partition(":")[2])
        return True
    raise ValueError(f"unknown command {cmd!r}")


def _arrivals(requests: list[Any]) -> list[list[float]]:
    """[received_at, t0, request number] for every event that carried a "t0" property
    (monotonic clock)."""
    out: list[list[float]] = []
    for number, request in enumerate(requests):
        body = request.json if isinstance(request.json, dict) else {}
        commands = body.get("commands")
        datas = [c.get("data") or {} for c in commands] if isinstance(commands, list) else [body]
        for data in datas:
            t0 = (data.get("properties") or {}).get("t0")
            if isinstance(t0, (int, float)):
                out.append([request.received_at, float(t0), number])
    return out


def _serve_fake(reset_every: float | None) -> None:
    from tracker_agent.testing import FakeExponea

    stop = threading.Event()
    with FakeExponea(project_token=TOKEN, username=USERNAME, password=PASSWORD) as fake:
        if reset_every:
            # Long drains: keep the fake's records (it stores every request) from growing.
            def forget() -> None:
                while not stop.wait(reset_every):
                    fake.reset()

            threading.Thread(target=forget, daemon=True).start()
        _loop(fake.url, lambda cmd: _fake_answer(fake, cmd))
        stop.set()


def _serve_sink() -> None:
    from bench.sink import SinkServer

    server = SinkServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def answer(cmd: str) -> Any:
        if cmd == "snapshot":
            return server.snapshot()
        if cmd == "reset":
            server.reset()
            return True
        raise ValueError(f"unknown command {cmd!r}")

    try:
        _loop(server.url, answer)
    finally:
        server.shutdown()
        server.server_close()


def _loop(url: str, answer: Any) -> None:
    print(json.dumps({"url": url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)["cmd"]
        if cmd == "stop":
            return
        print(json.dumps({"answer": answer(cmd)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=("fake", "sink"))
    parser.add_argument("--reset-every", type=float, default=None)
    args = parser.parse_args(argv)
    if args.kind == "fake":
        _serve_fake(args.reset_every)
    else:
        _serve_sink()


if __name__ == "__main__":
    main()
