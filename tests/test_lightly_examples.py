"""examples/lightly_simsiam.py and examples/lightly_vicreg.py (issue 19 §3): lightly's own
SimSiam and VICReg (models, heads, losses, view transforms) train on a ``pairmine export
--combined`` for a few CPU steps; the loss stays finite and the pair items are seen. The
example's loop is the code docs/training-with-spps.md shows, character for character."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_export import make_stores

import pairmine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("lightly_simsiam", "lightly_vicreg")
LOOP_BEGIN = "# --- the loop:"
LOOP_END = "# --- end of the loop"


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lightly")
    s = make_stores(root, n=12, n_pairs=15, png_every=3)
    return pairmine.export(s.pairs, root / "spps", fmt="webdataset", combined=True,
                           shard_size=10).path


def load_example(name: str) -> ModuleType:
    pytest.importorskip("lightly")
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # DataLoader workers unpickle its classes by module name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_on_a_combined_export(name: str, combined: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example(name)
    # 27 items (15 pairs, 12 images) in batches of 8: 3 batches an epoch, 4 steps cross one
    stats = example.main([str(combined), "--steps", "4", "--batch-size", "8", "--workers", "0",
                          "--size", "32"])
    assert len(stats.losses) == 4
    assert all(math.isfinite(x) for x in stats.losses)
    assert stats.pair_items > 0 and stats.image_items > 0
    assert stats.pair_items + stats.image_items == 4 * 8
    assert "pairs" in capsys.readouterr().out


@pytest.mark.slow  # two worker processes importing torch and lightly
def test_example_runs_in_dataloader_workers(combined: Path) -> None:
    stats = load_example("lightly_simsiam").train(str(combined), steps=2, batch_size=8,
                                                  workers=2)
    assert len(stats.losses) == 2 and all(math.isfinite(x) for x in stats.losses)


def loop_of(name: str) -> str:
    text = (ROOT / "examples" / f"{name}.py").read_text()
    start = text.index(LOOP_BEGIN)
    body = text[text.index("\n", start) + 1:text.index(LOOP_END)]
    return body.strip("\n")


def test_the_docs_show_the_examples_code() -> None:
    doc = (ROOT / "docs" / "training-with-spps.md").read_text()
    blocks = [b.strip("\n") for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S)]
    assert loop_of("lightly_simsiam") in blocks
