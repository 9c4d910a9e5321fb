"""systemd/tracker-agent.service: passes systemd-analyze, is hardened, agrees with Settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracker_agent.config import Settings, load_settings
from tracker_agent.config import loading as config_loading

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "tracker-agent.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "config.toml.example"
DOCUMENTED_EXEC = "/opt/tracker-agent/bin/tracker-agent run"
MAX_EXPOSURE = 2.5  # systemd-analyze security: 0 = locked down, 10 = fully exposed
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

needs_analyze = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is not installed (apt-get install systemd)"
)


def directives(text: str) -> dict[str, list[str]]:
    """Unit file key -> every value it was given (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_copy(tmp_path: Path, exec_start: str) -> Path:
    """The unit with ExecStart pointing at something that exists here (verify checks it)."""
    text = UNIT.read_text()
    assert f"ExecStart={DOCUMENTED_EXEC}\n" in text
    copy = tmp_path / "tracker-agent.service"
    copy.write_text(text.replace(f"ExecStart={DOCUMENTED_EXEC}", f"ExecStart={exec_start}"))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_systemd_analyze_verify_passes_without_any_complaint(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path, f"{sys.executable} -m tracker_agent run")
    result = analyze("verify", str(unit))
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    # Proves the check above can fail: verify does look at ExecStart and at values.
    unit = runnable_copy(tmp_path, str(tmp_path / "no-such-binary") + " run")
    assert analyze("verify", str(unit)).returncode != 0
    unit = runnable_copy(tmp_path, f"{sys.executable} -m tracker_agent run")
    unit.write_text(unit.read_text().replace("WatchdogSec=30", "WatchdogSec=soon"))
    result = analyze("verify", str(unit))
    assert any(unit.name in line for line in result.stderr.splitlines()), result.stderr


@needs_analyze
def test_security_exposure_is_below_threshold(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path, f"{sys.executable} -m tracker_agent run")
    result = analyze("security", "--offline=yes", "--no-pager", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout[-500:]
    score = float(match.group(1))
    print(f"\nsystemd-analyze security exposure: {score} {match.group(2)}")
    assert score < MAX_EXPOSURE


def test_unit_is_a_notify_daemon_with_watchdog_state_and_credentials() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30"] and d["Restart"] == ["on-failure"]
    assert d["StateDirectory"] == ["tracker-agent"]
    assert d["LoadCredential"] == ["password:/etc/tracker-agent/password"]
    assert "TRACKER_AGENT_CONFIG=/etc/tracker-agent/config.toml" in d["Environment"]
    assert d["ExecStart"] == [DOCUMENTED_EXEC]


def test_stop_timeout_leaves_room_for_the_shutdown_grace() -> None:
    d = directives(UNIT.read_text())
    grace = Settings(project_token="t").shutdown_grace
    assert float(d["TimeoutStopSec"][0]) >= 2 * grace


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("MemoryDenyWriteExecute", "yes"),
        ("UMask", "0077"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
    ],
)
def test_unit_has_hardening_directive(key: str, value: str) -> None:
    assert value in directives(UNIT.read_text())[key]


def test_example_config_loads_with_the_credential_the_unit_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent"))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "password").write_text("secret\n")
    (creds / "password").chmod(0o400)
    settings = load_settings(
        config_file=str(EXAMPLE_CONFIG), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert settings.password == "secret"
    assert settings.database_url == "sqlite:////var/lib/tracker-agent/outbox.db"
    d = directives(UNIT.read_text())
    assert settings.shutdown_grace < float(d["TimeoutStopSec"][0])
