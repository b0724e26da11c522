"""Messages that say what to do (issue 20 §4): each a line that names the fix."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

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
