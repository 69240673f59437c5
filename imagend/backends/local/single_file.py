"""Single-file checkpoints: an `IMAGEND_MODEL` or `IMAGEND_MODELS` entry that is one `.safetensors` or
`.ckpt` file in the A1111/civitai layout (`model.diffusion_model.*`, `conditioner.embedders.*`,
`first_stage_model.*`), as model sites publish SDXL fine-tunes. No torch at import.

- `parse`: is a source such a file (`/srv/models/pony.safetensors`, or with the family said,
  `/srv/models/pony.safetensors:sdxl`)?
- `family_key`, `check_file`: the family read from the file's keys (the safetensors header alone, no
  weights read), or said after the colon; a file that is missing, not a checkpoint, or of a layout the
  local backend does not load is a ConfigError naming the setting, at start (families.family_of maps the
  key to its Family; startup.check checks every entry and its config).
- `config_folder`: what diffusers' `from_single_file` needs besides the weights (model_index.json, the
  components' configs, the tokenizers): `IMAGEND_SINGLE_FILE_CONFIG`, a diffusers folder or a hub id in
  the Hugging Face cache (stabilityai/stable-diffusion-xl-base-1.0 by default). Only its `.json` and
  `.txt` files are read, never its weights; no network unless the hub answers and the id is not cached.
- `load`: the pipeline, with `from_single_file(config=...)` and the same dtype and VAE as a folder, or
  from the diffusers folder `imagend -import-model` wrote for this file while the file is unchanged.
- `import_model`: `imagend -import-model FILE NAME`, the file converted once to a diffusers folder
  under `$IMAGEND_DATA_DIR/models/NAME`.

Only SDXL files are loaded this way: FLUX.1 and SD3 files mostly lack their text encoders, and SD 1.x/2.x
and SDXL refiners are families the backend does not drive; each is named in the error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imagend.backends.local.options import MODEL_NAME, TINY_MODEL_MARKER_FILE, TINY_MODEL_MARKER_TEXT
from imagend.errors import ConfigError, first_line
from imagend.logs import get_logger

if TYPE_CHECKING:
    from imagend.backends.local.options import LocalSettings

log = get_logger()

SUFFIXES = (".safetensors", ".ckpt")
_WITH_FAMILY = re.compile(r"(?P<path>.+\.(?:safetensors|ckpt)):(?P<family>[A-Za-z0-9_]+)", re.IGNORECASE)
FAMILY_KEYS = ("sdxl",)  # the families (families/ keys) whose single files are loaded
CONFIG_PATTERNS = ["*.json", "**/*.json", "*.txt", "**/*.txt"]  # what from_single_file reads of a config folder
IMPORT_RECORD = "imagend-import.json"  # in a folder -import-model wrote: which file, as it was then
HEADER_MAX_BYTES = 100 * 1024 * 1024  # a safetensors header (JSON) larger than this is no checkpoint's
SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
LIBRARY_MESSAGE_MAX_CHARS = 300

# What a file's keys say it is, when it is not an SDXL base checkpoint: (key prefix, what it is).
OTHER_LAYOUTS = (
    ("conditioner.embedders.0.model.", "an SDXL refiner checkpoint (OpenCLIP only), which takes an image to refine"),
    ("cond_stage_model.transformer.", "a Stable Diffusion 1.x checkpoint, a family the local backend does not drive"),
    ("cond_stage_model.model.", "a Stable Diffusion 2.x checkpoint, a family the local backend does not drive"),
    ("double_blocks.", "a FLUX.1 transformer; give its diffusers folder instead"),
    ("model.diffusion_model.double_blocks.", "a FLUX.1 transformer; give its diffusers folder instead"),
    ("joint_blocks.", "an SD3 transformer; give its diffusers folder instead"),
    ("model.diffusion_model.joint_blocks.", "an SD3 transformer; give its diffusers folder instead"),
    ("lora_unet_", "a LoRA, not a checkpoint (LoRAs go in IMAGEND_LORA_DIR)"),
    ("lora_te", "a LoRA, not a checkpoint (LoRAs go in IMAGEND_LORA_DIR)"),
)
SDXL_PARTS = {  # an SDXL base checkpoint's components, by key prefix
    "model.diffusion_model.": "UNet",
    "conditioner.embedders.0.transformer.": "CLIP ViT-L text encoder",
    "conditioner.embedders.1.model.": "OpenCLIP ViT-bigG text encoder",
    "first_stage_model.": "VAE",
}


class FamilyInfo(Protocol):
    """What of a families.Family is read here (families/ imports this module, not the other way round)."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def pipeline_class(self) -> str: ...


