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
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        try:
            mod = importlib.import_module(f"pairmine.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pairmine.commands.{module}":
                return None  # not built yet
            raise
        command: click.Command = mod.command
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
    cli.main(args=argv, prog_name="pairmine", **kwargs)
