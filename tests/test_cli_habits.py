"""The command's habits: global options before or after the command, secrets from files only,
quiet closed pipes, exit statuses for dead letters, dead-letter listings, where secrets come from.

CliRunner for parsing and output; subprocesses where real file descriptors matter (pipes).
Everything talks to a real FakeExponea on 127.0.0.1 and a real SQLite outbox in tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import Result
from conftest import FAST_BACKOFF_ENV, Invoke, cli_env, cli_invoker

from tracker_agent.cli import cli
from tracker_agent.cli.options import global_options
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
TOKEN, USERNAME, PASSWORD = "test-project", "key-id", "secret"
PROCESS_TIMEOUT_SECONDS = 30


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


@pytest.fixture
def outbox(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outbox.db'}"


@pytest.fixture
def env(fake: FakeExponea, outbox: str) -> dict[str, str]:
    return cli_env(fake, outbox, **FAST_BACKOFF_ENV)


@pytest.fixture
def invoke(env: dict[str, str]) -> Invoke:
    return cli_invoker(env)


def status_json(invoke: Invoke, *args: str) -> dict[str, Any]:
    result = invoke("status", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def error_line(result: Result, code: int = 1) -> str:
    """The last stderr line, which must be the command's one "tracker-agent: error: ..."."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tracker-agent: error: "), result.stderr
    return last


def track(invoke: Invoke, who: str = "a", *extra: str) -> Result:
    result = invoke("track", "event", "--customer", f"registered={who}", "--type", "t", *extra)
    assert result.exit_code == 0, result.output
    return result


# ---------------------------------------------------------------------------- global options


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


OPTION_VALUES = {"--log-level": "DEBUG", "--log-format": "json"}


@pytest.mark.parametrize("path", list(command_paths(cli)), ids=" ".join)
def test_every_command_accepts_every_global_option_after_its_name(
    invoke: Invoke, path: tuple[str, ...]
) -> None:
    for option in global_options():
        flag = option.opts[0]
        result = invoke(*path, flag, OPTION_VALUES.get(flag, "x"), "--help")
        assert result.exit_code == 0, (flag, result.output)


def test_status_takes_the_database_url_after_the_command(invoke: Invoke, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    track(invoke, "a", "--database-url", other)  # a sub-command takes it too
    assert status_json(invoke, "--database-url", other)["pending"] == 1
    assert "no outbox at" in error_line(invoke("status"))  # the configured one was not touched


def test_an_option_after_the_command_wins_over_the_same_option_before_it(
    invoke: Invoke, tmp_path: Path
) -> None:
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))
    track(invoke, "a")
    result = invoke("--database-url", first, "track", "event", "--database-url", second,
                    "--customer", "registered=b", "--type", "t")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "first.db").exists()
    assert status_json(invoke, "--database-url", second)["pending"] == 1
    shown = json.loads(invoke("--url", "http://127.0.0.1:1", "config", "--json",
                              "--url", "http://127.0.0.1:2").stdout)  # fmt: skip
    assert shown["url"] == "http://127.0.0.1:2"


def test_an_option_before_the_command_is_not_undone_by_the_environment_after_it(
    invoke: Invoke,
) -> None:
    # The copies after the command read no environment variables: only what is typed counts.
    result = invoke("--url", "http://127.0.0.1:9", "config", "--json")
    assert json.loads(result.stdout)["url"] == "http://127.0.0.1:9"
    table = invoke("--url", "http://127.0.0.1:9", "config").stdout
    assert '"http://127.0.0.1:9"' in table and "# command-line option" in table


