"""Write one benchmark's section of docs/benchmarks.md between its markers, keeping the rest."""

from __future__ import annotations

import os
import platform
from pathlib import Path

HEAD = "# Benchmarks\n\nEvery figure here was written by a script in `benchmarks/`; each section " \
       "names its machine, date and command.\n"


def update_section(doc: Path, name: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEAD
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def machine() -> str:
    """The CPU as a benchmark section names it: model, SIMD level (the bf16 units decide which
    precision is fastest), cores, OS."""
    from pairmine.runtime import cpu_flags, cpu_model

    flags = cpu_flags()
    simd = (", AMX" if "amx_bf16" in flags else ", AVX-512 BF16" if "avx512_bf16" in flags
            else ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else "")
    return f"{cpu_model()}{simd}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
