"""The encoder contract and registry.

``--encoder SPEC`` is ``NAME:ARGS`` (e.g. ``moco:ckpt.pth.tar``, ``torchvision:resnet50:w.pth``).
A loader turns ARGS plus options into an :class:`Encoder`: a module that maps a normalised
float batch ``(N, 3, crop, crop)`` to features ``(N, dim)`` (not yet L2-normalised), and the
preprocessing it expects. Checkpoints always load with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pairmine.errors import CheckpointError, EncoderError
from pairmine.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Evaluation transform: resize the short side to ``resize``, centre-crop ``crop``,
    scale to [0, 1], normalise by ``mean``/``std``. The data loader does the resize and crop
    on uint8 images; the normalisation runs batched on the device."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # the resize filter of the project's eval transform: "bilinear" (torchvision's default)
    # or "bicubic" (DINO, DINOv2, iBOT, MAE)
    interpolation: str = "bilinear"
    # how the image reaches resize x resize before the crop: "shortest" (the short side to
    # `resize`, aspect kept: torchvision's Resize(int)) or "squash" (both sides to `resize`,
    # aspect not kept: SigLIP, as open_clip and Hugging Face's processors do for it)
    resize_mode: str = "shortest"

    @classmethod
    def imagenet(cls) -> Preprocess:
        return cls(resize=256, crop=224)

    @classmethod
    def cifar(cls, mean: tuple[float, float, float] = IMAGENET_MEAN,
              std: tuple[float, float, float] = IMAGENET_STD) -> Preprocess:
        return cls(resize=32, crop=32, mean=mean, std=std)


@dataclass
class Encoder:
    """A ready-to-run encoder. ``model(x)`` with x ``(N, 3, crop, crop)`` normalised floats
    returns ``(N, dim)`` features."""

    spec: str
    model: nn.Module
    dim: int
    preprocess: Preprocess
    arch: str
    features: str  # "head", "backbone" or "logits"/"model" for plain models
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "arch": self.arch, "features": self.features,
                "dim": self.dim, "preprocess": {"resize": self.preprocess.resize,
                                               "crop": self.preprocess.crop,
                                               "mean": list(self.preprocess.mean),
                                               "std": list(self.preprocess.std),
                                               "interpolation": self.preprocess.interpolation,
                                               "resize_mode": self.preprocess.resize_mode},
                **self.info}


@dataclass(frozen=True)
class EncoderOptions:
    arch: str | None = None  # architecture override (e.g. resnet18 for a MoCo checkpoint)
    features: str | None = None  # one of the kind's `features`; None = the loader's default


# Every --features value any kind may declare (the CLI's choice list): head = projection head
# (or classifier) output, backbone = pooled trunk; for ViTs cls = CLS token after the final
# norm, mean = mean of the patch tokens.
FEATURE_OPTIONS = ("head", "backbone", "cls", "mean")


@dataclass(frozen=True)
class EncoderKind:
    name: str
    load: Callable[[str, EncoderOptions], Encoder]  # (ARGS, options) -> Encoder
    usage: str  # e.g. "moco:PATH"
    help: str
    features: tuple[str, ...] = ("head", "backbone")  # the --features values it accepts
    # does a file look like this kind's? given the file's keys (checkpoint_keys): only for the
    # hint of a spec without KIND:, never to choose a loader
    recognises: Callable[[Sequence[str]], bool] | None = None


def keys_match(*patterns: str, unless: tuple[str, ...] = ()) -> Callable[[Sequence[str]], bool]:
    """A kind's ``recognises``: every regex of ``patterns`` is found in some key, and no key
    matches one of ``unless``. Keys are paths through the checkpoint's nested mappings joined
    by dots (``state_dict.module.encoder_q.conv1.weight``), see :func:`checkpoint_keys`."""
    import re

    wanted = [re.compile(p) for p in patterns]
    refused = [re.compile(p) for p in unless]

    def recognises(keys: Sequence[str]) -> bool:
        return all(any(w.search(k) for k in keys) for w in wanted) and not any(
            r.search(k) for r in refused for k in keys)

    return recognises


# the built-ins register themselves when `_load_builtin` imports their modules; third-party
# kinds are entry points in the group `pairmine.encoders` (an EncoderKind each)
ENCODERS: Registry[EncoderKind] = Registry(
    "encoders", name_of=lambda kind: kind.name, help_of=lambda kind: kind.help,
    error=EncoderError, what="encoder kind")


def register_encoder(kind: EncoderKind) -> EncoderKind:
    if not kind.features or set(kind.features) - set(FEATURE_OPTIONS):
        raise ValueError(f"encoder kind {kind.name}: features {kind.features} must be drawn "
                         f"from {FEATURE_OPTIONS}")  # a programming error, not a user's
    return ENCODERS.register(kind)


def _load_builtin() -> None:
    # Each module registers one kind on import; none of them imports torch at module level.
    from pairmine.encoders import (  # noqa: F401
        cifar_resnet,
        hf,
        lightly,
        mmpretrain,
        moco,
        openclip,
        pairmine_ckpt,
        resnet_official,
        simsiam,
        solo_learn,
        timm_models,
        torchscript,
        tvmodels,
        vicreg,
        vissl,
        vit_layouts,
    )


def list_encoders() -> list[EncoderKind]:
    _load_builtin()
    return sorted(ENCODERS.ordered(), key=lambda kind: kind.name)


def load_encoder(spec: str, *, arch: str | None = None, features: str | None = None) -> Encoder:
    """Build the encoder a SPEC names, with its weights, in eval mode on the CPU."""
    _load_builtin()
    name, sep, args = spec.partition(":")
    if name not in ENCODERS:
        if not sep or Path(spec).exists() or "/" in name or "\\" in name:
            raise spec_without_kind(spec)
        raise EncoderError(f"unknown encoder {name!r} in spec {spec!r}",
                           f"choose one of: {', '.join(sorted(ENCODERS.names()))} "
                           "(see `pairmine encoders`)")
    kind = ENCODERS.get(name)
    if not sep or not args:
        raise EncoderError(f"encoder spec {spec!r} is incomplete", f"expected {kind.usage}")
    if features is not None and features not in kind.features:
        raise EncoderError(f"--features {features!r} is not an option of {name} encoders",
                           f"choose one of: {', '.join(kind.features)}")
    encoder = kind.load(args, EncoderOptions(arch=arch, features=features))
    encoder.model.eval()
    return encoder


def spec_without_kind(spec: str) -> EncoderError:
    """``--encoder path/to/file.th``: the form is KIND:PATH; which kinds the file's keys fit."""
    import re

    fits = kinds_for_file(spec)
    if fits:
        # the first kind's usage with this file in place of its PATH (torchvision:ARCH:PATH)
        usage = re.sub(r"(PATH|DIR)(\|\w+)?", lambda _: spec, ENCODERS.get(fits[0]).usage,
                       count=1)
        hint = (f"its keys fit {', '.join(fits)}: e.g. --encoder {usage}; `pairmine "
                "encoders` lists every kind")
    elif Path(spec).exists():
        hint = ("its keys fit no kind pairmine recognises: pick the project that saved it "
                "from `pairmine encoders`")
    else:
        hint = "with an existing PATH; `pairmine encoders` lists every KIND"
    return EncoderError(f"--encoder {spec!r} names no encoder kind: the form is KIND:PATH",
                        hint)


