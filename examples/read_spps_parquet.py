"""Read an export's ``spps.parquet`` with pyarrow (and DuckDB, when it is installed).

    python examples/read_spps_parquet.py spps/

One row per semantic positive pair: ids, keys, where the two original images live, the
cosine score, labels when the source had them, and the shard each pair landed in. Pair
accuracy (the share of pairs whose two images carry the same label) is the paper's
measure of SPPS quality (SePP-ID, Table 1).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq


def summarise(export_dir: str) -> dict[str, Any]:
    path = os.path.join(export_dir, "spps.parquet")
    table = pq.read_table(path)
    print(f"{path}: {table.num_rows:,} pairs, columns: {', '.join(table.column_names)}")
    stats: dict[str, Any] = {"pairs": table.num_rows}
    if table.num_rows == 0:
        return stats
    score = table.column("score")
    stats["score"] = (pc.min(score).as_py(), pc.mean(score).as_py(), pc.max(score).as_py())
    print("score min / mean / max: {:.4f} / {:.4f} / {:.4f}".format(*stats["score"]))

    labelled = table.filter(pc.and_(pc.is_valid(table.column("label_a")),
                                    pc.is_valid(table.column("label_b"))))
    if labelled.num_rows:
        same = pc.sum(pc.equal(labelled.column("label_a"), labelled.column("label_b"))).as_py()
        stats["pair_accuracy"] = same / labelled.num_rows
        print(f"pair accuracy: {stats['pair_accuracy']:.2%} of {labelled.num_rows:,} "
              "labelled pairs share their label")

    if pc.any(pc.is_valid(table.column("shard"))).as_py():
        per_shard = table.group_by("shard").aggregate([("pair_id", "count")])
        stats["shards"] = dict(zip(per_shard.column("shard").to_pylist(),
                                   per_shard.column("pair_id_count").to_pylist(), strict=True))
        print(f"pairs per shard: {stats['shards']}")

    best = table.sort_by([("score", "descending")]).slice(0, 5)
    for row in best.select(["pair_id", "score", "key_a", "key_b"]).to_pylist():
        print(f"  pair {row['pair_id']}: {row['score']:.4f}  {row['key_a']}  ↔  {row['key_b']}")

    try:
        import duckdb  # type: ignore[import-not-found]
    except ImportError:
        print("(duckdb is not installed: skipping the SQL example)")
        return stats
    query = f"""
        SELECT label_a, count(*) AS pairs, avg(CASE WHEN label_a = label_b THEN 1 ELSE 0 END)
               AS accuracy
        FROM read_parquet('{path}') WHERE label_a IS NOT NULL GROUP BY label_a ORDER BY label_a
    """
    print(duckdb.sql(query))
    return stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export_dir", help="a pairmine export directory (holds spps.parquet)")
    return summarise(ap.parse_args(argv).export_dir)


if __name__ == "__main__":
    main()
