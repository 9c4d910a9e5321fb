"""Standard output and error that outlive their reader (`tracker-agent status | head -1`).

A write to a pipe whose reader has gone fails with EPIPE. What a command does must not depend
on anyone reading its report: from the first such failure on, writes to that stream are
dropped, and the command finishes its work and exits with the status it would have had
(0 for a `status` that `head` cut short; a `track` has committed the event it reports).
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any, TextIO


class _DropAfterEpipe(io.FileIO):
    """A file descriptor writer that drops its writes once the reader is gone."""

    reader_gone = False

    def write(self, data: Any, /) -> int:
        size = memoryview(data).nbytes
        if self.reader_gone:
            return size
        try:
            return super().write(data)
        except BrokenPipeError:
            self.reader_gone = True
            return size


def _protected(stream: TextIO | None) -> TextIO | None:
    """`stream` rebuilt over a _DropAfterEpipe writer (same descriptor, encoding, buffering);
    as it is when it has no descriptor (closed at start, a test runner's buffer)."""
    if stream is None:
        return None
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    raw = _DropAfterEpipe(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=bool(stream.line_buffering),
        write_through=getattr(stream, "write_through", False),
    )


def survive_closed_pipes() -> None:
    """Replace sys.stdout and sys.stderr for the rest of the process (the command's entry)."""
    sys.stdout = _protected(sys.stdout)
    sys.stderr = _protected(sys.stderr)
