"""What the SSL-library and ResNet-era official checkpoint kinds share.

Those kinds (``solo-learn``, ``lightly``, ``vissl``, ``mmpretrain``, ``simclr``, ``byol``,
``barlowtwins``, ``swav``) each find a ResNet trunk and maybe a projection head in their own
layout; this module does the rest, in one place:

- :func:`load_foreign_checkpoint`: ``torch.load(weights_only=True)``, also for training
  checkpoints that carry other libraries' objects next to the weights (mmengine's
  ``HistoryBuffer`` of numpy arrays, omegaconf configs). Those objects are rebuilt as inert
  :class:`ForeignObject` records that only keep the pickled arguments and state: no code of
  theirs runs and their packages need not be installed.
- :func:`resolve_arch` / :func:`build_trunk`: the torchvision trunk the keys describe, including
  the width-multiplied ResNet-50/101/152 of SimCLR (2x/3x/4x) and SwAV (w2/w4/w5), whose every
  stage is wider (torchvision's ``wide_resnet50_2`` widens only the bottleneck's inner convs).
- :func:`mlp_from_state`: a projection head rebuilt from a ``nn.Sequential``'s keys.
- :func:`assemble`: load the trunk strictly, attach the head, return the :class:`Encoder`.
- :func:`not_this_layout`: the one-line error that names the keys found and the kind to use.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderOptions,
    Preprocess,
    build_empty,
    load_checkpoint,
    load_state_file,
    load_state_strict,
)
from pairmine.errors import CheckpointError, EncoderError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# --- inert stand-ins for the foreign objects of a training checkpoint -------------------------


class ForeignObject:
    """What a pickled object of another library becomes: its qualified name, the arguments it
    was created with and the state it was given. Nothing of the original class runs."""

    foreign_name = "?"  # set per stand-in class by _stand_in

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:  # NEWOBJ calls only __new__
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.foreign_name}>"


def _stand_in(name: str) -> type[ForeignObject]:
    return type(f"Foreign[{name}]", (ForeignObject,), {"foreign_name": name})


def load_foreign_checkpoint(path: str | Path) -> Any:
    """The object in a ``torch.save`` file, loaded with ``weights_only=True``. Globals that
    ``weights_only`` refuses (other libraries' classes and functions) load as inert
    :class:`ForeignObject` stand-ins instead of failing; they are logged. A ``.safetensors``
    file gives its state dict (a ``module.`` prefix removed), without pickle."""
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":  # a flat state dict, read without pickle
        return load_state_file(p)
    unsafe: list[str] = []
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
        except (ValueError, RuntimeError, KeyError, OSError):
            unsafe = []  # not a torch.save zip (a TorchScript file, say): load_checkpoint says so
    if not unsafe:
        return load_checkpoint(p)
    log.info("%s: loading %d foreign global(s) as inert records: %s", p, len(unsafe),
             ", ".join(unsafe[:8]))
    stand_ins: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (_stand_in(name), name) for name in unsafe]
    with torch.serialization.safe_globals(stand_ins):
        return load_checkpoint(p)


def plain(obj: Any) -> Any:
    """Python data from a loaded checkpoint entry: omegaconf ``DictConfig``/``ListConfig``
    stand-ins become dicts/lists (their pickled state keeps the values in ``_content`` and
    the leaves in ``_val``); other foreign objects stay as they are."""
    if isinstance(obj, ForeignObject):
        state = obj.state if isinstance(obj.state, Mapping) else {}
        if obj.foreign_name.startswith("omegaconf."):
            if "_content" in state:
                return plain(state["_content"])
            if "_val" in state:
                return plain(state["_val"])
        return obj
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


# --- finding state dicts ----------------------------------------------------------------------


def is_tensor_map(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys under ``prefix`` (e.g. ``backbone.``), prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def first_keys(obj: Any, n: int = 5) -> str:
    """A short description of what a checkpoint holds, for error messages."""
    if is_tensor_map(obj):
        return "keys " + ", ".join(list(obj)[:n])
    if isinstance(obj, Mapping):
        parts = []
        for k, v in list(obj.items())[:n]:
            inner = f" ({', '.join(list(v)[:2])}, …)" if is_tensor_map(v) else ""
            parts.append(f"{k}{inner}")
        return "entries " + ", ".join(parts)
    return f"a {type(obj).__name__}"


def guess_kind(obj: Any) -> str | None:
    """The encoder SPEC a checkpoint looks like, from its entries and key prefixes."""
    if not isinstance(obj, Mapping):
        return None
    if "classy_state_dict" in obj:
        return "vissl:PATH"
    if "online_network_state_dict" in obj:
        return "byol:PATH"
    if is_tensor_map(obj.get("resnet")) and is_tensor_map(obj.get("head")):
        return "simclr:PATH"
    state: Mapping[str, Any] = {}
    for key in ("state_dict", "model"):
        if is_tensor_map(obj.get(key)):
            state = obj[key]
            break
    else:
        if is_tensor_map(obj):
            state = obj
        elif len(obj) == 1 and is_tensor_map(next(iter(obj.values()))):
            state = next(iter(obj.values()))
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    rules: list[tuple[bool, str]] = [
        (has("module.encoder_q.") or has("encoder_q."), "moco:PATH"),
        (has("module.encoder.") and has("module.predictor."), "simsiam:PATH"),
        ("pytorch-lightning_version" in obj and has("projector."), "solo-learn:PATH"),
        (has("projection_head.layers.") or has("backbone.0.weight"), "lightly:PATH"),
        (has("backbone.") and (has("neck.") or has("head.")) and "meta" in obj,
         "mmpretrain:PATH"),
        (has("module.backbone.") and has("module.projector."),
         "barlowtwins:PATH (or vicreg:PATH for a VICReg checkpoint)"),
        (has("module.projection_head.") or has("module.prototypes."), "swav:PATH"),
        (has("projection_head.") or has("prototypes."), "swav:PATH"),
        (has("_feature_blocks."), "vissl:PATH"),
        (has("backbone.") and has("projector."), "vicreg:PATH or barlowtwins:PATH"),
        (has("conv1.weight") or has("module.conv1.weight"), "torchvision:resnet50:PATH"),
    ]
    return next((spec for hit, spec in rules if hit), None)


def not_this_layout(path: str | Path, kind: str, obj: Any, expected: str) -> CheckpointError:
    """``PATH is not a KIND checkpoint (expected ...): it holds ...`` + what to pass instead."""
    guess = guess_kind(obj)
    hint = (f"it looks like {guess}" if guess and not guess.startswith(f"{kind}:")
            else f"give the checkpoint {kind} writes")
    return CheckpointError(f"{path} is not a {kind} checkpoint (expected {expected}); it holds "
                           f"{first_keys(obj)}", hint)


# --- trunks -----------------------------------------------------------------------------------

# torchvision depth name -> blocks per stage, for the width-multiplied bottleneck ResNets
_WIDE_DEPTHS: dict[str, list[int]] = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3],
                                      "resnet152": [3, 8, 36, 3]}
WIDE_ARCHS: list[str] = [f"{d}x{w}" for d in _WIDE_DEPTHS for w in (2, 3, 4, 5)]


def known_archs() -> list[str]:
    from pairmine.encoders.archs import BACKBONES

    return [*BACKBONES, *WIDE_ARCHS]


def check_arch(arch: str | None) -> None:
    """Reject an unknown --arch before reading a (possibly large) checkpoint."""
    if arch is not None and arch not in known_archs():
        raise EncoderError(f"unknown --arch {arch!r}", f"choose one of: {', '.join(known_archs())}")


def resolve_arch(trunk: Mapping[str, torch.Tensor], opts: EncoderOptions,
                 default: str = "resnet50") -> tuple[str, str | None]:
    """(arch to build, arch the keys show): ``--arch`` if given, else the keys', else default.
    A stem wider than 64 channels is a width multiplier (``resnet50x2`` ...)."""
    from pairmine.encoders.archs import detect_backbone

    detected = detect_backbone(trunk)
    stem = trunk.get("conv1.weight")
    if detected in _WIDE_DEPTHS and stem is not None and int(stem.shape[0]) > 64:
        width, rest = divmod(int(stem.shape[0]), 64)
        detected = f"{detected}x{width}" if not rest and f"{detected}x{width}" in WIDE_ARCHS \
            else None
    return opts.arch or detected or default, detected


def build_trunk(arch: str, *, cifar_stem_padding: int = 1) -> tuple[nn.Module, int]:
    """A torchvision-named ResNet trunk (``fc`` = Identity) and its pooled width.

    ``cifar_stem_padding``: the padding of a ``-cifar`` 3x3 stem (solo-learn uses 2)."""
    from torch import nn

    from pairmine.encoders.archs import build_backbone

    if arch in WIDE_ARCHS:
        return _wide_resnet(arch)
    net, dim = build_backbone(arch)
    if arch.endswith("-cifar") and cifar_stem_padding != 1:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=cifar_stem_padding,
                              bias=False)
    return net, dim


def _wide_resnet(arch: str) -> tuple[nn.Module, int]:
    """SimCLR's ``resnet50x2``/SwAV's ``resnet50w2`` etc.: every stage ``width`` times wider,
    stem included, with torchvision's names (so the converted weights load unrenamed)."""
    from torch import nn
    from torchvision.models.resnet import Bottleneck, ResNet

    depth, _, w = arch.partition("x")
    width = int(w)
    layers = _WIDE_DEPTHS[depth]
    net = ResNet(Bottleneck, layers)
    # torchvision's own _make_layer, re-run from a wider stem: bottleneck inner width =
    # planes (base_width 64), output planes * 4, as in the SimCLR/SwAV/VISSL code
    net.inplanes = 64 * width
    net.conv1 = nn.Conv2d(3, 64 * width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(64 * width)
    net.layer1 = net._make_layer(Bottleneck, 64 * width, layers[0])
    net.layer2 = net._make_layer(Bottleneck, 128 * width, layers[1], stride=2)
    net.layer3 = net._make_layer(Bottleneck, 256 * width, layers[2], stride=2)
    net.layer4 = net._make_layer(Bottleneck, 512 * width, layers[3], stride=2)
    net.fc = nn.Identity()
    return net, 2048 * width


# nn.Sequential(*list(torchvision_resnet.children())[:-1]) -> torchvision names
# (children: conv1, bn1, relu, maxpool, layer1..4, avgpool; the weightless ones leave no keys)
_SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                        "7": "layer4"}


def is_sequential_resnet(state: Mapping[str, Any]) -> bool:
    return "0.weight" in state and any(k.startswith("4.0.") for k in state)


def sequential_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a ResNet rebuilt as ``nn.Sequential`` of its children, renamed to
    torchvision's (``4.0.conv1.weight`` -> ``layer1.0.conv1.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        out[f"{_SEQUENTIAL_CHILDREN.get(index, index)}.{rest}"] = value
    return out


# --- heads ------------------------------------------------------------------------------------


def mlp_from_state(state: Mapping[str, torch.Tensor], path: str | Path,
                   what: str) -> tuple[nn.Module, int]:
    """A projection head saved as ``nn.Sequential``/``nn.ModuleList`` of Linear, BatchNorm1d
    and ReLU: layers with weights are rebuilt from their shapes, and each index without
    weights is a ReLU (the activation every ResNet-era projector uses). Also a bare Linear
    (``weight``/``bias``)."""
    from torch import nn

    if "weight" in state and state["weight"].ndim == 2:
        linear = nn.Linear(int(state["weight"].shape[1]), int(state["weight"].shape[0]),
                           bias="bias" in state)
        load_state_strict(linear, state, path)
        return linear, linear.out_features
    indices: dict[int, set[str]] = {}
    for key in state:
        index, _, param = key.partition(".")
        if not index.isdigit() or "." in param:
            raise CheckpointError(f"{path}: the {what} is not a sequence of Linear/BatchNorm "
                                  f"layers (key {key!r})", "use --features backbone")
        indices.setdefault(int(index), set()).add(param)
    if not indices:
        raise CheckpointError(f"{path} has no {what}", "use --features backbone")
    layers: list[nn.Module] = []
    out_dim = 0
    for i in range(max(indices) + 1):
        params = indices.get(i)
        if params is None:
            layers.append(nn.ReLU(inplace=True))
        elif "running_mean" in params:
            out_dim = int(state[f"{i}.running_mean"].shape[0])
            layers.append(nn.BatchNorm1d(out_dim, affine="weight" in params))
        elif "weight" in params and state[f"{i}.weight"].ndim == 2:
            out_dim, in_dim = (int(s) for s in state[f"{i}.weight"].shape)
            layers.append(nn.Linear(in_dim, out_dim, bias="bias" in params))
        else:
            raise CheckpointError(f"{path}: layer {i} of the {what} is neither Linear nor "
                                  f"BatchNorm1d ({', '.join(sorted(params))})",
                                  "use --features backbone")
    head = nn.Sequential(*layers)
    load_state_strict(head, state, path)
    return head, out_dim


def l2_normalised(head: nn.Module) -> nn.Module:
    """``head`` followed by L2 normalisation (SwAV's forward_head does it before prototypes)."""
    from torch import nn

    class L2Normalize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(x, dim=1, p=2)

    return nn.Sequential(head, L2Normalize())


HeadFactory = Callable[[], "tuple[nn.Module, int]"]


# --- the encoder ------------------------------------------------------------------------------


def assemble(*, kind: str, spec_args: str, path: str | Path,
             trunk: Mapping[str, torch.Tensor], opts: EncoderOptions, default_features: str,
             head: HeadFactory | None, no_head_reason: str,
             preprocess: Preprocess | Callable[[str], Preprocess],
             info: Mapping[str, Any], cifar_stem_padding: int = 1,
             ignore: tuple[str, ...] = ("fc.",)) -> Encoder:
    """The trunk holding ``trunk``'s weights (strictly: every key used, none missing), with the
    head as its ``fc`` when ``--features head``. ``preprocess`` may depend on the arch. The
    loaders call :func:`check_arch` before reading the file."""
    features = opts.features or default_features
    if features == "head" and head is None:
        raise EncoderError(f"{kind}: {no_head_reason}", "use --features backbone")
    arch, detected = resolve_arch(trunk, opts)
    net, dim = build_empty(lambda: build_trunk(arch, cifar_stem_padding=cifar_stem_padding),
                           lambda built: built[0])
    load_state_strict(net, trunk, path, ignore=ignore)  # fills every parameter and buffer
    if features == "head":
        assert head is not None
        net.fc, dim = head()  # pooled trunk -> head, as the training code chains them
    pre = preprocess(arch) if callable(preprocess) else preprocess
    return Encoder(spec=f"{kind}:{spec_args}", model=net, dim=dim, preprocess=pre, arch=arch,
                   features=features,
                   info={"kind": kind, "arch_detected": detected, **info})


def imagenet_or_cifar(arch: str) -> Preprocess:
    """ImageNet 256 -> 224 for a 7x7 stem, 32 px for a CIFAR stem; ImageNet mean/std."""
    return Preprocess.cifar() if arch.endswith("-cifar") else Preprocess.imagenet()


NO_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # inputs scaled to [0, 1] only


def numbers(text: str, name: str) -> list[float] | None:
    """The list ``name=[a, b, c]`` in a config text (an mmengine ``cfg`` string), or None."""
    m = re.search(rf"\b{name}\s*=\s*[\[(]([^\])]*)[\])]", text)
    if m is None:
        return None
    try:
        return [float(x) for x in m.group(1).split(",") if x.strip()]
    except ValueError:
        return None
