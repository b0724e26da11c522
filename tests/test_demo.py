"""The README's main command: the whole pipeline on the embedded data, offline."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from pairmine.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_pairmine_command_in_the_readme_exists_with_its_options() -> None:
    """The README's command lines are runnable: each ``pairmine CMD`` is a command of the CLI
    and each ``--option`` it uses is one of that command's options."""
    import click

    text = README.read_text(encoding="utf-8")
    lines = [ln.split("#")[0] for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
             for ln in block.splitlines()]
    calls = [part.split() for ln in lines for part in ln.split("&&")
             if part.split()[:1] == ["pairmine"]]
    assert any(call[1] == "demo" for call in calls)  # the README's main command
    ctx = click.Context(cli)
    for call in calls:
        command = cli.get_command(ctx, call[1])
        assert command is not None, f"README runs `pairmine {call[1]}`, which does not exist"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        used = {word.split("=")[0] for word in call[2:] if word.startswith("--")}
        assert used <= known, f"`pairmine {call[1]}` has no {sorted(used - known)}"


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", str(out), "--train-epochs", "0"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| embed |" in report and "| export |" in report
    accuracy = re.search(r"pair_accuracy=([0-9.]+)", report)
    assert accuracy is not None and float(accuracy.group(1)) > 0.9  # supervised encoder
    # a second run finds every store complete and redoes nothing
    again = CliRunner().invoke(cli, ["demo", str(out), "--train-epochs", "0"])
    assert again.exit_code == 0, again.output
    second = (out / "report.md").read_text()
    assert "embed (resumed)" in second and "eval sampler (resumed)" in second
    assert re.search(r"pair_accuracy=([0-9.]+)", second) is not None
