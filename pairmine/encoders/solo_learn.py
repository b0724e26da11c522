"""``solo-learn:PATH``: a pretraining checkpoint as solo-learn (vturrisi/solo-learn) writes it.

Its ``Checkpointer`` callback calls Lightning's ``trainer.save_checkpoint``: ``{'epoch',
'global_step', 'pytorch-lightning_version', 'state_dict', 'loops', 'callbacks',
'optimizer_states', 'lr_schedulers', ...}``. The ``BaseMethod`` LightningModule holds
``backbone`` (a torchvision ResNet whose ``fc`` is an Identity; on CIFAR its stem is a 3x3
stride-1 conv with **padding 2** and no max-pool), ``projector`` (an ``nn.Sequential`` MLP),
the online ``classifier``, and for momentum methods ``momentum_backbone``/
``momentum_projector``/``momentum_classifier``. Versions before 1.0 named the backbone
``encoder``.

solo-learn does not call ``save_hyperparameters``: the method, backbone and dataset are in the
``args.json`` the same callback writes next to the checkpoint (``method``, ``backbone.name``,
``data.dataset``); it is read when present (``hyper_parameters``, if a fork records them,
too). The dataset gives the evaluation transform of solo-learn's ``classification_dataloader``
(CIFAR 32 px and its mean/std, STL-10 96 px, ImageNet 256 -> 224); without it, the stem
decides between CIFAR and ImageNet.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    Preprocess,
    register_encoder,
)
from pairmine.encoders.ssl_libs import (
    assemble,
    check_arch,
    is_tensor_map,
    load_foreign_checkpoint,
    mlp_from_state,
    not_this_layout,
    plain,
    under,
)
from pairmine.errors import EncoderError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# solo-learn's classification_dataloader.prepare_transforms, validation pipelines
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
_STL = ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261))
RESNETS = ("resnet18", "resnet50")  # the ResNet backbones solo-learn builds


def _preprocess(dataset: str | None, arch: str) -> Preprocess:
    if dataset in ("cifar10", "cifar100") or (dataset is None and arch.endswith("-cifar")):
        return Preprocess(resize=32, crop=32, mean=_CIFAR[0], std=_CIFAR[1])
    if dataset == "stl10":
        return Preprocess(resize=96, crop=96, mean=_STL[0], std=_STL[1])
    return Preprocess.imagenet()


def _run_config(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The run's config: ``args.json`` next to the checkpoint, else ``hyper_parameters``."""
    args_json = path.parent / "args.json"
    if args_json.is_file():
        try:
            cfg = json.loads(args_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", args_json, exc)
        else:
            if isinstance(cfg, dict):
                return cfg
    hp = plain(ckpt.get("hyper_parameters"))
    if isinstance(hp, dict):
        cfg = hp.get("cfg", hp)
        return cfg if isinstance(cfg, dict) else {}
    return {}


def load(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or not is_tensor_map(state):
        raise not_this_layout(path, "solo-learn", ckpt, "a Lightning .ckpt with a state_dict")
    assert isinstance(state, dict)
    trunk = under(state, "backbone.") or under(state, "encoder.")  # encoder: solo-learn < 1.0
    if not trunk:
        raise not_this_layout(path, "solo-learn", ckpt, "state_dict keys backbone.*")
    cfg = _run_config(path, ckpt)
    method = cfg.get("method")
    backbone = cfg.get("backbone", {}).get("name") if isinstance(cfg.get("backbone"),
                                                                 dict) else None
    data = cfg.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if (backbone is not None and backbone not in RESNETS) or "conv1.weight" not in trunk:
        raise EncoderError(f"{path}: the solo-learn backbone is {backbone or 'not a ResNet'} "
                           f"(its keys: {', '.join(list(trunk)[:3])}); this kind loads the "
                           f"ResNet backbones ({', '.join(RESNETS)})",
                           "ViT backbones load with the ViT encoder kinds")
    projector = under(state, "projector.")

    def head() -> tuple[nn.Module, int]:
        return mlp_from_state(projector, path, f"{method or 'solo-learn'} projector")

    return assemble(
        kind="solo-learn", spec_args=args, path=path, trunk=trunk, opts=opts,
        default_features="backbone", head=head if projector else None,
        no_head_reason="this checkpoint has no projector.* keys",
        preprocess=lambda arch: _preprocess(dataset, arch),
        cifar_stem_padding=2,  # BaseMethod's CIFAR stem: Conv2d(3, 64, 3, 1, padding=2)
        info={"method": method, "backbone": backbone, "dataset": dataset,
              "epoch": ckpt.get("epoch")})


register_encoder(EncoderKind(
    name="solo-learn", load=load, usage="solo-learn:PATH", features=("backbone", "head"),
    help="solo-learn pretraining checkpoint (Lightning .ckpt, state_dict backbone.*, "
         "projector.*; ResNet-18/50). backbone = pooled trunk (default; 512/2048-D), "
         "head = projector output. Method, backbone and dataset from args.json next to it; "
         "preprocess from the dataset (CIFAR 32 px, STL-10 96 px, else ImageNet 256/224)."))
