"""Every store is byte-identical to what the code before the store-contract redesign wrote
from the same input (tests/golden/hashes.json, produced by tests/golden_pipeline.py at commit
3a98da7). A change that alters a byte of a data file must say so and update the file."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from golden_pipeline import data_hashes, run_pipeline

GOLDEN = Path(__file__).parent / "golden" / "hashes.json"


# metadata records absolute source paths, so the run happens at one fixed place
ROOT = Path(tempfile.gettempdir()) / "pairmine-golden"


def test_stores_are_byte_identical_to_the_golden_run() -> None:
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    shutil.rmtree(ROOT, ignore_errors=True)
    got = data_hashes(run_pipeline(ROOT))
    shutil.rmtree(ROOT, ignore_errors=True)
    assert sorted(got) == sorted(want)  # the same files
    assert {k for k in got if got[k] != want[k]} == set()  # the same bytes
