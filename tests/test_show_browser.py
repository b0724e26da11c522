"""The `show` report in a real headless browser (Debian's chromium): the page loads without
console errors, renders the expected number of pairs per page and view, and its images
decode (the page's own script writes naturalWidth checks into #pm-status); file names, labels
and store paths built to break the page show literally and run nothing. Skipped when no
browser is installed (CI installs it and fails on the skip). A screenshot is kept beside the
report and its path printed."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_quality import image_store, page_data

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

    # the page's filter (set from the hash here; the per-class table's buttons set it too):
    # only the pairs of the top view with a "green" image, on one page
    data = page_data(result.index)
    green = [i for i in data["views"]["top"]["pairs"]
             if "green" in (data["images"][str(data["pairs"][i][0])]["label"],
                            data["images"][str(data["pairs"][i][1])]["label"])]
    dom, status, errors = dom_of(url + "#view=top&size=50&filter=green", profile)
    assert errors == [] and status["filter"] == "green"
    assert 0 < pair_cards(dom) == int(status["pairs"]) == len(green) < 23

    shot = tmp_path / "report" / "screenshot.png"
    run = browse(url, profile, "--hide-scrollbars", "--window-size=1280,1400",
                 f"--screenshot={shot}")
    assert run.returncode == 0 and console_messages(run.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_inline_report_and_missing_images(tmp_path: Path) -> None:
    emb, pairs = image_store(tmp_path, n=12)
    from pairmine import stores

    store = stores.open_pairs(pairs)
    gone = int(store.table.column("a")[0].as_py())
    Path(stores.open_embeddings(emb).meta.column("source")[gone].as_py()).unlink()
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


# ---------------------------------------------------------------------------------------------
# hostile names

# A name's script, if it ever ran, would leave a mark the DOM dump shows: the title changed
# or the root element flagged.
PWN = "document.documentElement.dataset.pwned=1"
# image files, as paths under the image folder: the first part is the class folder, so it
# also becomes a label. A file name cannot hold "/", so each "</script>" spans two folders.
HOSTILE_FILES = [
    "<!--<script>/a.png",  # the one that froze the page: "<!--" then "<script" in the JSON
    f"</script><script>{PWN}<" + "/script>.png",
    "<svg onload=document.title='pwned'>/b.png",
    "plain/<!--.png",
    "plain/-->.png",
    f'plain/"><img src=x onerror="{PWN}">.png',
    f"plain/' onmouseover='{PWN}' x='.png",
    "plain/&amp;&lt;&#x3c;&gt.png",  # entities, written out: must stay entities as text
    "plain/a\u2028b\u2029c.png",
    "plain/\\u003c!-- \\x3c \\\\ \\.png",  # backslash escapes as literal text
    "plain/back\\slash 'single' \"double\" `tick`.png",
    "plain/${document.title='pwned'} {{7*7}}.png",
    "plain/😀🐈\u200d⬛ ünïcødé.png",
    "plain/line\nbreak\ttab.png",
    "plain/long " + "é" * 120 + ".png",  # 249 bytes: near the 255-byte limit of a name
]
# labels from a file, also user text: each key gets one of these
HOSTILE_LABELS = ["<!--<script>", "</script><script>document.title='pwned'</script>",
                  '"><b>bold</b>', "&amp;", "a\u2028b", "x\\y\"z'"]


class Dom(HTMLParser):
    """The serialised DOM read back: every start tag with its attributes, and the text of
    every element with the classes of the element and its ancestors (entities decoded, as the
    DOM holds them)."""

    VOID = frozenset({"meta", "img", "br", "hr", "input", "link", "source", "wbr", "area",
                      "base", "col", "embed", "param", "track"})

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.elements: list[tuple[str, frozenset[str], str]] = []  # tag, classes, text
        self._open: list[tuple[str, frozenset[str], list[str]]] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            inherited = self._open[-1][1] if self._open else frozenset()
            own = frozenset((dict(attrs).get("class") or "").split())
            self._open.append((tag, inherited | own, []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, classes, parts = self._open.pop()
            text = "".join(parts)
            self.elements.append((name, classes, text))
            if self._open:
                self._open[-1][2].append(text)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)

    def text(self, tag: str, within: str | None = None) -> list[str]:
        """Texts of the ``tag`` elements, in document order; ``within``: under that class."""
        return [text for name, classes, text in self.elements
                if name == tag and (within is None or within in classes)]

    def attrs(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def test_hostile_names_render_literally_and_run_nothing(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import write_image

    import pairmine

    images = tmp_path / "images"
    for i, name in enumerate(HOSTILE_FILES):
        write_image(images.joinpath(*name.split("/")), seed=i, size=(20, 20), fmt="PNG")
    emb = tmp_path / "emb <svg onload=document.title='pwned'>"
    pairs = tmp_path / "pairs <!--<script> \"'&amp;"
    pairmine.embed(images, emb, encoder="toy:0", workers=0, device="cpu")
    keys = pairmine.open_embeddings(emb).meta.column("key").to_pylist()
    assert sorted(keys) == sorted(HOSTILE_FILES)
    label_of = {k: HOSTILE_LABELS[i % len(HOSTILE_LABELS)] for i, k in enumerate(keys)}
    labels = tmp_path / "labels <!--<script>.parquet"
    pq.write_table(pa.table({"key": list(label_of), "label": list(label_of.values())}), labels)
    pairmine.match(emb, pairs, min_score=-1.0, max_score=1.0, device="cpu")  # every pair
    n_pairs = len(keys) * (len(keys) - 1) // 2
    # one image gone since embed: its name lands in the page's warning too
    gone = f'plain/"><img src=x onerror="{PWN}">.png'
    images.joinpath(*gone.split("/")).unlink()
    result = show(pairs, tmp_path / "report", per_view=1000, page_size=1000, labels=labels)
    assert result.shown == n_pairs and result.missing == [gone]

    markup, status, errors = dom_of(result.index.resolve().as_uri(), tmp_path / "profile")
    assert errors == []
    assert status["state"] == "ready" and int(status["pairs"]) == n_pairs == pair_cards(markup)
    in_pairs = len(keys) - 1  # pairs that hold the missing image: one with every other
    assert int(status["missing"]) == in_pairs and status["failed"] == "0"
    assert int(status["loaded"]) == 2 * n_pairs - in_pairs
    dom = Dom(markup)
    # every name shows literally: the caption's text, the image's alt and title, the warning
    assert set(dom.text("figcaption", within="pair")) == {f"{label_of[k]} {k}" for k in keys}
    thumbs = [a for a in dom.attrs("img") if "alt" in a]
    assert len(thumbs) == 2 * n_pairs - in_pairs
    assert {a["alt"] for a in thumbs} == {a["title"] for a in thumbs} == set(keys) - {gone}
    assert f"(e.g. {gone})" in dom.text("p", within="warning")[0]
    # the paths and the label file's name, in the header and the summary
    # (the first <title> is the page's; the histogram's bars have their own)
    assert dom.text("title")[0] == dom.text("h1")[0] == \
        f"{tmp_path.name}/{pairs.name}: {n_pairs} pairs in [-1, 1]"
    assert dom.text("p", within="sub") == [f"{pairs.resolve()} · embeddings {emb.resolve()}"]
    assert str(labels) in dom.text("td")
    # and nothing ran: no mark, no element or handler a name brought in
    assert "data-pwned" not in dom.attrs("html")[0]
    assert not [(t, a) for t, a in dom.tags if any(k.startswith("on") for k in a)]
    assert "b" not in [t for t, _ in dom.tags]  # the '"><b>bold</b>' label stayed text
    assert [t for t, _ in dom.tags].count("script") == 2  # the JSON block and the page's own
    assert not [a for a in dom.attrs("img") if a.get("src") == "x"]
