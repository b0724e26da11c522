"""``open_clip:ARCH:PATH``: the image tower of an open_clip model, from a local checkpoint.

The model is built with ``open_clip.create_model(ARCH, pretrained=None)`` (random weights,
nothing fetched) and only its ``visual`` tower is kept; the features are the image embedding
(``encode_image``: after the visual projection, before L2 normalisation). PATH is one of the
layouts open_clip writes:

- ``open_clip_model.safetensors`` (its hub export; read without pickle),
- ``open_clip_pytorch_model.bin`` / any ``torch.save`` of ``model.state_dict()``,
- a training checkpoint ``epoch_N.pt`` / ``epoch_latest.pt`` from ``open_clip_train``:
  ``{'epoch', 'name', 'state_dict': {'module.visual.*', 'module.text.*', ...}, 'optimizer',
  'scaler'}`` (the ``module.`` of DistributedDataParallel is removed),
- a directory as ``open_clip`` saves for the hub (``open_clip_config.json`` with ``model_cfg``
  and ``preprocess_cfg``, plus one of the weight files above); the model and its
  preprocessing then come from that config (ARCH only names it). A weights file inside such
  a directory is built from ARCH and preprocessed as the directory's config says.

Preprocessing comes from open_clip's own configuration, never from a guess: the tower's image
size, and the mean/std, interpolation and resize mode of the directory's ``preprocess_cfg``
or, for a file on its own, of open_clip's released weights for ARCH when they all agree (SigLIP: 0.5
mean/std, squash; OpenAI/LAION CLIP: OpenAI mean/std, bicubic, shortest side), else
open_clip's defaults for a local file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    select_prefix,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# open_clip's hub file names, in the order open_clip itself prefers them
_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _open_clip() -> Any:
    try:  # imported by name: open_clip ships no type information
        open_clip = importlib.import_module("open_clip")
    except ImportError:
        raise EncoderError("open_clip is not installed",
                           "pip install 'pairmine[open_clip]'") from None
    return open_clip


def _dir_config(directory: Path) -> tuple[dict[str, Any], Path]:
    """The ``preprocess_cfg`` and the weights file of an open_clip hub directory (whose
    ``model_cfg`` open_clip reads itself)."""
    config_file = directory / "open_clip_config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory} is a directory without open_clip_config.json",
                              "give the checkpoint file, or the directory open_clip saved "
                              "for the hub")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config["model_cfg"], dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{config_file} has no model_cfg",
                              "give the open_clip_config.json that open_clip wrote") from None
    weights = next((directory / n for n in _DIR_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{directory} holds no open_clip weights",
                              f"expected one of {', '.join(_DIR_WEIGHTS)}")
    return dict(config.get("preprocess_cfg") or {}), weights


def _released_preprocess(open_clip: Any, arch: str) -> dict[str, Any]:
    """The preprocessing open_clip records for ARCH's released weights, if they all agree."""
    seen: dict[str, dict[str, Any]] = {}
    for tag in open_clip.list_pretrained_tags_by_model(arch):
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        seen[tag] = {k: tuple(v) if isinstance(v, list | tuple) else v
                     for k, v in cfg.items() if k in _PREPROCESS_KEYS}
    distinct = {json.dumps(v, sort_keys=True) for v in seen.values()}
    if len(distinct) == 1:
        return next(iter(seen.values()))
    if distinct:
        log.warning("open_clip's released %s weights (%s) differ in preprocessing; using "
                    "open_clip's defaults for a local file (give the hub directory, with its "
                    "open_clip_config.json, to use its own)", arch, ", ".join(sorted(seen)))
    return {}


