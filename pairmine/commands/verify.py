"""`pairmine verify`: pairmine.verify → summary (exit 1 on any mismatch)."""

from __future__ import annotations

from pathlib import Path

import click

from pairmine.commands.common import known_errors, out, progress_bar, summary_table


@click.command("verify")
@click.argument("export_dir", metavar="OUT", type=click.Path(path_type=Path))
@known_errors
def command(export_dir: Path) -> None:
    """Re-read the export OUT and check it against its manifests.

    Every tar's sha256 and size, its members against the shard index, and every member's
    bytes against the hash embed recorded (parquet exports: the source images themselves).
    """
    from pairmine.export import EXPORT_FORMATS, verify

    with progress_bar() as progress:
        result = verify(export_dir, progress=progress)
    rows: list[tuple[str, object]] = [("format", result.format), ("samples", result.samples),
                                      ("pairs", result.pairs), ("images", result.images)]
    if EXPORT_FORMATS.get(result.format).shards:
        rows += [("shards", result.shards), ("members hashed", result.members),
                 ("vs embeddings store", "yes" if result.embeddings_checked else
                  "no (store gone or changed: indexes only)")]
    else:
        rows += [("source images re-read", result.sources)]
    rows += [("bytes read", f"{result.bytes / 1e6:,.1f} MB"),
             ("time", f"{result.seconds:.1f} s")]
    out.print(summary_table(f"verified ✓ {result.path}", rows))
