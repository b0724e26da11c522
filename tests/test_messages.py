"""Messages that say what to do (issue 20 §4): each a line that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from test_bad_input import BAND, World, build_world, one_error_line, run_cli

from pairmine.cli import cli

REPO = Path(__file__).resolve().parents[1]


def invoke(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(argv))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# ---------------------------------------------------------------------------------------------
# `pairmine` alone


def test_no_arguments_prints_the_normal_help_with_exit_code_2() -> None:
    code, output = invoke()
    _, help_text = invoke("--help")
    assert code == 2  # no command: a usage error, as README says
    assert output == help_text  # the whole help, formatted as --help formats it
    assert not output.startswith("Error")
    assert "Commands:" in output and "embed" in output


# ---------------------------------------------------------------------------------------------
# --encoder PATH without KIND:


def test_a_spec_without_kind_says_the_form_and_which_kinds_fit(tmp_path: Path) -> None:
    code, output = invoke("encoders", str(REPO / "pairmine/assets/resnet20-cifar10.th"))
    assert code == 1
    line = output.strip()
    assert "\n" not in line
    assert "the form is KIND:PATH" in line
    assert "its keys fit cifar-resnet" in line
    assert f"--encoder cifar-resnet:{REPO / 'pairmine/assets/resnet20-cifar10.th'}" in line


def test_the_kinds_are_found_from_the_keys(tmp_path: Path) -> None:
    import torch

    from pairmine.encoders.base import kinds_for_file, spec_without_kind

    # a ResNet's key names (tiny tensors: only the names matter)
    state = {name: torch.zeros(1) for name in (
        "conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.conv1.weight",
        "layer4.1.bn2.running_var", "fc.weight", "fc.bias")}
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in state.items()},
                "epoch": 200}, tmp_path / "moco.pth.tar")
    torch.save(state, tmp_path / "tv.pth")
    assert kinds_for_file(tmp_path / "moco.pth.tar") == ["moco"]
    assert kinds_for_file(tmp_path / "tv.pth") == ["torchvision"]
    # the example is the kind's own form, this file in place of PATH
    assert "--encoder torchvision:ARCH:" in spec_without_kind(str(tmp_path / "tv.pth")).hint
    # a safetensors file is read from its header alone
    import json
    import struct

    header = json.dumps({"visual.conv1.weight": {"dtype": "F32", "shape": [1],
                                                 "data_offsets": [0, 4]},
                         "token_embedding.weight": {"dtype": "F32", "shape": [1],
                                                    "data_offsets": [4, 8]}}).encode()
    (tmp_path / "clip.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                                + bytes(8))
    assert kinds_for_file(tmp_path / "clip.safetensors") == ["open_clip"]
    # no file, or not a checkpoint: no kind, and the hint says what to do instead
    (tmp_path / "notes.txt").write_text("hello")
    assert kinds_for_file(tmp_path / "notes.txt") == []
    assert "pick the project" in spec_without_kind(str(tmp_path / "notes.txt")).hint
    assert "existing PATH" in spec_without_kind(str(tmp_path / "nope.pth")).hint


def test_an_unknown_kind_still_lists_the_kinds() -> None:
    code, output = invoke("encoders", "nosuch:x.pth")
    assert code == 1 and "unknown encoder 'nosuch'" in output and "choose one of" in output


# ---------------------------------------------------------------------------------------------
# the stores of a small world: a band with no pairs, labels in a dataset's own layout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("world"))


# pooled ReLU features have cosines >= 0: this band holds nothing
EMPTY_BAND = ("--min", "-1", "--max", "-0.5")


def test_a_band_with_no_pairs_warns_with_the_calibrate_command(world: World,
                                                               tmp_path: Path) -> None:
    pairs, export, report = tmp_path / "pairs", tmp_path / "spps", tmp_path / "report"
    calibrate = f"pairmine calibrate {world.emb} --target-yield 1 --floor -1"
    for argv in (["match", str(world.emb), str(pairs), *EMPTY_BAND, "--device", "cpu"],
                 ["export", str(pairs), str(export)],
                 ["show", str(pairs), str(report)]):
        code, output = run_cli(argv)
        assert code == 0, output
        warning = [line for line in output.splitlines() if line.startswith("no pairs")]
        assert warning == [f"no pairs: the band [-1, -0.5] holds no pair of {world.emb}; run "
                           f"`{calibrate}` to find a band with pairs, then pass its "
                           "--min/--max"], output
    # the command it prints runs (this world's random encoder puts nearly every pair above
    # 0.99, so the table, not a suggestion, is what it finds here)
    code, output = run_cli([*calibrate.split()[1:], "--device", "cpu"])
    assert code == 0, output


def test_a_band_with_pairs_does_not_warn(world: World, tmp_path: Path) -> None:
    code, output = run_cli(["match", str(world.emb), str(tmp_path / "p"), *BAND,
                            "--device", "cpu"])
    assert code == 0 and "no pairs" not in output, output


def test_labels_in_the_datasets_own_layout(world: World, tmp_path: Path) -> None:
    """CIFAR-10's labels.csv (split,label,class,path; paths from the archive's root) labels a
    store embedded from one split's folder: the paths end with the store's keys."""
    from pairmine.quality import load_labels
    from pairmine.stores import open_embeddings

    emb = open_embeddings(world.emb)
    keys = emb.meta.column("key").to_pylist()
    classes = sorted({k.split("/")[0] for k in keys})
    rows = ["split,label,class,path"] + [
        f"test,{classes.index(k.split('/')[0])},{k.split('/')[0]},test/{k}" for k in keys]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    labels = load_labels(emb, csv)
    assert labels is not None and labels.known == len(keys)
    assert labels.names == classes  # the integers coded, the class column names them
    assert [labels.name(int(c)) for c in labels.codes] == [k.split("/")[0] for k in keys]
    code, output = run_cli(["eval-pairs", str(world.pairs), "--labels", str(csv), "--no-grid",
                            "--k", "1", "--device", "cpu"])
    assert code == 0, output


@pytest.mark.parametrize(("header", "says"), [
    ("name,label", "no key column (key or path or filename"),
    ("path,score", "no label column (label or class"),
])
def test_a_label_file_without_usable_columns_says_which_are_needed(
        world: World, tmp_path: Path, header: str, says: str) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{header}\ncat/000.png,1\n")
    code, output = run_cli(["eval-pairs", str(world.pairs), "--labels", str(csv), "--no-grid",
                            "--k", "1", "--device", "cpu"])
    assert code == 1
    line = one_error_line(output)
    assert says in line and "rename its columns to key,label" in line, line


# ---------------------------------------------------------------------------------------------
# export after the images moved


def test_export_after_the_images_moved_says_so_short_and_image_root_reads_them(
        world: World, tmp_path: Path) -> None:
    import shutil

    old, new = tmp_path / "old" / "images", tmp_path / "new" / "images"
    shutil.copytree(world.images, old)
    emb, pairs = tmp_path / "emb", tmp_path / "pairs"
    for argv in (["embed", str(old), str(emb), "--encoder", world.spec, "--workers", "0",
                  "--device", "cpu"],
                 ["match", str(emb), str(pairs), *BAND, "--device", "cpu"]):
        code, output = run_cli(argv)
        assert code == 0, output
    new.parent.mkdir()
    old.rename(new)

    code, output = run_cli(["export", str(pairs), str(tmp_path / "spps")])
    assert code == 1
    line = one_error_line(output)
    # short: a count, one example and the fix, not every path twice
    assert len(line) < 2 * len(str(old)) + len(str(tmp_path)) + 300, line
    assert line.startswith("Error: 30 source image(s) are gone since embed (first: "
                           f"{old}/"), line
    assert line.count(str(old)) == 2, line  # the example and the fix, once each
    assert f"if they moved, add --image-root {old}=NEW_FOLDER" in line, line
    assert "--skip-missing" in line

    code, output = run_cli(["export", str(pairs), str(tmp_path / "spps"), "--image-root",
                            f"{old}={new}", "--overwrite"])
    assert code == 0, output
    code, output = run_cli(["verify", str(tmp_path / "spps")])
    assert code == 0, output

    # show reads the images too: without --image-root it says how to point it at them
    code, output = run_cli(["show", str(pairs), str(tmp_path / "report"), "--per-view", "3"])
    assert code == 0, output
    assert "could not be read" in output and "pass --image-root OLD=NEW" in output, output
    code, output = run_cli(["show", str(pairs), str(tmp_path / "report"), "--per-view", "3",
                            "--image-root", f"{old}={new}", "--overwrite"])
    assert code == 0 and "could not be read" not in output, output


@pytest.mark.parametrize(("value", "says"), [("nowhere", "is not OLD=NEW"),
                                             ("=/x", "is not OLD=NEW")])
def test_a_bad_image_root_is_a_usage_error(world: World, tmp_path: Path, value: str,
                                           says: str) -> None:
    code, output = run_cli(["export", str(world.pairs), str(tmp_path / "o"), "--image-root",
                            value])
    assert code == 2 and says in one_error_line(output)
    code, output = run_cli(["export", str(world.pairs), str(tmp_path / "o"), "--format",
                            "parquet", "--image-root", "/a=/b"])
    assert code == 2 and "use --format webdataset" in one_error_line(output)
    code, output = run_cli(["show", str(world.pairs), str(tmp_path / "r"), "--image-root",
                            value])
    assert code == 2 and says in one_error_line(output)
    assert not (tmp_path / "r").exists()


def test_image_roots_map_the_longest_recorded_prefix_on_a_folder_boundary() -> None:
    from pairmine.sources.roots import ImageRoots

    roots = ImageRoots.parse(["/data=/mnt/data", "/data/cifar/=/fast/cifar"])
    assert roots.apply("/data/cifar/cat/1.png") == "/fast/cifar/cat/1.png"
    assert roots.apply("/data/other/1.png") == "/mnt/data/other/1.png"
    assert roots.apply("/database/1.png") == "/database/1.png"  # not a folder of /data
    assert roots.apply("/elsewhere/1.png") == "/elsewhere/1.png"


# ---------------------------------------------------------------------------------------------
# tables at 80 columns


def test_band_tables_keep_every_number_whole_at_80_columns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,600 images in two tight clusters: about 640,000 pairs above the floor, so the counts
    have six digits and more, as a real store's have."""
    import re

    import numpy as np
    from test_quality import clustered, write_emb, write_pairs

    x, y = clustered(1600, 8, 2, 0.1, seed=3)
    emb = write_emb(tmp_path / "emb", x, y, class_names=["cat", "dog"])
    pairs = write_pairs(tmp_path / "pairs", emb, 0.97, 0.99)
    monkeypatch.setenv("COLUMNS", "80")
    for argv in (["calibrate", str(emb), "--device", "cpu", "--step", "0.01"],
                 ["eval-pairs", str(pairs), "--device", "cpu", "--k", "1,5"]):
        code, output = invoke(*argv)
        assert code == 0, output
        assert "…" not in output, output  # nothing cut short
        assert max(len(line) for line in output.splitlines()) <= 80, output
        # every count in a table cell is whole: 1,234,567, never 1,234,…
        counts = re.findall(r"\b\d{1,3}(?:,\d{3})+\b", output)
        assert any(len(c) >= 7 for c in counts), output
        # a band is one cell on one line: [0.97, 0.99], never [0.97, / 0.99]
        assert not re.search(r"\[[\d.]+,\s*$", output, re.M), output
    assert np.unique(y).size == 2


def test_a_table_too_wide_for_80_columns_is_stacked_with_its_numbers_whole() -> None:
    from rich.console import Console

    from pairmine.commands.common import fitted, number_table
    from pairmine.quality import BAND_HEADERS

    table = number_table("bands", BAND_HEADERS, left=("band",))
    row = ("[0.925, 0.99]", "1,234,567,890", "799.661", "100.0%", "1,234,567,890", "99.95%",
           "99.9–100.0%")
    table.add_row(*row)
    console = Console(width=80, record=True, force_terminal=False)
    console.print(fitted(table, 80))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for value in row:
        assert value in text, text  # every cell whole, on one line
    small = number_table("bands", BAND_HEADERS, left=("band",))
    small.add_row("[0.97, 0.99]", "1,256,000", "0.628", "45.1%", "1,256,000", "91.20%",
                  "90.1–92.3%")
    assert fitted(small, 80) is small  # fits: the table itself
