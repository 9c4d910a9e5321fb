"""README.md's examples run (issue 12 item 9): every ```python and ```sh block, taken from the
README itself, against a FakeExponea this test starts, top to bottom in one temporary
directory, as a newcomer following the README would.

The rules (README.md's "Development" section states them too):

- Substitutions: the README's placeholders become the fake's values (SUBSTITUTIONS): the
  API URL, project token, key id and secret, and the daemon's outbox path becomes a
  temporary outbox. Shell commands get the same through TRACKER_AGENT_* variables, as the
  lines `python -m tracker_agent.testing` prints would set them.
- A python block runs as a script in a fresh interpreter; one that defines `test_*` functions
  is a pytest module and runs with pytest. It must exit 0 (its asserts are part of it).
- A shell block runs line by line (a line's `&&` parts one by one) with bash. Lines that
  install or change the system are skipped by SKIPPED (each with its reason); the servers in
  SERVERS start in the background, must say they are ready, and must exit 0 on SIGTERM;
  every other command must start with `tracker-agent` and exit 0. A command that fits no
  rule fails the test: give it one. `export NAME=VALUE` sets NAME for the block's later
  commands (each command runs in a bash of its own).
- PostgreSQL: the README's example database URL (POSTGRES_PLACEHOLDER) becomes a fresh
  database on the server the PostgreSQL tests start (conftest's postgres_server). Without a
  server a block that names it is skipped, saying so, except under CI=true, where the
  missing server fails the test (as it fails every PostgreSQL test).
- A block preceded by `<!-- not-run: reason -->` is not run; EXPECTED_NOT_RUN counts them so
  that the set cannot grow silently.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import fresh_postgres_url, sqlite_url, wait_for

from tracker_agent.testing import FakeExponea

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PYTHON_LANGUAGES = frozenset({"python"})
SHELL_LANGUAGES = frozenset({"sh", "shell", "bash"})
#: README blocks marked `<!-- not-run: reason -->`. Raise it only with a reason in the README.
EXPECTED_NOT_RUN = 0
#: At least this many blocks of each kind: a parser that finds none must not pass.
MIN_PYTHON_BLOCKS = 6
MIN_SHELL_BLOCKS = 5
COMMAND_TIMEOUT_SECONDS = 90
SERVER_READY_SECONDS = 30

#: Placeholder in the README -> the fake's value (filled in by `substitutions`).
PLACEHOLDERS = {
    "https://api.exponea.com": "url",
    "your-project-token": "project_token",
    "api-key-id": "username",
    "api-secret": "password",
    "sqlite:////var/lib/tracker-agent/outbox.db": "outbox",
}
#: The README's example PostgreSQL URL -> a fresh database on the tests' server.
POSTGRES_PLACEHOLDER = "postgresql+psycopg://tracker@db.internal/tracker"
#: Shell commands not run, by their first words, and why.
SKIPPED = {
    "pip": "installs packages (the test runs in an installed environment)",
    "pytest": "the test suite itself",
    "apt": "installs system packages (root)",
    "umask": "only shapes the install lines that follow",
    "python3 -m venv": "creates /opt/tracker-agent (root); tests/test_systemd_install.py does",
    "/opt/tracker-agent/bin/pip": "installs into /opt (root); tests/test_systemd_install.py does",
    "install": "copies files into /etc (root)",
    "ln": "links into /usr/local/bin (root)",
    "systemctl": "needs systemd as PID 1 and root; tests/test_systemd_unit.py verifies the unit",
}
#: Commands that serve until signalled -> the output that says they are ready.
SERVERS = {
    "tracker-agent run": "tracker-agent running:",
    "python -m tracker_agent.testing": "Serving until",
}
#: Files the README's commands read, made in the working directory first.
FIXTURES = {
    "events.jsonl": '{"customer_ids": {"registered": "alice"}, "event_type": "purchase"}\n',
}

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$", re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str | None  # the reason, when marked

    def __str__(self) -> str:
        return f"README.md:{self.line} ```{self.language}"


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        marked = _NOT_RUN.search(before[-500:])
        line = text.count("\n", 0, match.start()) + 1
        reason = marked.group(1) if marked else None
        blocks.append(Block(match.group(1).lower(), match.group(2), line, reason))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.language in PYTHON_LANGUAGES | SHELL_LANGUAGES]


def shell_commands(block: Block) -> Iterator[str]:
    """The commands of a shell block: each line (continuations joined), split at `&&`."""
    for line in block.code.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for part in line.split("&&"):
            yield part.strip()


def rule_for(command: str) -> str:
    """ "skip", "server", "env" or "run"; "none" when no rule covers the command."""
    words = _words(command)
    if any(_starts_with(words, prefix) for prefix in SKIPPED):
        return "skip"
    if len(words) == 2 and words[0] == "export" and "=" in words[1]:
        return "env"
    if any(_starts_with(words, prefix) for prefix in SERVERS):
        return "server"
    return "run" if words[:1] == ["tracker-agent"] else "none"


def _words(command: str) -> list[str]:
    code = command.split(" #", 1)[0]
    try:
        return shlex.split(code)
    except ValueError:
        return code.split()


def _starts_with(words: list[str], prefix: str) -> bool:
    wanted = prefix.split()
    return words[: len(wanted)] == wanted


# -- the rules hold, without running anything ----------------------------------------------


def test_the_readme_has_python_and_shell_examples_to_run():
    python = [b for b in RUNNABLE if b.language in PYTHON_LANGUAGES and not b.not_run]
    shell = [b for b in RUNNABLE if b.language in SHELL_LANGUAGES and not b.not_run]
    assert len(python) >= MIN_PYTHON_BLOCKS, [str(b) for b in python]
    assert len(shell) >= MIN_SHELL_BLOCKS, [str(b) for b in shell]


def test_blocks_that_do_not_run_are_marked_with_a_reason_and_counted():
    marked = [b for b in RUNNABLE if b.not_run is not None]
    assert all(b.not_run for b in marked), [str(b) for b in marked if not b.not_run]
    assert len(marked) == EXPECTED_NOT_RUN, [f"{b}: {b.not_run}" for b in marked]


def test_every_shell_command_in_the_readme_has_a_rule():
    unruled = [
        f"{block}: {command}"
        for block in RUNNABLE
        if block.language in SHELL_LANGUAGES and not block.not_run
        for command in shell_commands(block)
        if rule_for(command) == "none"
    ]
    assert unruled == []


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("pip install '.[test]'", "skip"),
        ("python3 -m venv /opt/tracker-agent", "skip"),
        ("tracker-agent run                      # drains", "server"),
        ("python -m tracker_agent.testing    # on a free port", "server"),
        ("tracker-agent status --json", "run"),
        ("export TRACKER_AGENT_DATABASE_URL='postgresql://h/db'", "env"),
        ("export PATH", "none"),
        ("rm -rf /", "none"),
        ("installer.sh", "none"),
    ],
)
def test_the_rules_judge_whole_words(command, rule):
    assert rule_for(command) == rule


def test_a_line_is_judged_part_by_part():
    block = Block("sh", "pip install . && tracker-agent demo   # try it\n\n# a note\n", 1, None)
    commands = list(shell_commands(block))
    assert commands == ["pip install .", "tracker-agent demo   # try it"]
    assert [rule_for(c) for c in commands] == ["skip", "run"]


def test_the_readmes_install_steps_make_the_venv_the_shipped_unit_runs():
    unit = (ROOT / "systemd" / "tracker-agent.service").read_text(encoding="utf-8")
    (exec_start,) = re.findall(r"^ExecStart=(\S+) run$", unit, re.MULTILINE)
    commands = [c for b in RUNNABLE if b.language in SHELL_LANGUAGES for c in shell_commands(b)]
    venvs = [_words(c)[3] for c in commands if _starts_with(_words(c), "python3 -m venv")]
    assert venvs and all(exec_start == f"{venv}/bin/tracker-agent" for venv in venvs)
    pips = [c for c in commands if _words(c)[:2] == [f"{venvs[0]}/bin/pip", "install"]]
    assert pips, "the README installs into another venv than it creates"


# -- running them ----------------------------------------------------------------------------


def substitutions(fake: FakeExponea, outbox_url: str) -> dict[str, str]:
    values = {
        "url": fake.url,
        "project_token": fake.project_token,
        "username": fake.username,
        "password": fake.password,
        "outbox": outbox_url,
    }
    return {placeholder: values[name] for placeholder, name in PLACEHOLDERS.items()}


def rewrite(code: str, table: dict[str, str]) -> str:
    for placeholder, value in table.items():
        code = code.replace(placeholder, value)
    return code


@dataclass
class Session:
    """The temporary directory, environment and fake a newcomer's shell would have."""

    workdir: Path
    env: dict[str, str]
    table: dict[str, str]
    postgres: Callable[[], str | None]  # a fresh database's URL; None: no server here
    skipped: list[str]

    def run_python(self, block: Block) -> str | None:
        code = rewrite(block.code, self.table)
        is_pytest = re.search(r"^def test_", code, re.MULTILINE) is not None
        path = self.workdir / f"test_readme_line_{block.line}.py"
        path.write_text(code, encoding="utf-8")
        args = (
            ["-m", "pytest", "-q", "-p", "no:cacheprovider", path.name]
            if is_pytest
            else [path.name]
        )
        return self._check(str(block), [sys.executable, *args])

    def run_shell(self, block: Block) -> list[str]:
        table = self.table
        if POSTGRES_PLACEHOLDER in block.code:
            url = self.postgres()
            if url is None:
                self.skipped.append(f"{block}: no PostgreSQL server here")
                return []
            table = {**table, POSTGRES_PLACEHOLDER: url}
        env = dict(self.env)  # `export` lines last until the block's end
        failures = []
        for command in shell_commands(block):
            rule = rule_for(command)
            if rule == "skip":
                continue
            text = rewrite(command, table)
            if rule == "env":
                name, _, value = _words(text)[1].partition("=")
                env[name] = value
                continue
            if rule == "server":
                failure = self._serve(str(block), text, env)
            else:
                failure = self._check(f"{block}: {command}", ["bash", "-c", text], env)
            if failure:
                failures.append(failure)
        return failures

    def _check(self, what: str, argv: list[str], env: dict[str, str] | None = None) -> str | None:
        done = subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode == 0:
            return None
        return f"{what}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    def _serve(self, what: str, command: str, env: dict[str, str]) -> str | None:
        ready = next(text for prefix, text in SERVERS.items() if command.startswith(prefix))
        log = self.workdir / "server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            started = wait_for(lambda: ready in log.read_text(), SERVER_READY_SECONDS)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=COMMAND_TIMEOUT_SECONDS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if started and code == 0:
            return None
        return f"{what}: {command}: ready={started} exit={code}\n{log.read_text()[-2000:]}"


