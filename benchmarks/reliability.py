"""The reliability campaign of issue 12, as a repeatable script (not a test).

Rows, each a count of cases and of cases that held (target: every row 100%):
  corpus        a folder of odd and corrupt files (truncated JPEGs, zero bytes, text renamed
                .jpg, CMYK, 16-bit PNG, a header declaring 10^10 pixels, a FIFO, dangling
                links, ...): every file considered is embedded, an error entry or ignored with
                a reason, counted independently of pairmine (Pillow decodes each file here)
  kill points   embed, match and export killed after every store step
                (PAIRMINE_FAULT=after:N, as abrupt as kill -9), then run again: resumed,
                data files byte-identical to an uninterrupted run's, no stray file
  bad input     every command through read-only mounts, immutable folders, full disks,
                damaged stores, bad seeds and unparsable options (tests/test_bad_input.py's
                table): exit code, one line, no traceback, nothing complete left
  writers       a second writer while the first holds the lock, and simultaneous starts
                with different options: refused with one line, the winner's store whole
  hostile names tar members and file-list entries with hostile names: no crash, nothing
                written outside OUT

Needs root for the mounts (the bad-input rows skip what the machine cannot make). Writes its
figures to docs/reliability.md.

    python benchmarks/reliability.py                    # every kill point (~10 min on 2 cores)
    python benchmarks/reliability.py --kill-every 3 --races 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DOC = REPO / "docs" / "reliability.md"


@dataclass
class Row:
    name: str
    tried: int = 0
    held: int = 0
    detail: str = ""
    failures: list[str] = field(default_factory=list)

    def add(self, ok: bool, what: str) -> None:
        self.tried += 1
        self.held += ok
        if not ok:
            self.failures.append(what)

    @property
    def percent(self) -> str:
        return "n/a" if not self.tried else f"{100 * self.held / self.tried:.0f}%"


def checked(fn: Callable[[], object]) -> tuple[bool, str]:
    """Run one check of the test helpers (they assert); (held, why not)."""
    import _pytest.outcomes

    try:
        fn()
    except AssertionError as exc:
        return False, str(exc).splitlines()[0][:200] if str(exc) else "assertion failed"
    except _pytest.outcomes.Skipped as exc:
        return True, f"skipped: {exc.msg}"
    return True, ""


# ---------------------------------------------------------------------------------------------
# the corrupt corpus


def make_corpus(root: Path) -> dict[str, str]:
    """Write the corpus; returns each considered entry (relative path) and what Pillow makes
    of it here: "decodes", "fails" (an image name that does not decode) or "not an image"."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(12)
    cls = root / "odd"
    cls.mkdir(parents=True)
    made: dict[str, str] = {}

    def image(name: str, mode: str, size: tuple[int, int], fmt: str, **kw: Any) -> Path:
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
        if mode == "I;16":
            img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)  # mode I;16
        elif mode != "RGB":
            img = img.convert(mode)
        path = cls / name
        img.save(path, format=fmt, **kw)
        return path

    for i in range(40):  # plain images
        image(f"good-{i:02d}.{'png' if i % 4 == 0 else 'jpg'}", "RGB", (24 + i, 30),
              "PNG" if i % 4 == 0 else "JPEG")
    image("gray.jpg", "L", (40, 30), "JPEG")
    image("cmyk.jpg", "CMYK", (40, 30), "JPEG")
    image("rgba.png", "RGBA", (40, 30), "PNG")
    image("palette.png", "P", (40, 30), "PNG")
    image("sixteen-bit.png", "I;16", (40, 30), "PNG")
    image("one-pixel.png", "RGB", (1, 1), "PNG")
    image("anim.gif", "P", (40, 30), "GIF")
    image("bitmap.bmp", "RGB", (40, 30), "BMP")
    image("scan.tiff", "RGB", (40, 30), "TIFF")
    image("photo.webp", "RGB", (40, 30), "WEBP")
    image("progressive.jpg", "RGB", (64, 48), "JPEG", progressive=True)
    whole = (cls / "good-01.jpg").read_bytes()
    (cls / "truncated-half.jpg").write_bytes(whole[: len(whole) // 2])
    (cls / "truncated-header.jpg").write_bytes(whole[:120])
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "text.jpg").write_text("this is not an image\n")
    (cls / "random.png").write_bytes(rng.bytes(4096))
    (cls / "html.png").write_bytes(b"<html><body>404 Not Found</body></html>")
    png = (cls / "good-00.png").read_bytes()
    (cls / "truncated.png").write_bytes(png[: len(png) // 3])
    # a PNG whose header declares 100000 x 100000 pixels (a decompression bomb)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\0\0\0\0IEND\xaeB`\x82")
    (cls / "bomb.png").write_bytes(bomb)
    for path in cls.iterdir():
        made[str(path.relative_to(root))] = _pillow_verdict(path)
    # entries that are not regular image files
    (cls / "notes.txt").write_text("notes")
    made["odd/notes.txt"] = "not an image"
    (cls / ".hidden.jpg").write_bytes(whole)
    made["odd/.hidden.jpg"] = "not an image"
    os.symlink(cls / "nowhere.jpg", cls / "dangling.jpg")
    made["odd/dangling.jpg"] = "not an image"
    os.symlink(cls / "loop-b.jpg", cls / "loop-a.jpg")
    os.symlink(cls / "loop-a.jpg", cls / "loop-b.jpg")
    made["odd/loop-a.jpg"] = made["odd/loop-b.jpg"] = "not an image"
    os.mkfifo(cls / "fifo.jpg")
    made["odd/fifo.jpg"] = "not an image"
    return made


def _pillow_verdict(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
    except Exception:  # any failure to decode is the verdict
        return "fails"
    return "decodes"


def corpus_row(work: Path, spec: str) -> tuple[Row, str]:
    import pyarrow.parquet as pq

    from pairmine.stores import open_embeddings
    from tests.test_bad_input import run_cli

    row = Row("corpus files accounted for")
    made = make_corpus(work / "corpus")
    out = work / "corpus-emb"
    t0 = time.perf_counter()
    code, output = run_cli(["embed", str(work / "corpus"), str(out), "--encoder", spec,
                            "--workers", "0", "--device", "cpu"])
    if code != 0:
        row.add(False, f"embed failed: {output.strip()[-200:]}")
        return row, ""
    store = open_embeddings(out)
    embedded = {Path(s).name for s in store.meta.column("source").to_pylist()}
    errors = {Path(s).name for s in pq.read_table(out / "errors.parquet")
              .column("source").to_pylist()}
    ignored = sum(store.manifest.get("source", {}).get("ignored", {}).values())
    for rel, verdict in made.items():
        name = Path(rel).name
        if verdict == "decodes":
            row.add(name in embedded, f"{name} decodes (Pillow) but was not embedded")
        elif verdict == "fails":
            row.add(name in errors, f"{name} does not decode but is no error entry")
        else:
            row.add(name not in embedded and name not in errors,
                    f"{name} is not an image file but was read")
    total_ok = len(embedded) + len(errors) + ignored == len(made)
    row.add(total_ok, f"{len(embedded)} embedded + {len(errors)} errors + {ignored} ignored "
                      f"!= {len(made)} considered")
    verdicts = [v for v in made.values()]
    detail = (f"{len(made)} considered ({verdicts.count('decodes')} decode with Pillow, "
              f"{verdicts.count('fails')} do not, {verdicts.count('not an image')} are not "
              f"image files) = {len(embedded)} embedded + {len(errors)} error entries + "
              f"{ignored} ignored; {time.perf_counter() - t0:.1f} s")
    return row, detail


# ---------------------------------------------------------------------------------------------
# kill points


def kill_rows(w: Any, work: Path, every: int) -> list[Row]:
    import pytest

    from tests.test_crash_resume import count_steps, kill_and_resume, writer_argv

    rows = []
    mp = pytest.MonkeyPatch()
    for cmd in ("embed", "match", "export"):
        row = Row(f"kill points: {cmd}")
        reference = work / f"kill-ref-{cmd}"
        steps = count_steps(writer_argv(w, cmd, reference), mp)
        points = sorted(set(range(1, steps + 1, every)) | {steps - 1, steps})
        t0 = time.perf_counter()
        resumed = identical = stray = 0
        for step in points:
            out = work / f"kill-{cmd}-{step}"
            o = kill_and_resume(writer_argv(w, cmd, out), out, reference, step)
            resumed += o.resumed
            identical += o.identical
            stray += bool(o.stray)
            said = f": {o.said}" if o.said else ""
            row.add(o.killed and o.resumed and o.identical and not o.stray,
                    f"step {o.step}: killed={o.killed} (exit {o.exit}{said}) "
                    f"resumed={o.resumed} identical={o.identical} stray={o.stray}")
            shutil.rmtree(out, ignore_errors=True)
        row.detail = (f"{len(points)} of {steps} steps tried: {resumed} resumed, {identical} "
                      f"byte-identical, {stray} with stray files; "
                      f"{time.perf_counter() - t0:.0f} s")
        rows.append(row)
    mp.undo()
    return rows


# ---------------------------------------------------------------------------------------------
# bad input


def bad_input_row(w: Any, work: Path) -> Row:
    from tests import test_bad_input as bi

    row = Row("bad input: one clear error")
    skipped: list[str] = []
    n = 0

    def case_dir() -> Path:
        nonlocal n
        n += 1
        return work / f"bad-{n}"

    for case in bi.UNWRITABLE_CASES:
        def unwritable(case: bi.Case = case) -> None:
            where = (bi.mounted_tmpfs("ro,size=1m") if case.name.endswith("ro-mount")
                     else bi.immutable_dir(_fresh(case_dir())))
            with where as parent:
                out = parent / "out"
                bi.check_case(case, bi.fill_in(case.argv, _paths(w, out)), out)
                assert not out.exists(), f"{case.name}: OUT was created"
        ok, why = checked(unwritable)
        _tally(row, skipped, case.name, ok, why)
    for case in bi.DAMAGED_CASES:
        def damaged(case: bi.Case = case) -> None:
            damage = next(d for d in bi.DAMAGES if case.name.endswith(d))
            d = case_dir()
            stores = bi.damaged_copy(w, damage, d / "stores")
            out = d / "out"
            line = bi.check_case(case, bi.fill_in(case.argv, _paths(w, out, **stores)), out)
            if case.says == "damaged":
                assert "re-create it with `pairmine" in line, line
        ok, why = checked(damaged)
        _tally(row, skipped, case.name, ok, why)
    for case in bi.OPTION_CASES:
        def option(case: bi.Case = case) -> None:
            out = case_dir() / "out"
            bi.check_case(case, bi.fill_in(case.argv, _paths(w, out)), out)
            assert not out.exists()
        ok, why = checked(option)
        _tally(row, skipped, case.name, ok, why)
    for cmd in ("embed", "match", "export"):
        def disk_full(cmd: str = cmd) -> None:
            _disk_full(w, cmd)
        ok, why = checked(disk_full)
        _tally(row, skipped, f"{cmd}-disk-full-then-resume", ok, why)
    row.detail = (f"{len(bi.UNWRITABLE_CASES)} unwritable outputs, {len(bi.DAMAGED_CASES)} "
                  f"damaged stores, {len(bi.OPTION_CASES)} bad options, 3 full disks"
                  + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return row


def _disk_full(w: Any, cmd: str) -> None:
    from tests.test_bad_input import disk_full_then_resume

    disk_full_then_resume(w, cmd)


def _tally(row: Row, skipped: list[str], name: str, ok: bool, why: str) -> None:
    if why.startswith("skipped"):
        skipped.append(name)
        return
    row.add(ok, f"{name}: {why}")


def _fresh(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _paths(w: Any, out: Path, **override: Path) -> dict[str, str]:
    from tests.test_bad_input import _paths as paths

    return paths(w, out, **override)


# ---------------------------------------------------------------------------------------------
# concurrent writers


def writer_rows(w: Any, work: Path, races: int) -> tuple[Row, Row]:
    from tests import test_one_writer as ow

    paused = Row("writers: second writer refused (lock held)")
    for cmd in ("match", "embed", "export"):
        d = _fresh(work / f"paused-{cmd}")

        def paused_check(cmd: str = cmd, d: Path = d) -> None:
            ow.second_writer_refused(w, cmd, d / "out")
        ok, why = checked(paused_check)
        paused.add(ok, f"{cmd}: {why}")
    d = _fresh(work / "paused-kill")
    ok, why = checked(lambda: ow.holder_killed_lock_gone(w, d / "out"))
    paused.add(ok, f"kill -9 of the holder: {why}")
    paused.detail = "match, embed, export paused inside the window; a kill -9 of the holder"

    race = Row("writers: simultaneous starts, one store whole")
    counts = {"match": races, "embed": max(1, races // 6), "export": max(1, races // 3)}
    refused = consistent = 0
    t0 = time.perf_counter()
    for cmd, k in counts.items():
        for i in range(k):
            out = work / f"race-{cmd}-{i}"

            def one(cmd: str = cmd, out: Path = out) -> None:
                winner, _ = ow.race(w, cmd, out)
                ow.assert_same_store(out, ow.reference_store(w, cmd, winner))
                if cmd == "match":
                    ow.assert_band_holds(out)
            ok, why = checked(one)
            race.add(ok, f"{cmd} #{i}: {why}")
            refused += ok
            consistent += ok
            shutil.rmtree(out, ignore_errors=True)
    race.detail = (f"{counts['match']} match, {counts['embed']} embed, {counts['export']} "
                   f"export pairs started together with different options: {refused} with "
                   f"the loser refused in one line, {consistent} with the winner's store "
                   f"byte-identical to an undisturbed run's; {time.perf_counter() - t0:.0f} s")
    return paused, race


# ---------------------------------------------------------------------------------------------
# hostile names


HOSTILE = ["../escape", "/etc/evil", "a/../../b", "<!--<script>alert(1)</script>",
           "quote\"'amp&", "new\nline", "tab\tname", "space name", "ünïcödé", "-dash",
           "...dots", "a" * 200]


def hostile_row(w: Any, work: Path) -> Row:
    from tests.test_bad_input import run_cli

    row = Row("hostile names: no crash, nothing outside OUT")
    good = sorted(w.images.rglob("*.jpg"))
    # a WebDataset tar whose member names are hostile (and one not valid UTF-8)
    tar_path = work / "hostile-000.tar"
    names = [*HOSTILE, "bad-\udcff-utf8"]  # the last one's name is not valid UTF-8
    # GNU format with surrogateescape: the member names are written as raw bytes
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for i, key in enumerate(names):
            data = good[i % len(good)].read_bytes()
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    # a file list naming hostile paths (and real files with hostile names)
    named = work / "named"
    named.mkdir()
    lines = []
    for i, key in enumerate(HOSTILE):
        safe = key.replace("/", "_").replace("\n", "_")
        target = named / f"{safe}.jpg"
        with contextlib.suppress(OSError):
            shutil.copy(good[i % len(good)], target)
            lines.append(str(target))
    lines += ["../../../../etc/passwd", "/dev/zero", "/dev/urandom", str(work / "missing.jpg")]
    listing = work / "hostile.txt"
    listing.write_text("\n".join(lines) + "\n")
    for name, source in (("tar members", str(tar_path)), ("file list", str(listing))):
        emb = work / f"hostile-emb-{name.split()[0]}"
        before = _snapshot(work)
        code, output = run_cli(["embed", source, str(emb), "--encoder", w.spec, "--workers",
                                "0", "--device", "cpu"])
        row.add(code in (0, 1) and "Traceback" not in output,
                f"embed of {name}: exit {code}: {output.strip()[-200:]}")
        if code != 0:
            continue
        pairs, spps = emb.with_name(emb.name + "-pairs"), emb.with_name(emb.name + "-spps")
        code, output = run_cli(["match", str(emb), str(pairs), "--min", "0.0", "--max", "1.0",
                                "--device", "cpu"])
        row.add(code == 0, f"match of {name}: {output.strip()[-200:]}")
        code, output = run_cli(["export", str(pairs), str(spps)])
        row.add(code == 0, f"export of {name}: {output.strip()[-200:]}")
        code, output = run_cli(["show", str(pairs), str(spps.with_name(spps.name + "-html"))])
        row.add(code == 0, f"show of {name}: {output.strip()[-200:]}")
        outside = [p for p in _snapshot(work) - before
                   if not any(p.startswith(str(s)) for s in (emb, pairs, spps,
                                                                 spps.with_name(spps.name
                                                                                + "-html")))]
        row.add(not outside, f"{name}: files written outside the outputs: {outside[:3]}")
        row.add(_tar_members_inside(spps), f"{name}: an exported tar member escapes")
    row.detail = (f"{len(names)} hostile tar member names (one not UTF-8), {len(lines)} file-list "
                  "entries (hostile names, ../, /dev/zero, /dev/urandom, a missing file) "
                  "through embed, match, export and show")
    return row


def _snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")} | {str(p) for p in Path("/tmp").glob("*")}


def _tar_members_inside(spps: Path) -> bool:
    for tar_path in spps.rglob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    return False
    return True


# ---------------------------------------------------------------------------------------------
# the report


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()} ({socket.gethostname()})"


def render(rows: list[Row], command: str, seconds: float) -> str:
    lines = [
        "# Reliability",
        "",
        "What issue 12 asked pairmine to withstand, measured by `benchmarks/reliability.py` "
        "(a script, rerun it to check; every row should read 100%). The same checks at a "
        "smaller scale run in the test suite: `tests/test_bad_input.py`, "
        "`tests/test_one_writer.py`, `tests/test_crash_resume.py` (the larger ones behind "
        "`-m slow`).",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}, no GPU",
        f"- command: `{command}`",
        f"- wall time: {seconds:.0f} s",
        "",
        "| row | cases | held | |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.tried} | {r.held} | {r.percent} |")
    lines += ["", "## What each row ran", ""]
    for r in rows:
        lines.append(f"- **{r.name}**: {r.detail}")
        for f in r.failures[:10]:
            lines.append(f"  - FAILED: {f}")
    lines += [
        "",
        "## How the checks are made",
        "",
        "- A kill point is a store step: an atomic write landing, the work folder renamed "
        "aside before the manifest, one file removed by the final clean-up. "
        "`PAIRMINE_FAULT=after:N` ends the process with `os._exit(137)` right after the Nth "
        "(no `finally`, no `atexit`: as abrupt as `kill -9`); the same command is then run "
        "again. Killed after the manifest landed, the rerun finds a complete store, removes "
        "what the killed run left and says so (exit 1).",
        "- Byte-identical: every file but `manifest.json` (timings) and `runs.jsonl` (one "
        "line per invocation) has the sha256 of an uninterrupted run's, and the store holds "
        "exactly the same file names (no `.tmp`, no `.partial*`, no `.pairmine.lock`).",
        "- One clear error: the last line on stderr starts with `Error:`, nothing but "
        "progress bars before it, no traceback; exit 1 (pairmine's errors) or 2 (a command "
        "line click cannot parse); no `manifest.json` (or report, or JSON) in OUT.",
        "- Writers: `PAIRMINE_FAULT=stop-after-lock` stops a writer (SIGSTOP) right after it "
        "takes OUT's lock, inside the window the race used (OUT exists, nothing written); the "
        "second writer must say `OUT is being written by another pairmine process (pid N on "
        "HOST)`. Simultaneous starts run two `pairmine` processes with different options "
        "into one new OUT.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pairmine-reliability-"))
    try:
        yield path
    finally:
        if not keep:
            subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True, check=False)
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kill-every", type=int, default=1,
                    help="try every k-th kill point (plus the last two) [1: all]")
    ap.add_argument("--races", type=int, default=12,
                    help="simultaneous match pairs (embed and export get fewer)")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    command = "python benchmarks/reliability.py " + " ".join(argv or sys.argv[1:])

    import logging

    logging.disable(logging.WARNING)  # the CLI's own log lines would only repeat its errors
    from tests.test_bad_input import build_world

    t0 = time.perf_counter()
    rows: list[Row] = []
    with workdir(args.keep) as work:
        print(f"work folder {work}", flush=True)
        w = build_world(work / "world")
        corpus, detail = corpus_row(work, w.spec)
        corpus.detail = detail
        rows.append(corpus)
        _progress(rows[-1])
        for r in kill_rows(w, work, args.kill_every):
            rows.append(r)
            _progress(r)
        rows.append(bad_input_row(w, work))
        _progress(rows[-1])
        for r in writer_rows(w, work, args.races):
            rows.append(r)
            _progress(r)
        try:
            rows.append(hostile_row(w, work))
        except Exception as exc:  # the campaign reports a crash of its last row, not dies
            rows.append(Row("hostile names: no crash, nothing outside OUT", 1, 0,
                            f"the row crashed: {type(exc).__name__}: {exc}"[:300]))
        _progress(rows[-1])
    seconds = time.perf_counter() - t0
    text = render(rows, command.strip(), seconds)
    print(text)
    if not args.no_doc:
        DOC.write_text(text, encoding="utf-8")
        print(f"written: {DOC}")
    return 0 if all(r.held == r.tried for r in rows) else 1


def _progress(row: Row) -> None:
    print(f"{row.name}: {row.held}/{row.tried} ({row.percent}) {row.detail}", flush=True)
    for f in row.failures[:5]:
        print(f"  FAILED: {f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
