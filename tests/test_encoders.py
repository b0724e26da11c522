"""The encoder registry: every kind loads its real checkpoint layout, errors are clear, and the
CIFAR ResNet-20 reproduces its published accuracy on the shared CIFAR-10 JPEGs."""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import pkgutil
import re
import subprocess
import sys
import tarfile
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from pairmine.cli import cli
from pairmine.encoders import ENCODERS, list_encoders, load_encoder
from pairmine.encoders.archs import BACKBONES, build_backbone, detect_backbone
from pairmine.encoders.base import Encoder, _load_builtin
from pairmine.encoders.he_resnet import CifarResNet
from pairmine.errors import CheckpointError, EncoderError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESNET20 = SHARED_DATA / "resnet20-cifar10.th"
CIFAR_TEST_TGZ = SHARED_DATA / "cifar10-test-jpeg.tar.gz"


# ---------------------------------------------------------------------------------------------
# reference models, built the way the original training code builds them


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights, with non-trivial BatchNorm statistics so a mis-loaded BN shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.normal_(1, 0.1)
                    m.bias.normal_(0, 0.1)
    return model.eval()


def state_of(model: nn.Module, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((prefix + k, v.clone()) for k, v in model.state_dict().items())


def without_fc(model: nn.Module) -> nn.Module:
    trunk = copy.deepcopy(model)
    trunk.fc = nn.Identity()
    return trunk.eval()


def moco_query_encoder(version: str) -> nn.Module:
    """As facebookresearch/moco's builder: ``base_encoder(num_classes=dim)``, v2 adds an MLP."""
    q = torchvision.models.resnet18(num_classes=128)
    if version == "v2":
        q.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), q.fc)
    return randomise(q, 1)


def moco_checkpoint(q: nn.Module) -> dict[str, Any]:
    # the key encoder differs from the query encoder, so loading the wrong one would show
    k = OrderedDict((f"module.encoder_k.{n}", t + 0.5 if t.is_floating_point() else t)
                    for n, t in q.state_dict().items())
    state = state_of(q, "module.encoder_q.") | k
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet18", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}}


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MoCo-v2 resnet18 checkpoint, shared by the error tests."""
    path = tmp_path_factory.mktemp("moco") / "checkpoint_0199.pth.tar"
    torch.save(moco_checkpoint(moco_query_encoder("v2")), path)
    return path


def simsiam_encoder() -> tuple[nn.Module, nn.Module]:
    """As facebookresearch/simsiam's builder (dim 256, pred_dim 64 to stay small)."""
    enc = torchvision.models.resnet18(num_classes=256)
    enc.fc = nn.Sequential(
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
        enc.fc, nn.BatchNorm1d(256, affine=False))
    predictor = nn.Sequential(nn.Linear(256, 64, bias=False), nn.BatchNorm1d(64),
                              nn.ReLU(inplace=True), nn.Linear(64, 256))
    return randomise(enc, 3), randomise(predictor, 4)


# ---------------------------------------------------------------------------------------------
# the contract: one case per way of loading, every registered kind covered


@dataclass(frozen=True)
class Made:
    spec: str
    kwargs: dict[str, Any]
    reference: nn.Module  # what the loaded encoder must compute
    pixels: int  # test input size
    crop: int  # the preprocess crop the kind must declare


Maker = Callable[[Path, pytest.MonkeyPatch], Made]


