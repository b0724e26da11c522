"""One ``Registry[T]`` for sources, engines, export formats and encoders: an explicit built-in
list with a priority, objects registered at run time, and third-party plugins found through
``importlib.metadata`` entry points (here a fake distribution: a ``*.dist-info`` folder with
``entry_points.txt`` on ``sys.path``, exactly what ``pip install`` leaves behind)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pairmine.errors import ConfigError, PairmineError, SourceError
from pairmine.registry import PLUGIN_PRIORITY, Builtin, Registry

PLUGIN_MODULE = "fake_pairmine_plugin"

PLUGIN_SOURCE = '''
from pathlib import Path

from pairmine.engines import EngineKind, Kernel
from pairmine.encoders.base import EncoderKind
from pairmine.export.formats import ParquetFormat
from pairmine.sources.base import SourceKind, plain_file_reader
from pairmine.sources.folder import FolderSource


class MarkedFolder(FolderSource):
    kind = "marked"


def _torch_cpu(problem, band, budget, device, requested):
    from pairmine.engines.torch_cpu import TorchCPUEngine

    return TorchCPUEngine(problem, band, budget)


# claims directories holding a MARKER file: it must win over `folder`, which claims any
SOURCE = SourceKind(
    name="marked", detect=lambda spec: (Path(spec) / "MARKER").is_file(),
    open=lambda spec, labels: MarkedFolder(spec, labels=labels),
    help="a folder with a MARKER file (a test plugin)", ref_reader=plain_file_reader)
ENGINE = EngineKind("brute", "the torch CPU kernel under another name (a test plugin)",
                    (Kernel("cpu", _torch_cpu, lambda: {"kernel": "test"}),))


class CopyFormat(ParquetFormat):
    name = "parquet-copy"
    help = "spps.parquet again (a test plugin)"


FORMAT = CopyFormat()
BROKEN = 1  # not an engine: loading it as one fails


def _load_flat(args, options):
    import torch
    from torch import nn

    from pairmine.encoders.base import Encoder, Preprocess

    model = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 8 * 8, int(args)))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    return Encoder(spec=f"flat:{args}", model=model, dim=int(args),
                   preprocess=Preprocess.cifar(), arch="flat", features="backbone")


ENCODER = EncoderKind(name="flat", load=_load_flat, usage="flat:DIM",
                      help="a linear map of the pixels (a test plugin)", features=("backbone",))
'''

ENTRY_POINTS = f'''
[pairmine.sources]
marked = {PLUGIN_MODULE}:SOURCE

[pairmine.engines]
brute = {PLUGIN_MODULE}:ENGINE

[pairmine.export_formats]
parquet-copy = {PLUGIN_MODULE}:FORMAT

[pairmine.encoders]
flat = {PLUGIN_MODULE}:ENCODER
'''


def _registries() -> list[Registry[object]]:
    from pairmine.encoders import ENCODERS
    from pairmine.engines import ENGINES
    from pairmine.export.formats import EXPORT_FORMATS
    from pairmine.sources.base import SOURCES

    return [SOURCES, ENGINES, EXPORT_FORMATS, ENCODERS]  # type: ignore[list-item]


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed third-party package providing a source, an engine and an export format."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    dist = site / "fake_pairmine_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pairmine-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for registry in _registries():
        registry.forget_plugins()
    yield site
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    monkeypatch.undo()
    for registry in _registries():
        registry.forget_plugins()


def images(root: Path, n: int = 3) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    return root


# ---------------------------------------------------------------------------------------------
# the registry itself


def _toy_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry[str]:
    """Built-ins ``b`` (priority 10) and ``a`` (default) in a module that registers them."""
    module = tmp_path / "toy_builtins.py"
    module.write_text("from test_registry_state import REGISTRY\n"
                      "REGISTRY.register('a')\nREGISTRY.register('b')\n")
    registry: Registry[str] = Registry("toys", [Builtin("b", "toy_builtins", priority=10),
                                                Builtin("a", "toy_builtins")],
                                       name_of=str, help_of=lambda s: f"the letter {s}",
                                       error=ConfigError, what="toy")
    state = type(sys)("test_registry_state")
    state.REGISTRY = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "test_registry_state", state)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_builtins", raising=False)
    return registry


def test_builtins_are_named_without_importing_and_ordered_by_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _toy_registry(tmp_path, monkeypatch)
    assert registry.names() == ["a", "b"]  # a: default priority 100, b: 10
    assert "toy_builtins" not in sys.modules  # names cost no import
    assert registry.get("b") == "b"
    assert "toy_builtins" in sys.modules
    assert registry.help("a") == "the letter a"
    registry.register("c", priority=50)
    assert registry.names() == ["a", "c", "b"]
    assert registry.ordered() == ["a", "c", "b"]


def test_an_unknown_name_is_one_error_listing_the_choices(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = _toy_registry(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="unknown toy 'z'") as caught:
        registry.get("z")
    assert caught.value.hint == "choose one of: a, b"


def test_a_builtin_module_that_does_not_register_its_name_is_a_bug_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty_builtins.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[str] = Registry("toys", [Builtin("x", "empty_builtins")], name_of=str,
                                       help_of=str)
    with pytest.raises(PairmineError, match="did not register"):
        registry.get("x")


# ---------------------------------------------------------------------------------------------
# plugins through entry points


def test_plugins_appear_in_every_registry(plugin: Path) -> None:
    from pairmine.engines import ENGINES, engine_names
    from pairmine.export.formats import EXPORT_FORMATS
    from pairmine.sources.base import SOURCES

    assert "marked" in SOURCES.names()
    assert PLUGIN_MODULE not in sys.modules  # listed from the metadata, loaded when used
    assert SOURCES.get("marked").help.endswith("(a test plugin)")
    assert engine_names() == ["auto", "torch", "faiss", "brute"]
    assert ENGINES.get("brute").kernel("cpu") is not None
    assert EXPORT_FORMATS.names() == ["webdataset", "parquet", "parquet-copy"]
    # the plugin's priority places it: after the specific sources, before `folder`
    names = [k.name for k in SOURCES.ordered()]
    assert names.index("webdataset") < names.index("marked") < names.index("folder")
    assert getattr(SOURCES.get("marked"), "priority", PLUGIN_PRIORITY) == PLUGIN_PRIORITY


def test_plugins_are_choices_of_the_cli(plugin: Path) -> None:
    from pairmine.cli import cli

    runner = CliRunner()
    assert "brute" in runner.invoke(cli, ["match", "--help"]).output
    assert "brute" in runner.invoke(cli, ["calibrate", "--help"]).output
    assert "brute" in runner.invoke(cli, ["eval-pairs", "--help"]).output
    assert "parquet-copy" in runner.invoke(cli, ["export", "--help"]).output


def test_a_plugin_engine_runs_a_match(plugin: Path, tmp_path: Path) -> None:
    """The plugin engine (the torch kernel under another name) finds the pairs torch finds."""
    from test_one_meaning import unit_vectors, write_embeddings

    import pairmine
    from pairmine import stores

    emb = write_embeddings(tmp_path / "emb", unit_vectors(40))
    found = {}
    for engine in ("torch", "brute"):
        result = pairmine.match(emb, tmp_path / engine, min_score=0.2, max_score=0.99,
                                engine=engine, device="cpu")
        found[engine] = stores.open_pairs(result.path).table
        assert result.manifest["engine"]["engine"] in ("torch", "brute")
    assert found["torch"].num_rows > 0
    assert found["brute"].equals(found["torch"])


def test_a_broken_plugin_is_one_clear_error_and_does_not_break_detection(
        plugin: Path, tmp_path: Path) -> None:
    from pairmine.engines import ENGINES, resolve_engine

    dist = plugin / "fake_pairmine_plugin-1.0.dist-info" / "entry_points.txt"
    dist.write_text(ENTRY_POINTS.replace(
        "[pairmine.engines]\n", f"[pairmine.engines]\nbad = {PLUGIN_MODULE}:BROKEN\n"
                                f"gone = {PLUGIN_MODULE}:MISSING\n"))
    ENGINES.forget_plugins()
    with pytest.raises(ConfigError, match=r"engine plugin 'gone' .* cannot be loaded"):
        ENGINES.get("gone")
    with pytest.raises(ConfigError, match=r"engine plugin 'bad' .* cannot be loaded"):
        ENGINES.get("bad")
    assert resolve_engine("auto", "cpu") == ("torch", "cpu")  # skips what cannot load


def test_a_plugin_encoder_embeds(plugin: Path, tmp_path: Path) -> None:
    import pairmine
    from pairmine.cli import cli
    from pairmine.encoders import list_encoders, load_encoder

    assert "flat" in [kind.name for kind in list_encoders()]
    assert "flat:DIM" in CliRunner().invoke(cli, ["encoders"]).stdout
    assert load_encoder("flat:4").dim == 4
    result = pairmine.embed(images(tmp_path / "imgs"), tmp_path / "emb", encoder="flat:4",
                            workers=0, device="cpu")
    assert result.images == 3 and result.dim == 4


def test_builtin_encoders_and_the_test_encoder_are_registered() -> None:
    from pairmine.encoders import ENCODERS, list_encoders

    names = [kind.name for kind in list_encoders()]
    assert names == sorted(names)
    assert {"moco", "pairmine", "toy"} <= set(names)  # toy: tests/conftest.py's
    with pytest.raises(PairmineError, match="unknown encoder kind 'nope'"):
        ENCODERS.get("nope")


# ---------------------------------------------------------------------------------------------
# sources: detection by priority, not by import order


def test_folder_claims_a_plain_directory(tmp_path: Path) -> None:
    from pairmine.sources import open_source

    assert open_source(images(tmp_path / "imgs")).kind == "folder"


def test_a_directory_source_with_a_higher_priority_is_detected_before_folder(
        tmp_path: Path) -> None:
    from pairmine.sources import open_source
    from pairmine.sources.base import SOURCES, SourceKind, plain_file_reader
    from pairmine.sources.folder import FolderSource

    class Annotated(FolderSource):
        kind = "annotated"

    root = images(tmp_path / "imgs")
    (root / "annotations.json").write_text("{}")
    kind = SourceKind(name="annotated",
                      detect=lambda spec: (Path(spec) / "annotations.json").is_file(),
                      open=lambda spec, labels: Annotated(spec, labels=labels),
                      help="test", ref_reader=plain_file_reader)
    SOURCES.register(kind, priority=1)  # just above folder (0): still detected first
    try:
        assert isinstance(open_source(root), Annotated)
        assert open_source(images(tmp_path / "plain")).kind == "folder"
        assert type(open_source(root, kind="folder")) is FolderSource
    finally:
        SOURCES.unregister("annotated")


def test_a_plugin_directory_source_is_detected_before_folder(plugin: Path,
                                                             tmp_path: Path) -> None:
    from pairmine.sources import open_source

    root = images(tmp_path / "imgs")
    (root / "MARKER").write_text("")
    assert type(open_source(root)).__name__ == "MarkedFolder"


def test_an_unknown_source_kind_lists_the_kinds(tmp_path: Path) -> None:
    from pairmine.sources import open_source

    with pytest.raises(SourceError, match="unknown source kind 'nope'") as caught:
        open_source(images(tmp_path / "imgs"), kind="nope")
    assert "folder" in str(caught.value.hint)


# ---------------------------------------------------------------------------------------------
# export formats: one object each


def test_each_export_format_writes_verifies_and_opens(tmp_path: Path) -> None:
    from pairmine.export.formats import EXPORT_FORMATS, ExportFormat

    for name in EXPORT_FORMATS.names():
        fmt = EXPORT_FORMATS.get(name)
        assert isinstance(fmt, ExportFormat) and fmt.name == name
    assert EXPORT_FORMATS.get("webdataset").shards
    assert not EXPORT_FORMATS.get("parquet").shards
    with pytest.raises(ConfigError, match="unknown export format 'zip'"):
        EXPORT_FORMATS.get("zip")
