"""Where the outbox lives on disk and what its files may be: the default location, the
SQLite URL's path, the files' permissions (personal data: 0600 whatever the umask), and the
tell-tale of a lost -wal file. Stdlib only.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping
from urllib.parse import unquote

from ..exceptions import ConfigError, OutboxError, StorageFullError, StorageReadOnlyError

__all__ = [
    "DB_FILENAME",
    "FILE_MODE",
    "GROUP_FILE_MODE",
    "create_private_file",
    "default_database_url",
    "prepare_directory",
    "sqlite_path",
    "wal_was_lost",
]

log = logging.getLogger(__name__)

#: Permissions of the outbox file (and so of its -wal and -shm, which SQLite creates with the
#: file's mode): it holds customer ids and properties, personal data. Whatever the umask.
FILE_MODE = 0o600
#: With share_with_group: the apps' group may enqueue into the daemon's outbox.
GROUP_FILE_MODE = 0o660
DIRECTORY_MODE = 0o700
GROUP_DIRECTORY_MODE = 0o770
_OTHERS_BITS = 0o007
DB_FILENAME = "outbox.db"
APP_DIRNAME = "tracker-agent"
_SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")


def default_database_url(env: Mapping[str, str]) -> str:
    """The outbox URL when none is configured: the systemd or XDG state directory, else ~."""
    state_dirs = env.get("STATE_DIRECTORY", "")
    if state_dirs:
        folder = state_dirs.split(":")[0]
    elif os.path.isabs(env.get("XDG_STATE_HOME", "")):  # the XDG spec ignores relative paths
        folder = os.path.join(env["XDG_STATE_HOME"], APP_DIRNAME)
    else:
        folder = os.path.join(_home(env), ".local", "state", APP_DIRNAME)
    path = os.path.join(folder, DB_FILENAME)
    return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F")


def _home(env: Mapping[str, str]) -> str:
    if env.get("HOME"):
        return env["HOME"]
    import pwd  # POSIX only, like systemd; imported here so the module imports anywhere

    try:  # services without User= get no $HOME; the password database still knows it
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError as exc:
        raise ConfigError(
            "database_url: not set, and there is no STATE_DIRECTORY, XDG_STATE_HOME or HOME"
        ) from exc


def sqlite_path(database_url: str) -> str:
    """The absolute file path of an SQLite URL; ConfigError for anything but an SQLite file."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.lower() not in _SQLITE_SCHEMES:
        # Name the scheme only: another database's URL may hold a password.
        raise ConfigError(
            f"database_url: the outbox needs an SQLite file URL (sqlite:///path), "
            f"got a {scheme.lower() if sep else 'non-URL'!r} value"
        )
    if rest and not rest.startswith("/"):
        raise ConfigError("database_url: an SQLite URL has no host: use sqlite:///path")
    database, _, query = rest[1:].partition("?")
    if query:
        raise ConfigError("database_url: query options (?...) are not supported; use settings")
    database = unquote(database)
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError("database_url: the outbox must be a file, not an in-memory database")
    return os.path.abspath(database)


def wal_was_lost(path: str) -> bool:
    """True when the file's -shm is there but its -wal is not.

    SQLite creates the -wal before the -shm and, on the last clean close, deletes the -shm
    before the -wal; a crash leaves both. A lone -shm therefore means the -wal was deleted
    (by hand, or by a cleaner) while a process had the outbox open: whatever was committed
    to it since the last checkpoint is gone.
    """
    return os.path.exists(path + "-shm") and not os.path.exists(path + "-wal")


def prepare_directory(path: str, file_mode: int = FILE_MODE) -> None:
    folder = os.path.dirname(path)
    mode = GROUP_DIRECTORY_MODE if file_mode == GROUP_FILE_MODE else DIRECTORY_MODE
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=mode, exist_ok=True)
            os.chmod(folder, mode)  # makedirs applies the umask to the mode
    except OSError as exc:
        raise StorageReadOnlyError(
            f"{path}: cannot create its directory {folder} ({exc.strerror})"
        ) from exc
    # os.access honours read-only mounts and the immutable flag, even for root.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageReadOnlyError(f"{path}: its directory {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StorageReadOnlyError(f"{path}: the file is not writable")


def create_private_file(path: str, mode: int) -> None:
    """Create the outbox file empty with `mode` before SQLite does (SQLite would apply the
    umask to 0644); an existing file and its -wal/-shm lose any bits for "others"."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        for name in (path, path + "-wal", path + "-shm"):
            _restrict(name)
        return
    except OSError as exc:
        raise translate_os_error(exc, path) from exc
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits the mode asks for
    finally:
        os.close(fd)


def _restrict(name: str) -> None:
    try:
        current = os.stat(name).st_mode & 0o777
        if current & _OTHERS_BITS:
            os.chmod(name, current & ~_OTHERS_BITS)
            log.warning(
                "%s was readable by every user (mode %#o); now %#o",
                name, current, current & ~_OTHERS_BITS,
            )  # fmt: skip
    except FileNotFoundError:
        return
    except OSError as exc:  # not ours to change: say so, but the outbox still works
        log.warning("%s is readable by every user and cannot be restricted: %s", name, exc)


def translate_os_error(exc: OSError, path: str) -> OutboxError:
    """The OutboxError for an OSError raised while creating the outbox file."""
    if exc.errno == errno.ENOSPC:
        return StorageFullError(f"{path}: the disk is full ({exc.strerror})")
    return StorageReadOnlyError(f"{path}: cannot create the file ({exc.strerror})")
