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
