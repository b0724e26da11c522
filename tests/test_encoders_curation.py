"""Curation encoders: open_clip image towers and Hugging Face model directories (CLIP, SigLIP,
DINOv2), each built tiny with random weights by its own library, saved the way that library
saves it, loaded through the registry and compared with the in-memory model; preprocessing
from the model's own config; safetensors without pickle; nothing fetched; clear errors."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_encoders import Made, Maker, assert_contract, builtin_kinds
from torch import nn

from pairmine.encoders import list_encoders, load_encoder
from pairmine.encoders.hf import preprocess_from_config
from pairmine.errors import CheckpointError, EncoderError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "encoders.md"
SIDE = 32  # every tiny model here takes 32 x 32 inputs


def jitter(model: nn.Module, seed: int) -> nn.Module:
    """Noise on every parameter and buffer the library initialised (norm weights of one,
    zero biases), so a tensor loaded into the wrong place, or not at all, changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return model.eval()


class Features(nn.Module):
    """The reference features: ``fn(x)`` computed from the in-memory model ``model``."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# ---------------------------------------------------------------------------------------------
# open_clip: a tiny architecture registered as open_clip registers its own configs


TINY_TEXT_TOWER: dict[str, Any] = {"context_length": 8, "vocab_size": 64, "width": 16,
                                   "heads": 2, "layers": 1}
TINY_VIT: dict[str, Any] = {
    "embed_dim": 24, "text_cfg": TINY_TEXT_TOWER,
    "vision_cfg": {"image_size": SIDE, "layers": 2, "width": 32, "head_width": 16,
                   "patch_size": 8}}
TINY_RN: dict[str, Any] = {
    "embed_dim": 24, "text_cfg": TINY_TEXT_TOWER,
    "vision_cfg": {"image_size": SIDE, "layers": [1, 1, 1, 1], "width": 8}}


def open_clip_model(tmp: Path, name: str, cfg: dict[str, Any], seed: int) -> nn.Module:
    open_clip = pytest.importorskip("open_clip")
    config_file = tmp / "configs" / f"{name}.json"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model: nn.Module = open_clip.create_model(name, pretrained=None)
    return jitter(model, seed)


TINY_COCA: dict[str, Any] = {  # coca_ViT-B-32.json, scaled down
    "embed_dim": 24, "custom_text": True,
    "vision_cfg": {**TINY_VIT["vision_cfg"], "attentional_pool": True, "attn_pooler_heads": 2,
                   "output_tokens": True},
    "text_cfg": {**TINY_TEXT_TOWER, "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {**TINY_TEXT_TOWER, "attn_pooler_heads": 2}}


def image_features(model: nn.Module) -> nn.Module:
    """``encode_image`` without its optional L2 normalisation (CoCa's is on by default)."""
    clip: Any = model
    return Features(model, lambda x: clip.encode_image(x, normalize=False))


def _open_clip_training_checkpoint(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """As open_clip_train's main.py saves epoch_N.pt under DistributedDataParallel."""
    model = open_clip_model(tmp, "pairmine-tiny-vit", TINY_VIT, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, SIDE, SIDE), torch.randint(0, 64, (2, 8)))[0].sum().backward()
    optimizer.step()  # real optimizer state (exp_avg tensors) in the file
    optimizer.zero_grad()
    model.eval()
    path = tmp / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "tiny-run",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scaler": torch.amp.GradScaler("cpu").state_dict()}, path)
    return Made(f"open_clip:pairmine-tiny-vit:{path}", {}, image_features(model), SIDE, SIDE)


def _open_clip_safetensors(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """The hub's open_clip_model.safetensors: the model's bare state dict."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = open_clip_model(tmp, "pairmine-tiny-vit", TINY_VIT, 2)
    path = tmp / "open_clip_model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(path))
    return Made(f"open_clip:pairmine-tiny-vit:{path}", {}, image_features(model), SIDE, SIDE)


def _open_clip_resnet_bin(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """open_clip_pytorch_model.bin (torch.save of the state dict), the ModifiedResNet tower."""
    model = open_clip_model(tmp, "pairmine-tiny-rn", TINY_RN, 3)
    path = tmp / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return Made(f"open_clip:pairmine-tiny-rn:{path}", {}, image_features(model), SIDE, SIDE)


def open_clip_hub_dir(tmp: Path, seed: int, preprocess_cfg: dict[str, Any]) -> tuple[Path,
                                                                                      nn.Module]:
    """The directory open_clip's save_for_hf writes: open_clip_config.json (written by
    open_clip's own save_config_for_hf) and open_clip_model.safetensors."""
    pytest.importorskip("open_clip")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    save_config_for_hf = importlib.import_module("open_clip.push_to_hf_hub").save_config_for_hf

    model = open_clip_model(tmp, "pairmine-tiny-vit", TINY_VIT, seed)
    visual: Any = model.visual
    visual.image_mean, visual.image_std = preprocess_cfg["mean"], preprocess_cfg["std"]
    visual.preprocess_cfg = {**visual.preprocess_cfg, **preprocess_cfg}
    out = tmp / "hub"
    out.mkdir()
    save_config_for_hf(model, out / "open_clip_config.json", model_config=TINY_VIT)
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(out / "open_clip_model.safetensors"))
    return out, model


SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                     "interpolation": "bilinear", "resize_mode": "squash"}


