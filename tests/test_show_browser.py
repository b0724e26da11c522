"""The `show` report in a real headless browser (Debian's chromium): the page loads without
console errors, renders the expected number of pairs per page and view, and its images
decode (the page's own script writes naturalWidth checks into #pm-status). Skipped when no
browser is installed. A screenshot is kept beside the report and its path printed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_quality import image_store

from pairmine.quality.report import show

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless chromium installed")


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """One headless run, isolated profile, nothing fetched from the network; the virtual time
    budget lets the page's script and image loads finish before the DOM is dumped."""
    assert BROWSER is not None
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """Chromium logs every console message and uncaught exception as a CONSOLE line."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def dom_of(url: str, profile: Path) -> tuple[str, dict[str, str], list[str]]:
    run = browse(url, profile, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    match = re.search(r'<div id="pm-status"([^>]*)>', run.stdout)
    assert match, run.stdout[-2000:]
    status = dict(re.findall(r'data-([a-z]+)="([^"]*)"', match.group(1)))
    return run.stdout, status, console_messages(run.stderr)


def pair_cards(dom: str) -> int:
    return len(re.findall(r'<div class="pair[ "]', dom))


def test_report_renders_pages_views_and_images(tmp_path: Path) -> None:
    _, pairs = image_store(tmp_path, n=30)
    result = show(pairs, tmp_path / "report", per_view=23, page_size=10)
    url = result.index.resolve().as_uri()
    profile = tmp_path / "profile"

    dom, status, errors = dom_of(url, profile)
    assert errors == []
    assert status["state"] == "ready" and status["view"] == "top" and status["page"] == "1"
    assert pair_cards(dom) == int(status["pairs"]) == 10
    assert int(status["loaded"]) == 20 and status["failed"] == "0" and status["missing"] == "0"
    assert dom.count('class="pair mismatch"') + dom.count('class="pair match"') == 10

    # the last page of another view holds the remainder: 23 = 10 + 10 + 3
    dom, status, errors = dom_of(url + "#view=lowest&page=3", profile)
    assert errors == []
    assert (status["view"], status["page"], status["pairs"]) == ("lowest", "3", "3")
    assert pair_cards(dom) == 3 and int(status["loaded"]) == 6
    dom, status, _ = dom_of(url + "#view=mismatch&size=50", profile)
    assert pair_cards(dom) == int(status["pairs"]) == result.views["mismatch"]
    assert dom.count('class="pair mismatch"') == result.views["mismatch"]

    shot = tmp_path / "report" / "screenshot.png"
    run = browse(url, profile, "--hide-scrollbars", "--window-size=1280,1400",
                 f"--screenshot={shot}")
    assert run.returncode == 0 and console_messages(run.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_inline_report_and_missing_images(tmp_path: Path) -> None:
    emb, pairs = image_store(tmp_path, n=12)
    from pairmine import artefacts as art

    store = art.open_pairs(pairs)
    gone = int(store.table.column("a")[0].as_py())
    Path(art.open_embeddings(emb).meta.column("source")[gone].as_py()).unlink()
    result = show(pairs, tmp_path / "report", per_view=1000, page_size=1000, inline=True)
    dom, status, errors = dom_of(result.index.resolve().as_uri(), tmp_path / "profile")
    assert errors == []
    shown = int(status["pairs"])
    assert shown == result.views["top"] == pair_cards(dom)
    missing = int(status["missing"])
    assert missing >= 1 and status["failed"] == "0"
    assert int(status["loaded"]) + missing == 2 * shown
    assert "could not be read" in dom


def test_the_console_check_catches_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<div id="pm-status" data-state="x"></div>'
                    "<script>console.error('bad'); notDefined();</script>")
    _, _, errors = dom_of(page.resolve().as_uri(), tmp_path / "profile")
    assert any("notDefined" in e for e in errors) and any("bad" in e for e in errors)