def kinds_for_file(path: str | Path) -> list[str]:
    """The registered kinds whose ``recognises`` accepts the file's keys (none when the file
    cannot be read: this feeds a hint, never an error of its own)."""
    keys = checkpoint_keys(path)
    if not keys:
        return []
    return [kind.name for kind in list_encoders()
            if kind.recognises is not None and kind.recognises(keys)]


def checkpoint_keys(path: str | Path, depth: int = 4) -> list[str]:
    """The keys of a weights file, cheaply: a directory's file names; a safetensors file's
    header; a TorchScript archive's members (``zip:NAME``); a ``torch.save`` checkpoint's
    nested mapping keys joined by dots, loaded with ``weights_only=True`` (memory-mapped where
    the file's format allows). ``[]`` when it is none of these."""
    p = Path(path)
    try:
        if p.is_dir():
            return sorted(child.name for child in p.iterdir())
        if not p.is_file():
            return []
        if p.suffix == ".safetensors":
            return _safetensors_keys(p)
        return _torch_keys(p, depth)
    except Exception:  # a hint's helper: an unreadable file simply fits no kind
        return []


def _safetensors_keys(path: Path) -> list[str]:
    import json
    import struct

    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(min(size, 100 << 20)))
    return sorted(k for k in header if k != "__metadata__")


