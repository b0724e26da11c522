"""The ``pairmine`` command: a thin click group whose commands live in ``pairmine.commands``.

Commands are imported only when run (or listed), so ``pairmine --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pairmine import __version__

# command name -> module in pairmine.commands that defines a click command called `command`
COMMANDS: dict[str, str] = {
    "embed": "embed",
    "encoders": "encoders",
    "match": "match",
    "export": "export",
    "verify": "verify",
    "train": "train",
    "eval": "evaluate",
    "demo": "demo",
    "eval-pairs": "eval_pairs",
    "calibrate": "calibrate",
    "show": "show",
    "pairs": "pairs",
    "pairs-from-labels": "pairs_from_labels",
    "import": "import_",
}


def check_commands(table: dict[str, str]) -> None:
    """Every module the command table names exists: a typo is an error here, at import, not a
    command missing from the CLI and its docs. (A file check: nothing is imported.)"""
    from pathlib import Path

    folder = Path(__file__).resolve().parent / "commands"
    missing = [f"{name} -> {module}" for name, module in table.items()
               if not (folder / f"{module}.py").is_file()]
    if missing:
        raise ImportError(f"pairmine.cli.COMMANDS names modules that do not exist in "
                          f"pairmine/commands: {', '.join(missing)}")


check_commands(COMMANDS)


class UsageFailure(click.ClickException):
    """A command line click cannot parse, as one line: exit code 2, as click and every Unix
    tool use for usage errors (pairmine's own errors, about inputs and outputs, exit 1)."""

    exit_code = 2


def _one_line(exc: click.UsageError) -> UsageFailure:
    message = " ".join(exc.format_message().split())
    command = exc.ctx.command_path if exc.ctx is not None else "pairmine"
    return UsageFailure(f"{message} (see `{command} --help`)")


class LazyGroup(click.Group):
    """Commands imported when run; usage errors reported in one line (exit code 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # no command at all: the normal help, not click's help squeezed into one error line;
        # exit code 2, a usage error (as click >= 8.2 and POSIX utilities do), so a script
        # that calls `pairmine` with nothing still fails
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(UsageFailure.exit_code)
        return super().parse_args(ctx, args)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a sub-command's options, or no such command
            raise _one_line(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None  # click says "no such command"
        command: click.Command = importlib.import_module(f"pairmine.commands.{module}").command
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(__version__, prog_name="pairmine")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Mine semantic positive pairs from image datasets, offline, for self-supervised learning.

    \b
    Pipeline:  embed → match → export → (train)
      pairmine embed SOURCE EMB --encoder SPEC
      pairmine match EMB PAIRS --min 0.97 --max 0.99
      pairmine export PAIRS SPPS --format webdataset
    """
    from pairmine.commands.common import setup_logging

    setup_logging(verbose)


def main(argv: list[str] | None = None, **kwargs: Any) -> None:
    from pairmine.runtime import prefer_passive_waits

    prefer_passive_waits()  # before any command imports torch (OpenMP reads it once)
    cli.main(args=argv, prog_name="pairmine", **kwargs)