def _cifar(features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        ref = randomise(CifarResNet(20, logits=features == "head"), 5)
        path = tmp / "resnet20.th"
        # as akamaster saves it: legacy pickle, DataParallel prefix, no num_batches_tracked
        state = OrderedDict((k, v) for k, v in state_of(ref, "module.").items()
                            if not k.endswith("num_batches_tracked"))
        torch.save({"best_prec1": 91.0, "state_dict": state}, path,
                   _use_new_zipfile_serialization=False)
        return Made(f"cifar-resnet:{path}", {"features": features}, ref, 32, 32)
    return make


def _moco(version: str, features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        q = moco_query_encoder(version)
        path = tmp / "checkpoint_0199.pth.tar"
        torch.save(moco_checkpoint(q), path)
        ref = q if features == "head" else without_fc(q)
        return Made(f"moco:{path}", {"arch": "resnet18", "features": features}, ref, 64, 224)
    return make


def _moco_cifar_detected(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """A CIFAR-stem MoCo-v2 trunk, architecture read from the keys (no --arch)."""
    q = torchvision.models.resnet18(num_classes=128)
    q.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    q.maxpool = nn.Identity()
    q.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), q.fc)
    randomise(q, 6)
    path = tmp / "moco-cifar.pth.tar"
    torch.save(moco_checkpoint(q), path)
    return Made(f"moco:{path}", {}, q, 32, 32)


def _simsiam(features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        enc, pred = simsiam_encoder()
        path = tmp / "simsiam.pth.tar"
        torch.save({"epoch": 100, "arch": "resnet18",
                    "state_dict": state_of(enc, "module.encoder.")
                    | state_of(pred, "module.predictor."), "optimizer": {}}, path)
        ref = enc if features == "head" else without_fc(enc)
        return Made(f"simsiam:{path}", {"arch": "resnet18", "features": features}, ref, 64, 224)
    return make


def _vicreg(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    trunk = without_fc(randomise(torchvision.models.resnet18(), 7))
    path = tmp / "resnet18.pth"
    torch.save(trunk.state_dict(), path)  # as published: a bare trunk state dict, no fc
    return Made(f"vicreg:{path}", {"arch": "resnet18"}, trunk, 64, 224)


def _torchvision(features: str) -> Maker:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
        model = randomise(torchvision.models.resnet18(), 8)
        path = tmp / "resnet18.pth"
        torch.save(model.state_dict(), path)
        ref = model if features == "head" else without_fc(model)
        return Made(f"torchvision:resnet18:{path}", {"features": features}, ref, 64, 224)
    return make


def _torchvision_hub_cache(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """A weight-set name resolves to the file torchvision would have cached; no download."""
    mp.setenv("TORCH_HOME", str(tmp / "torch"))
    model = randomise(torchvision.models.mobilenet_v3_small(), 9)
    url = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    cached = tmp / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    ref = copy.deepcopy(model)
    ref.classifier[3] = nn.Identity()  # penultimate: 1024-D after Hardswish and Dropout
    return Made("torchvision:mobilenet_v3_small:IMAGENET1K_V1", {}, ref.eval(), 64, 224)


def _timm(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    timm = pytest.importorskip("timm")
    model = randomise(timm.create_model("resnet18", pretrained=False), 10)
    path = tmp / "timm-resnet18.pth"
    torch.save(model.state_dict(), path)
    model.reset_classifier(0)  # what num_classes=0 builds: pooled features
    return Made(f"timm:resnet18:{path}", {}, model.eval(), 64, 224)


def _torchscript(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    model = without_fc(randomise(torchvision.models.resnet18(), 11))
    path = tmp / "encoder.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch
        torch.jit.script(model).save(str(path))
    return Made(f"torchscript:{path}", {}, model, 64, 224)


def _pairmine(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """A `pairmine train` checkpoint: the trainer's own MoCo-v2 model, its recorded preprocess."""
    from pairmine.train.moco import MoCo

    torch.manual_seed(15)
    model = MoCo("resnet18-cifar", dim=128, k=64)
    randomise(model.encoder_q, 15)
    out = tmp / "run"
    out.mkdir()
    torch.save({"format": "pairmine/moco-checkpoint", "version": 1, "arch": "resnet18-cifar",
                "feat_dim": 512, "moco_dim": 128, "epoch": 3, "epochs": 3,
                "config": {"lam": 1.0}, "data": {},
                "preprocess": {"resize": 32, "crop": 32, "mean": [0.5, 0.5, 0.5],
                               "std": [0.25, 0.25, 0.25]},
                "state_dict": state_of(model), "optimizer": {}, "rng": {}},
               out / "checkpoint-last.pt")
    return Made(f"pairmine:{out}", {}, model.encoder_q.eval(), 32, 32)


CASES: dict[str, tuple[str, Maker]] = {
    "cifar-resnet-backbone": ("cifar-resnet", _cifar("backbone")),
    "cifar-resnet-head": ("cifar-resnet", _cifar("head")),
    "moco-v2-head": ("moco", _moco("v2", "head")),
    "moco-v2-backbone": ("moco", _moco("v2", "backbone")),
    "moco-v1-head": ("moco", _moco("v1", "head")),
    "moco-v2-cifar-detected": ("moco", _moco_cifar_detected),
    "pairmine": ("pairmine", _pairmine),
    "simsiam-head": ("simsiam", _simsiam("head")),
    "simsiam-backbone": ("simsiam", _simsiam("backbone")),
    "vicreg": ("vicreg", _vicreg),
    "torchvision-backbone": ("torchvision", _torchvision("backbone")),
    "torchvision-head": ("torchvision", _torchvision("head")),
    "torchvision-hub-cache": ("torchvision", _torchvision_hub_cache),
    "timm": ("timm", _timm),
    "torchscript": ("torchscript", _torchscript),
}


def kind_modules() -> list[str]:
    """The modules of pairmine.encoders that register a kind."""
    import pairmine.encoders

    return sorted(m.name for m in pkgutil.iter_modules(pairmine.encoders.__path__)
                  if "register_encoder(" in (Path(pairmine.encoders.__path__[0]) /
                                             f"{m.name}.py").read_text(encoding="utf-8"))


def builtin_kinds() -> set[str]:
    """Every kind pairmine.encoders defines, whatever other tests have imported already."""
    for name in kind_modules():
        importlib.import_module(f"pairmine.encoders.{name}")
    return {name for name, kind in ENCODERS.items()
            if kind.load.__module__.startswith("pairmine.")}  # not conftest's test-only `toy`


def all_contract_cases() -> dict[str, tuple[str, Maker]]:
    """CASES here plus the CASES of every other ``tests/test_encoders_*.py`` (one file per
    family of encoders), loaded by path so the union does not depend on what pytest ran."""
    import importlib.util

    cases = dict(CASES)
    for path in sorted(Path(__file__).parent.glob("test_encoders_*.py")):
        spec = importlib.util.spec_from_file_location(f"_cases_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        family = getattr(module, "CASES", {})
        assert not set(family) & set(cases), f"{path.name} repeats case names"
        cases.update(family)
    return cases


def test_every_registered_kind_has_a_contract_case() -> None:
    assert {kind for kind, _ in all_contract_cases().values()} == builtin_kinds()


def test_every_kind_module_is_loaded_by_the_registry() -> None:
    loader = inspect.getsource(_load_builtin)
    assert [m for m in kind_modules() if m != "base" and m not in loader] == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, make = CASES[case]
    assert_contract(make(tmp_path, monkeypatch))


def assert_contract(made: Made) -> None:
    """The one contract every encoder kind is held to (other test files call it too): the
    registry loads the saved file into a model in eval mode whose features equal the
    in-memory reference model's, with the declared dimension and crop."""
    enc = load_encoder(made.spec, **made.kwargs)
    assert isinstance(enc, Encoder) and enc.spec == made.spec
    assert not enc.model.training
    assert enc.preprocess.crop == made.crop
    x = torch.randn(3, 3, made.pixels, made.pixels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = made.reference.eval()(x)
        got = enc.model(x)
    assert got.shape == want.shape == (3, enc.dim)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got - want).abs().max()
    assert want.std() > 1e-3  # the comparison is not between two constant outputs
    assert enc.describe()["dim"] == enc.dim


def test_moco_head_dims_and_version(moco_file: Path) -> None:
    enc = load_encoder(f"moco:{moco_file}", arch="resnet18")
    assert (enc.features, enc.dim, enc.info["moco_version"]) == ("head", 128, "v2")
    enc = load_encoder(f"moco:{moco_file}", features="backbone")  # arch from the keys
    assert (enc.arch, enc.dim) == ("resnet18", 512)


def test_safetensors_weights(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = randomise(torchvision.models.resnet18(), 14)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(dict(model.state_dict()), str(path))
    enc = load_encoder(f"torchvision:resnet18:{path}", features="head")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc.model(x), model(x), rtol=1e-4, atol=1e-5)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a loadable safetensors file"):
        load_encoder(f"torchvision:resnet18:{path}")


@pytest.mark.parametrize("arch", BACKBONES)
def test_backbone_detected_from_keys(arch: str) -> None:
    net, feat_dim = build_backbone(arch)
    assert detect_backbone(net.state_dict()) == arch
    assert feat_dim == ({"resnet20-cifar": 64, "resnet20x2-cifar": 128}.get(arch) or
                        (512 if arch.startswith(("resnet18", "resnet34")) else 2048))
    assert isinstance(net.fc, nn.Identity)  # torchvision names kept, classifier removed


# ---------------------------------------------------------------------------------------------
# the real checkpoint on the real images


def _cifar_test_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of each class, read straight from the tar.gz; labels are
    the alphabetical index of the class folder."""
    from PIL import Image

    if not (RESNET20.exists() and CIFAR_TEST_TGZ.exists()):
        pytest.skip("../shared/data is not present")
    pattern = re.compile(r"cifar10/test/([a-z]+)/(\d+)\.jpg")
    found: list[tuple[str, bytes]] = []
    classes: set[str] = set()
    with tarfile.open(CIFAR_TEST_TGZ) as tar:
        for member in tar:
            m = pattern.fullmatch(member.name)
            if m is None:
                continue
            classes.add(m.group(1))
            if int(m.group(2)) < per_class:
                f = tar.extractfile(member)
                assert f is not None
                found.append((m.group(1), f.read()))
    index = {c: i for i, c in enumerate(sorted(classes))}
    pixels = torch.stack([torch.from_numpy(
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy())
        for _, data in found])  # (N, 32, 32, 3) uint8
    labels = torch.tensor([index[c] for c, _ in found])
    return pixels.permute(0, 3, 1, 2), labels


def _top1(model: nn.Module, enc: Encoder, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    p = enc.preprocess
    mean = torch.tensor(p.mean).view(1, 3, 1, 1)
    std = torch.tensor(p.std).view(1, 3, 1, 1)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(pixels), 500):
            x = (pixels[i:i + 500].float() / 255 - mean) / std
            correct += int((model(x).argmax(1) == labels[i:i + 500]).sum())
    return correct / len(labels)


def test_resnet20_reproduces_its_accuracy_and_padding_split_matters() -> None:
    pixels, labels = _cifar_test_images(per_class=200)  # 2,000 images, 200 of each class
    assert len(labels) == 2000 and labels.bincount().tolist() == [200] * 10
    enc = load_encoder(f"cifar-resnet:{RESNET20}", features="head")
    assert (enc.arch, enc.dim, enc.preprocess.crop) == ("resnet20", 10, 32)
    acc = _top1(enc.model, enc, pixels, labels)
    assert acc >= 0.78, acc  # PROVENANCE: 81.03% on all 10,000; 81.35% measured on these
    # the same weights with all the shortcut's zero channels at the end: a different network
    end_padded = CifarResNet(20, logits=True, split_pad=False)
    end_padded.load_state_dict(enc.model.state_dict())
    every4th = slice(None, None, 4)  # 500 images, 50 a class, are plenty to show the gap
    assert _top1(end_padded.eval(), enc, pixels[every4th], labels[every4th]) < 0.3
    backbone = load_encoder(f"cifar-resnet:{RESNET20}")
    assert (backbone.features, backbone.dim) == ("backbone", 64)


# ---------------------------------------------------------------------------------------------
# errors: one PairmineError with a message that says what to do


def test_unknown_kind_and_incomplete_spec() -> None:
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        load_encoder("nope:x.pth")
    for spec in ("moco", "moco:"):
        with pytest.raises(EncoderError, match="incomplete"):
            load_encoder(spec)
    with pytest.raises(EncoderError, match="incomplete"):
        load_encoder("timm:resnet18")
    with pytest.raises(EncoderError, match="needs weights"):
        load_encoder("torchvision:resnet18")
    with pytest.raises(EncoderError, match="did you mean"):
        load_encoder("torchvision:resnet5:x.pth")
    with pytest.raises(EncoderError, match="unknown --arch"):
        load_encoder("moco:x.pth", arch="resnet9")
    with pytest.raises(EncoderError, match="not a CIFAR ResNet"):
        load_encoder("cifar-resnet:x.th", arch="vgg11")


PATH_SPECS = ["cifar-resnet:{}", "moco:{}", "simsiam:{}", "vicreg:{}", "torchvision:resnet18:{}",
              "torchscript:{}"]


@pytest.mark.parametrize("template", PATH_SPECS)
@pytest.mark.parametrize("what", ["missing", "directory", "random bytes", "text", "json"])
def test_not_a_checkpoint(template: str, what: str, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    if what == "directory":
        path.mkdir()
    elif what == "random bytes":
        path.write_bytes(bytes(range(256)) * 40)
    elif what == "text":
        path.write_text("epoch 12, loss 0.5\n")
    elif what == "json":
        path.write_text('{"state_dict": {"conv1.weight": [1, 2]}}')
    with pytest.raises(CheckpointError) as info:
        load_encoder(template.format(path))
    assert str(path) in str(info.value) and info.value.hint


def test_a_checkpoint_without_tensors(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "best_acc": 0.5}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_encoder(f"moco:{tmp_path / 'meta.pth'}")


def test_wrong_kind_names_the_keys(tmp_path: Path, moco_file: Path) -> None:
    enc, _ = simsiam_encoder()
    simsiam = tmp_path / "simsiam.pth"
    torch.save({"state_dict": state_of(enc, "module.encoder.")}, simsiam)
    with pytest.raises(CheckpointError, match=r"no keys start with 'module\.encoder_q\.'"):
        load_encoder(f"moco:{simsiam}")
    moco = moco_file
    with pytest.raises(CheckpointError, match=r"no keys start with 'module\.encoder\.'"):
        load_encoder(f"simsiam:{moco}")
    with pytest.raises(CheckpointError, match="not a CIFAR ResNet checkpoint"):
        load_encoder(f"cifar-resnet:{moco}")  # its trunk has no layer1.* at the top level
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_encoder(f"torchvision:resnet50:{simsiam}")


def test_wrong_arch_is_a_shape_or_key_mismatch(moco_file: Path) -> None:
    path = moco_file
    with pytest.raises(CheckpointError, match=r"size mismatch for conv1\.weight"):
        load_encoder(f"moco:{path}", arch="resnet18-cifar")
    with pytest.raises(CheckpointError, match=r"missing keys \[.*unexpected keys"):
        load_encoder(f"moco:{path}", arch="resnet50")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_encoder(f"moco:{path}", arch="resnet34")


def test_head_that_is_not_there(tmp_path: Path) -> None:
    trunk = without_fc(randomise(torchvision.models.resnet18(), 12))
    path = tmp_path / "moco-trunk.pth"
    torch.save({"state_dict": state_of(trunk, "module.encoder_q.")}, path)
    with pytest.raises(CheckpointError, match="no MoCo projection head"):
        load_encoder(f"moco:{path}")
    assert load_encoder(f"moco:{path}", features="backbone").dim == 512
    with pytest.raises(EncoderError, match=r"not an option of vicreg encoders \(choose one "
                                           r"of: backbone\)"):
        load_encoder(f"vicreg:{path}", features="head")
    with pytest.raises(EncoderError, match="drop --features"):
        load_encoder(f"torchscript:{path}", features="head")


def test_torchvision_weight_set_not_cached(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"not in the torch hub cache.*does not download"):
        load_encoder("torchvision:resnet18:IMAGENET1K_V1")


def test_timm_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(EncoderError, match="needs timm"):
        load_encoder("timm:resnet18:w.pth")


# ---------------------------------------------------------------------------------------------
# the CLI


def test_cli_lists_every_kind() -> None:
    result = CliRunner().invoke(cli, ["encoders"])
    assert result.exit_code == 0, result.output
    for kind in list_encoders():
        assert kind.usage in result.output
    assert "resnet18-cifar" in result.output


def test_listing_imports_no_torch() -> None:
    code = ("import sys; from pairmine.cli import main\n"
            "try:\n    main(['encoders'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


def test_cli_describes_a_spec_and_fails_cleanly(tmp_path: Path) -> None:
    ref = randomise(CifarResNet(20), 13)
    torch.save({"state_dict": state_of(ref, "module.")}, tmp_path / "r20.th")
    result = CliRunner().invoke(cli, ["encoders", f"cifar-resnet:{tmp_path / 'r20.th'}",
                                      "--features", "head"])
    assert result.exit_code == 0, result.output
    assert re.search(r"dim\s+│\s+10\b", result.output), result.output
    result = CliRunner().invoke(cli, ["encoders", f"moco:{tmp_path / 'none.pth'}"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output
