"""``timm:NAME:PATH``: a timm model (when timm is installed) with a local weights file.

The model is built with ``timm.create_model(NAME, pretrained=False, num_classes=0)`` (pooled
features, the classifier removed; its keys in the file are ignored) or, for ``--features
head``, with the file's class count. PATH is a state dict (``torch.save`` or
``.safetensors``, as the hub ships ``model.safetensors``). Preprocessing comes from the
model's pretrained config (input size, crop_pct, mean, std), else ImageNet defaults.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    build_empty,
    load_state_file,
    load_state_strict,
    register_encoder,
)
from pairmine.errors import EncoderError

if TYPE_CHECKING:
    from torch import nn


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise EncoderError("the timm encoder needs timm, which is not installed",
                           "pip install 'pairmine[timm]'") from None
    return timm


def _create(timm: Any, name: str, **kwargs: Any) -> nn.Module:
    try:
        model: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        raise EncoderError(f"timm cannot build {name!r}: {exc}",
                           "see timm.list_models() for the names") from None
    return model


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def _preprocess(timm: Any, model: nn.Module) -> Preprocess:
    try:
        cfg = timm.data.resolve_model_data_config(model)
    except (AttributeError, KeyError, TypeError):
        return Preprocess.imagenet()
    crop = int(cfg["input_size"][-1])
    resize = math.floor(crop / float(cfg.get("crop_pct") or 1.0))  # timm's eval resize
    mean, std = cfg.get("mean"), cfg.get("std")
    if not mean or not std or len(mean) != 3 or len(std) != 3:
        return Preprocess(resize=resize, crop=crop)
    return Preprocess(resize=resize, crop=crop, mean=(mean[0], mean[1], mean[2]),
                      std=(std[0], std[1], std[2]))


def load(args: str, opts: EncoderOptions) -> Encoder:
    import torch

    name, _, path = args.partition(":")
    if not name or not path:
        raise EncoderError(f"timm spec timm:{args} is incomplete", "expected timm:NAME:PATH")
    timm = _timm()
    features = opts.features or "backbone"
    if features == "backbone":
        model = build_empty(lambda: _create(timm, name, num_classes=0))
        state = load_state_file(path)
        load_state_strict(model, state, path, ignore=_classifier_prefixes(model))
    else:
        probe = build_empty(lambda: _create(timm, name))  # only its classifier's names
        state = load_state_file(path)
        weight_keys = [f"{p}weight" for p in _classifier_prefixes(probe) if f"{p}weight" in state]
        kwargs = {"num_classes": int(state[weight_keys[0]].shape[0])} if weight_keys else {}
        model = build_empty(lambda: _create(timm, name, **kwargs))
        load_state_strict(model, state, path)
    model.eval()
    preprocess = _preprocess(timm, model)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, preprocess.crop, preprocess.crop))
    if out.ndim != 2:
        raise EncoderError(f"timm model {name} gives shape {tuple(out.shape)}, not (N, dim)",
                           "choose a classification model")
    return Encoder(spec=f"timm:{args}", model=model, dim=int(out.shape[1]),
                   preprocess=preprocess, arch=name, features=features,
                   info={"kind": "timm", "timm_version": str(timm.__version__)})


register_encoder(EncoderKind(
    name="timm", load=load, usage="timm:NAME:PATH",
    help="A timm model (needs `pip install timm`) with local weights (.pth or .safetensors). "
         "backbone = pooled features, classifier removed (default), head = logits. "
         "Preprocess from the model's pretrained config.",
    features=("backbone", "head")))