@dataclass(frozen=True)
class SingleFile:
    path: Path
    family_key: str | None  # said after the colon; None: read from the keys


@dataclass(frozen=True)
class Header:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # key -> torch dtype name
    metadata: dict[str, str]


def parse(source: str) -> SingleFile | None:
    """The single file a model entry names (`path.safetensors`, `path.ckpt`, either `:family`), or None."""
    match = _WITH_FAMILY.fullmatch(source.strip())
    if match:
        return SingleFile(Path(match["path"]).expanduser(), match["family"].lower())
    if source.strip().lower().endswith(SUFFIXES):
        return SingleFile(Path(source.strip()).expanduser(), None)
    return None


def read_header(path: Path) -> Header:
    """The tensors' names, shapes and dtypes of a checkpoint file, without its weights: the JSON header of
    a .safetensors file, or a .ckpt memory-mapped (torch.load, weights_only). ValueError when it is neither."""
    if path.suffix.lower() == ".safetensors":
        size = path.stat().st_size
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if size < 8 or not 2 <= length <= min(HEADER_MAX_BYTES, size - 8):
                raise ValueError("not a safetensors file (no header)")
            try:
                header = json.loads(file.read(length))
            except ValueError:
                raise ValueError("not a safetensors file (its header is not JSON)") from None
        if not isinstance(header, dict):
            raise ValueError("not a safetensors file (its header is not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        try:
            shapes = {key: tuple(int(n) for n in value["shape"]) for key, value in header.items()}
            dtypes = {key: SAFETENSORS_DTYPES.get(value["dtype"], value["dtype"]) for key, value in header.items()}
        except (TypeError, KeyError, ValueError):
            raise ValueError("not a safetensors file (a tensor entry without shape or dtype)") from None
        return Header(shapes, dtypes, {str(k): str(v) for k, v in metadata.items()})
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # pickle, zip or torch's refusal: not a checkpoint we read
        raise ValueError(f"not a torch checkpoint ({type(exc).__name__}: {first_line(exc, 120)})") from None
    metadata = {str(k): v for k, v in state.items() if isinstance(v, str)} if isinstance(state, dict) else {}
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError("not a torch checkpoint (no state dict in it)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()}
    return Header({k: tuple(v.shape) for k, v in tensors.items()}, dtypes, metadata)


def detect(shapes: dict[str, tuple[int, ...]]) -> str:
    """The family key of a checkpoint from its keys ('sdxl'), or ValueError saying what it is instead."""
    present = {part for prefix, part in SDXL_PARTS.items() if any(k.startswith(prefix) for k in shapes)}
    if len(present) == len(SDXL_PARTS):
        channels = shapes.get("model.diffusion_model.input_blocks.0.0.weight", (0, 4))
        if len(channels) > 1 and channels[1] != 4:
            raise ValueError(f"an SDXL checkpoint whose UNet takes {channels[1]} channels (an inpainting or "
                             "instruct model), not the 4 of a text-to-image one")
        return "sdxl"
    for prefix, what in OTHER_LAYOUTS:
        if any(k.startswith(prefix) for k in shapes):
            raise ValueError(what)
    if "model.diffusion_model.label_emb.0.0.weight" in shapes:  # SDXL's UNet (its size and crop conditioning)
        missing = ", ".join(part for part in SDXL_PARTS.values() if part not in present)
        raise ValueError(f"an SDXL checkpoint without its {missing} (single files must carry all four parts)")
    first = ", ".join(sorted(shapes)[:3]) or "none"
    raise ValueError(f"no checkpoint layout the local backend knows (its first keys: {first})")


def _problem(source: str, setting: str, reason: str) -> ConfigError:
    return ConfigError(
        f"{setting}={source}: {reason}. A single-file model is an A1111/civitai SDXL checkpoint (.safetensors "
        f"or .ckpt: model.diffusion_model.*, conditioner.embedders.*, first_stage_model.*); write `:sdxl` after "
        f"the file name to say its family when its keys do not (docs/local.md, Single-file checkpoints)"
    )


def family_key(source: str, setting: str) -> str:
    """The family key ('sdxl') of the single file `source`: said after the colon, else read from its keys;
    ConfigError naming `setting` for a missing or unreadable file, another layout, or a family not loaded
    from files."""
    single = parse(source)
    if single is None:
        raise ValueError(f"{source} is not a single-file entry")
    if single.family_key is not None and single.family_key not in FAMILY_KEYS:
        raise _problem(source, setting, f"single files of family {single.family_key!r} are not loaded; families: "
                                        f"{', '.join(FAMILY_KEYS)}")
    if not single.path.is_file():
        raise _problem(source, setting, f"no such file ({single.path})")
    try:
        shapes = read_header(single.path).shapes
        return single.family_key or detect(shapes)
    except OSError as exc:
        raise _problem(source, setting, f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise _problem(source, setting, str(exc)) from None


def check_file(source: str, setting: str) -> None:
    """At start: the file is there, is a checkpoint, and of a family loaded from single files."""
    family_key(source, setting)


def is_miniature(source: str) -> bool:
    """True for a file written from a miniature model (miniature/single_file.py marks its metadata)."""
    single = parse(source)
    if single is None or not single.path.is_file():
        return False
    try:
        return TINY_MODEL_MARKER_TEXT in read_header(single.path).metadata.get("imagend", "")
    except (OSError, ValueError):
        return False


def _looks_like_folder(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists()


def config_folder(options: LocalSettings, family: FamilyInfo, source: str, setting: str) -> Path:
    """The local folder of IMAGEND_SINGLE_FILE_CONFIG (a diffusers folder, or a hub id's snapshot in the
    Hugging Face cache: its .json and .txt files only, downloaded once where the hub answers).
    ConfigError naming IMAGEND_SINGLE_FILE_CONFIG when it is missing or not of the file's family."""
    from imagend.backends.local.hub import hub_unreachable

    config = options.single_file_config
    hint = (f"Set IMAGEND_SINGLE_FILE_CONFIG to an {family.name} diffusers folder (its .json and .txt files are "
            f"enough: model_index.json, the components' configs, the tokenizers), which completes {setting}={source}")
    if _looks_like_folder(config):
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"IMAGEND_SINGLE_FILE_CONFIG={config}: no model_index.json there. {hint}")
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(config, allow_patterns=CONFIG_PATTERNS, local_files_only=True))
        except Exception:  # not in the cache (or not a repo id)
            reason = hub_unreachable()
            if reason is not None:
                raise ConfigError(
                    f"IMAGEND_SINGLE_FILE_CONFIG={config}: not in the Hugging Face cache, and it cannot be "
                    f"downloaded: {reason}. {hint}"
                ) from None
            log.warning("single_file_config_download", config=config, note="configs and tokenizers only (~2 MB)")
            try:
                folder = Path(snapshot_download(config, allow_patterns=CONFIG_PATTERNS))
            except Exception as exc:
                raise ConfigError(
                    f"IMAGEND_SINGLE_FILE_CONFIG={config}: cannot download its configs ({type(exc).__name__}: "
                    f"{first_line(exc, LIBRARY_MESSAGE_MAX_CHARS)}). {hint}"
                ) from None
    try:
        class_name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"IMAGEND_SINGLE_FILE_CONFIG={config}: cannot read its model_index.json. {hint}") from None
    if class_name != family.pipeline_class:
        raise ConfigError(f"IMAGEND_SINGLE_FILE_CONFIG={config}: a {class_name} pipeline, not {family.name}'s "
                          f"{family.pipeline_class}. {hint}")
    return folder


# --- imported folders (imagend -import-model) ------------------------------------------------------


def _record(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def imported_folder(source: str, options: LocalSettings) -> Path | None:
    """The diffusers folder `-import-model` wrote for this file, if the file is still as it was then."""
    single = parse(source)
    if single is None or options.models_dir is None or not options.models_dir.is_dir() or not single.path.is_file():
        return None
    wanted = _record(single.path)
    for record_file in sorted(options.models_dir.glob(f"*/{IMPORT_RECORD}")):
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("source") != wanted["source"]:
            continue
        if all(record.get(k) == v for k, v in wanted.items()):
            return record_file.parent
        log.warning("single_file_import_stale", source=source, folder=str(record_file.parent),
                    note="the file changed since -import-model: loading the file; import it again")
    return None


def _file_dtype(header: Header) -> str:
    """The dtype most of the file's weights have (what -import-model keeps)."""
    counts = Counter(header.dtypes.values())
    return counts.most_common(1)[0][0] if counts else "float32"


def load(pipeline_class: Any, source: str, family: FamilyInfo, options: LocalSettings, setting: str,
         kwargs: dict[str, Any]) -> Any:
    """The pipeline of the single file `source`: from its imported folder while the file is unchanged
    (from_pretrained), else from_single_file with IMAGEND_SINGLE_FILE_CONFIG. `kwargs`: dtype, vae, as
    load_pipeline gives a folder. Raises what the library raises (load_pipeline names the setting)."""
    single = parse(source)
    if single is None:
        raise ValueError(f"{source} is not a single-file entry")
    kwargs = {k: v for k, v in kwargs.items() if k != "variant"}  # a variant is a hub repo's weight files
    folder = imported_folder(source, options)
    started = time.monotonic()
    if folder is not None:
        pipe = pipeline_class.from_pretrained(str(folder), **kwargs)
        how = "imported folder"
    else:
        config = config_folder(options, family, source, setting)
        pipe = pipeline_class.from_single_file(str(single.path), config=str(config), local_files_only=True, **kwargs)
        how = "from_single_file"
    log.info("single_file_loaded", source=source, how=how, folder=str(folder) if folder else None,
             seconds=round(time.monotonic() - started, 2))
    return pipe


def import_model(source: str, name: str, family: FamilyInfo, options: LocalSettings) -> tuple[Path, float]:
    """`imagend -import-model FILE NAME`: the single file converted once to a diffusers folder,
    `$IMAGEND_DATA_DIR/models/NAME` (save_pretrained, in the file's own dtype, its own VAE), with a record
    of the file (path, size, mtime) by which later starts load the folder instead. `family`: families.Family,
    from families.family_of(source). Returns (folder, seconds)."""
    import importlib

    import torch

    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"-import-model: {name!r} is not a model name (letters, digits, . _ -)")
    if options.models_dir is None:
        raise ConfigError("-import-model: no IMAGEND_DATA_DIR to write the folder under")
    setting = "-import-model"
    single = parse(source)
    if single is None:
        raise ConfigError(f"{setting} {source}: not a .safetensors or .ckpt file")
    config = config_folder(options, family, source, setting)
    target = options.models_dir / name
    if target.exists() and not (target / IMPORT_RECORD).is_file():
        raise ConfigError(f"{setting}: {target} exists and is not a folder -import-model wrote; choose another NAME")
    started = time.monotonic()
    dtype = getattr(torch, _file_dtype(read_header(single.path)), torch.float32)
    diffusers: Any = importlib.import_module("diffusers")
    pipe = getattr(diffusers, family.pipeline_class).from_single_file(
        str(single.path), config=str(config), local_files_only=True, dtype=dtype
    )
    partial = target.with_name(f".{name}.importing")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    del pipe
    seconds = round(time.monotonic() - started, 2)
    record = {**_record(single.path), "family": family.key, "config": str(config), "dtype": str(dtype),
              "seconds": seconds}
    (partial / IMPORT_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if is_miniature(source):
        (partial / TINY_MODEL_MARKER_FILE).write_text(
            f"imagend miniature SDXL pipeline from {single.path}: {TINY_MODEL_MARKER_TEXT}, IT MAKES NOISE.\n",
            encoding="utf-8",
        )
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    log.info("single_file_imported", source=source, folder=str(target), seconds=seconds)
    return target, seconds
