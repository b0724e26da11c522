"""`pairmine encoders`: list the encoder kinds, or load one SPEC and describe it."""

from __future__ import annotations

import click

from pairmine.commands.common import known_errors, out, summary_table
from pairmine.encoders.base import FEATURE_OPTIONS


@click.command("encoders")
@click.argument("spec", required=False, metavar="[SPEC]")
@click.option("--arch", default=None, help="Architecture override, as for `pairmine embed`.")
@click.option("--features", type=click.Choice(FEATURE_OPTIONS), default=None,
              help="Which features, as for `embed` (each kind lists its own).")
@known_errors
def command(spec: str | None, arch: str | None, features: str | None) -> None:
    """List the encoders `--encoder SPEC` accepts; with SPEC, load it and show what it gives.

    Loading a SPEC checks a checkpoint before a long `pairmine embed`: the architecture it
    resolves to, the feature size and the preprocessing.
    """
    from rich.markup import escape
    from rich.table import Table

    from pairmine.encoders import list_encoders, load_encoder
    from pairmine.encoders.archs import BACKBONES

    if spec is None:
        table = Table(title="encoders (--encoder SPEC)", title_justify="left")
        table.add_column("SPEC", style="bold", no_wrap=True)
        table.add_column("what it loads")
        table.add_column("--features", no_wrap=True)
        for kind in list_encoders():
            # escaped: help text names extras like 'pairmine[hf]', which rich would eat
            table.add_row(escape(kind.usage), escape(kind.help), "|".join(kind.features))
        out.print(table)
        out.print(f"ResNet trunks for --arch (moco, simsiam, vicreg): {', '.join(BACKBONES)}")
        return
    enc = load_encoder(spec, arch=arch, features=features)
    p = enc.preprocess
    out.print(summary_table(f"encoder {enc.spec}", [
        ("arch", enc.arch),
        ("features", enc.features),
        ("dim", enc.dim),
        ("preprocess", f"resize {p.resize} ({p.interpolation}, {p.resize_mode}), crop "
                       f"{p.crop}, mean {p.mean}, std {p.std}"),
        ("parameters", sum(t.numel() for t in enc.model.parameters())),
        *((k, v) for k, v in enc.info.items() if k != "kind"),
    ]))
