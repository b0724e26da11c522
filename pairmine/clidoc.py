"""Render the CLI reference (docs/cli.md) from the commands' own --help.

Regenerate with ``python -m pairmine.clidoc > docs/cli.md``; a test fails when it is stale.
"""

from __future__ import annotations

HEADER = """# CLI reference

Generated from `--help` by `python -m pairmine.clidoc > docs/cli.md`; do not edit by hand
(`tests/test_cli_docs.py` fails when this file is stale).
"""


def render_cli_markdown() -> str:
    from pairmine.cli import cli

    parts = [HEADER]
    # contexts made as the CLI makes them, so the group's context settings (``-h`` as well as
    # ``--help``, the width) apply to every command: click caches each command's help option
    # on first use, so a context made any other way would render differently depending on
    # what ran before
    ctx = cli.make_context("pairmine", [], resilient_parsing=True)
    ctx.max_content_width = ctx.terminal_width = 100
    parts.append(_section("pairmine", cli.get_help(ctx)))
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        if command is None:
            continue
        sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        sub.max_content_width = sub.terminal_width = 100
        parts.append(_section(f"pairmine {name}", command.get_help(sub)))
    return "\n".join(parts)


def _section(title: str, text: str) -> str:
    return f"## `{title}`\n\n```text\n{text.rstrip()}\n```\n"


if __name__ == "__main__":
    print(render_cli_markdown(), end="")