def _torch_keys(path: Path, depth: int) -> list[str]:
    import zipfile

    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if zipfile.is_zipfile(path):  # TorchScript archives refuse weights_only
            with zipfile.ZipFile(path) as archive:
                return [f"zip:{name}" for name in archive.namelist()]
        return []
    keys: list[str] = []

    def walk(value: Any, prefix: str, level: int) -> None:
        if isinstance(value, Mapping) and level < depth:
            for k, v in value.items():
                walk(v, f"{prefix}{k}.", level + 1)
        elif prefix:
            keys.append(prefix[:-1])

    walk(obj, "", 0)
    return keys


# ---------------------------------------------------------------------------------------------
# checkpoint helpers shared by the loaders


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors for missing or foreign files
    (the one reader of checkpoint files: ``pairmine.stores.checkpoint.load_torch_file``)."""
    from pairmine.stores.checkpoint import load_torch_file

    return load_torch_file(path)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: ``.safetensors``, or a ``torch.save`` checkpoint
    (bare, or under a usual key), with a DataParallel ``module.`` prefix removed."""
    p = Path(path)
    if p.suffix == ".safetensors" and p.is_file():
        import importlib

        try:  # an optional dependency (timm brings it); imported by name: it has no stubs
            safetensors = importlib.import_module("safetensors")
            safetensors_torch = importlib.import_module("safetensors.torch")
        except ImportError:
            raise CheckpointError(f"{p} is a safetensors file but safetensors is not "
                                  "installed", "pip install 'pairmine[safetensors]'") from None
        try:
            state = dict(safetensors_torch.load_file(str(p), device="cpu"))
        except (safetensors.SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is not a loadable safetensors file: {exc}",
                                  "give a file saved with safetensors.torch.save_file") from None
    else:
        state = find_state_dict(load_checkpoint(p), p)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def find_state_dict(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, or under a usual key."""
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(f"{path} holds no state dict (a mapping of names to tensors)",
                          "give a checkpoint saved from a model's state_dict()")


def select_prefix(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...],
                  path: str | Path) -> dict[str, torch.Tensor]:
    """Keep the keys under the first prefix present (e.g. ``module.encoder_q.``), stripped."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"{path}: no keys start with {' or '.join(map(repr, prefixes))}",
                          f"is this the right encoder kind? its first keys are: {sample}")


T = TypeVar("T")


def build_empty(factory: Callable[[], T], modules: Callable[[T], nn.Module] | None = None) -> T:
    """``factory()`` with its weights in uninitialised memory, for a checkpoint to fill at
    once: random initialisation would be thrown away, and it is nearly all of the build time
    (of a ViT-L/16's on a CPU), paid again by every Ray worker. The model is built on the meta
    device, then given memory. ``modules`` picks the module out of what ``factory``
    returns (default: the returned object is the module).

    Only for models then loaded with :func:`load_state_strict`, which refuses a checkpoint
    that leaves any parameter or buffer unfilled. The BatchNorm counters, which checkpoints
    may omit, are zeroed. A model holding state no checkpoint carries (non-persistent buffers,
    plain tensor attributes, both computed in ``__init__``), or whose constructor cannot run
    on the meta device, is built normally instead."""
    import torch

    try:
        with torch.device("meta"):
            built = factory()
    except Exception:
        return factory()
    model = modules(built) if modules is not None else built
    if not isinstance(model, torch.nn.Module):  # a caller's mistake, not a user's
        raise TypeError(f"build_empty: {type(model).__name__} is not a torch module; pass "
                        "`modules` to pick the module out of what the factory returns")
    if _holds_unsaved_state(model):
        return factory()
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                buffer.zero_()
    return built


def _holds_unsaved_state(model: nn.Module) -> bool:
    import torch

    for module in model.modules():
        if module._non_persistent_buffers_set:
            return True
        if any(isinstance(v, torch.Tensor) for v in vars(module).values()):
            return True  # a plain tensor attribute: neither saved nor moved by to_empty
    return False


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor],
                      path: str | Path, *, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; a mismatch lists the missing and unexpected keys."""
    state = {k: v for k, v in state.items()
             if not k.endswith("num_batches_tracked") and not k.startswith(ignore)}
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing = sorted(own - set(state))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: missing keys "
            f"[{_short(missing)}], unexpected keys [{_short(unexpected)}]",
            "check --arch / the encoder kind")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: "
                              f"{'; '.join(lines[:3]) or exc}", "check --arch") from None


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys) - n} more)" if len(keys) > n else "")
