"""Every store is byte-identical to what the code before the store-contract redesign wrote
from the same input (tests/golden/hashes.json, produced by tests/golden_pipeline.py at commit
3a98da7 on an AVX2 CPU; the pairs view of combined exports, export/pairs/, was added with
issue 19 without changing any earlier file). A change that alters a byte of a data file must
say so and update the file.

The pipeline runs in a child process with oneDNN, MKL and ATen held to their AVX2 kernels:
an AVX-512 CPU runs the encoder's convolutions with other kernels, whose float rounding
differs in the last bit, and that flips a few float16 embeddings (8 files differed on an
AVX-512 BF16 EPYC). Pinned, both CPUs write the same bytes, so the test checks the code, not
the CPU it runs on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "hashes.json"
# the kernels the golden hashes were written with; every x86-64 CPU of the last decade has them
AVX2_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

# metadata records absolute source paths, so the run happens at one fixed place
ROOT = Path(tempfile.gettempdir()) / "pairmine-golden"


def _has_avx2() -> bool:
    from pairmine.runtime import cpu_flags

    return "avx2" in cpu_flags()


@pytest.mark.skipif(not _has_avx2(), reason="the golden hashes were written with AVX2 "
                    "kernels, which this CPU does not have")
def test_stores_are_byte_identical_to_the_golden_run() -> None:
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    shutil.rmtree(ROOT, ignore_errors=True)
    proc = subprocess.run([sys.executable, str(HERE / "golden_pipeline.py"), str(ROOT)],
                          env={**os.environ, **AVX2_KERNELS}, capture_output=True, text=True,
                          timeout=600, check=False)
    shutil.rmtree(ROOT, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert sorted(got) == sorted(want)  # the same files
    assert {k for k in got if got[k] != want[k]} == set()  # the same bytes
