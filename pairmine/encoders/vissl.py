"""``vissl:PATH``: a VISSL (facebookresearch/vissl) checkpoint of a ResNet trunk.

VISSL's ``CheckpointWriter`` saves ``{'phase_idx', 'iteration', 'loss', 'iteration_num',
'train_phase_idx', 'classy_state_dict': task.get_classy_state()}``, and
``classy_state_dict['base_model'] = {'model': {'trunk': ..., 'heads': ...}, 'meta': ...}``
(a consolidated checkpoint keeps only ``base_model.model``). The ResNe(X)t trunk keeps
torchvision's modules in ``_feature_blocks`` (a ModuleDict ``conv1``, ``bn1``, ``conv1_relu``,
``maxpool``, ``layer1``..``layer4``, ``avgpool``, ``flatten``): keys
``_feature_blocks.layer1.0.conv1.weight``; a ``WIDTH_MULTIPLIER`` widens every stage.

The heads (``heads``: a ModuleList, ``0.clf.0.weight`` ...) are used for ``--features head``
only when there is one MLP head (``clf``) whose last layer is its last module: VISSL's
``mlp`` head puts ReLUs where its YAML config says (``use_relu``,
``skip_last_layer_relu_bn``), which the weights do not record, and the SimCLR/MoCo configs
end their first head on a ReLU that leaves no key. Preprocess: VISSL's ImageNet evaluation
(256 -> 224, ImageNet mean/std).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairmine.encoders.base import (
    Encoder,
    EncoderKind,
    EncoderOptions,
    keys_match,
    register_encoder,
)
from pairmine.encoders.ssl_libs import (
    assemble,
    check_arch,
    imagenet_or_cifar,
    is_tensor_map,
    load_foreign_checkpoint,
    mlp_from_state,
    not_this_layout,
    under,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

PATH_IN_CHECKPOINT = ("classy_state_dict", "base_model", "model")


def _model(ckpt: Any) -> Mapping[str, Any] | None:
    node = ckpt
    for key in PATH_IN_CHECKPOINT:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, Mapping) else None


def load(args: str, opts: EncoderOptions) -> Encoder:
    check_arch(opts.arch)  # before reading a possibly large file
    path = Path(args)
    ckpt = load_foreign_checkpoint(path)
    model = _model(ckpt)
    expected = "classy_state_dict.base_model.model.trunk with _feature_blocks.* keys"
    trunk_state = model.get("trunk") if model is not None else None
    if model is None or not is_tensor_map(trunk_state):
        raise not_this_layout(path, "vissl", ckpt, expected)
    assert isinstance(trunk_state, Mapping)
    trunk = under(trunk_state, "_feature_blocks.")
    if not trunk:
        raise not_this_layout(path, "vissl", trunk_state, expected)
    saved_heads: Any = model.get("heads")
    heads: dict[str, torch.Tensor] = dict(saved_heads) if is_tensor_map(saved_heads) else {}
    head_ids = sorted({k.partition(".")[0] for k in heads})
    clf = under(heads, "0.clf.")
    reason = ""
    if not heads:
        reason = "this checkpoint has no heads"
    elif head_ids != ["0"] or not clf or len(clf) != len(under(heads, "0.")):
        reason = (f"its heads ({', '.join(sorted({k.rsplit('.', 2)[0] for k in heads})[:4])}) "
                  "are not one MLP head: where their ReLUs are is in the VISSL config, not in "
                  "the weights")

    def head() -> tuple[nn.Module, int]:
        return mlp_from_state(clf, path, "VISSL mlp head")

    return assemble(kind="vissl", spec_args=args, path=path, trunk=trunk, opts=opts,
                    default_features="backbone", head=None if reason else head,
                    no_head_reason=reason, preprocess=imagenet_or_cifar,
                    info={"phase_idx": ckpt.get("phase_idx"), "heads": len(head_ids)})


register_encoder(EncoderKind(
    recognises=keys_match(r"^classy_state_dict\."),
    name="vissl", load=load, usage="vissl:PATH", features=("backbone", "head"),
    help="VISSL checkpoint of a ResNet/wide ResNet trunk (classy_state_dict.base_model.model."
         "trunk, _feature_blocks.*). backbone = pooled trunk (default; 2048-D for resnet50), "
         "head = a single MLP head (clf.*) where the weights fix its layers."))
