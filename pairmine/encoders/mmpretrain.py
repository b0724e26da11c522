"""``mmpretrain:PATH``: an OpenMMLab (mmpretrain, mmselfsup, mmcls) ResNet checkpoint.

mmengine's ``Runner.save_checkpoint`` writes ``{'meta': {'epoch', 'iter', 'cfg': <the config
as text>, 'seed', 'experiment_name', 'time', 'mmengine_version', 'dataset_meta'},
'state_dict': {...}, 'message_hub': ..., 'optimizer': ..., 'param_schedulers': [...]}``; the
model zoo's published files keep ``meta`` and ``state_dict``. ``message_hub`` holds mmengine
``HistoryBuffer`` objects of numpy arrays: they load as inert records (nothing of mmengine runs;
it need not be installed).

``state_dict``: ``backbone.*`` (mmpretrain's ``ResNet``/``ResNet_CIFAR``: ``conv1``, ``bn1``,
``layer1.0.conv1`` ..., the names and strides of torchvision's ResNet, ``style='pytorch'``),
``neck.*`` and ``head.*``; mmselfsup's algorithms add ``momentum_encoder.*``/``target_net.*``
(not used). ``--features head``: the classifier's logits (``LinearClsHead``, ``head.fc``) for a
supervised checkpoint, else the self-supervised neck's projection (``MoCoV2Neck``: ``neck.mlp``
Linear-ReLU-Linear; ``NonLinearNeck`` (SimCLR, BYOL, SimSiam, ...): ``fc0``, ``bn0``, then ReLU,
``fcI``, ``bnI``). The ResNetV1c/V1d deep stem (``backbone.stem.*``) is not supported.
Preprocess: the ``data_preprocessor`` mean/std (0-255 scale) and the test pipeline's
``ResizeEdge`` size and interpolation and ``CenterCrop`` size from ``meta['cfg']``, else
ImageNet 256 -> 224 (32 px and mmpretrain's CIFAR-10 mean/std for ``ResNet_CIFAR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    load_state_strict,
    register_encoder,
)
from pairmine.encoders.ssl_libs import (
    assemble,
    check_arch,
    is_tensor_map,
    load_foreign_checkpoint,
    mlp_from_state,
    not_this_layout,
    numbers,
    under,
)
from pairmine.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

_CIFAR_MEAN = (125.307, 122.961, 113.8575)  # mmpretrain's cifar10 data_preprocessor, 0-255
_CIFAR_STD = (51.5865, 50.847, 51.255)


def _triple(values: list[float] | None) -> tuple[float, float, float] | None:
    if values is None or len(values) != 3:
        return None
    scale = 255.0 if max(values) > 1.5 else 1.0  # mmengine configs give 0-255 values
    return (values[0] / scale, values[1] / scale, values[2] / scale)


def _size(text: str, transform: str, arg: str) -> int | None:
    m = re.search(rf"type\s*=\s*['\"]{transform}['\"][^)]*?\b{arg}\s*=\s*\(?(\d+)", text)
    return int(m.group(1)) if m else None


def preprocess_from_cfg(cfg: str | None, arch: str) -> Preprocess:
    """The evaluation transform a config text records; defaults where it is silent."""
    cifar = arch.endswith("-cifar")
    default = (Preprocess(32, 32, mean=(_CIFAR_MEAN[0] / 255, _CIFAR_MEAN[1] / 255,
                                        _CIFAR_MEAN[2] / 255),
                          std=(_CIFAR_STD[0] / 255, _CIFAR_STD[1] / 255, _CIFAR_STD[2] / 255))
               if cifar else Preprocess.imagenet())
    if not cfg:
        return default
    pre = cfg.split("data_preprocessor", 1)[1] if "data_preprocessor" in cfg else cfg
    mean = _triple(numbers(pre, "mean")) or default.mean
    std = _triple(numbers(pre, "std")) or default.std
    test = cfg.split("test_pipeline", 1)[1] if "test_pipeline" in cfg else cfg
    crop = _size(test, "CenterCrop", "crop_size") or default.crop
    resize = _size(test, "ResizeEdge", "scale") or (default.resize if crop == default.crop
                                                    else crop)
    m = re.search(r"type\s*=\s*['\"]ResizeEdge['\"][^)]*?interpolation\s*=\s*['\"](\w+)", test)
    interpolation = "bicubic" if m and m.group(1) == "bicubic" else "bilinear"
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std, interpolation=interpolation)


def _nonlinear_neck(state: Mapping[str, torch.Tensor], path: Path) -> tuple[nn.Module, int]:
    """NonLinearNeck: fc0, bn0, then (ReLU, fcI, bnI?) for I = 1.. as a Sequential."""
    seq: dict[str, torch.Tensor] = {}
    index, i = 0, 0
    while f"fc{i}.weight" in state:
        if i > 0:
            index += 1  # the slot of the ReLU before every fc but the first
        for name in (f"fc{i}", f"bn{i}"):
            params = under(state, f"{name}.")
            if params:
                seq |= {f"{index}.{k}": v for k, v in params.items()}
                index += 1
        i += 1
    extra = sorted(set(state) - {k for k in state if re.match(r"(fc|bn)\d+\.", k)})
    if extra:
        raise CheckpointError(f"{path}: unexpected neck keys {', '.join(extra[:4])}",
                              "use --features backbone")
    return mlp_from_state(seq, path, "NonLinearNeck")


def load(args: str, opts: EncoderOptions) -> Encoder:
    from torch import nn

    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    if not is_tensor_map(state):
        state = ckpt if is_tensor_map(ckpt) else None
    expected = "a state_dict with backbone.* keys"
    if state is None:
        raise not_this_layout(path, "mmpretrain", ckpt, expected)
    trunk = under(state, "backbone.")
    if not trunk:
        raise not_this_layout(path, "mmpretrain", ckpt, expected)
    if any(k.startswith("stem.") for k in trunk):
        raise CheckpointError(f"{path} is a ResNetV1c/V1d backbone (deep stem backbone.stem.*), "
                              "which pairmine does not build", "use a plain ResNet checkpoint")
    meta = ckpt.get("meta") if isinstance(ckpt, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    cfg = meta.get("cfg") if isinstance(meta.get("cfg"), str) else None
    neck, cls_head = under(state, "neck."), under(state, "head.fc.")

    def head() -> tuple[nn.Module, int]:
        if neck and "mlp.0.weight" in neck:  # MoCoV2Neck
            return mlp_from_state(under(neck, "mlp."), path, "MoCoV2Neck")
        if neck and "fc0.weight" in neck:
            return _nonlinear_neck(neck, path)
        if neck:
            raise CheckpointError(f"{path}: neck {', '.join(list(neck)[:3])} is neither "
                                  "MoCoV2Neck nor NonLinearNeck", "use --features backbone")
        linear = nn.Linear(int(cls_head["weight"].shape[1]), int(cls_head["weight"].shape[0]))
        load_state_strict(linear, cls_head, path)
        return linear, linear.out_features

    has_head = bool(neck) or "weight" in cls_head
    return assemble(kind="mmpretrain", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=head if has_head else None,
                    no_head_reason="this checkpoint has no neck.* or head.fc.* weights",
                    preprocess=lambda arch: preprocess_from_cfg(cfg, arch),
                    info={"epoch": meta.get("epoch"),
                          "head": "neck" if neck else ("classifier" if has_head else None)})


register_encoder(EncoderKind(
    name="mmpretrain", load=load, usage="mmpretrain:PATH", features=("backbone", "head"),
    help="mmpretrain / mmselfsup / mmcls ResNet checkpoint (state_dict backbone.*, neck.*, "
         "head.*). backbone = pooled trunk (default), head = the self-supervised neck's "
         "projection, or the classifier's logits. Preprocess from meta['cfg']."))