def _preprocess(cfg: dict[str, Any], where: str) -> Preprocess:
    """pairmine's transform for an open_clip ``PreprocessCfg`` (as ``image_transform_v2``
    builds it for evaluation)."""
    size = cfg["size"]
    side = int(size) if isinstance(size, int) else int(size[0])
    if not isinstance(size, int) and len(set(size)) != 1:
        raise EncoderError(f"{where}: non-square image size {tuple(size)}",
                           "pairmine embeds square crops only")
    mode = str(cfg.get("resize_mode", "shortest"))
    if mode not in ("shortest", "squash"):
        raise EncoderError(f"{where}: resize mode {mode!r} is not supported",
                           "pairmine resizes the shortest side (then crops) or squashes")
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in ("bicubic", "bilinear"):
        raise EncoderError(f"{where}: interpolation {interpolation!r} is not supported",
                           "use bicubic or bilinear")
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    if len(mean) != 3 or len(std) != 3:
        raise EncoderError(f"{where}: mean/std are not per RGB channel", "check the config")
    return Preprocess(resize=side, crop=side, mean=(mean[0], mean[1], mean[2]),
                      std=(std[0], std[1], std[2]), interpolation=interpolation,
                      resize_mode=mode)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that the model it built has random weights; here
    the weights are loaded right after, so the warning would only mislead."""
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _pooled(visual: nn.Module) -> nn.Module:
    """A module that keeps the pooled embedding of a tower that also returns its tokens
    (CoCa's)."""
    import torch
    from torch import nn

    class PooledOutput(nn.Module):
        def __init__(self, tower: nn.Module) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.tower(x)
            pooled: torch.Tensor = out[0] if isinstance(out, tuple) else out
            return pooled

    return PooledOutput(visual)


def load(args: str, opts: EncoderOptions) -> Encoder:
    import torch

    arch, _, path_arg = args.partition(":")
    if not arch or not path_arg:
        raise EncoderError(f"open_clip spec open_clip:{args} is incomplete",
                           "expected open_clip:ARCH:PATH (e.g. open_clip:ViT-B-32:epoch_32.pt)")
    if opts.features not in (None, "head"):
        raise EncoderError(f"open_clip gives the image embedding only, not {opts.features!r}",
                           "drop --features (or use head)")
    if opts.arch is not None:
        raise EncoderError("--arch does not apply to open_clip", "put the architecture in the "
                           "spec: open_clip:ARCH:PATH")
    open_clip = _open_clip()
    path = Path(path_arg)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path")
    if path.is_dir():
        preprocess_cfg, weights = _dir_config(path)
        name = f"local-dir:{path}"
        source = "open_clip_config.json"
    else:
        if arch not in open_clip.list_models():
            raise EncoderError(f"{arch!r} is not an open_clip architecture",
                               "see open_clip.list_models() for the names")
        weights, name = path, arch
        beside = path.parent / "open_clip_config.json"
        if beside.is_file():  # a file inside a hub directory: that directory's preprocessing
            preprocess_cfg, _ = _dir_config(path.parent)
            source = str(beside)
        else:
            preprocess_cfg = _released_preprocess(open_clip, arch)
            source = (f"open_clip's released {arch} weights" if preprocess_cfg
                      else "open_clip's defaults for a local file")
    try:
        with _quiet_random_init_warning():
            model = build_empty(lambda: open_clip.create_model(
                name, pretrained=None, load_weights=False, pretrained_image=False,
                pretrained_text=False), lambda built: built.visual)
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        raise EncoderError(f"open_clip cannot build {arch}: {first}",
                           "check ARCH (open_clip.list_models()) and open_clip_config.json"
                           ) from None
    visual: nn.Module = model.visual
    del model  # the text tower is not needed
    # open_clip's own preprocess for this tower (image size, defaults), then the recorded one
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    cfg.update({k: v for k, v in preprocess_cfg.items() if k in _PREPROCESS_KEYS and v})
    cfg["size"] = getattr(visual, "image_size", cfg.get("size", 224))
    preprocess = _preprocess(cfg, f"open_clip:{args}")

    state = select_prefix(load_state_file(weights), ("visual.",), weights)
    load_state_strict(visual, state, weights)
    visual.eval()
    with torch.no_grad():
        out = visual(torch.zeros(1, 3, preprocess.crop, preprocess.crop))
    tower = _pooled(visual) if isinstance(out, tuple) else visual
    if isinstance(out, tuple):
        out = out[0]
    return Encoder(spec=f"open_clip:{args}", model=tower, dim=int(out.shape[1]),
                   preprocess=preprocess, arch=arch, features="head",
                   info={"kind": "open_clip", "weights": str(weights),
                         "preprocess_from": source,
                         "open_clip_version": str(open_clip.__version__)})


register_encoder(EncoderKind(
    recognises=keys_match(r"(^|\.)visual\.", r"(^|\.)token_embedding\.weight$"),
    name="open_clip", load=load, usage="open_clip:ARCH:PATH", features=("head",),
    help="The image tower of an open_clip model (needs `pip install 'pairmine[open_clip]'`): "
         "ARCH as in open_clip.list_models(), PATH a state dict (.safetensors, .bin, a "
         "training epoch_N.pt) or open_clip's hub directory. Features: the image embedding. "
         "Preprocess from open_clip's config."))
