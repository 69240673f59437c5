"""The GPU benchmark in one call (issue 20, item 5): `bench/gpu_sdxl.py --quick`'s budget and JSON,
`bench/gpu_wheels.py`'s checks and command, and -- the slow test -- the packaging itself on the CPU.

The slow test plays the lent GPU machine: a fresh virtual environment (no system site-packages), no
index (PIP_NO_INDEX=1, no pip configuration), into which go torch and the device's other preinstalled
packages from `.gpu-wheels-device/`, then the one command of `.gpu-wheels/COMMAND` runs as on the
device, with `--dry-run`: the carried wheels install, and the quick mode writes every figure. Both
folders come from `make gpu-wheels` (PyPI); where they are absent, as in CI's fresh clone, it skips.
Python 3.11 here, not the device's 3.12: no CPU torch for 3.12 lies on this machine, and every carried
wheel is pure Python (py3-none-any), the same file on both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".gpu-wheels"
DEVICE_SIM = ROOT / ".gpu-wheels-device"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_sdxl = load("gpu_sdxl")
gpu_wheels = load("gpu_wheels")

# The JSON's keys, written out here as the spec the quick mode must meet (not read from the module).
TOP_KEYS = {"schema", "dry_run", "argv", "settings", "environment", "build", "contenders", "ratios", "first_image",
            "skipped", "phases", "total_s", "within_budget"}
CELL_KEYS = {"status", "calls", "images", "seconds", "seconds_per_image", "images_per_s", "warmup_s",
             "peak_vram_bytes"}
FIRST_IMAGE_KEYS = {"status", "process_s", "import_s", "build_s", "apply_and_first_image_s", "compile_cache",
                    "applied"}
CONTENDERS = ("bare", "default", "best")
BATCHES = ("1", "4")


# -- the budget and the record, pure ----------------------------------------------------------------------


def test_the_budget_says_what_fits_and_names_what_does_not():
    budget = gpu_sdxl.Budget(total_s=450.0, started=1000.0)
    assert budget.deadline == 1450.0
    assert budget.check(100.0, "a batch-4 call", now=1300.0) is None
    note = budget.check(200.0, "a batch-4 call", now=1300.0)
    assert note == "skipped: over budget (a batch-4 call needs ~200 s, 150 s left of 450 s)"
    assert budget.check(0.0, "anything", now=1451.0).endswith("0 s left of 450 s)")


def test_a_new_batch_size_in_best_is_estimated_by_the_first_compile():
    # the first image's apply + compile + image, then 4 images at batch 1's speed
    assert gpu_sdxl.next_shape_need(120.0, 1.5, 4) == 126.0
    # nothing timed at batch 1: the first image's time per image, compile included (an over-estimate)
    assert gpu_sdxl.next_shape_need(120.0, None, 4) == 600.0


def quick_args(**overrides):
    import argparse

    values = {"dry_run": False, "side": 1024, "steps": 30, "batch_sizes": [1, 4], "images": 4,
              "compile_mode": "max-autotune"}
    return argparse.Namespace(**{**values, **overrides})


def test_the_record_has_every_key_before_anything_is_measured():
    record = gpu_sdxl.quick_record(quick_args(), gpu_sdxl.Budget(450.0, 0.0))
    check_schema(record)
    assert record["settings"] == {"side": 1024, "steps": 30, "batches": [1, 4], "images": 4,
                                  "compile_mode": "max-autotune", "dtype": "float16", "budget_s": 450.0}
    assert all(cell["status"] == "not run" for c in record["contenders"].values() for cell in c["batches"].values())
    json.dumps(record)  # JSON as it stands


def test_ratios_are_imagend_over_bare_where_both_were_measured():
    record = gpu_sdxl.quick_record(quick_args(), gpu_sdxl.Budget(450.0, 0.0))
    cells = {key: record["contenders"][key]["batches"] for key in CONTENDERS}
    cells["bare"]["1"]["images_per_s"], cells["bare"]["4"]["images_per_s"] = 0.5, 1.0
    cells["best"]["1"]["images_per_s"], cells["default"]["4"]["images_per_s"] = 1.1, 0.95
    gpu_sdxl.fill_ratios(record)
    assert record["ratios"] == {"default": {"1": None, "4": 0.95}, "best": {"1": 2.2, "4": None}}


def check_schema(record: dict) -> None:
    assert set(record) == TOP_KEYS
    assert record["schema"] == "imagend-gpu-quick/1"
    assert set(record["contenders"]) == set(CONTENDERS)
    for key in CONTENDERS:
        batches = record["contenders"][key]["batches"]
        assert set(batches) == set(BATCHES), key
        for batch in BATCHES:
            assert set(batches[batch]) == CELL_KEYS, (key, batch)
    assert record["ratios"].keys() == {"default", "best"}
    assert all(set(r) == set(BATCHES) for r in record["ratios"].values())
    assert set(record["first_image"]) == FIRST_IMAGE_KEYS


# -- the wheels script, pure ------------------------------------------------------------------------------


def fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)
    return path


def test_every_requirement_must_be_carried_on_the_device_or_known_unneeded(tmp_path):
    wheels = [
        fake_wheel(tmp_path, "diffusers", "0.42.1", ["numpy", "importlib_metadata", "huggingface-hub>=0.34",
                                                     "jax>=0.4; extra == 'flax'", "colorama; sys_platform == 'win32'"]),
        fake_wheel(tmp_path, "importlib-metadata", "8.7.1", ["zipp>=3.20"]),
        fake_wheel(tmp_path, "imagend", "0.1.0", ["psycopg[binary]>=3.2", "structlog>=24.1"]),
    ]
    assert gpu_wheels.unmet_requirements(wheels) == [
        "imagend 0.1.0 requires 'structlog>=24.1': neither carried nor on the device"]
    wheels.append(fake_wheel(tmp_path, "structlog", "23.1.0", []))
    assert gpu_wheels.unmet_requirements(wheels) == [
        "imagend 0.1.0 requires 'structlog>=24.1': carried structlog is 23.1.0"]
    old = [fake_wheel(tmp_path, "compel", "2.5.1", ["transformers<5"])]
    assert gpu_wheels.unmet_requirements(old) == [
        "compel 2.5.1 requires 'transformers<5': the device has transformers 5.17.0"]


def test_the_one_command_installs_offline_and_runs_the_quick_mode():
    command = gpu_wheels.COMMAND
    assert len(command) <= 2000  # the device tool's limit on a command
    assert "--no-index" in command and "--no-deps" in command and ".gpu-wheels/*.whl" in command
    assert "bench/gpu_sdxl.py --quick --json" in command and "$OUT" in command.replace("${OUT", "$OUT")
    assert "torch" not in gpu_wheels.CARRIED and "transformers" not in gpu_wheels.CARRIED
    assert {"diffusers", "compel"} <= gpu_wheels.CARRIED.keys()


def test_the_docs_give_the_command_and_make_gpu_wheels_builds_into_an_ignored_folder():
    assert gpu_wheels.COMMAND in (ROOT / "docs" / "gpu_speed.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "gpu-wheels" in makefile.split(".PHONY:", 1)[1].splitlines()[0]
    assert "\ngpu-wheels: install\n\t$(PY) bench/gpu_wheels.py" in makefile
    for folder in (".gpu-wheels", ".gpu-wheels-device"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x.whl"], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{folder}/ is not ignored by git"


# -- the packaging on a stand-in for the device -------------------------------------------------------------


def offline_env(tmp_path: Path, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "TORCHINDUCTOR_", "TRITON_"))}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", TMPDIR=str(tmp_path),
               OUT=str(tmp_path / "out"), HOME=str(tmp_path / "home"))
    return env


def run(command: list[str], env: dict[str, str], timeout: float) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheels_install_offline_beside_torch_and_the_quick_dry_run_writes_every_figure(tmp_path):
    if not (WHEELS / "COMMAND").is_file() or not list(DEVICE_SIM.glob("torch-*.whl")):
        pytest.skip("no .gpu-wheels/ and .gpu-wheels-device/: `make gpu-wheels` downloads them from PyPI, which "
                    "CI does not do (a fresh clone has neither folder)")
    command = (WHEELS / "COMMAND").read_text().strip()
    assert command == gpu_wheels.COMMAND, "stale .gpu-wheels/: run `make gpu-wheels` again"
    venv = tmp_path / "venv"
    env = offline_env(tmp_path, venv)
    (tmp_path / "home").mkdir()
    seconds = {"venv": run([sys.executable, "-m", "venv", str(venv)], env, 120)}
    python = str(venv / "bin" / "python")
    # The device's side: torch and what else the device has installed, from files, no index.
    seconds["device packages"] = run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                                      *map(str, sorted(DEVICE_SIM.glob("*.whl")))], env, 400)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert "diffusers" not in listed and "compel" not in listed and "imagend" not in listed
    # The one command, as on the device, with --dry-run: the carried wheels, then the quick mode on the CPU.
    seconds["command --dry-run"] = run(["bash", "-c", command + " --dry-run"], env, 500)
    record = json.loads((tmp_path / "out" / "gpu_quick.json").read_text())
    check_schema(record)
    assert record["dry_run"] is True and record["within_budget"] is True
    for key in CONTENDERS:
        for batch in BATCHES:
            cell = record["contenders"][key]["batches"][batch]
            assert cell["status"] == "ok", (key, batch, cell)
            assert cell["images"] >= int(batch) and cell["images_per_s"] > 0
    assert all(isinstance(r, float) for ratios in record["ratios"].values() for r in ratios.values())
    first = record["first_image"]
    assert first["status"] == "ok" and first["process_s"] > first["apply_and_first_image_s"] > 0
    assert any(entry.startswith("compile_unet") for entry in first["applied"])
    assert any("cuda_graphs" in entry for entry in record["skipped"])  # the CUDA-only parts, said skipped
    # What ran: the carried imagend and diffusers, beside the device's transformers.
    environment = record["environment"]
    assert environment["imagend_file"].startswith(str(tmp_path / "imagend-gpu-site")), environment
    assert environment["versions"]["diffusers"] == gpu_wheels.CARRIED["diffusers"]
    assert environment["versions"]["transformers"] == gpu_wheels.DEVICE_VERSIONS["transformers"]
    assert record["build"]["full_size_parameters"]["unet"] > 2.5e9  # SDXL's real UNet, on the meta device
    size = sum(path.stat().st_size for path in WHEELS.iterdir())
    print(f"\n.gpu-wheels/: {size / 2**20:.2f} MiB; " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
