"""SSL-library (solo-learn, lightly, VISSL, mmpretrain/mmselfsup) and ResNet-era official
(SimCLR, BYOL, Barlow Twins, SwAV) checkpoints: each maker builds the model the way the project's
code builds it, with random weights, saves it with the project's key names, nesting and extra
entries, and returns the in-memory reference the loaded encoder must reproduce."""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from test_encoders import Made, Maker, assert_contract, randomise, state_of
from torch import nn

from pairmine.encoders import load_encoder
from pairmine.encoders.ssl_libs import build_trunk
from pairmine.errors import CheckpointError, EncoderError


def shifted(model: nn.Module, prefix: str) -> OrderedDict[str, torch.Tensor]:
    """A momentum/target copy that differs from the online weights, so loading it would show."""
    return OrderedDict((prefix + k, v + 0.5 if v.is_floating_point() else v)
                       for k, v in model.state_dict().items())


def optimizer_state(model: nn.Module) -> dict[str, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return opt.state_dict()


class Chain(nn.Module):
    """``head(flatten(trunk(x)))``: how the projects' forward passes chain the two."""

    def __init__(self, trunk: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.trunk(x).flatten(start_dim=1)
        out: torch.Tensor = self.head(h) if self.head is not None else h
        return out


def tv_trunk(arch: str, seed: int) -> nn.Module:
    net = getattr(torchvision.models, arch)()
    net.fc = nn.Identity()
    return randomise(net, seed)


def children_backbone(arch: str, seed: int) -> nn.Sequential:
    """lightly's and PyTorch-BYOL's ``nn.Sequential(*list(resnet.children())[:-1])``."""
    resnet = getattr(torchvision.models, arch)()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    randomise(backbone, seed)
    return backbone.eval()


def lightning_checkpoint(model: nn.Module, epoch: int) -> dict[str, Any]:
    """What ``trainer.save_checkpoint`` writes (Lightning 2.x), for a module ``model``."""
    return {
        "epoch": epoch, "global_step": 100 * epoch, "pytorch-lightning_version": "2.1.3",
        "state_dict": state_of(model),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
            "total": {"ready": epoch, "completed": epoch}}, "epoch_loop.state_dict": {
            "_batches_that_stepped": 100 * epoch}}},
        "callbacks": {"LearningRateMonitor": {}},
        "optimizer_states": [optimizer_state(model)],
        "lr_schedulers": [{"warmup_epochs": 10, "max_epochs": 100, "base_lrs": [0.3],
                           "last_epoch": epoch, "_step_count": epoch + 1,
                           "_last_lr": [0.29]}],
        "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                           "growth_interval": 2000, "_growth_tracker": 17},
    }


# ---------------------------------------------------------------------------------------------
# solo-learn: BaseMethod's backbone/projector/classifier, momentum copies, Checkpointer output


class SoloMethod(nn.Module):
    """The modules a solo-learn BaseMomentumMethod (BYOL here) holds, as it builds them."""

    def __init__(self, arch: str, cifar: bool, projector: nn.Module, seed: int) -> None:
        super().__init__()
        backbone = getattr(torchvision.models, arch)()
        self.features_dim = backbone.inplanes
        backbone.fc = nn.Identity()
        if cifar:
            backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            backbone.maxpool = nn.Identity()
        self.backbone = backbone
        self.classifier = nn.Linear(self.features_dim, 10)
        self.projector = projector
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_classifier = nn.Linear(self.features_dim, 10)
        self.momentum_projector = copy.deepcopy(projector)
        self.predictor = nn.Sequential(nn.Linear(256, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                       nn.Linear(64, 256))
        randomise(self, seed)
        with torch.no_grad():  # the EMA copies differ from the online networks
            for p in [*self.momentum_backbone.parameters(),
                      *self.momentum_projector.parameters()]:
                p.add_(0.5)


def _solo(cifar: bool, features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        if cifar:  # BYOL: Linear-BN-ReLU-Linear
            projector: nn.Module = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512),
                                                 nn.ReLU(), nn.Linear(512, 256))
        else:  # SimCLR: Linear-ReLU-Linear
            projector = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
        method = SoloMethod("resnet18", cifar, projector, seed=21)
        run = tmp / "trained_models" / "byol" / "3b2f8c1a"
        run.mkdir(parents=True)
        path = run / "byol-cifar10-3b2f8c1a-ep=9.ckpt"
        torch.save(lightning_checkpoint(method, epoch=9), path)
        if cifar:  # the Checkpointer's args.json: OmegaConf.to_container(cfg)
            (run / "args.json").write_text(json.dumps({
                "name": "byol-cifar10", "method": "byol",
                "backbone": {"name": "resnet18", "kwargs": {}},
                "data": {"dataset": "cifar10", "num_classes": 10},
                "method_kwargs": {"proj_hidden_dim": 512, "proj_output_dim": 256},
                "max_epochs": 10, "wandb_run_id": None}))
        ref = Chain(method.backbone, method.projector if features == "head" else None)
        size = 32 if cifar else 224
        return Made(f"solo-learn:{path}", {"features": features}, ref.eval(),
                    32 if cifar else 64, size)
    return make


