"""The documented systemd install, followed as far as this machine allows: a venv made with
`python3 -m venv`, the package pip-installed into it, and the shipped unit, whose ExecStart
names the venv's bin/tracker-agent, verified by systemd-analyze with the venv in tmp_path.

Offline: pip gets `--no-index --no-deps --no-build-isolation`, and a .pth file lends the venv
this test environment's dependencies (and a system `wheel` for the build when it lacks one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_systemd_unit import ANALYZE, DOCUMENTED_EXEC, UNIT, analyze, needs_analyze

from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
#: Where the README and the unit install the venv; the unit's ExecStart lies inside it.
DOCUMENTED_VENV = "/opt/tracker-agent"
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: What `pip install` needs from a checkout (setup.cfg names the packages and the README).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "tracker_agent", "migrations")
INSTALL_TIMEOUT_SECONDS = 300
PROCESS_TIMEOUT_SECONDS = 60

pytestmark = pytest.mark.slow


def _python_for_the_venv() -> str:
    """The distribution's python3 (the documented case) when it matches this interpreter's
    version, so that the dependencies lent by the .pth file load; else this interpreter."""
    if SYSTEM_PYTHON.exists():
        probe = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return str(SYSTEM_PYTHON)
    return sys.executable


def _run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
        **kwargs,
    )


def _lend_dependencies(venv: Path) -> None:
    """A .pth file: this environment's site-packages and, when the venv cannot import
    `wheel` (setuptools needs it to build), the directory the system python has it in."""
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    lent = [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]
    pth = Path(purelib.stdout.strip()) / "lent-by-the-test.pth"
    pth.write_text("\n".join(lent) + "\n")
    if _run(python, "-c", "import wheel").returncode == 0:
        return
    if SYSTEM_PYTHON.exists():
        where = _run(
            SYSTEM_PYTHON,
            "-c",
            "import os, wheel; print(os.path.dirname(os.path.dirname(wheel.__file__)))",
        )
        if where.returncode == 0:
            pth.write_text("\n".join([*lent, where.stdout.strip()]) + "\n")
    if _run(python, "-c", "import wheel").returncode != 0:
        pytest.skip("no `wheel` package for an offline build (pip install wheel)")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python3 -m venv <tmp>/opt/tracker-agent`, then `<venv>/bin/pip install <checkout>`."""
    base = tmp_path_factory.mktemp("install")
    checkout = base / "tracker-agent"
    checkout.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    venv = base / DOCUMENTED_VENV.lstrip("/")
    made = _run(_python_for_the_venv(), "-m", "venv", venv)
    if made.returncode != 0:
        pytest.skip(f"python3 -m venv is not available here: {made.stderr.strip()[-300:]}")
    _lend_dependencies(venv)
    pip = venv / "bin" / "pip"
    installed = _run(pip, "install", "--no-index", "--no-deps", "--no-build-isolation", checkout)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_the_venv_has_the_command_the_unit_starts(venv: Path) -> None:
    program, _, args = DOCUMENTED_EXEC.partition(" ")
    assert program.startswith(DOCUMENTED_VENV + "/") and args == "run"
    command = venv / program.removeprefix(DOCUMENTED_VENV + "/")
    assert command.is_file() and os.access(command, os.X_OK)
    version = _run(command, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("tracker-agent, version ")
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import tracker_agent; print(tracker_agent.__file__)",
        cwd=venv,  # not the checkout: `python -c` imports from the working directory first
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the installed copy


def test_the_installed_command_queues_and_delivers(
    venv: Path, fake: FakeExponea, tmp_path: Path
) -> None:
    command = venv / "bin" / "tracker-agent"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TRACKER_AGENT_CONFIG": str(tmp_path / "config.toml"),
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'outbox.db'}",
    }
    (tmp_path / "config.toml").write_text("# empty: everything comes from the environment\n")
    tracked = _run(
        command, "track", "event", "--customer", "registered=ops", "--type", "t", env=env
    )
    assert tracked.returncode == 0, tracked.stderr
    flushed = _run(command, "flush", "--timeout", "30", env=env)
    assert flushed.returncode == 0, flushed.stderr
    assert [e["event_type"] for e in fake.events] == ["t"]


@needs_analyze
def test_the_shipped_unit_verifies_with_exec_start_in_the_venv(venv: Path, tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={DOCUMENTED_EXEC}\n" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(f"ExecStart={DOCUMENTED_VENV}/", f"ExecStart={venv}/"))
    assert f"ExecStart={venv}/bin/tracker-agent run\n" in unit.read_text()
    result = analyze("verify", str(unit))
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == [], ANALYZE
