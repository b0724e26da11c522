"""``torchvision:ARCH:WEIGHTS``: any torchvision classification model with local weights.

WEIGHTS is a local weights file (a state dict, ``torch.save`` or ``.safetensors``), or the name
of one of torchvision's weight sets for ARCH (``IMAGENET1K_V2``, ``DEFAULT``) when its file is
already in the torch hub cache: pairmine never downloads. ``backbone`` (default) replaces the
last linear layer (the classifier) with an Identity and gives the penultimate features;
``head`` gives the logits. The preprocessing is the weight set's own (resize, crop, mean, std);
for a file, that of ARCH's DEFAULT weights.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    build_empty,
    keys_match,
    load_state_file,
    load_state_strict,
    register_encoder,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch
    from torch import nn

# Inception-style models: their auxiliary classifiers only run in training; built without
# them, and their keys in a checkpoint are ignored.
_AUX_PREFIXES: dict[str, tuple[str, ...]] = {
    "googlenet": ("aux1.", "aux2."),
    "inception_v3": ("AuxLogits.",),
}


def classification_models() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _check_arch(arch: str) -> None:
    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise EncoderError(f"{arch!r} is not a torchvision classification model",
                           f"did you mean {', '.join(close)}?" if close
                           else "see torchvision.models.list_models()")


def _weights_enum(arch: str) -> Any:
    from torchvision import models

    try:
        return models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None


def cached_weights_file(arch: str, name: str) -> tuple[Any, Path]:
    """The weight-set member ``name`` of ``arch`` and where the hub cache keeps its file."""
    import torch

    member = _weights_enum(arch)[name]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name
    return member, cache


def _preprocess(member: Any) -> Preprocess:
    if member is None:
        return Preprocess.imagenet()
    t = member.transforms()  # builds a transform object only; nothing is downloaded
    mean = (float(t.mean[0]), float(t.mean[1]), float(t.mean[2]))
    std = (float(t.std[0]), float(t.std[1]), float(t.std[2]))
    return Preprocess(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=mean, std=std)


def _last_linear(model: nn.Module) -> str | None:
    from torch import nn

    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _kwargs_for_state(arch: str, model: nn.Module,
                      state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Builder arguments a weights file implies where they differ from ``model``'s: the class
    count (a fine-tuned head) and a ViT's image size (read from its position embedding)."""
    from torch import nn

    kwargs: dict[str, Any] = {}
    classifier = _last_linear(model)
    weight = state.get(f"{classifier}.weight") if classifier else None
    if classifier and weight is not None and weight.ndim == 2:
        own = model.get_submodule(classifier)
        if isinstance(own, nn.Linear) and weight.shape[0] != own.out_features:
            kwargs["num_classes"] = int(weight.shape[0])
    pos = state.get("encoder.pos_embedding")  # ViT: (1, 1 + (side/patch)², width)
    patch = state.get("conv_proj.weight")
    if arch.startswith("vit_") and pos is not None and patch is not None:
        side = math.isqrt(int(pos.shape[1]) - 1) * int(patch.shape[-1])
        if side != getattr(model, "image_size", side):
            kwargs["image_size"] = side
    return kwargs


def _aux_kwargs(arch: str) -> dict[str, Any]:
    return {"aux_logits": False, "init_weights": False} if arch in _AUX_PREFIXES else {}


def load(args: str, opts: EncoderOptions) -> Encoder:
    import torch
    from torch import nn
    from torchvision import models

    arch, _, weights = args.partition(":")
    _check_arch(arch)
    if not weights:
        raise EncoderError(f"torchvision:{arch} needs weights",
                           f"use torchvision:{arch}:PATH (a local weights file) or "
                           f"torchvision:{arch}:DEFAULT (if in the torch hub cache)")
    features = opts.features or "backbone"
    kwargs = _aux_kwargs(arch)
    enum = _weights_enum(arch)
    member = None
    if enum is None or weights not in enum.__members__ or Path(weights).exists():
        source = weights  # a weights file
        state = load_state_file(weights)
        preprocess = _preprocess(enum.DEFAULT if enum is not None else None)
    else:
        member, cache = cached_weights_file(arch, weights)
        if not cache.is_file():
            raise CheckpointError(
                f"torchvision weights {arch}:{weights} are not in the torch hub cache "
                f"({cache}); pairmine does not download",
                f"on a machine with internet run torchvision.models.{arch}(weights="
                f"'{weights}'), copy {cache.name} to {cache.parent}, or give a weights file")
        source = str(cache)
        state = load_state_file(cache)
        # the arguments torchvision's own builder sets for these weights
        kwargs["num_classes"] = len(member.meta["categories"])
        if arch.startswith("vit_"):
            kwargs["image_size"] = member.meta["min_size"][0]
        if arch in _AUX_PREFIXES:
            kwargs["transform_input"] = True  # torchvision's weights expect it
        preprocess = _preprocess(member)

    model = build_empty(lambda: models.get_model(arch, weights=None, **kwargs))
    if member is None:
        implied = _kwargs_for_state(arch, model, state)
        if implied:  # rebuild to fit the file (rare: a fine-tuned head, a larger ViT)
            kwargs |= implied
            model = build_empty(lambda: models.get_model(arch, weights=None, **kwargs))
        if "image_size" in implied:
            preprocess = Preprocess(resize=implied["image_size"], crop=implied["image_size"])
    load_state_strict(model, state, source, ignore=_AUX_PREFIXES.get(arch, ()))
    if features == "backbone":
        classifier = _last_linear(model)
        if classifier is None:
            raise EncoderError(f"{arch} has no linear classifier to remove",
                               "use --features head")
        _replace(model, classifier, nn.Identity())
    model.eval()
    with torch.no_grad():  # the output width, whatever the classifier's shape
        out = model(torch.zeros(1, 3, preprocess.crop, preprocess.crop))
    if out.ndim != 2:
        raise EncoderError(f"{arch} gives features of shape {tuple(out.shape)}, not (N, dim)",
                           "use --features head")
    return Encoder(spec=f"torchvision:{args}", model=model, dim=int(out.shape[1]),
                   preprocess=preprocess, arch=arch, features=features,
                   info={"kind": "torchvision",
                         "weights": member.name if member is not None else weights})


register_encoder(EncoderKind(
    recognises=keys_match(r"^((state_dict|model)\.)?(module\.)?layer4\.\d+\.conv1\.weight$",
                          r"^((state_dict|model)\.)?(module\.)?fc\.weight$"),
    name="torchvision", load=load, usage="torchvision:ARCH:PATH|WEIGHTS",
    help="Any torchvision classification model (resnet50, vit_b_16, convnext_tiny, ...) with "
         "a local weights file, or a weight-set name (IMAGENET1K_V2, DEFAULT) already in the "
         "torch hub cache. backbone = penultimate features (default), head = logits. "
         "Preprocess from the weight set (ImageNet 256/224 for most).",
    features=("backbone", "head")))
