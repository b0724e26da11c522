"""``hf:DIR``: the vision model in a local Hugging Face model directory.

DIR is what ``save_pretrained`` (or ``huggingface-cli download REPO --local-dir DIR``)
writes: ``config.json``, ``model.safetensors`` (read without pickle) or
``pytorch_model.bin`` (``weights_only``), and the image processor's
``preprocessor_config.json``. It is loaded with ``transformers`` from the directory only
(``local_files_only=True``): nothing is fetched. Supported ``model_type``\\ s:

- ``clip`` (a full ``CLIPModel``; its text tower is not loaded) and ``clip_vision_model``:
  ``CLIPVisionModelWithProjection``; ``head`` (default) = ``image_embeds`` (after the visual
  projection, what ``get_image_features`` gives), ``cls`` = the pooled CLS token before it.
- ``siglip`` and ``siglip_vision_model``: ``SiglipVisionModel``; ``head`` (default) = the
  attention-pooling head's output (``pooler_output``), ``mean`` = mean of the final tokens.
- ``dinov2`` and ``dinov2_with_registers``: ``cls`` (default) = the CLS token after the final
  layernorm (``pooler_output``), ``mean`` = mean of the patch tokens (registers excluded).

Preprocessing comes from ``preprocessor_config.json`` (size, centre crop, mean/std, resample);
a directory without one is refused rather than given a guessed transform.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    keys_match,
    register_encoder,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    import torch
    from torch import nn

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class _Family:
    model_class: str  # transformers class that holds the vision tower
    features: tuple[str, ...]  # the first is the default


_FAMILIES = {
    "clip": _Family("CLIPVisionModelWithProjection", ("head", "cls")),
    "clip_vision_model": _Family("CLIPVisionModelWithProjection", ("head", "cls")),
    "siglip": _Family("SiglipVisionModel", ("head", "mean")),
    "siglip_vision_model": _Family("SiglipVisionModel", ("head", "mean")),
    "dinov2": _Family("Dinov2Model", ("cls", "mean")),
    "dinov2_with_registers": _Family("Dinov2WithRegistersModel", ("cls", "mean")),
}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise EncoderError("transformers is not installed", "pip install 'pairmine[hf]'") from None
    return transformers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}",
                              "give the file save_pretrained wrote") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object", "give the file save_pretrained "
                              "wrote")
    return data


def _check_dir(directory: Path) -> dict[str, Any]:
    """The directory's config.json, once the files a local load needs are known to be there."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory",
                              "hf:DIR takes a local model directory and pairmine does not "
                              "download: run `huggingface-cli download REPO --local-dir DIR` "
                              "first")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json",
                              "give the directory save_pretrained wrote")
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise CheckpointError(f"{directory} holds no weights",
                              f"expected one of {', '.join(_WEIGHT_FILES)}")
    return _read_json(directory / "config.json")


def _size_field(size: Any, name: str) -> int | None:
    """One field of an image processor's size (a dict, or transformers 5's ``SizeDict``)."""
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return None if value is None else int(value)


def _square(size: Any) -> int | None:
    height, width = _size_field(size, "height"), _size_field(size, "width")
    return height if height is not None and height == width else None


def _resample_name(value: Any) -> str | None:
    """PIL's code (2 bilinear, 3 bicubic, as processors save it) or torchvision's
    ``InterpolationMode`` (transformers' fast processors) -> our interpolation name."""
    name = getattr(value, "value", value)
    if isinstance(name, str):
        return name.lower() if name.lower() in ("bilinear", "bicubic") else None
    return {2: "bilinear", 3: "bicubic"}.get(int(name)) if isinstance(name, int) else None


