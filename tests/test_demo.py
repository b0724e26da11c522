"""The README's main command: the whole pipeline on the embedded data, offline."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from pairmine.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_setup_commands() -> None:
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert block is not None
    commands = [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert commands[0].endswith("pairmine demo")
    assert commands[1].endswith("python3 -m pytest")
    assert len(commands) == 2


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
    assert "embed (resumed)" in (out / "report.md").read_text()