# ---------------------------------------------------------------------------------------------
# lightly: nn.Sequential backbone of a torchvision ResNet, ProjectionHead.layers


class ProjectionHead(nn.Module):
    """lightly.models.modules.heads.ProjectionHead: blocks of Linear (bias only without BN),
    optional BatchNorm1d, optional non-linearity, in ``self.layers``."""

    def __init__(self, blocks: list[tuple[int, int, nn.Module | None, nn.Module | None]]):
        super().__init__()
        layers: list[nn.Module] = []
        for in_dim, out_dim, bn, act in blocks:
            layers.append(nn.Linear(in_dim, out_dim, bias=not bool(bn)))
            layers += [m for m in (bn, act) if m is not None]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


def simclr_projection_head() -> ProjectionHead:  # SimCLRProjectionHead(512, 512, 128)
    return ProjectionHead([(512, 512, nn.BatchNorm1d(512), nn.ReLU()),
                           (512, 128, nn.BatchNorm1d(128), None)])


def _lightly_example_ckpt(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """examples/pytorch_lightning/simclr.py: SimCLR(LightningModule) with backbone and
    projection_head, checkpointed by the Trainer."""
    model = nn.Module()
    model.backbone = children_backbone("resnet18", 31)
    model.projection_head = randomise(simclr_projection_head(), 32)
    path = tmp / "lightning_logs" / "version_0" / "checkpoints" / "epoch=9-step=1000.ckpt"
    path.parent.mkdir(parents=True)
    ckpt = lightning_checkpoint(model, epoch=9)
    ckpt["hyper_parameters"] = {}
    torch.save(ckpt, path)
    ref = Chain(model.backbone, model.projection_head)
    return Made(f"lightly:{path}", {"features": "head"}, ref.eval(), 32, 224)


def _lightly_tutorial_backbone(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """tutorial_simclr_clothing: torch.save({"resnet18_parameters": backbone.state_dict()})."""
    backbone = children_backbone("resnet18", 33)
    path = tmp / "model.pth"
    torch.save({"resnet18_parameters": backbone.state_dict()}, path)
    return Made(f"lightly:{path}", {}, Chain(backbone).eval(), 32, 224)


def _lightly_benchmark_byol(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """benchmarks/imagenet/resnet50/byol.py's modules (resnet18 to stay small): the backbone is
    the torchvision ResNet with fc = Identity; momentum copies, predictor, online classifier."""
    model = nn.Module()
    model.backbone = tv_trunk("resnet18", 34)
    model.projection_head = randomise(ProjectionHead(  # BYOLProjectionHead(512, 1024, 256)
        [(512, 1024, nn.BatchNorm1d(1024), nn.ReLU()), (1024, 256, None, None)]), 35)
    model.prediction_head = ProjectionHead([(256, 1024, nn.BatchNorm1d(1024), nn.ReLU()),
                                            (1024, 256, None, None)])
    model.online_classifier = nn.Module()
    model.online_classifier.classification_head = nn.Linear(512, 1000)
    ckpt = lightning_checkpoint(model, epoch=3)
    ckpt["state_dict"] |= shifted(model.backbone, "backbone_momentum.")
    ckpt["state_dict"] |= shifted(model.projection_head, "projection_head_momentum.")
    ckpt["hyper_parameters"] = {"batch_size_per_device": 128, "num_classes": 1000}
    path = tmp / "byol.ckpt"
    torch.save(ckpt, path)
    ref = Chain(model.backbone, model.projection_head)
    return Made(f"lightly:{path}", {"features": "head"}, ref.eval(), 32, 224)


# ---------------------------------------------------------------------------------------------
# VISSL: classy_state_dict.base_model.model.{trunk: _feature_blocks.*, heads}


class VisslResNe(nn.Module):
    """vissl/models/trunks/resnext.py's trunk: torchvision's parts in ``_feature_blocks``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        m = torchvision.models.resnet18()
        self._feature_blocks = nn.ModuleDict(OrderedDict([
            ("conv1", m.conv1), ("bn1", m.bn1), ("conv1_relu", m.relu),
            ("maxpool", m.maxpool), ("layer1", m.layer1), ("layer2", m.layer2),
            ("layer3", m.layer3), ("layer4", m.layer4), ("avgpool", m.avgpool),
            ("flatten", nn.Flatten(1))]))
        randomise(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self._feature_blocks.values():
            x = block(x)
        return x


class VisslMLP(nn.Module):
    """vissl/models/heads/mlp.py with use_bn and use_relu, skip_last_layer_relu_bn=True."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        self.clf = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.clf(x)
        return out


def vissl_checkpoint(trunk: nn.Module, heads: nn.ModuleList) -> dict[str, Any]:
    """LogCheckpointHook's checkpoint_content around task.get_classy_state()."""
    return {
        "phase_idx": 99, "iteration": 50_000, "loss": {}, "iteration_num": 50_000,
        "train_phase_idx": 99,
        "classy_state_dict": {
            "train": True,
            "base_model": {"model": {"trunk": trunk.state_dict(), "heads": heads.state_dict()},
                           "meta": {"trunk": {}, "heads": []}},
            "meters": [], "optimizer": {"optim": optimizer_state(trunk), "param_groups": []},
            "phase_idx": 99, "train_phase_idx": 99, "num_updates": 50_000,
            "losses": [6.1, 6.0], "hooks": {}, "loss": {}},
    }


def _vissl(features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        trunk = VisslResNe(41)
        heads = nn.ModuleList([randomise(VisslMLP([512, 512, 128]), 42)])
        path = tmp / "model_final_checkpoint_phase99.torch"
        torch.save(vissl_checkpoint(trunk, heads), path)
        ref = Chain(trunk, heads[0] if features == "head" else None)
        return Made(f"vissl:{path}", {"features": features}, ref.eval(), 32, 224)
    return make


# ---------------------------------------------------------------------------------------------
# mmpretrain / mmselfsup: mmengine's Runner.save_checkpoint


HISTORY_BUFFER = "mmengine.logging.history_buffer"


class HistoryBuffer:
    """Stands for mmengine.logging.HistoryBuffer in what we pickle: its __dict__ is what
    mmengine pickles (max_length and two numpy histories). Loading must never run it."""

    built = 0

    def __init__(self, values: list[float]) -> None:
        self.max_length = 1_000_000
        self._log_history = np.asarray(values)
        self._count_history = np.ones(len(values))

    def __setstate__(self, state: dict[str, Any]) -> None:
        HistoryBuffer.built += 1  # would show that unpickling ran this class
        self.__dict__.update(state)


@pytest.fixture
def fake_mmengine(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_mmengine(monkeypatch)


def install_fake_mmengine(mp: pytest.MonkeyPatch) -> None:
    """Make ``HistoryBuffer`` pickle under mmengine's qualified name."""
    for name in ("mmengine", "mmengine.logging", HISTORY_BUFFER):
        mp.setitem(sys.modules, name, types.ModuleType(name))
    mp.setattr(HistoryBuffer, "__module__", HISTORY_BUFFER)
    sys.modules[HISTORY_BUFFER].HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]


MM_CIFAR_CFG = """model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=18, num_stages=4, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512))
data_preprocessor = dict(
    num_classes=10,
    mean=[125.307, 122.961, 113.8575],
    std=[51.5865, 50.847, 51.255],
    to_rgb=False)
test_pipeline = [
    dict(type='PackInputs'),
]
"""

MM_IMAGENET_CFG = """data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=160, edge='short', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=128),
    dict(type='PackInputs'),
]
"""


def mmengine_checkpoint(model: nn.Module, cfg: str, epoch: int) -> dict[str, Any]:
    return {
        "meta": {"epoch": epoch, "iter": 390 * epoch, "cfg": cfg, "seed": 1234,
                 "experiment_name": "resnet18_8xb16_cifar10_20240101_120000",
                 "time": "20240101_130000", "mmengine_version": "0.10.4",
                 "dataset_meta": {"classes": ("airplane", "automobile")}},
        "state_dict": state_of(model),
        "message_hub": {"log_scalars": {"train/loss": HistoryBuffer([2.3, 1.9]),
                                        "train/lr": HistoryBuffer([0.1, 0.1])},
                        "runtime_info": {"epoch": epoch, "iter": 390 * epoch},
                        "resumed_keys": {"epoch": False, "iter": False}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]},
        "param_schedulers": [{"milestones": {100: 1, 150: 1}, "gamma": 0.1,
                              "last_step": epoch, "by_epoch": True}],
    }


def mm_cifar_backbone(seed: int) -> nn.Module:
    """mmpretrain's ResNet_CIFAR(depth=18): a 3x3 stride-1 padding-1 stem, no max-pool."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return randomise(net, seed)


def _mm_cifar_classifier(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    install_fake_mmengine(mp)
    model = nn.Module()
    model.backbone = mm_cifar_backbone(51)
    model.head = nn.Module()
    model.head.fc = randomise(nn.Linear(512, 10), 52)  # LinearClsHead
    path = tmp / "work_dirs" / "epoch_200.pth"
    path.parent.mkdir(parents=True)
    torch.save(mmengine_checkpoint(model, MM_CIFAR_CFG, 200), path)
    ref = Chain(model.backbone, model.head.fc)
    return Made(f"mmpretrain:{path}", {"features": "head"}, ref.eval(), 32, 32)


def _mm_mocov2(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """mmselfsup/mmpretrain MoCoV2: backbone, MoCoV2Neck (mlp), parameter-free
    ContrastiveHead, momentum_encoder = CosineEMA(Sequential(backbone, neck)), queue."""
    install_fake_mmengine(mp)
    model = nn.Module()
    model.backbone = tv_trunk("resnet18", 53)
    model.neck = nn.Module()
    model.neck.mlp = randomise(nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True),
                                             nn.Linear(512, 128)), 54)
    state = state_of(model)
    state |= shifted(nn.Sequential(model.backbone, model.neck), "momentum_encoder.module.")
    state["momentum_encoder.steps"] = torch.tensor(1000)
    state["queue"] = torch.randn(128, 4096)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    ckpt = mmengine_checkpoint(model, MM_IMAGENET_CFG, 200)
    ckpt["state_dict"] = state
    path = tmp / "epoch_200.pth"
    torch.save(ckpt, path)
    ref = Chain(model.backbone, model.neck.mlp)
    return Made(f"mmpretrain:{path}", {"features": "head"}, ref.eval(), 32, 128)


class NonLinearNeck(nn.Module):
    """mmpretrain's NonLinearNeck(num_layers=2, with_bias=False, with_last_bn=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(512, 256, bias=False)
        self.bn0 = nn.BatchNorm1d(256)
        self.fc1 = nn.Linear(256, 64, bias=False)
        self.bn1 = nn.BatchNorm1d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn1(self.fc1(torch.relu(self.bn0(self.fc0(x)))))
        return out


def _mm_simclr_neck(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = nn.Module()
    model.backbone = tv_trunk("resnet18", 55)
    model.neck = randomise(NonLinearNeck(), 56)
    path = tmp / "simclr_resnet18_epoch_100.pth"
    # a published file: publish_model keeps meta and state_dict only
    torch.save({"meta": {"epoch": 100}, "state_dict": state_of(model)}, path)
    return Made(f"mmpretrain:{path}", {"features": "head"},
                Chain(model.backbone, model.neck).eval(), 32, 224)


# ---------------------------------------------------------------------------------------------
# SimCLR: simclr-converter (v1) and SimCLRv2-Pytorch (v2)


def _simclr_v1(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """simclr-converter's resnet50x1: torchvision's names, fc the supervised linear head;
    torch.save({'state_dict': model.state_dict()})."""
    model = randomise(torchvision.models.resnet50(), 61)
    path = tmp / "resnet50-1x.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    trunk = copy.deepcopy(model)
    trunk.fc = nn.Identity()
    return Made(f"simclr:{path}", {}, trunk.eval(), 32, 224)


class BatchNormRelu(nn.Sequential):
    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU() if relu else nn.Identity())


class V2Projection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn = BatchNormRelu(cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.shortcut(x))
        return out


class V2Bottleneck(nn.Module):
    """SimCLRv2-Pytorch's BottleneckBlock without selective kernels."""

    def __init__(self, cin: int, planes: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.projection: nn.Module = (V2Projection(cin, planes * 4, stride) if projection
                                      else nn.Identity())
        self.net = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), BatchNormRelu(planes),
            nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False), BatchNormRelu(planes),
            nn.Conv2d(planes, planes * 4, 1, bias=False), BatchNormRelu(planes * 4, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(x) + self.net(x))


class V2Blocks(nn.Module):
    def __init__(self, n: int, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([V2Bottleneck(cin, planes, stride, True)] + [
            V2Bottleneck(planes * 4, planes, 1, False) for _ in range(n - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class V2ResNet(nn.Module):
    """SimCLRv2-Pytorch's ResNet(layers, width_multiplier, sk_ratio=0): ``net`` = stem, 4
    stages; ``fc`` the supervised head; forward = mean over the spatial dims."""

    def __init__(self, layers: list[int], width: int) -> None:
        super().__init__()
        w = 64 * width
        stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, padding=3, bias=False), BatchNormRelu(w),
                             nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = [stem]
        cin = w
        for i, n in enumerate(layers):
            stages.append(V2Blocks(n, cin, w * 2 ** i, 1 if i == 0 else 2))
            cin = w * 2 ** i * 4
        self.net = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).mean(dim=[2, 3])
        return out


class ContrastiveHead(nn.Module):
    """SimCLRv2-Pytorch's ContrastiveHead: 3 x (Linear no bias, BN), ReLU between."""

    def __init__(self, cin: int, out_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(3):
            dim = out_dim if i == 2 else cin
            self.layers.append(nn.Linear(cin, dim, bias=False))
            self.layers.append(nn.BatchNorm1d(dim))
            if i != 2:
                self.layers.append(nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _simclr_v2(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    resnet = randomise(V2ResNet([3, 4, 6, 3], 1), 62)
    head = randomise(ContrastiveHead(2048), 63)
    path = tmp / "r50_1x_sk0.pth"
    torch.save({"resnet": resnet.state_dict(), "head": head.state_dict()}, path)
    return Made(f"simclr:{path}", {"features": "head"}, Chain(resnet, head).eval(), 32, 224)


# ---------------------------------------------------------------------------------------------
# BYOL: sthalles/PyTorch-BYOL and a bare torchvision ResNet (lucidrains/byol-pytorch)


class MLPHead(nn.Module):
    """PyTorch-BYOL's models.mlp_head.MLPHead: ``net`` = Linear-BN-ReLU-Linear."""

    def __init__(self, in_channels: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class ByolResNet18(nn.Module):
    """PyTorch-BYOL's models.resnet_base_network.ResNet18 (``projetion`` sic)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.encoder = children_backbone("resnet18", seed)
        self.projetion = randomise(MLPHead(512, 512, 128), seed + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.encoder(x)
        out: torch.Tensor = self.projetion(h.view(h.shape[0], h.shape[1]))
        return out


def _byol_sthalles(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    online = ByolResNet18(71)
    folder = tmp / "runs" / "Dec01" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "network:\n  name: resnet18\n  projection_head:\n    mlp_hidden_size: 512\n"
        "    projection_size: 128\n\ndata_transforms:\n  s: 1\n  input_shape: (96,96,3)\n")
    torch.save({"online_network_state_dict": online.state_dict(),
                "target_network_state_dict": shifted(online, ""),
                "optimizer_state_dict": optimizer_state(online)}, folder / "model.pth")
    return Made(f"byol:{folder / 'model.pth'}", {"features": "head"}, online.eval(), 32, 96)


def _byol_torchvision(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    resnet = randomise(torchvision.models.resnet18(), 72)
    path = tmp / "improved-net.pt"
    torch.save(resnet.state_dict(), path)  # byol-pytorch's README
    trunk = copy.deepcopy(resnet)
    trunk.fc = nn.Identity()
    return Made(f"byol:{path}", {}, trunk.eval(), 32, 224)


# ---------------------------------------------------------------------------------------------
# Barlow Twins


class BarlowTwins(nn.Module):
    """facebookresearch/barlowtwins main.py's model (projector '512-512-256' to stay small)."""

    def __init__(self, sizes: list[int], seed: int) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet50(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False),
                       nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)
        randomise(self, seed)


def _barlow_hub(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = BarlowTwins([2048, 512, 512, 256], 81)
    path = tmp / "resnet50.pth"
    torch.save(model.backbone.state_dict(), path)  # model.module.backbone.state_dict()
    return Made(f"barlowtwins:{path}", {}, model.backbone.eval(), 32, 224)


def _barlow_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = BarlowTwins([2048, 512, 512, 256], 82)
    path = tmp / "checkpoint.pth"
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.save({"epoch": 1000, "model": state_of(model, "module."),  # a DDP model
                "optimizer": opt.state_dict()}, path)
    ref = Chain(model.backbone, model.projector)
    return Made(f"barlowtwins:{path}", {"features": "head"}, ref.eval(), 32, 224)


# ---------------------------------------------------------------------------------------------
# SwAV


class SwavResNet50(nn.Module):
    """facebookresearch/swav src/resnet50.py: a 1-pixel zero padding then a padding-2 stem,
    torchvision's block names, projection_head, prototypes; forward_backbone / forward_head."""

    def __init__(self, hidden_mlp: int, output_dim: int, prototypes: int, seed: int) -> None:
        super().__init__()
        tv = torchvision.models.resnet50()
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1, self.relu, self.maxpool = tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (tv.layer1, tv.layer2, tv.layer3,
                                                              tv.layer4)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.projection_head = nn.Sequential(nn.Linear(2048, hidden_mlp),
                                             nn.BatchNorm1d(hidden_mlp), nn.ReLU(inplace=True),
                                             nn.Linear(hidden_mlp, output_dim))
        self.prototypes = nn.Linear(output_dim, prototypes, bias=False)
        randomise(self, seed)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head(x), dim=1, p=2)


class SwavPart(nn.Module):
    def __init__(self, model: SwavResNet50, head: bool) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.forward_backbone(x)
        return self.model.forward_head(h) if self.head else h


def _swav_released(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = SwavResNet50(512, 128, 300, 91)
    path = tmp / "swav_800ep_pretrain.pth.tar"
    torch.save(state_of(model, "module."), path)  # the released file: the DDP state dict
    return Made(f"swav:{path}", {}, SwavPart(model, head=False).eval(), 32, 224)


def _swav_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = SwavResNet50(512, 128, 300, 92)
    path = tmp / "checkpoint.pth.tar"
    opt = torch.optim.SGD(model.parameters(), lr=0.6)
    torch.save({"epoch": 100, "state_dict": state_of(model, "module."),
                "optimizer": opt.state_dict()}, path)
    return Made(f"swav:{path}", {"features": "head"}, SwavPart(model, head=True).eval(), 32,
                224)


CASES: dict[str, tuple[str, Maker]] = {
    "solo-learn-cifar-backbone": ("solo-learn", _solo(cifar=True, features="backbone")),
    "solo-learn-cifar-head": ("solo-learn", _solo(cifar=True, features="head")),
    "solo-learn-imagenet-head": ("solo-learn", _solo(cifar=False, features="head")),
    "lightly-lightning-example-head": ("lightly", _lightly_example_ckpt),
    "lightly-tutorial-backbone": ("lightly", _lightly_tutorial_backbone),
    "lightly-benchmark-byol-head": ("lightly", _lightly_benchmark_byol),
    "vissl-trunk": ("vissl", _vissl("backbone")),
    "vissl-mlp-head": ("vissl", _vissl("head")),
    "mmpretrain-cifar-classifier": ("mmpretrain", _mm_cifar_classifier),
    "mmselfsup-mocov2-neck": ("mmpretrain", _mm_mocov2),
    "mmselfsup-nonlinear-neck": ("mmpretrain", _mm_simclr_neck),
    "simclr-v1-converted": ("simclr", _simclr_v1),
    "simclr-v2-head": ("simclr", _simclr_v2),
    "byol-pytorch-byol-head": ("byol", _byol_sthalles),
    "byol-torchvision": ("byol", _byol_torchvision),
    "barlowtwins-hub": ("barlowtwins", _barlow_hub),
    "barlowtwins-checkpoint-head": ("barlowtwins", _barlow_checkpoint),
    "swav-released": ("swav", _swav_released),
    "swav-checkpoint-head": ("swav", _swav_checkpoint),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, make = CASES[case]
    assert_contract(make(tmp_path, monkeypatch))


# ---------------------------------------------------------------------------------------------
# what the layouts record


def test_solo_learn_reads_args_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _solo(cifar=True, features="backbone")(tmp_path, monkeypatch)
    enc = load_encoder(made.spec)
    assert (enc.arch, enc.dim, enc.features) == ("resnet18-cifar", 512, "backbone")
    assert (enc.info["method"], enc.info["dataset"], enc.info["epoch"]) == ("byol", "cifar10", 9)
    assert enc.preprocess.mean == (0.4914, 0.4822, 0.4465)
    assert enc.preprocess.std == (0.247, 0.243, 0.261)
    assert getattr(enc.model, "conv1").padding == (2, 2)  # noqa: B009  # solo-learn's CIFAR stem, not the usual 1


def test_mmpretrain_preprocess_from_cfg_and_foreign_objects_stay_inert(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _mm_cifar_classifier(tmp_path, monkeypatch)
    path = Path(made.spec.partition(":")[2])
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):
        torch.load(path, weights_only=True)  # why the stand-ins are needed at all
    built = HistoryBuffer.built
    enc = load_encoder(made.spec, features="head")
    assert HistoryBuffer.built == built  # HistoryBuffer.__setstate__ never ran
    assert enc.preprocess.crop == 32
    assert enc.preprocess.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
    (tmp_path / "moco").mkdir()
    made = _mm_mocov2(tmp_path / "moco", monkeypatch)
    enc = load_encoder(made.spec)
    assert (enc.features, enc.dim, enc.preprocess.resize, enc.preprocess.crop,
            enc.preprocess.interpolation) == ("backbone", 512, 160, 128, "bicubic")
    assert enc.preprocess.std == pytest.approx((0.229, 0.224, 0.225), abs=1e-4)


def test_byol_input_size_from_its_config(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made = _byol_sthalles(tmp_path, monkeypatch)
    enc = load_encoder(made.spec)
    assert (enc.preprocess.resize, enc.preprocess.crop) == (96, 96)
    assert (enc.preprocess.mean, enc.preprocess.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_simclr_preprocess_has_no_normalisation(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_encoder(_simclr_v2(tmp_path, monkeypatch).spec)
    assert (enc.dim, enc.info["simclr_version"], enc.preprocess.mean,
            enc.preprocess.interpolation) == (2048, "v2", (0.0, 0.0, 0.0), "bicubic")


def test_wide_trunks_match_the_projects_wide_resnets() -> None:
    """SimCLR 2x/3x (and SwAV w2..w5, VISSL WIDTH_MULTIPLIER) widen every stage: our trunk
    has the same parameter shapes as SimCLRv2-Pytorch's at width 2, renamed to ours."""
    from pairmine.encoders.resnet_official import simclr_v2_to_torchvision

    with torch.device("meta"):
        theirs = V2ResNet([3, 4, 6, 3], 2)
        ours, dim = build_trunk("resnet50x2")
    renamed = simclr_v2_to_torchvision(theirs.state_dict(), Path("r50_2x_sk0.pth"))
    assert {k: tuple(v.shape) for k, v in renamed.items() if not k.startswith("fc.")} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert dim == 4096


def test_wide_arch_detected_from_the_stem(tmp_path: Path) -> None:
    with torch.device("meta"):
        wide, _ = build_trunk("resnet50x4")
    from pairmine.encoders.base import EncoderOptions
    from pairmine.encoders.ssl_libs import resolve_arch

    assert resolve_arch(wide.state_dict(), EncoderOptions()) == ("resnet50x4", "resnet50x4")
    assert resolve_arch(wide.state_dict(), EncoderOptions(arch="resnet50"))[0] == "resnet50"


# ---------------------------------------------------------------------------------------------
# errors: one line saying what was found and what to pass instead


LIB_KINDS = ["solo-learn", "lightly", "vissl", "mmpretrain", "simclr", "byol", "barlowtwins",
             "swav"]


@pytest.fixture(scope="module")
def moco_checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_encoders import moco_checkpoint, moco_query_encoder

    path = tmp_path_factory.mktemp("moco") / "checkpoint_0199.pth.tar"
    torch.save(moco_checkpoint(moco_query_encoder("v2")), path)
    return path


@pytest.mark.parametrize("kind", LIB_KINDS)
def test_wrong_file_names_its_keys_and_the_kind_to_use(kind: str,
                                                       moco_checkpoint_file: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_encoder(f"{kind}:{moco_checkpoint_file}")
    message = str(info.value)
    assert f"not a {kind} checkpoint" in message, message
    assert "module.encoder_q." in message and "moco:PATH" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("kind", LIB_KINDS)
@pytest.mark.parametrize("what", ["missing", "directory", "text"])
def test_not_a_checkpoint(kind: str, what: str, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    if what == "directory":
        path.mkdir()
    elif what == "text":
        path.write_text("epoch 12, loss 0.5\n")
    with pytest.raises(CheckpointError) as info:
        load_encoder(f"{kind}:{path}")
    assert str(path) in str(info.value) and info.value.hint


def test_solo_learn_vit_backbone_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"epoch": 1, "pytorch-lightning_version": "2.1.3",
                "state_dict": {"backbone.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16),
                               "projector.0.weight": torch.zeros(4, 8)}}, run / "a.ckpt")
    (run / "args.json").write_text(json.dumps({"method": "dino",
                                               "backbone": {"name": "vit_small"}}))
    with pytest.raises(EncoderError, match=r"backbone is vit_small.*ResNet"):
        load_encoder(f"solo-learn:{run / 'a.ckpt'}")


def test_heads_that_cannot_be_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # VISSL SimCLR: two MLP heads, the first ending on a ReLU the weights do not show
    trunk = VisslResNe(43)
    heads = nn.ModuleList([VisslMLP([512, 512]), VisslMLP([512, 128])])
    torch.save(vissl_checkpoint(trunk, heads), tmp_path / "vissl.torch")
    with pytest.raises(EncoderError, match="not one MLP head"):
        load_encoder(f"vissl:{tmp_path / 'vissl.torch'}", features="head")
    assert load_encoder(f"vissl:{tmp_path / 'vissl.torch'}").dim == 512
    # lightly DINO head (GELU, weight-normalised last layer)
    backbone = children_backbone("resnet18", 44)
    state = state_of(backbone, "backbone.") | {
        "projection_head.layers.0.weight": torch.zeros(64, 512),
        "projection_head.last_layer.weight_g": torch.ones(256, 1),
        "projection_head.last_layer.weight_v": torch.zeros(256, 64)}
    torch.save({"state_dict": state}, tmp_path / "dino.ckpt")
    with pytest.raises(EncoderError, match="DINO-style"):
        load_encoder(f"lightly:{tmp_path / 'dino.ckpt'}", features="head")
    # SimCLR v1 converted weights carry the linear classifier, not the projection head
    made = _byol_torchvision(tmp_path, monkeypatch)
    path = Path(made.spec.partition(":")[2])
    torch.save({"state_dict": torch.load(path)}, tmp_path / "r50_1x.pth")
    with pytest.raises(EncoderError, match="linear-evaluation classifier"):
        load_encoder(f"simclr:{tmp_path / 'r50_1x.pth'}", features="head")
    # Barlow Twins' published backbone has no projector
    with pytest.raises(EncoderError, match="backbone only"):
        load_encoder(made.spec.replace("byol:", "barlowtwins:"), features="head")


def test_unsupported_variants_say_so(tmp_path: Path) -> None:
    # SimCLRv2 with selective kernels: a 3x3 stem and mixing convolutions
    torch.save({"resnet": {"net.0.0.weight": torch.zeros(32, 3, 3, 3),
                           "net.1.blocks.0.net.2.mixing_conv.0.weight": torch.zeros(32, 64, 1, 1)},
                "head": {"layers.0.weight": torch.zeros(8, 8)}}, tmp_path / "r50_1x_sk1.pth")
    with pytest.raises(CheckpointError, match="selective kernels"):
        load_encoder(f"simclr:{tmp_path / 'r50_1x_sk1.pth'}")
    # mmpretrain ResNetV1d: deep stem
    torch.save({"meta": {}, "state_dict": {"backbone.stem.0.conv.weight": torch.zeros(32, 3, 3, 3),
                                           "backbone.layer1.0.conv1.weight": torch.zeros(1)}},
               tmp_path / "resnetv1d.pth")
    with pytest.raises(CheckpointError, match="deep stem"):
        load_encoder(f"mmpretrain:{tmp_path / 'resnetv1d.pth'}")


def test_wrong_arch_is_a_key_or_shape_mismatch(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    made = _lightly_tutorial_backbone(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_encoder(made.spec, arch="resnet50")
    with pytest.raises(EncoderError, match="unknown --arch"):
        load_encoder(made.spec, arch="resnet9")


def test_solo_learn_omegaconf_hyper_parameters_without_omegaconf(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork that calls save_hyperparameters(cfg) stores omegaconf objects: DictConfig and
    its nodes pickle their __dict__ (``_metadata``, ``_parent``, ``_content`` / ``_val``), and
    Lightning adds ``hparams_type``. They load as inert records and their values are read."""
    classes: dict[str, type] = {}
    for module, name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.nodes", "AnyNode"),
                         ("omegaconf.base", "ContainerMetadata")):
        for parent in ("omegaconf", module):
            monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent)
                                or types.ModuleType(parent))
        cls = type(name, (), {"__module__": module})
        setattr(sys.modules[module], name, cls)
        classes[name] = cls

    def node(value: Any, parent: Any) -> Any:
        obj = classes["AnyNode"]()
        obj.__dict__ |= {"_metadata": classes["ContainerMetadata"](), "_parent": parent,
                         "_val": value}
        return obj

    def config(content: dict[str, Any], parent: Any = None) -> Any:
        obj = classes["DictConfig"]()
        obj.__dict__ |= {"_metadata": classes["ContainerMetadata"](), "_parent": parent,
                         "_content": {}}
        for key, value in content.items():
            obj._content[key] = (config(value, obj) if isinstance(value, dict)
                                 else node(value, obj))
        return obj

    method = SoloMethod("resnet18", cifar=True, projector=nn.Sequential(
        nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 256)), seed=22)
    ckpt = lightning_checkpoint(method, epoch=4)
    ckpt["hyper_parameters"] = config({"method": "simclr", "backbone": {"name": "resnet18"},
                                       "data": {"dataset": "cifar100"}})
    ckpt["hparams_type"] = classes["DictConfig"]
    torch.save(ckpt, tmp_path / "simclr.ckpt")
    enc = load_encoder(f"solo-learn:{tmp_path / 'simclr.ckpt'}")
    assert (enc.info["method"], enc.info["dataset"], enc.preprocess.crop) == (
        "simclr", "cifar100", 32)


def test_safetensors_state_dicts_load_without_pickle(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's state dict exported to safetensors loads through the same layouts."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = nn.Module()
    model.backbone = children_backbone("resnet18", 36)
    model.projection_head = randomise(simclr_projection_head(), 37)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(dict(model.state_dict()), str(path))
    def no_pickle(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load (pickle) was called for a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    assert_contract(Made(f"lightly:{path}", {"features": "head"},
                         Chain(model.backbone, model.projection_head).eval(), 32, 224))


class RunsACommand:
    """A pickle that would run a shell command when unpickled with plain pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_code_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    """Stand-ins replace unknown classes, never torch's blocklist: a checkpoint that calls
    os.system fails to load, and the command does not run."""
    marker = tmp_path / "ran"
    model = nn.Module()
    model.backbone = tv_trunk("resnet18", 57)
    torch.save({"meta": {"hook": RunsACommand(marker)}, "state_dict": state_of(model)},
               tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        load_encoder(f"mmpretrain:{tmp_path / 'evil.pth'}")
    assert not marker.exists()