def test_log_options_after_the_command_reconfigure_the_log(invoke: Invoke, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o644)  # readable by everyone: the loader warns
    result = invoke(
        "config", "--log-format", "json", TRACKER_AGENT_PASSWORD=None,
        TRACKER_AGENT_PASSWORD_FILE=str(secret),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [entry] = [json.loads(line) for line in result.stderr.splitlines()]
    assert "readable by every user" in entry["message"]
    quiet = invoke("config", "--log-level", "ERROR", TRACKER_AGENT_PASSWORD=None,
                   TRACKER_AGENT_PASSWORD_FILE=str(secret))  # fmt: skip
    assert quiet.exit_code == 0 and quiet.stderr == ""


# ---------------------------------------------------------------------------- secrets


def secret_file(tmp_path: Path, value: str, name: str = "password") -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def test_username_and_password_file_options_supply_the_credentials(
    invoke: Invoke, fake: FakeExponea, tmp_path: Path
) -> None:
    password = secret_file(tmp_path, PASSWORD)
    track(invoke, "a")
    args = ("--username", USERNAME, "--password-file", str(password))
    result = invoke("flush", *args, TRACKER_AGENT_USERNAME=None, TRACKER_AGENT_PASSWORD=None)
    assert result.exit_code == 0, result.output
    assert len(fake.events) == 1
    shown = invoke("config", *args, TRACKER_AGENT_USERNAME=None, TRACKER_AGENT_PASSWORD=None)
    assert '"***"' in shown.stdout and PASSWORD not in shown.output
    sources = [
        line.split("#")[1].strip()
        for line in shown.stdout.splitlines()
        if line.startswith(("username ", "password "))
    ]
    assert sources == ["command-line option"] * 2


def test_password_file_option_beats_the_password_in_the_environment(
    invoke: Invoke, tmp_path: Path
) -> None:
    password = secret_file(tmp_path, PASSWORD)
    assert invoke("check", TRACKER_AGENT_PASSWORD="wrong").exit_code == 1
    result = invoke("check", "--password-file", str(password), TRACKER_AGENT_PASSWORD="wrong")
    assert result.exit_code == 0, result.output


def test_there_is_no_password_option(invoke: Invoke) -> None:
    for args in (("--password", "x", "config"), ("config", "--password", "x")):
        result = invoke(*args)
        assert result.exit_code == 2 and "No such option '--password'" in result.stderr


def test_an_unreadable_password_file_is_one_error_line_naming_the_option(
    invoke: Invoke, tmp_path: Path
) -> None:
    line = error_line(invoke("config", "--password-file", str(tmp_path / "missing")))
    assert "password (--password-file): cannot read" in line and "missing" in line


def test_config_names_where_each_unset_secret_may_come_from(invoke: Invoke) -> None:
    table = invoke("config", TRACKER_AGENT_USERNAME=None, TRACKER_AGENT_PASSWORD=None).stdout
    [password] = [line for line in table.splitlines() if line.startswith("password ")]
    for place in ("--password-file", "TRACKER_AGENT_PASSWORD_FILE", "$CREDENTIALS_DIRECTORY/"
                  "password", "password_file in the config file"):  # fmt: skip
        assert place in password, password
    [public_key] = [line for line in table.splitlines() if line.startswith("public_key ")]
    assert "TRACKER_AGENT_PUBLIC_KEY_FILE" in public_key and "--" not in public_key


def test_config_error_about_a_missing_secret_comes_with_where_secrets_come_from(
    invoke: Invoke,
) -> None:
    result = invoke("config", TRACKER_AGENT_PASSWORD=None)  # a username without its password
    assert "password: is not set, but username" in error_line(result)
    assert result.stderr.count("\n") == 1  # stderr: the error line only; the guide: stdout
    guide = result.stdout
    for place in ("--password-file FILE", "TRACKER_AGENT_<NAME>_FILE", "$CREDENTIALS_DIRECTORY/"
                  "<name>", "LoadCredential=", '<name>_file = "PATH"', "not set here"):  # fmt: skip
        assert place in guide, place


@pytest.mark.parametrize("source", ["option", "env file", "credentials", "config file"])
def test_every_secret_source_config_names_exists(
    invoke: Invoke, tmp_path: Path, source: str
) -> None:
    """The places the guide names, each tried alone: the password arrives from there."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    password = secret_file(secrets, PASSWORD)
    config = tmp_path / "config.toml"
    config.write_text('password_file = "secrets/password"\n' if source == "config file" else "")
    args: list[str] = ["--password-file", str(password)] if source == "option" else []
    extra = {
        "env file": {"TRACKER_AGENT_PASSWORD_FILE": str(password)},
        "credentials": {"CREDENTIALS_DIRECTORY": str(secrets)},
    }.get(source, {})
    result = invoke("--config", str(config), "config", *args, TRACKER_AGENT_PASSWORD=None, **extra)
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("password ")]
    assert '"***"' in line, line


# ---------------------------------------------------------------------------- closed pipes


def run_with_closed_stdout(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m tracker_agent ARGS` whose stdout is a pipe nobody reads: every write to it
    fails with EPIPE (the read end is closed before the command starts)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "tracker_agent", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            input=stdin,
            text=True,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            timeout=PROCESS_TIMEOUT_SECONDS,
            check=False,
        )
    finally:
        os.close(write_end)


def test_status_into_a_closed_pipe_exits_0_without_a_word(
    invoke: Invoke, env: dict[str, str]
) -> None:
    track(invoke)
    for args in (("status",), ("status", "--json"), ("--help",), ("dead-letters", "list")):
        done = run_with_closed_stdout(env, *args)
        assert (done.returncode, done.stderr) == (0, ""), args


def test_track_and_import_into_a_closed_pipe_commit_what_they_report(
    invoke: Invoke, env: dict[str, str]
) -> None:
    done = run_with_closed_stdout(
        env, "track", "event", "--customer", "registered=a", "--type", "t"
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = "".join(
        json.dumps({"customer_ids": {"registered": str(i)}, "event_type": "t"}) + "\n"
        for i in range(5)
    )
    done = run_with_closed_stdout(env, "import", "-", stdin=lines)
    assert (done.returncode, done.stderr) == (0, "")
    assert status_json(invoke)["pending"] == 6


def test_flush_into_a_closed_pipe_keeps_its_exit_status(
    invoke: Invoke, env: dict[str, str], fake: FakeExponea
) -> None:
    track(invoke)
    fake.fail_next(1000, status=503)
    done = run_with_closed_stdout(env, "flush", "--timeout", "0.3")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("tracker-agent: error: 1 commands")
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr
    fake.clear_faults()
    assert run_with_closed_stdout(env, "flush").returncode == 0
    assert len(fake.events) == 1


def shell(env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """`script` in bash with pipefail: a pipeline fails if any of its commands does."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", script.replace("tracker-agent", TRACKER_AGENT)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


TRACKER_AGENT = f"{sys.executable} -m tracker_agent"
PIPE_BUFFER_BYTES = 64 * 1024  # Linux's default: a longer output outlives `head`


def test_output_piped_into_head_exits_0(
    invoke: Invoke, env: dict[str, str], fake: FakeExponea
) -> None:
    padding = "p" * 200
    lines = "".join(
        json.dumps({"customer_ids": {"registered": str(i)}, "event_type": "t",
                    "properties": {"padding": padding}}) + "\n"
        for i in range(1000)
    )  # fmt: skip
    assert invoke("import", "-", input=lines).exit_code == 0
    fake.reject_commands(lambda command: True)
    assert invoke("flush").exit_code == 2  # 1000 dead letters: a listing longer than a pipe
    assert len(invoke("dead-letters", "list", "--json").stdout) > 2 * PIPE_BUFFER_BYTES
    done = shell(env, "tracker-agent dead-letters list --json | head -1")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["customer_ids"] == {"registered": "0"}
    done = shell(env, "tracker-agent status | head -1")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("database ")


# ---------------------------------------------------------------------------- dead letters


@pytest.fixture
def refuse_bad(fake: FakeExponea) -> None:
    fake.reject_commands(
        lambda c: c["data"]["customer_ids"]["registered"].startswith("bad"),
        error="property too long",
    )


@pytest.mark.usefixtures("refuse_bad")
def test_flush_exits_2_when_it_dead_lettered_something(invoke: Invoke) -> None:
    track(invoke, "good")
    assert invoke("flush").exit_code == 0  # nothing dead-lettered
    track(invoke, "bad1")
    result = invoke("flush")
    assert result.exit_code == 2, result.output
    assert "delivered 0, dead-lettered 1, remaining 0" in result.stdout
    assert "tracker-agent: alarm: 1 commands were dead-lettered" in result.stderr
    track(invoke, "bad2")
    assert invoke("flush", "--no-fail-on-dead").exit_code == 0


def test_flush_that_leaves_commands_exits_1_even_when_it_dead_lettered(
    invoke: Invoke, fake: FakeExponea
) -> None:
    fake.reject_commands(lambda c: c["data"]["customer_ids"]["registered"] == "bad")
    track(invoke, "bad")
    track(invoke, "later")
    fake.reject_batches_containing(lambda c: c["data"]["customer_ids"]["registered"] == "later",
                                   status=503)  # fmt: skip
    result = invoke("flush", "--timeout", "0.3", TRACKER_AGENT_BATCH_SIZE="1")
    assert "1 commands remain" in error_line(result, 1)
    assert "dead-lettered 1, remaining 1" in result.stdout


@pytest.mark.usefixtures("refuse_bad")
def test_status_fail_if_dead_exits_2(invoke: Invoke) -> None:
    track(invoke, "good")
    invoke("flush")
    assert invoke("status", "--fail-if-dead").exit_code == 0
    track(invoke, "bad1")
    invoke("flush")
    result = invoke("status", "--fail-if-dead")
    assert result.exit_code == 2, result.output
    assert "alarm: 1 dead-lettered commands" in result.stderr
    assert "dead-lettered   1" in result.stdout  # the report is still printed


@pytest.mark.usefixtures("refuse_bad")
def test_dead_letters_list_shows_event_type_and_a_cut_payload(invoke: Invoke) -> None:
    long_text = "x" * 500
    track(invoke, "bad1", "--type", "purchase", "--prop", f"note={long_text}", "--prop", "n=1")
    invoke("track", "customer", "--customer", "registered=bad2", "--prop", "plan=pro")
    invoke("flush")
    listing = invoke("dead-letters", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "DEAD", "FOR", "TRIES", "HTTP", "TYPE", "REASON"]
    event_row, event_payload, customer_row, customer_payload = listing[1:]
    assert "purchase" in event_row and "property too long" in event_row
    assert '{"registered": "bad1"} {"note": "xxx' in event_payload
    assert event_payload.endswith("…") and long_text not in event_payload
    assert len(event_payload) < 120
    assert "(customer update)" in customer_row
    assert customer_payload.strip() == '{"registered": "bad2"} {"plan": "pro"}'


@pytest.mark.usefixtures("refuse_bad")
def test_dead_letters_list_shows_control_characters_as_escapes(invoke: Invoke) -> None:
    track(invoke, "bad1", "--type", "evil\x1b[31mred\u009b", "--prop", "k=\x07bell")
    invoke("flush")
    out = invoke("dead-letters", "list").stdout
    assert "\x1b" not in out and "\x07" not in out and "\u009b" not in out
    assert "evil\\x1b[31mred\\x9b" in out


@pytest.mark.usefixtures("refuse_bad")
def test_dead_letters_retry_resends_the_same_payload_and_says_so(
    invoke: Invoke, fake: FakeExponea
) -> None:
    helptext = " ".join(invoke("dead-letters", "retry", "--help").stdout.split())
    assert "re-sent exactly as stored" in helptext and "same event timestamp" in helptext
    track(invoke, "bad1", "--timestamp", "1700000000.5", "--prop", "n=1")
    invoke("flush")
    [letter] = [json.loads(x) for x in invoke("dead-letters", "list", "--json").stdout.splitlines()]
    fake.reject_commands(None)
    assert invoke("dead-letters", "retry", "--all").exit_code == 0
    assert invoke("flush").exit_code == 0
    [event] = fake.events
    assert event["timestamp"] == letter["payload"]["timestamp"] == 1700000000.5
    assert event["properties"] == letter["payload"]["properties"]
