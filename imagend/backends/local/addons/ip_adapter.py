"""IP-Adapter style transfer: a row's reference image steers the image, `reference_scale` how much.

`IMAGEND_IP_ADAPTER` is a folder or hub id with h94/IP-Adapter's layout, optionally followed by
`:<subfolder>/<weight file>` (default `sdxl_models/ip-adapter_sdxl.safetensors`); the CLIP image
encoder is read from `<subfolder>/image_encoder`. Both are read once and kept in memory. On a
checkpoint the adapter is loaded when a batch with a reference image comes and unloaded when one
without comes, because an SDXL UNet with an IP-Adapter loaded cannot run without image embeddings.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from imagend.backends.local.models import LoadedModel
from imagend.errors import BadInput, PermanentError, clip
from imagend.logs import get_logger

log = get_logger()

DEFAULT_WEIGHTS = "sdxl_models/ip-adapter_sdxl.safetensors"
ENCODER_FOLDER = "image_encoder"
EXTRAS_KEY = "ip_adapter"  # LoadedModel.extras: True while the adapter is loaded on that checkpoint


def split_setting(setting: str) -> tuple[str, str, str]:
    """`folder-or-hub-id[:subfolder/weights]` -> (source, subfolder, weight file name)."""
    source, _, weights = setting.partition(":") if not Path(setting).expanduser().exists() else (setting, "", "")
    subfolder, _, weight_name = (weights or DEFAULT_WEIGHTS).rpartition("/")
    return str(Path(source).expanduser()) if Path(source).expanduser().exists() else source, subfolder, weight_name


class IpAdapter:
    def __init__(self, setting: str | None, device: str, dtype: Any) -> None:
        self.setting = setting
        self.device = device
        self.dtype = dtype
        self._state_dict: dict[str, Any] | None = None
        self._encoder: Any = None

    def check(self) -> None:
        if self.setting is None:
            raise BadInput("reference_image needs an IP-Adapter, and this daemon has none (IMAGEND_IP_ADAPTER)")

    def _load(self) -> None:
        """Read the weights and the image encoder once (ConfigError: the setting is wrong)."""
        assert self.setting is not None
        source, subfolder, weight_name = split_setting(self.setting)
        try:
            from huggingface_hub import hf_hub_download
            from safetensors import safe_open

            local = Path(source) / subfolder / weight_name
            path = str(local) if local.is_file() else hf_hub_download(source, weight_name, subfolder=subfolder or None)
            state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
            with safe_open(path, framework="pt", device="cpu") as weights:
                for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    part, _, rest = key.partition(".")
                    if part in state:
                        state[part][rest] = weights.get_tensor(key)
            transformers: Any = importlib.import_module("transformers")
            encoder_folder = f"{subfolder}/{ENCODER_FOLDER}" if subfolder else ENCODER_FOLDER
            encoder = transformers.CLIPVisionModelWithProjection.from_pretrained(
                source, subfolder=encoder_folder, dtype=self.dtype
            ).to(self.device)
        except Exception as exc:
            raise PermanentError(
                f"IMAGEND_IP_ADAPTER={self.setting}: cannot load it ({type(exc).__name__}: {clip(str(exc), 200)}); "
                f"expected a folder or hub id holding {DEFAULT_WEIGHTS} and sdxl_models/{ENCODER_FOLDER}/"
            ) from None
        if not state["image_proj"] or not state["ip_adapter"]:
            raise PermanentError(
                f"IMAGEND_IP_ADAPTER={self.setting}: no image_proj.* and ip_adapter.* weights in {weight_name}"
            )
        self._state_dict, self._encoder = state, encoder
        log.info("ip_adapter_read", setting=self.setting)

    def prepare(self, model: LoadedModel, pipe: Any, scale: float | None) -> None:
        """Before a batch on `pipe`: the adapter loaded with `scale`, or (None) unloaded."""
        loaded = model.extras.get(EXTRAS_KEY, False)
        if scale is None:
            if loaded:
                for each in model.pipelines():
                    if getattr(each, "image_encoder", None) is not None or each is pipe:
                        each.unload_ip_adapter()
                model.extras[EXTRAS_KEY] = False
            return
        if self._state_dict is None:
            self._load()
        if getattr(pipe, "image_encoder", None) is None:
            pipe.register_modules(image_encoder=self._encoder)  # so load_ip_adapter does not read it again
        if not loaded:
            try:
                pipe.load_ip_adapter(
                    dict(self._state_dict or {}), subfolder=None, weight_name=None, image_encoder_folder=None
                )
            except Exception as exc:
                pipe.unload_ip_adapter()
                raise BadInput(
                    f"the IP-Adapter does not fit model {model.label!r}: {type(exc).__name__}: {clip(str(exc), 200)}"
                ) from None
            model.extras[EXTRAS_KEY] = True
        elif getattr(pipe, "feature_extractor", None) is None:
            feature_extractor: Any = importlib.import_module("transformers").CLIPImageProcessor
            size = self._encoder.config.image_size
            pipe.register_modules(feature_extractor=feature_extractor(size=size, crop_size=size))
        pipe.set_ip_adapter_scale(scale)