def preprocess_from_config(directory: Path) -> Preprocess:
    """pairmine's transform for the directory's ``preprocessor_config.json``, read by
    transformers' own image processor (it knows each processor's conventions, e.g. that a
    legacy CLIP ``"size": 224`` is the shortest edge): resize, optional centre crop, rescale
    to [0, 1], normalise."""
    config_file = directory / "preprocessor_config.json"
    if not config_file.is_file():
        raise EncoderError(f"{directory} has no preprocessor_config.json",
                           "copy it from the model's repository: it records the resize, crop "
                           "and mean/std the model expects")
    _read_json(config_file)  # a clear error for a broken file, before transformers reads it
    transformers = _transformers()
    where = str(config_file)
    with _quiet(transformers):
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(directory,
                                                                   local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
            raise EncoderError(f"{where}: transformers cannot read it: {first}",
                               "give the file the image processor saved") from None
    if not getattr(proc, "do_resize", True):
        raise EncoderError(f"{where}: do_resize is false", "pairmine needs a fixed input size")
    size = getattr(proc, "size", None)
    shortest, square = _size_field(size, "shortest_edge"), _square(size)
    if shortest is not None and _size_field(size, "longest_edge") is None:
        mode, resize = "shortest", shortest
    elif square is not None:
        mode, resize = "squash", square
    else:
        raise EncoderError(f"{where}: size {size!r} is not supported",
                           "pairmine needs a shortest-edge resize or a square size")
    crop = resize
    if getattr(proc, "do_center_crop", False):
        crop_side = _square(getattr(proc, "crop_size", None))
        if crop_side is None:
            raise EncoderError(f"{where}: crop_size {proc.crop_size!r} is not square",
                               "pairmine embeds square crops")
        crop = crop_side
    elif mode == "shortest":
        raise EncoderError(f"{where}: a shortest-edge resize without a centre crop",
                           "pairmine embeds square inputs")
    interpolation = _resample_name(getattr(proc, "resample", 3))
    if interpolation is None:
        raise EncoderError(f"{where}: resample {proc.resample!r} is not supported",
                           "pairmine resizes bilinear (2) or bicubic (3)")
    factor = float(getattr(proc, "rescale_factor", 1 / 255))
    if getattr(proc, "do_rescale", True) and abs(factor - 1 / 255) > 1e-9:
        raise EncoderError(f"{where}: rescale_factor {factor} is not 1/255",
                           "pairmine scales pixels to [0, 1]")
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if getattr(proc, "do_normalize", True):
        m, sd = list(proc.image_mean or ()), list(proc.image_std or ())
        if len(m) != 3 or len(sd) != 3:
            raise EncoderError(f"{where}: image_mean/image_std are not per RGB channel",
                               "give the file the image processor saved")
        mean = (float(m[0]), float(m[1]), float(m[2]))
        std = (float(sd[0]), float(sd[1]), float(sd[2]))
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation,
                      resize_mode=mode)


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or load reports from transformers: the loader checks the keys itself."""
    utils = transformers.utils.logging
    verbosity, bars = utils.get_verbosity(), utils.is_progress_bar_enabled()
    utils.set_verbosity_error()
    utils.disable_progress_bar()
    try:
        yield
    finally:
        utils.set_verbosity(verbosity)
        if bars:
            utils.enable_progress_bar()


def _load_tower(transformers: Any, directory: Path, config: dict[str, Any],
                family: _Family) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if config.get("model_type") == "clip":
        # the vision config of a full CLIPModel lacks its projection width: take it from the top
        vision = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        vision_config = vision.vision_config
        vision_config.projection_dim = vision.projection_dim
        kwargs["config"] = vision_config
    model_class = getattr(transformers, family.model_class)
    with _quiet(transformers):
        try:
            model, info = model_class.from_pretrained(
                directory, local_files_only=True, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
            raise CheckpointError(f"{directory}: transformers cannot load it: {first}",
                                  "give the directory save_pretrained wrote") from None
    # transformers fills missing weights with random ones and only warns: refuse instead
    missing = sorted(info.get("missing_keys") or ())
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k)
                  for k in info.get("mismatched_keys") or ()]
    if missing or mismatched:
        raise CheckpointError(f"{directory} does not fit {family.model_class}: missing "
                              f"[{', '.join(missing[:6])}], mismatched "
                              f"[{', '.join(mismatched[:6])}]", "is config.json the one saved "
                              "with these weights?")
    tower: nn.Module = model
    return tower


def _features_module(tower: nn.Module, model_type: str, features: str,
                     registers: int) -> nn.Module:
    """A module mapping pixels to the chosen (N, dim) features of the transformers model."""
    from torch import nn

    class VisionFeatures(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if model_type.startswith("clip") and features == "cls":
                # the pooled, post-layernorm CLS token that the projection would take
                vision: Any = self.model.vision_model
                pooled: torch.Tensor = vision(pixel_values=x).pooler_output
                return pooled
            out = self.model(pixel_values=x)
            if features == "head" and model_type.startswith("clip"):
                result: torch.Tensor = out.image_embeds
            elif features == "mean" and model_type.startswith("dinov2"):
                result = out.last_hidden_state[:, 1 + registers:].mean(dim=1)
            elif features == "mean":  # siglip: its final tokens are all patch tokens
                result = out.last_hidden_state.mean(dim=1)
            else:  # siglip head, dinov2 cls
                result = out.pooler_output
            return result

    return VisionFeatures(tower)


def load(args: str, opts: EncoderOptions) -> Encoder:
    if opts.arch is not None:
        raise EncoderError("--arch does not apply to hf encoders",
                           "the directory's config.json names the architecture")
    transformers = _transformers()
    directory = Path(args)
    config = _check_dir(directory)
    model_type = str(config.get("model_type"))
    family = _FAMILIES.get(model_type)
    if model_type == "clip_vision_model" and \
            "CLIPVisionModelWithProjection" not in (config.get("architectures") or ()):
        family = _Family("CLIPVisionModel", ("cls",))  # saved without the projection
    if family is None:
        raise EncoderError(f"{directory}: model_type {model_type!r} is not supported",
                           f"hf: loads {', '.join(sorted(_FAMILIES))}")
    features = opts.features or family.features[0]
    if features not in family.features:
        raise EncoderError(f"{model_type} models give {' or '.join(family.features)}, not "
                           f"{features!r}", f"use --features {family.features[0]}")
    preprocess = preprocess_from_config(directory)
    tower = _load_tower(transformers, directory, config, family)
    config_of: Any = tower.config
    vision: Any = getattr(config_of, "vision_config", config_of)
    if features == "head" and model_type.startswith("siglip") \
            and not getattr(vision, "vision_use_head", True):
        raise EncoderError(f"{directory}: this SigLIP has no pooling head",
                           "use --features mean")
    registers = int(getattr(vision, "num_register_tokens", 0) or 0)
    model = _features_module(tower, model_type, features, registers).eval()
    # the width from the config, not a dummy forward (seconds for a ViT-L on a CPU): the
    # projection for CLIP's head, the token width for everything else
    dim = vision.projection_dim if model_type.startswith("clip") and features == "head" \
        else vision.hidden_size
    return Encoder(spec=f"hf:{args}", model=model, dim=int(dim), preprocess=preprocess,
                   arch=f"{type(tower).__name__} ({model_type})", features=features,
                   info={"kind": "hf", "registers": registers,
                         "transformers_version": str(transformers.__version__)})


register_encoder(EncoderKind(
    recognises=keys_match(r"^config\.json$", r"\.safetensors$|\.bin$"),
    name="hf", load=load, usage="hf:DIR", features=("head", "cls", "mean"),
    help="A local Hugging Face model directory (needs `pip install 'pairmine[hf]'`; never "
         "downloads): CLIP / SigLIP vision towers (head = image embedding, default) or DINOv2 "
         "(cls, default, or mean of patch tokens). Preprocess from preprocessor_config.json."))
