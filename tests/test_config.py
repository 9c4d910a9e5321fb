"""Settings: precedence, parsing, validation messages, secrets, http policy, redaction."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

import pytest

from tracker_agent.config import (
    ENV_CONFIG,
    Settings,
    explain_settings,
    load_database_url,
    load_settings,
)
from tracker_agent.config import loading as config_loading
from tracker_agent.config.settings import BOUNDS, DEFAULTS, KINDS
from tracker_agent.exceptions import ConfigError

TOKEN_ENV = {"TRACKER_AGENT_PROJECT_TOKEN": "tok"}


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never let a real /etc/tracker-agent/config.toml leak into a test.
    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))


def write(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    path.chmod(mode)
    return str(path)


# ---------------------------------------------------------------------------- precedence


def test_defaults_apply_when_only_the_token_is_given() -> None:
    s = load_settings(env=TOKEN_ENV)
    assert s.project_token == "tok"
    assert s.url == "https://api.exponea.com"
    assert s.batch_size == 50 and s.max_attempts is None and s.synchronous == "FULL"


def test_env_beats_file_and_overrides_beat_env(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "file"\nbatch_size = 10\nmax_rows = 7\n')
    env = {"TRACKER_AGENT_BATCH_SIZE": "20", "TRACKER_AGENT_MAX_ROWS": "8"}
    s = load_settings(config_file=cfg, env=env, overrides={"max_rows": 9, "batch_size": None})
    assert (s.project_token, s.batch_size, s.max_rows) == ("file", 20, 9)


def test_config_file_comes_from_env_var_when_no_argument(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[tracker_agent]\nproject_token = "from-env-file"\n')
    assert load_settings(env={ENV_CONFIG: cfg}).project_token == "from-env-file"


def test_default_config_file_is_read_only_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "etc.toml", 'project_token = "etc"\n')
    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", cfg)
    assert load_settings().project_token == "etc"
    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", str(tmp_path / "nope.toml"))
    assert load_settings(env=TOKEN_ENV).project_token == "tok"


def test_explicit_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml \(from --config\) does not exist"):
        load_settings(config_file=str(tmp_path / "nope.toml"), env=TOKEN_ENV)
    with pytest.raises(ConfigError, match=r"from TRACKER_AGENT_CONFIG"):
        load_settings(env={**TOKEN_ENV, ENV_CONFIG: str(tmp_path / "nope.toml")})


def test_missing_project_token_names_every_way_to_set_it() -> None:
    with pytest.raises(ConfigError, match="project_token.*TRACKER_AGENT_PROJECT_TOKEN"):
        load_settings(env={})


def test_none_overrides_are_ignored_and_unknown_overrides_refused() -> None:
    assert load_settings(env=TOKEN_ENV, overrides={"url": None}).url == "https://api.exponea.com"
    with pytest.raises(ConfigError, match="nonsense.*unknown setting"):
        load_settings(env=TOKEN_ENV, overrides={"nonsense": 1})


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("var", "text", "field", "expected"),
    [
        ("MAX_ROWS", "1_000", "max_rows", 1000),
        ("REQUEST_TIMEOUT", " 2.5 ", "request_timeout", 2.5),
        ("ALLOW_HTTP", "yes", "allow_http", True),
        ("ALLOW_HTTP", "0", "allow_http", False),
        ("ALLOW_HTTP", "On", "allow_http", True),
        ("MAX_ATTEMPTS", "none", "max_attempts", None),
        ("MAX_ATTEMPTS", "5", "max_attempts", 5),
        ("MAX_AGE", "", "max_age", None),
        ("MAX_AGE", "86400", "max_age", 86400.0),
        ("DATABASE_URL", "None", "database_url", None),
        ("SYNCHRONOUS", "normal", "synchronous", "NORMAL"),
        ("URL", "https://api.eu.exponea.com/", "url", "https://api.eu.exponea.com"),
    ],
)
def test_env_strings_are_parsed_to_the_field_type(
    var: str, text: str, field: str, expected: object
) -> None:
    s = load_settings(env={**TOKEN_ENV, "TRACKER_AGENT_" + var: text})
    assert getattr(s, field) == expected
    assert type(getattr(s, field)) is type(expected)


@pytest.mark.parametrize(
    ("var", "text", "message"),
    [
        (
            "MAX_ROWS",
            "lots",
            r"max_rows \(environment variable TRACKER_AGENT_MAX_ROWS\): "
            r"expected an integer, got 'lots'",
        ),
        ("ALLOW_HTTP", "maybe", r"allow_http \(environment variable TRACKER_AGENT_ALLOW_HTTP\)"),
        ("BATCH_SIZE", "51", r"batch_size \(environment variable .*\): must be between 1 and 50"),
        ("REQUEST_TIMEOUT", "0", r"request_timeout .*must be between 0\.1 and 600 s, got 0"),
        ("RATE_LIMIT", "nan", r"rate_limit .*must be between 1 and 10000 requests/s, got nan"),
        ("OVERFLOW", "block", r"overflow .*'raise' or 'drop_oldest'"),
        ("MAX_ATTEMPTS", "0", r"max_attempts .*must be between 1 and 1000000 attempts, got 0"),
    ],
)
def test_bad_env_value_error_names_field_and_variable(var: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={**TOKEN_ENV, "TRACKER_AGENT_" + var: text})


def test_bad_file_value_error_names_field_and_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nbatch_size = true\n')
    with pytest.raises(ConfigError, match=r"batch_size \(config file .*c\.toml\): expected an int"):
        load_settings(config_file=cfg)


def test_unknown_key_in_file_is_refused_by_name(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nbatch_sise = 3\n')
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'batch_sise'"):
        load_settings(config_file=cfg)
    cfg = write(tmp_path / "d.toml", 'stray = 1\n[tracker_agent]\nproject_token = "t"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'stray' outside \[tracker_agent\]"):
        load_settings(config_file=cfg)


def test_invalid_toml_error_names_file_and_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nbatch_size = = 3\n')
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML: .*line 2"):
        load_settings(config_file=cfg)


def test_binary_config_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"project_token = 't'\n\xed\xa0\x80\xff\n")
    with pytest.raises(ConfigError, match=r"config file .*c\.toml: not UTF-8 text"):
        load_settings(config_file=str(cfg))


def test_config_file_nested_too_deeply_is_refused_naming_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML: nested too deeply"):
        load_settings(config_file=cfg)


def test_config_file_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "#" * (config_loading.MAX_CONFIG_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match=r"config file .*c\.toml: larger than 1048576 bytes"):
        load_settings(config_file=cfg)


def test_unknown_tracker_agent_env_var_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracker_agent.config"):
        load_settings(
            env={**TOKEN_ENV, "TRACKER_AGENT_PASWORD": "x", "TRACKER_AGENT_LOG_LEVEL": "1"}
        )
    assert "TRACKER_AGENT_PASWORD" in caplog.text
    assert "LOG_LEVEL" not in caplog.text


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project_token": ""}, r"project_token: is required"),
        ({"project_token": "a/b"}, r"project_token: must not contain '/'"),
        ({"batch_size": 0}, r"batch_size: must be between 1 and 50 commands, got 0"),
        ({"batch_max_bytes": 1000}, r"batch_max_bytes: must be between 1048576 and 67108864"),
        ({"max_rows": True}, r"max_rows: expected an integer, got True"),
        ({"request_timeout": "10"}, r"request_timeout: expected a number"),
        ({"lease_seconds": 12.0}, r"lease_seconds: must exceed 2 x \(request_timeout \+ connect"),
        ({"lease_seconds": 26.0}, r"lease_seconds: must exceed 2 x .* \(26\.1 s\)"),
        ({"backoff_cap": 0.5}, r"backoff_cap: must be >= backoff_base"),
        ({"synchronous": "OFF"}, r"synchronous: must be FULL or NORMAL"),
        ({"username": "id"}, r"password: is not set, but username is; set both or neither"),
        ({"url": "ftp://x"}, r"url: must be an http\(s\) URL"),
        ({"url": "https://x/?a=1"}, r"url: must not have a query"),
        ({"shutdown_grace": -1}, r"shutdown_grace: must be between 0 and 3600 s, got -1"),
        ({"url": "https://[::1"}, r"url: is not a valid URL: Invalid IPv6 URL"),
        ({"url": "https://[zz]"}, r"url: is not a valid URL"),
        ({"database_url": "sqlite:////tmp/a%00b.db"}, r"database_url: must not contain %00"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**{"project_token": "t", **changes})


def test_settings_normalise_ints_to_floats_and_are_frozen() -> None:
    s = Settings(project_token="t", request_timeout=5)
    assert s.request_timeout == 5.0 and isinstance(s.request_timeout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 3  # type: ignore[misc]


def test_replace_returns_a_validated_copy() -> None:
    s = Settings(project_token="t")
    assert s.replace(batch_size=10).batch_size == 10 and s.batch_size == 50
    with pytest.raises(ConfigError, match="batch_size"):
        s.replace(batch_size=100)


# ---------------------------------------------------------------------------- numeric bounds

#: Settings that let every other field reach its own bounds (lease_seconds must exceed the
#: request timeouts; backoff_cap must be >= backoff_base).
ROOMY = {
    "request_timeout": 0.1,
    "connect_timeout": 0.1,
    "lease_seconds": 86_400.0,
    "backoff_base": 0.01,
    "backoff_cap": 86_400.0,
}
NUMERIC_FIELDS = sorted(name for name, (kind, _) in KINDS.items() if kind in (int, float))


def test_every_numeric_setting_has_bounds_that_hold_its_default() -> None:
    assert sorted(BOUNDS) == NUMERIC_FIELDS
    for name, bounds in BOUNDS.items():
        default = DEFAULTS[name]
        assert default is None or bounds.low <= default <= bounds.high, name


def _typed(name: str, value: float) -> float:
    return int(value) if KINDS[name][0] is int else float(value)


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_numeric_setting_accepts_both_ends_of_its_range(name: str) -> None:
    bounds = BOUNDS[name]
    for value in (bounds.low, bounds.high):
        settings = Settings(**{"project_token": "t", **ROOMY, name: _typed(name, value)})
        assert getattr(settings, name) == value


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_numeric_setting_out_of_range_names_field_bounds_and_source(name: str) -> None:
    bounds = BOUNDS[name]
    step = 1 if KINDS[name][0] is int else bounds.low / 2 or 0.5
    var = "TRACKER_AGENT_" + name.upper()
    for value in (bounds.low - step, bounds.high * 2):
        env = {**TOKEN_ENV, var: str(_typed(name, value))}
        with pytest.raises(ConfigError) as info:
            load_settings(env=env)
        message = str(info.value)
        assert message.startswith(f"{name} (environment variable {var}): must be between ")
        assert bounds.describe() in message


@pytest.mark.parametrize(
    ("text", "shown"),
    [("1e-300", "1e-300"), ("1e-6", "1e-06"), ("inf", "inf"), ("1e400", "inf")],
)
def test_rate_limit_that_would_overflow_or_stall_is_refused(text: str, shown: str) -> None:
    # 1e-300: 1 / rate overflowed sleep(); 1e-6: a sleep of 11 days that flush cannot cut short.
    with pytest.raises(
        ConfigError,
        match=r"^rate_limit \(environment variable TRACKER_AGENT_RATE_LIMIT\): "
        rf"must be between 1 and 10000 requests/s, got {shown}$",
    ):
        load_settings(env={**TOKEN_ENV, "TRACKER_AGENT_RATE_LIMIT": text})


def test_huge_integer_in_config_file_is_refused_without_printing_it(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", f'project_token = "t"\nmax_rows = {10**400}\n')
    with pytest.raises(ConfigError, match=r"max_rows \(config file .*\): .*got a huge integer$"):
        load_settings(config_file=cfg)


def test_malformed_url_names_field_and_source() -> None:
    env = {**TOKEN_ENV, "TRACKER_AGENT_URL": "https://[::1"}
    with pytest.raises(
        ConfigError, match=r"^url \(environment variable TRACKER_AGENT_URL\): is not a valid URL"
    ):
        load_settings(env=env)


def test_malformed_url_error_does_not_echo_a_credential() -> None:
    with pytest.raises(ConfigError, match="url: is not a valid URL") as info:
        Settings(project_token="t", url="https://id:s3cret@[::1")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://[::1]:1",
        "http://localhost:9",
        "http://LOCALHOST",
        "http://[::ffff:127.0.0.1]",
    ],
)
def test_plain_http_is_allowed_to_loopback_hosts(url: str) -> None:
    assert Settings(project_token="t", url=url).url == url


@pytest.mark.parametrize("url", ["http://api.exponea.com", "http://10.0.0.1", "http://[::2]"])
def test_plain_http_elsewhere_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ConfigError, match="url: plain http:// .*allow_http"):
        Settings(project_token="t", url=url)
    assert Settings(project_token="t", url=url, allow_http=True).url == url


def test_url_with_embedded_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="must not contain credentials") as info:
        Settings(project_token="t", url="https://id:s3cret@api.exponea.com")
    assert "s3cret" not in str(info.value)


def test_secret_of_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match="password: expected a string, got <hidden>"):
        Settings(project_token="t", username="u", password=12345)  # type: ignore[arg-type]


def test_secret_with_newline_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="password: must not contain control") as info:
        Settings(project_token="t", username="u", password="ab\ncd")
    assert "ab" not in str(info.value).split(":", 1)[1]


def test_redacted_and_repr_hide_secrets() -> None:
    s = Settings(project_token="t", username="id", password="s3cret", public_key="pk-secret")
    red = s.redacted()
    assert red["password"] == "***" and red["public_key"] == "***" and red["username"] == "id"
    assert set(red) == {f.name for f in dataclasses.fields(Settings)}
    assert "s3cret" not in repr(s) and "pk-secret" not in repr(s)
    assert Settings(project_token="t").redacted()["password"] == ""


# ---------------------------------------------------------------------------- secrets


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", "s3cret\n")
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": pw}
    assert load_settings(env=env).password == "s3cret"


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    pw = write(tmp_path / "pw", "s3cret\n")
    env = {**TOKEN_ENV, "TRACKER_AGENT_PASSWORD": "x", "TRACKER_AGENT_PASSWORD_FILE": pw}
    with pytest.raises(ConfigError, match="either TRACKER_AGENT_PASSWORD or .*_PASSWORD_FILE"):
        load_settings(env=env)


def test_unreadable_or_empty_secret_file_error_names_its_source(tmp_path: Path) -> None:
    env = {**TOKEN_ENV, "TRACKER_AGENT_PASSWORD_FILE": str(tmp_path / "missing")}
    with pytest.raises(
        ConfigError,
        match=r"password \(environment variable TRACKER_AGENT_PASS"
        r"WORD_FILE\): cannot read .*missing",
    ):
        load_settings(env=env)
    env["TRACKER_AGENT_PASSWORD_FILE"] = write(tmp_path / "empty", "\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(env=env)


def test_secret_file_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    big = write(tmp_path / "big", "x" * (config_loading.MAX_SECRET_FILE_BYTES + 1))
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": big}
    with pytest.raises(
        ConfigError,
        match=r"password \(environment variable TRACKER_AGENT_PASSWORD_FILE\): file .*big is "
        r"larger than 65536 bytes",
    ):
        load_settings(env=env)


def test_secret_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": "/dev/zero"}
    with pytest.raises(ConfigError, match=r"/dev/zero is larger than 65536 bytes"):
        load_settings(env=env)


def test_secret_file_that_is_a_directory_or_not_utf8_is_refused(tmp_path: Path) -> None:
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id"}
    env["TRACKER_AGENT_PASSWORD_FILE"] = str(tmp_path)
    with pytest.raises(ConfigError, match=r"password .*cannot read .*: Is a directory"):
        load_settings(env=env)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    env["TRACKER_AGENT_PASSWORD_FILE"] = str(tmp_path / "bin")
    with pytest.raises(ConfigError, match=r"password .*bin is not UTF-8 text"):
        load_settings(env=env)


def test_secret_file_may_be_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pw"
    os.mkfifo(fifo, 0o600)

    def feed() -> None:
        with open(fifo, "w") as fh:
            fh.write("s3cret\n")

    writer = threading.Thread(target=feed)
    writer.start()
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": str(fifo)}
    try:
        assert load_settings(env=env).password == "s3cret"
    finally:
        writer.join(timeout=5)


def test_systemd_credentials_sit_between_file_and_env(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "password", "from-creds")
    write(creds / "username", "id-creds")
    write(creds / "project_token", "tok-creds")
    cfg = write(tmp_path / "c.toml", 'project_token = "tok-file"\npassword = "from-file"\n')
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    s = load_settings(config_file=cfg, env=env)
    assert (s.project_token, s.username, s.password) == ("tok-creds", "id-creds", "from-creds")
    s = load_settings(config_file=cfg, env={**env, "TRACKER_AGENT_PASSWORD": "from-env"})
    assert s.password == "from-env"


def test_config_file_password_file_key_is_relative_to_the_config(tmp_path: Path) -> None:
    write(tmp_path / "pw", "s3cret")
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nusername = "id"\npassword_file = "pw"\n')
    assert load_settings(config_file=cfg).password == "s3cret"


def test_world_readable_secret_file_is_warned_about_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = write(tmp_path / "pw", "s3cret", mode=0o644)
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": pw}
    with caplog.at_level(logging.WARNING, logger="tracker_agent.config"):
        load_settings(env=env)
    assert "readable by every user" in caplog.text and pw in caplog.text
    assert "s3cret" not in caplog.text


def test_private_secret_file_gives_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pw = write(tmp_path / "pw", "s3cret", mode=0o640)
    env = {**TOKEN_ENV, "TRACKER_AGENT_USERNAME": "id", "TRACKER_AGENT_PASSWORD_FILE": pw}
    with caplog.at_level(logging.WARNING, logger="tracker_agent.config"):
        load_settings(env=env)
    assert caplog.records == []


def test_world_readable_config_file_holding_a_password_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nusername = "i"\npassword = "p"\n', 0o644)
    with caplog.at_level(logging.WARNING, logger="tracker_agent.config"):
        load_settings(config_file=cfg)
    assert "holds password" in caplog.text


# ---------------------------------------------------------------------------- database location


def test_load_database_url_needs_no_token_and_reads_no_secret(tmp_path: Path) -> None:
    env = {
        "TRACKER_AGENT_DATABASE_URL": "sqlite:////x/outbox.db",
        "TRACKER_AGENT_PASSWORD_FILE": str(tmp_path / "unreadable-elsewhere"),
    }
    assert load_database_url(env=env) == "sqlite:////x/outbox.db"
    assert (
        load_database_url(env={}, overrides={"database_url": "sqlite:///y.db"}) == "sqlite:///y.db"
    )
    assert load_database_url(env={}) is None


def test_explain_settings_reports_where_each_value_came_from(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", 'project_token = "t"\nbatch_size = 10\n')
    env = {"TRACKER_AGENT_MAX_ROWS": "5"}
    settings, sources = explain_settings(
        config_file=cfg, env=env, overrides={"url": "http://[::1]"}
    )
    assert settings.max_rows == 5
    assert sources == {
        "project_token": f"config file {cfg}",
        "batch_size": f"config file {cfg}",
        "max_rows": "environment variable TRACKER_AGENT_MAX_ROWS",
        "url": "command-line option",
    }


def test_only_cli_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKER_AGENT_PROJECT_TOKEN", "from-os-environ")
    with pytest.raises(ConfigError, match="project_token"):
        load_settings()
    assert os.environ["TRACKER_AGENT_PROJECT_TOKEN"] == "from-os-environ"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://u:hunter2@db:5432/t?sslmode=require",
            "postgresql://u:***@db:5432/t?sslmode=require",
        ),
        ("postgresql+psycopg://u@db/t", "postgresql+psycopg://u@db/t"),
        ("sqlite:////var/lib/a:b@c/outbox.db", "sqlite:////var/lib/a:b@c/outbox.db"),
    ],
)
def test_redacted_settings_hide_a_database_password(url, shown):
    assert Settings(project_token="t", database_url=url).redacted()["database_url"] == shown
