"""Open a WebDataset source and walk its refs listing group by group, as embed plans its
shards: the process to run under a memory cgroup (../shared/tools/measure.py --cgroup-limit)
to show that a source larger than the cap opens inside it.

    python benchmarks/wds_open.py 'SHARDS/{000000..000099}.tar'
"""

from __future__ import annotations

import sys
from typing import Any

from pairmine.sources import open_source

GROUP = 65536


def main(spec: str) -> None:
    src = open_source(spec)
    refs: Any = src.refs_listing()  # a listing, or a table from a version before listings
    rows = 0
    if hasattr(refs, "group"):
        for number in range(-(-refs.num_rows // GROUP)):
            rows += refs.group(number).num_rows
    else:
        rows = refs.num_rows
    assert rows == len(src)
    print(f"samples {len(src)}, first {len(src.read(0))} bytes, "
          f"last {len(src.read(len(src) - 1))} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