def _open_clip_coca(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """CoCa, whose tower also returns its tokens: the pooled image latent is the feature."""
    model = open_clip_model(tmp, "pairmine-tiny-coca", TINY_COCA, 11)
    path = tmp / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "coca-run",
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return Made(f"open_clip:pairmine-tiny-coca:{path}", {}, image_features(model), SIDE, SIDE)


def _open_clip_hub_dir(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    out, model = open_clip_hub_dir(tmp, 4, SIGLIP_PREPROCESS)
    return Made(f"open_clip:pairmine-tiny-vit:{out}", {}, image_features(model), SIDE, SIDE)


# ---------------------------------------------------------------------------------------------
# Hugging Face: tiny configs, save_pretrained, and the image processor's own save_pretrained

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": SIDE, "patch_size": 8}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": 100, "max_position_embeddings": 16}


def transformers_module() -> Any:
    return pytest.importorskip("transformers")


def save_hf(model: Any, processor: Any, out: Path, *, pickled: bool = False) -> Path:
    """``save_pretrained`` of the model and its image processor. ``pickled``: the weights as
    transformers 4 saved them without safetensors, ``torch.save(state_dict)`` in
    pytorch_model.bin (transformers 5 writes safetensors only)."""
    model.save_pretrained(out)
    if pickled:
        from safetensors.torch import load_file

        state = load_file(str(out / "model.safetensors"))
        torch.save(state, out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    if processor is not None:
        processor.save_pretrained(out)
    return out


def clip_processor(tf: Any) -> Any:
    return tf.CLIPImageProcessor(size={"shortest_edge": SIDE},
                                 crop_size={"height": SIDE, "width": SIDE})


def _hf_clip_full(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """A full CLIPModel directory: image_embeds, with the top-level projection width (24)."""
    tf = transformers_module()
    torch.manual_seed(5)
    full: Any = jitter(tf.CLIPModel(tf.CLIPConfig(vision_config=TINY_VISION, text_config=TINY_TEXT,
                                             projection_dim=24)), 5)
    out = save_hf(full, clip_processor(tf), tmp / "clip")

    def embeds(x: torch.Tensor) -> torch.Tensor:
        pooled = full.vision_model(pixel_values=x).pooler_output
        projected: torch.Tensor = full.visual_projection(pooled)
        return projected
    return Made(f"hf:{out}", {}, Features(full, embeds), SIDE, SIDE)


def _hf_clip_vision_bin_cls(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """CLIPVisionModelWithProjection saved as pytorch_model.bin; the CLS token before the
    projection."""
    tf = transformers_module()
    torch.manual_seed(6)
    tower: Any = jitter(tf.CLIPVisionModelWithProjection(
        tf.CLIPVisionConfig(**TINY_VISION, projection_dim=24)), 6)
    out = save_hf(tower, clip_processor(tf), tmp / "clip-vision", pickled=True)
    assert (out / "pytorch_model.bin").is_file()

    def cls(x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = tower.vision_model(pixel_values=x).pooler_output
        return pooled
    return Made(f"hf:{out}", {"features": "cls"}, Features(tower, cls), SIDE, SIDE)


def siglip_processor(tf: Any) -> Any:
    return tf.SiglipImageProcessor(size={"height": SIDE, "width": SIDE}, resample=2)


def _hf_siglip_vision(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    tf = transformers_module()
    torch.manual_seed(7)
    tower = jitter(tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY_VISION)), 7)
    out = save_hf(tower, siglip_processor(tf), tmp / "siglip-vision")

    def head(x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = tower(pixel_values=x).pooler_output
        return pooled
    return Made(f"hf:{out}", {}, Features(tower, head), SIDE, SIDE)


def _hf_siglip_full_mean(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    """A full SiglipModel directory (text tower not loaded): mean of the final tokens."""
    tf = transformers_module()
    torch.manual_seed(8)
    full: Any = jitter(tf.SiglipModel(tf.SiglipConfig(vision_config=TINY_VISION,
                                                 text_config=TINY_TEXT)), 8)
    out = save_hf(full, siglip_processor(tf), tmp / "siglip")

    def mean(x: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = full.vision_model(pixel_values=x).last_hidden_state
        return tokens.mean(dim=1)
    return Made(f"hf:{out}", {"features": "mean"}, Features(full, mean), SIDE, SIDE)


def dinov2_processor(tf: Any) -> Any:
    """As facebook/dinov2-* ship it (BitImageProcessor: shortest edge 256 -> crop 224,
    bicubic, ImageNet mean/std), scaled down to 36 -> 32."""
    return tf.BitImageProcessor(size={"shortest_edge": 36},
                                crop_size={"height": SIDE, "width": SIDE}, resample=3,
                                image_mean=[0.485, 0.456, 0.406],
                                image_std=[0.229, 0.224, 0.225])


def _hf_dinov2_cls(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    tf = transformers_module()
    torch.manual_seed(9)
    model = jitter(tf.Dinov2Model(tf.Dinov2Config(**TINY_VISION)), 9)
    out = save_hf(model, dinov2_processor(tf), tmp / "dinov2")

    def cls(x: torch.Tensor) -> torch.Tensor:  # the CLS token after the final layernorm
        tokens: torch.Tensor = model(pixel_values=x).last_hidden_state
        return tokens[:, 0]
    return Made(f"hf:{out}", {}, Features(model, cls), SIDE, SIDE)


def _hf_dinov2_registers_mean(tmp: Path, mp: pytest.MonkeyPatch) -> Made:
    tf = transformers_module()
    torch.manual_seed(10)
    model = jitter(tf.Dinov2WithRegistersModel(
        tf.Dinov2WithRegistersConfig(**TINY_VISION, num_register_tokens=4)), 10)
    out = save_hf(model, dinov2_processor(tf), tmp / "dinov2-reg")

    def mean(x: torch.Tensor) -> torch.Tensor:  # patch tokens only: CLS and 4 registers out
        tokens: torch.Tensor = model(pixel_values=x).last_hidden_state
        assert tokens.shape[1] == 1 + 4 + (SIDE // 8) ** 2
        return tokens[:, 5:].mean(dim=1)
    return Made(f"hf:{out}", {"features": "mean"}, Features(model, mean), SIDE, SIDE)


CASES: dict[str, tuple[str, Maker]] = {
    "open_clip-training-checkpoint": ("open_clip", _open_clip_training_checkpoint),
    "open_clip-safetensors": ("open_clip", _open_clip_safetensors),
    "open_clip-resnet-bin": ("open_clip", _open_clip_resnet_bin),
    "open_clip-hub-directory": ("open_clip", _open_clip_hub_dir),
    "open_clip-coca": ("open_clip", _open_clip_coca),
    "hf-clip-full-head": ("hf", _hf_clip_full),
    "hf-clip-vision-bin-cls": ("hf", _hf_clip_vision_bin_cls),
    "hf-siglip-vision-head": ("hf", _hf_siglip_vision),
    "hf-siglip-full-mean": ("hf", _hf_siglip_full_mean),
    "hf-dinov2-cls": ("hf", _hf_dinov2_cls),
    "hf-dinov2-registers-mean": ("hf", _hf_dinov2_registers_mean),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, make = CASES[case]
    assert_contract(make(tmp_path, monkeypatch))


# ---------------------------------------------------------------------------------------------
# preprocessing from the model's own config


def test_open_clip_preprocess_from_its_config(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    hub = load_encoder(_open_clip_hub_dir(tmp_path, monkeypatch).spec)
    p = hub.preprocess
    assert (p.resize, p.crop, p.mean, p.std, p.interpolation, p.resize_mode) == (
        SIDE, SIDE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", "squash")
    assert hub.info["preprocess_from"] == "open_clip_config.json" and hub.dim == 24
    # the weights file inside that directory, with ARCH: the directory's preprocessing too
    inside = load_encoder(f"open_clip:pairmine-tiny-vit:{tmp_path / 'hub'}/"
                          "open_clip_model.safetensors")
    assert inside.preprocess == p and inside.info["preprocess_from"].endswith(
        "open_clip_config.json")
    # a file of an architecture without released weights: open_clip's own local-file defaults
    (tmp_path / "f").mkdir()
    f = load_encoder(_open_clip_safetensors(tmp_path / "f", monkeypatch).spec).preprocess
    assert (f.crop, f.interpolation, f.resize_mode) == (SIDE, "bicubic", "shortest")
    assert f.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI's


def test_open_clip_released_weights_decide_a_files_preprocess() -> None:
    open_clip = pytest.importorskip("open_clip")
    from pairmine.encoders.openclip import _released_preprocess

    siglip = _released_preprocess(open_clip, "ViT-B-16-SigLIP")  # every webli tag: 0.5, squash
    assert siglip["resize_mode"] == "squash" and tuple(siglip["mean"]) == (0.5, 0.5, 0.5)
    clip = _released_preprocess(open_clip, "ViT-B-32")
    assert (clip["resize_mode"], clip["interpolation"]) == ("shortest", "bicubic")
    assert _released_preprocess(open_clip, "ViT-L-14") == {}  # its tags disagree: defaults


def test_hf_preprocess_from_preprocessor_config(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dinov2 = load_encoder(_hf_dinov2_cls(tmp_path, monkeypatch).spec)
    p = dinov2.preprocess
    assert (p.resize, p.crop, p.interpolation, p.resize_mode) == (36, SIDE, "bicubic",
                                                                  "shortest")
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    assert (dinov2.features, dinov2.dim) == ("cls", 32)
    siglip = load_encoder(_hf_siglip_vision(tmp_path, monkeypatch).spec).preprocess
    assert (siglip.resize, siglip.crop, siglip.interpolation, siglip.resize_mode) == (
        SIDE, SIDE, "bilinear", "squash")
    assert siglip.mean == (0.5, 0.5, 0.5)


def write_processor_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(config))
    return directory


def test_hf_legacy_clip_size_is_the_shortest_edge(tmp_path: Path) -> None:
    """openai/clip-vit-base-patch32 ships a CLIPFeatureExtractor config with ``"size": 224``:
    for CLIP an int size is the shortest edge (then a 224 crop), not a 224 x 224 squash."""
    pytest.importorskip("transformers")
    legacy = write_processor_config(tmp_path, {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224})
    p = preprocess_from_config(legacy)
    assert (p.resize, p.crop, p.resize_mode, p.interpolation) == (224, 224, "shortest",
                                                                  "bicubic")


@pytest.mark.parametrize(("config", "message"), [
    ({"size": {"shortest_edge": 224}, "do_center_crop": False}, "without a centre crop"),
    ({"size": {"height": 224, "width": 320}, "do_center_crop": False}, "is not supported"),
    ({"size": {"shortest_edge": 224}, "resample": 0}, "resample 0"),
    ({"size": {"shortest_edge": 224}, "image_mean": [0.5]}, "per RGB channel"),
    ({"size": {"shortest_edge": 224}, "rescale_factor": 1.0}, "not 1/255"),
    ({"size": {"shortest_edge": 224}, "do_resize": False}, "do_resize is false"),
])
def test_hf_preprocess_that_pairmine_cannot_reproduce(config: dict[str, Any], message: str,
                                                      tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    directory = write_processor_config(tmp_path, {
        "image_processor_type": "CLIPImageProcessor", "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3} | config)
    with pytest.raises(EncoderError, match=message):
        preprocess_from_config(directory)


def test_hf_preprocess_without_normalisation(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    directory = write_processor_config(tmp_path, {
        "image_processor_type": "SiglipImageProcessor", "size": {"height": 48, "width": 48},
        "do_normalize": False, "resample": 2})
    p = preprocess_from_config(directory)
    assert (p.resize, p.crop, p.mean, p.std, p.resize_mode, p.interpolation) == (
        48, 48, (0.0,) * 3, (1.0,) * 3, "squash", "bilinear")


# ---------------------------------------------------------------------------------------------
# safetensors without pickle, nothing fetched, optional packages


def forbid_pickle(mp: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    class Refusing(pickle.Unpickler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            refuse()

    mp.setattr(pickle, "Unpickler", Refusing)
    mp.setattr(pickle, "load", refuse)
    mp.setattr(pickle, "loads", refuse)
    mp.setattr(torch, "load", refuse)


def test_safetensors_load_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in "abcd":
        (tmp_path / sub).mkdir()
    made = [_open_clip_safetensors(tmp_path / "a", monkeypatch),
            _open_clip_hub_dir(tmp_path / "b", monkeypatch),
            _hf_dinov2_cls(tmp_path / "c", monkeypatch)]
    pickled = _open_clip_resnet_bin(tmp_path / "d", monkeypatch)
    with monkeypatch.context() as mp:
        forbid_pickle(mp)
        with pytest.raises(AssertionError, match="pickle was used"):  # the patch bites
            torch.load(tmp_path / "x.pt")
        for m in made:
            assert_contract(m)
    # and a pickle file does go through torch.load, so the patch above would have caught it
    with monkeypatch.context() as mp:
        forbid_pickle(mp)
        with pytest.raises(AssertionError, match="pickle was used"):
            load_encoder(pickled.spec)


def test_hf_loads_with_the_network_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _hf_clip_full(tmp_path, monkeypatch)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert_contract(made)


@pytest.mark.parametrize(("module", "spec", "extra"), [
    ("open_clip", "open_clip:ViT-B-32:w.safetensors", "pairmine[open_clip]"),
    ("transformers", "hf:some/dir", "pairmine[hf]"),
])
def test_missing_package_names_the_extra(module: str, spec: str, extra: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError
    with pytest.raises(EncoderError) as info:
        load_encoder(spec)
    assert f"{module} is not installed" in str(info.value)
    assert f"pip install '{extra}'" in str(info.value.hint)


def test_missing_safetensors_names_the_extra(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    made = _open_clip_safetensors(tmp_path, monkeypatch)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError) as info:
        load_encoder(made.spec)
    assert "safetensors is not installed" in str(info.value)
    assert "pip install 'pairmine[safetensors]'" in str(info.value.hint)


# ---------------------------------------------------------------------------------------------
# errors: one line, what is wrong and what to do


def test_open_clip_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = _open_clip_training_checkpoint(tmp_path, monkeypatch)
    path = made.spec.rsplit(":", 1)[1]
    with pytest.raises(EncoderError, match="not an open_clip architecture"):
        load_encoder(f"open_clip:ViT-Q-99:{path}")
    with pytest.raises(EncoderError, match="incomplete"):
        load_encoder("open_clip:ViT-B-32")
    with pytest.raises(EncoderError, match="not an option of open_clip"):
        load_encoder(made.spec, features="cls")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(f"open_clip:pairmine-tiny-vit:{tmp_path / 'none.pt'}")
    with pytest.raises(CheckpointError, match="does not fit"):  # weights of the ResNet tower
        load_encoder(f"open_clip:pairmine-tiny-vit:"
                     f"{_open_clip_resnet_bin(tmp_path, monkeypatch).spec.rsplit(':', 1)[1]}")
    other = tmp_path / "torchvision.pth"
    torch.save(nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"no keys start with 'visual\.'"):
        load_encoder(f"open_clip:pairmine-tiny-vit:{other}")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"without open_clip_config\.json"):
        load_encoder(f"open_clip:pairmine-tiny-vit:{empty}")


def test_hf_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tf = transformers_module()
    with pytest.raises(CheckpointError, match="pairmine does not download"):
        load_encoder("hf:facebook/dinov2-small")
    made = _hf_dinov2_cls(tmp_path, monkeypatch)
    directory = Path(made.spec[len("hf:"):])
    with pytest.raises(EncoderError, match="give cls or mean, not 'head'"):
        load_encoder(made.spec, features="head")
    with pytest.raises(EncoderError, match="--arch does not apply"):
        load_encoder(made.spec, arch="vit_small")
    (directory / "preprocessor_config.json").unlink()
    with pytest.raises(EncoderError, match=r"has no preprocessor_config\.json"):
        load_encoder(made.spec)
    # a config that does not fit the weights: refused, not filled with random weights
    bigger = tmp_path / "bigger"
    save_hf(tf.Dinov2Model(tf.Dinov2Config(**{**TINY_VISION, "num_hidden_layers": 3})),
            dinov2_processor(tf), bigger)
    (bigger / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"does not fit Dinov2Model: missing \[encoder"):
        load_encoder(f"hf:{bigger}")
    vit = save_hf(tf.ViTModel(tf.ViTConfig(**TINY_VISION)), dinov2_processor(tf), tmp_path / "v")
    with pytest.raises(EncoderError, match="model_type 'vit' is not supported"):
        load_encoder(f"hf:{vit}")
    (vit / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_encoder(f"hf:{vit}")


def test_siglip_without_its_pooling_head(tmp_path: Path) -> None:
    tf = transformers_module()
    cfg = tf.SiglipVisionConfig(**TINY_VISION, vision_use_head=False)
    out = save_hf(tf.SiglipVisionModel(cfg), siglip_processor(tf), tmp_path / "s")
    with pytest.raises(EncoderError, match="no pooling head"):
        load_encoder(f"hf:{out}")
    assert load_encoder(f"hf:{out}", features="mean").dim == 32


# ---------------------------------------------------------------------------------------------
# the documentation and the listing cover the same kinds


def every_kind_table() -> list[list[str]]:
    """The cells of the rows of the table under "## Every kind" in docs/encoders.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("\n## Every kind\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_every_registered_kind_has_one_docs_row() -> None:
    table = every_kind_table()
    specs = [re.fullmatch(r"`([^`]+)`", row[0]) for row in table]
    assert all(specs), [row[0] for row in table]
    usages = [m.group(1).replace("\\|", "|") for m in specs if m]
    kinds = {kind.name: kind.usage for kind in list_encoders() if kind.name in builtin_kinds()}
    assert sorted(usages) == sorted(kinds.values())  # one row per kind, showing its usage
    for row, usage in zip(table, usages, strict=True):
        assert len(row) == 6, row  # SPEC, project, layout, --features, preprocess, example
        name = usage.split(":", 1)[0]
        assert f"--encoder {name}:" in row[5], row[5]  # the example uses this kind
