"""The offline bundle file: pending commands carried from one outbox to another (a USB stick,
a retired host). Writing, verifying and reading it; no outbox, no HTTP (agent.py joins them).

A bundle is one gzip stream of JSON Lines:

    {"tracker_agent_bundle": 1, "bundle_id", "project" (fingerprint), "source_host",
     "source_outbox", "created_at"}                                  <- header
    {"id", "name", "data", "created_at"}                             <- one per command
    {"end": true, "count": N, "sha256": hex of the command lines}   <- trailer

Header and trailer are the manifest: the trailer comes last so that the file is written in
one pass, and a truncated file (no trailer, or a gzip stream cut short) is refused. `id` is
the command's id in its source outbox: with `source_outbox` it names the command wherever it
travels (import keys, see agent.import_bundle). The file is written under a temporary name,
fsynced, renamed, and its directory fsynced: it exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import socket
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import constants as c
from .exceptions import BundleError

__all__ = ["FORMAT_VERSION", "BundleCommand", "BundleWriter", "Manifest", "fingerprint", "read"]

FORMAT_VERSION = 1
_HEADER_KEY = "tracker_agent_bundle"
_FINGERPRINT_BYTES = 8
#: The longest line read: a command is at most the API's command size, far below this.
MAX_LINE_BYTES = c.MAX_IMPORT_LINE_BYTES


def fingerprint(project_token: str) -> str:
    """A short, non-reversible name of a project token (the bundle never holds the token)."""
    return hashlib.sha256(project_token.encode("utf-8")).hexdigest()[: 2 * _FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Manifest:
    bundle_id: str
    project: str
    source_host: str
    source_outbox: str
    created_at: float
    count: int
    sha256: str


@dataclass(frozen=True)
class BundleCommand:
    id: int
    name: str
    data: dict[str, Any]
    created_at: float


class BundleWriter:
    """Writes a bundle to `path` (temporary file, then fsync and rename in `commit`)."""

    def __init__(self, path: str | Path, *, project: str, source_outbox: str, now: float) -> None:
        self.path = Path(path)
        self.bundle_id = uuid.uuid4().hex
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self._raw: IO[bytes] = open(self._tmp, "xb")  # noqa: SIM115 (closed in commit/abort)
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot write ({exc.strerror or exc})") from exc
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0)
        self._hash = hashlib.sha256()
        self.count = 0
        header = {
            _HEADER_KEY: FORMAT_VERSION,
            "bundle_id": self.bundle_id,
            "project": fingerprint(project),
            "source_host": socket.gethostname(),
            "source_outbox": source_outbox,
            "created_at": now,
        }
        self._gz.write(_line(header))

    def add(self, row_id: int, name: str, payload: str, created_at: float) -> None:
        """One stored command (its payload is the command's data as stored, JSON text)."""
        line = _line(
            {"id": row_id, "name": name, "data": json.loads(payload), "created_at": created_at}
        )
        self._hash.update(line)
        self._gz.write(line)
        self.count += 1

    def commit(self, step: Callable[[str], None] | None = None) -> Path:
        """Write the trailer, fsync, rename to `path`, fsync the directory (`step("fsynced")`
        between fsync and rename)."""
        self._gz.write(_line({"end": True, "count": self.count, "sha256": self._hash.hexdigest()}))
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        if step is not None:
            step("fsynced")
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (the outbox still holds every command)."""
        for closing in (self._gz.close, self._raw.close):
            with contextlib.suppress(OSError, ValueError):
                closing()
        self._tmp.unlink(missing_ok=True)


def _line(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every system opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: str | Path) -> tuple[Manifest, Iterator[BundleCommand]]:
    """Verify the whole bundle (format, trailer, count, checksum), then return its manifest and
    an iterator over its commands (a second pass). BundleError, one line, if it is not a
    complete bundle of this format."""
    manifest = _verify(Path(path))
    return manifest, _commands(Path(path))


def _lines(path: Path) -> Iterator[bytes]:
    """The bundle's lines, each at most MAX_LINE_BYTES (a hostile file cannot make us hold a
    gigabyte-long "line" in memory)."""
    try:
        with gzip.open(path, "rb") as f:
            while line := f.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES:
                    raise BundleError(
                        f"{path}: corrupt bundle (a line over {MAX_LINE_BYTES} bytes)"
                    )
                yield line
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: no such file") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise BundleError(f"{path}: not a complete bundle (compressed data: {exc})") from exc


def _verify(path: Path) -> Manifest:
    lines = _lines(path)
    header = _parse(path, next(lines, b""), "header")
    if header.get(_HEADER_KEY) != FORMAT_VERSION:
        version = header.get(_HEADER_KEY)
        what = "not a tracker-agent bundle" if version is None else f"bundle format {version!r}"
        raise BundleError(f"{path}: {what} (this tracker-agent reads format {FORMAT_VERSION})")
    digest, count, trailer = hashlib.sha256(), 0, None
    for raw in lines:
        if trailer is not None:
            raise BundleError(f"{path}: corrupt bundle (data after its end)")
        if raw.startswith(b'{"end":'):
            trailer = _parse(path, raw, "trailer")
            continue
        digest.update(raw)
        count += 1
    if trailer is None:
        raise BundleError(f"{path}: truncated bundle (no end record after {count} commands)")
    if trailer.get("count") != count or trailer.get("sha256") != digest.hexdigest():
        raise BundleError(f"{path}: corrupt bundle (checksum or count does not match)")
    try:
        return Manifest(
            bundle_id=str(header["bundle_id"]),
            project=str(header["project"]),
            source_host=str(header["source_host"]),
            source_outbox=str(header["source_outbox"]),
            created_at=float(header["created_at"]),
            count=count,
            sha256=digest.hexdigest(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: corrupt bundle (header lacks {exc})") from exc


def _parse(path: Path, raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: corrupt bundle (unreadable {what})") from exc
    if not isinstance(obj, dict):
        raise BundleError(f"{path}: corrupt bundle (unreadable {what})")
    return obj


def _commands(path: Path) -> Iterator[BundleCommand]:
    lines = _lines(path)
    next(lines)  # the header, verified
    for raw in lines:
        obj = _parse(path, raw, "command")
        if obj.get("end") is True:
            return
        try:
            yield BundleCommand(
                int(obj["id"]), str(obj["name"]), dict(obj["data"]), float(obj["created_at"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: corrupt bundle (a command lacks {exc})") from exc