@pytest.fixture
def session(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Session]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name, content in FIXTURES.items():
        (workdir / name).write_text(content, encoding="utf-8")
    config = workdir / "config.toml"  # empty: no /etc/tracker-agent/config.toml of this host
    config.write_text("", encoding="utf-8")
    outbox = sqlite_url(workdir / "outbox.db")
    with FakeExponea() as fake:
        bin_dir = os.path.dirname(sys.executable)
        env = {
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "HOME": str(workdir),
            "XDG_STATE_HOME": str(workdir / "state"),
            "PYTHONUNBUFFERED": "1",
            "TRACKER_AGENT_CONFIG": str(config),
            "TRACKER_AGENT_URL": fake.url,
            "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
            "TRACKER_AGENT_USERNAME": fake.username,
            "TRACKER_AGENT_PASSWORD": fake.password,
            "TRACKER_AGENT_DATABASE_URL": outbox,
        }
        yield Session(workdir, env, substitutions(fake, outbox), _postgres(request), [])


def _postgres(request: pytest.FixtureRequest) -> Callable[[], str | None]:
    """A fresh database on the session's PostgreSQL server, started on first use; None when
    there is none (the fixture fails instead under CI=true)."""

    def fresh() -> str | None:
        try:
            server = request.getfixturevalue("postgres_server")
        except pytest.skip.Exception:
            return None
        return fresh_postgres_url(server)

    return fresh


def test_every_example_in_the_readme_runs(session: Session):
    started = time.monotonic()
    failures: list[str] = []
    for block in RUNNABLE:
        if block.not_run:
            continue
        if block.language in PYTHON_LANGUAGES:
            failure = session.run_python(block)
            failures.extend([failure] if failure else [])
        else:
            failures.extend(session.run_shell(block))
    assert failures == [], "\n\n".join(failures)
    print(f"ran {len(RUNNABLE)} README blocks in {time.monotonic() - started:.1f} s")
    for skipped in session.skipped:
        print(f"skipped {skipped}")
