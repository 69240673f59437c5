"""The systemd units: `systemd-analyze verify` passes on both, `systemd-analyze security --offline=yes`
scores each 2.0 or lower, and the settings the daemon relies on are there.

verify checks that ExecStart= is executable, so it runs with `--root` on a throwaway tree holding
the unit files unchanged, a copy of the venv's `imagend` script at the unit's ExecStart path and
the host's own /usr/lib/systemd/system (for sysinit.target and the other units ours order against).
These are static checks: this build machine has no systemd as PID 1, so no unit is started here
(no `systemd-run`); the GPU devices under DevicePolicy=closed can only be checked on a GPU host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagend import cli

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
SERVICE, TEMPLATE = "imagend.service", "imagend@.service"
MAX_EXPOSURE = 2.0
HOST_UNITS = Path("/usr/lib/systemd/system")

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt install systemd)"
)


def settings(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd keys repeat (Environment=, SystemCallFilter=)."""
    section, out = "", []
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: str, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in settings(unit) if s == section and k == key]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A filesystem root where both units are installed and their ExecStart exists."""
    if not (HOST_UNITS / "sysinit.target").exists():
        pytest.skip(f"systemd-analyze is here but {HOST_UNITS} has no sysinit.target to verify against")
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(HOST_UNITS, tmp_path / "usr/lib/systemd/system", symlinks=True)
    system = tmp_path / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in (SERVICE, TEMPLATE):
        shutil.copy(UNITS / unit, system / unit)
    exec_start = values(SERVICE, "ExecStart")[0].split()[0]
    assert exec_start == values(TEMPLATE, "ExecStart")[0].split()[0]
    script = tmp_path / exec_start.lstrip("/")
    script.parent.mkdir(parents=True)
    real = Path(sys.executable).parent / "imagend"  # the venv's console script
    shutil.copy(real if real.exists() else shutil.which("imagend") or sys.executable, script)
    return tmp_path


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return analyze("verify", f"--root={root}", *units)


@needs_analyze
def test_verify_passes_on_both_units(unit_root):
    result = verify(unit_root, SERVICE, "imagend@0.service", "imagend@7.service")
    # verify exits 0 on a setting it ignores ("Failed to parse …, ignoring"): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_broken_unit(unit_root):
    """The check above is not vacuous: a bad value and a missing ExecStart are both reported."""
    unit = unit_root / "etc/systemd/system" / SERVICE
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    assert "notifyy" in verify(unit_root, SERVICE).stderr
    shutil.rmtree(unit_root / "opt")
    result = verify(unit_root, "imagend@0.service")
    assert result.returncode != 0 and "is not executable" in result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE])
def test_security_exposure_is_at_most_2(unit):
    result = analyze("security", "--offline=yes", str(UNITS / unit))
    last = result.stdout.strip().splitlines()[-1]
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", last)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE])
def test_notify_watchdog_and_restart_policy(unit):
    one = {key: values(unit, key) for key in (
        "Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "RestartPreventExitStatus", "Restart",
    )}
    assert one == {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["60s"],
        "TimeoutStartSec": ["15min"],  # a cold SDXL load before READY=1
        "RestartPreventExitStatus": ["2"],
        "Restart": ["on-failure"],
    }
    assert values(unit, "ExecStart") == ["/opt/imagend/.venv/bin/imagend -cron"]


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE])
def test_hardening_keeps_the_gpu_reachable(unit):
    present = {k for s, k, _ in settings(unit) if s == "Service"}
    # PrivateDevices= would hide /dev/nvidia*; MemoryDenyWriteExecute= breaks torch's oneDNN JIT.
    assert not present & {"PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset", "PrivateNetwork"}
    assert values(unit, "DevicePolicy") == ["closed"]
    assert values(unit, "DeviceAllow") == ["char-nvidia* rw"]
    assert values(unit, "PrivateUsers") == ["yes"]
    assert values(unit, "ProtectProc") == ["invisible"]
    assert values(unit, "CapabilityBoundingSet") == [""]
    assert values(unit, "SystemCallFilter") == ["@system-service", "~@privileged"]


def test_the_template_runs_one_daemon_per_gpu():
    env = values(TEMPLATE, "Environment")
    assert "IMAGEND_DEVICE=cuda:%i" in env
    assert "IMAGEND_HTTP=127.0.0.1:946%i" in env
    assert "IMAGEND_DATA_DIR=/var/lib/imagend/%i" in env
    assert "IMAGEND_LOCK_DIR=/var/lib/imagend/locks" in env  # shared with every daemon on the host
    # The shared file first, then the instance's own (optional, and it wins).
    assert values(TEMPLATE, "EnvironmentFile") == ["/etc/imagend/imagend.env", "-/etc/imagend/imagend@%i.env"]
    assert values(TEMPLATE, "StateDirectory") == ["imagend imagend/%i"]
    # The plain unit's data dir holds the same lock folder by default (IMAGEND_DATA_DIR/locks).
    assert values(SERVICE, "Environment") == ["IMAGEND_DATA_DIR=/var/lib/imagend"]


def test_a_configuration_error_exits_2(monkeypatch, tmp_path, capsys):
    """What RestartPreventExitStatus=2 relies on (imagend/cli.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEND_BACKEND", "no-such-backend")
    assert cli.main(["-cron"]) == 2
    assert "configuration error: IMAGEND_BACKEND" in capsys.readouterr().err


@needs_analyze
def test_make_check_units_verifies_from_any_clone_and_the_docs_state_the_score_it_prints(unit_root):
    """Issue 25, item 11: from a clone `systemd-analyze verify` needs the install path; the units' headers
    and docs/running.md say which, `make check-units` (systemd/check-units.sh) passes from the checkout, and
    the score they all state is the one systemd-analyze prints."""
    exec_start = values(SERVICE, "ExecStart")[0].split()[0]
    result = subprocess.run(["sh", "systemd/check-units.sh"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                              "VENV": str(Path(sys.executable).parent.parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes on imagend.service and imagend@.service" in result.stdout
    scores = re.findall(r"Overall exposure level for (\S+): ([0-9.]+)", result.stdout)
    assert [unit for unit, _ in scores] == ["imagend.service", "imagend@i.service"]
    readme = (ROOT / "docs" / "running.md").read_text()  # the README's systemd section, moved there
    for unit, (_, score) in zip((SERVICE, TEMPLATE), scores, strict=True):
        header = "".join(line for line in (UNITS / unit).read_text().splitlines(keepends=True) if line.startswith("#"))
        assert re.search(rf"scores this unit {re.escape(score)}\b", header), f"{unit}'s header states another score"
        assert exec_start.removesuffix("/.venv/bin/imagend") in header and "make check-units" in header
    assert f"scores **{scores[0][1]}** (and {scores[1][1]} for" in readme
    assert exec_start in readme and "make check-units" in readme
