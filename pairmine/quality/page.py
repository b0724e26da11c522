"""The static parts of the ``show`` report: one HTML page, its stylesheet and its script.

No network resources: everything is inline, thumbnails are files beside the page (or data
URIs). The script renders one page of pairs at a time from a JSON block, and writes what it
rendered into ``#pm-status`` (pairs shown, images loaded or failed) so that a headless browser
test can read the outcome from the DOM.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

# Every user-controlled string (image keys, source paths, labels, the encoder spec, store
# paths) reaches the page through exactly one of the three functions below, chosen by where it
# lands. A file name is data, never markup or script, whatever it holds.

# Python strings from os.fsdecode carry undecodable bytes as lone surrogates; UTF-8 cannot
# encode them, so the page shows U+FFFD there (as the browser does for the JSON's \udcXX)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# characters that mean something to the HTML tokenizer inside <script> (`</script`, `<!--`,
# `<script` switch its state) or to an HTML parser that reads the JSON as text: written as
# JSON escapes, which JSON.parse turns back into the very same characters
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                  "\u2028": "\\u2028", "\u2029": "\\u2029"}


def html_text(value: str) -> str:
    """``value`` as the text content of an element (``<td>``, ``<p>``, also ``<title>``):
    ``&``, ``<``, ``>`` become entities, so nothing in it can open a tag or a comment."""
    return html.escape(_LONE_SURROGATE.sub("\ufffd", value), quote=False)


def html_attr(value: str) -> str:
    """``value`` inside a double- or single-quoted attribute: ``html_text`` plus both quotes,
    so it cannot end the attribute and add one of its own (``" onerror=...``)."""
    return html.escape(_LONE_SURROGATE.sub("\ufffd", value), quote=True)


def script_json(data: Any) -> str:
    """``data`` as JSON for ``<script type="application/json">``, read back with
    ``JSON.parse(el.textContent)``.

    The output holds no ``<``, ``>`` or ``&`` at all (JSON only has them inside strings, where
    ``\\u003c`` means the same), so no key can end the element (``</script>``) or put the
    tokenizer into the escaped states that swallow the real end tag (``<!--<script>``).
    Non-ASCII text, U+2028/U+2029 and lone surrogates come out as ``\\uXXXX`` escapes too.
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_UNSAFE[m.group(0)], text)


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@@TITLE@@</title>
<style>@@CSS@@</style>
</head>
<body>
<header>
<h1>@@TITLE@@</h1>
<p class="sub">@@SUBTITLE@@</p>
</header>
<main>
<section class="top">
<div class="summary">@@SUMMARY@@</div>
<figure class="hist">@@HISTOGRAM@@</figure>
</section>
@@WARNING@@
<nav id="pm-views" aria-label="views"></nav>
<div class="pager" id="pm-pager">
<button type="button" id="pm-prev" aria-label="previous page">&larr; prev</button>
<span id="pm-page"></span>
<button type="button" id="pm-next" aria-label="next page">next &rarr;</button>
<label>per page <select id="pm-size"></select></label>
<label>filter <input id="pm-filter" type="search" placeholder="class or key"
 aria-label="show only pairs with an image of this class, or whose key contains this"></label>
</div>
<p class="viewnote" id="pm-viewnote"></p>
<div id="pm-pairs" class="pairs"></div>
<div id="pm-status" data-state="loading">loading…</div>
</main>
<noscript><p>This report needs JavaScript to list the pairs.</p></noscript>
<script id="pm-data" type="application/json">@@DATA@@</script>
<script>@@JS@@</script>
</body>
</html>
"""

CSS = """
:root { --thumb: @@THUMB@@px; --bad: #c62828; --ok: #2e7d32; --ink: #1d232a;
        --muted: #5f6b76; --line: #d9dee3; --band: #1565c0; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #f6f7f9; }
header { padding: 16px 24px 4px; }
h1 { font-size: 20px; margin: 0; }
.sub { color: var(--muted); margin: 4px 0 0; word-break: break-all; }
main { padding: 8px 24px 32px; }
section.top { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
table.summary { border-collapse: collapse; background: #fff; border: 1px solid var(--line); }
table.summary th { text-align: left; font-weight: 600; padding: 3px 10px; color: var(--muted); }
table.summary td { padding: 3px 10px; font-variant-numeric: tabular-nums; }
figure.hist { margin: 0; background: #fff; border: 1px solid var(--line); padding: 8px; }
figure.hist figcaption { color: var(--muted); font-size: 12px; max-width: 560px; }
table.classes caption { text-align: left; color: var(--muted); font-size: 12px;
                        padding: 2px 10px; }
table.classes td { text-align: right; }
table.classes button { font: inherit; border: 0; background: none; color: var(--band);
                       cursor: pointer; padding: 0; text-decoration: underline; }
#pm-filter { font: inherit; padding: 3px 6px; width: 14em; }
.warning { background: #fff3e0; border: 1px solid #ffb74d; padding: 8px 12px; margin: 12px 0; }
nav#pm-views { margin: 16px 0 8px; display: flex; gap: 6px; flex-wrap: wrap; }
nav#pm-views button { border: 1px solid var(--line); background: #fff; padding: 6px 12px;
                      border-radius: 16px; cursor: pointer; font: inherit; }
nav#pm-views button.active { background: var(--band); color: #fff; border-color: var(--band); }
.pager { display: flex; gap: 10px; align-items: center; margin: 8px 0; }
.pager button { font: inherit; padding: 4px 10px; }
.viewnote { color: var(--muted); margin: 4px 0 12px; }
.pairs { display: grid; gap: 10px;
         grid-template-columns: repeat(auto-fill, minmax(calc(2 * var(--thumb) + 60px), 1fr)); }
.pair { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.pair.mismatch { border: 2px solid var(--bad); }
.pair .head { display: flex; justify-content: space-between; font-size: 12px;
              color: var(--muted); margin-bottom: 6px; }
.pair .score { font-weight: 700; color: var(--ink); font-variant-numeric: tabular-nums; }
.pair .flag { font-weight: 700; }
.pair.mismatch .flag { color: var(--bad); }
.pair.match .flag { color: var(--ok); }
.pair .imgs { display: flex; gap: 8px; }
.pair figure { margin: 0; flex: 1 1 0; min-width: 0; }
.pair img, .pair .missing { width: 100%; max-width: var(--thumb); aspect-ratio: 1 / 1;
                            object-fit: contain; background: #eceff1; display: block;
                            image-rendering: pixelated; }
.pair .missing { display: flex; align-items: center; justify-content: center;
                 color: var(--bad); font-size: 12px; }
.pair figcaption { font-size: 11px; color: var(--muted); overflow-wrap: anywhere; }
.pair figcaption .label { color: var(--ink); font-weight: 600; }
#pm-status { margin-top: 16px; color: var(--muted); font-size: 12px; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("pm-data").textContent);
  var names = Object.keys(data.views);
  var state = { view: names[0], page: 0, size: data.pageSize, filter: "" };

  function readHash() {
    var h = window.location.hash.replace(/^#/, "");
    h.split("&").forEach(function (part) {
      var kv = part.split("=");
      // own keys only: "#view=__proto__" must not pick Object.prototype as a view
      if (kv[0] === "view" && Object.prototype.hasOwnProperty.call(data.views, kv[1])) {
        state.view = kv[1];
      }
      if (kv[0] === "page" && /^[0-9]+$/.test(kv[1])) { state.page = Math.max(0, kv[1] - 1); }
      if (kv[0] === "size" && /^[0-9]+$/.test(kv[1]) && +kv[1] > 0) { state.size = +kv[1]; }
      if (kv[0] === "filter" && kv[1] !== undefined) {
        try { state.filter = decodeURIComponent(kv[1]); } catch (e) { state.filter = ""; }
      }
    });
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function figure(id) {
    var info = data.images[String(id)];
    var fig = el("figure");
    if (info.src) {
      var img = el("img");
      img.alt = info.key;
      img.title = info.key;
      img.src = info.src;
      fig.appendChild(img);
    } else {
      fig.appendChild(el("div", "missing", "missing"));
    }
    var cap = el("figcaption");
    if (info.label !== null) { cap.appendChild(el("span", "label", info.label + " ")); }
    cap.appendChild(document.createTextNode(info.key));
    fig.appendChild(cap);
    return fig;
  }

  function card(i) {
    var p = data.pairs[i];  // [a, b, score, same: 1 | 0 | null]
    var cls = p[3] === 0 ? "pair mismatch" : p[3] === 1 ? "pair match" : "pair";
    var div = el("div", cls);
    div.setAttribute("data-a", p[0]);
    div.setAttribute("data-b", p[1]);
    var head = el("div", "head");
    head.appendChild(el("span", "score", p[2].toFixed(5)));
    head.appendChild(el("span", "flag", p[3] === 0 ? "✗ labels differ" :
                                        p[3] === 1 ? "✓ same label" : ""));
    head.appendChild(el("span", "ids", "#" + p[0] + " · #" + p[1]));
    div.appendChild(head);
    var imgs = el("div", "imgs");
    imgs.appendChild(figure(p[0]));
    imgs.appendChild(figure(p[1]));
    div.appendChild(imgs);
    return div;
  }

  function status(extra) {
    var node = document.getElementById("pm-status");
    var shown = document.querySelectorAll("#pm-pairs .pair").length;
    node.setAttribute("data-view", state.view);
    node.setAttribute("data-page", String(state.page + 1));
    node.setAttribute("data-pairs", String(shown));
    Object.keys(extra).forEach(function (k) { node.setAttribute("data-" + k, String(extra[k])); });
    node.textContent = shown + " pairs on this page; images loaded " + extra.loaded +
      ", failed " + extra.failed + ", missing " + extra.missing + " (" + extra.state + ")";
  }

  function watchImages() {
    var imgs = Array.prototype.slice.call(document.querySelectorAll("#pm-pairs img"));
    var missing = document.querySelectorAll("#pm-pairs .missing").length;
    var settled = 0;
    function check() {
      var loaded = 0, failed = 0;
      imgs.forEach(function (img) {
        if (img.complete && img.naturalWidth > 0) { loaded += 1; }
        else if (img.complete) { failed += 1; }
      });
      var done = settled >= imgs.length;
      status({ loaded: loaded, failed: failed, missing: missing,
               state: done ? "ready" : "loading" });
    }
    imgs.forEach(function (img) {
      if (img.complete) { settled += 1; return; }
      var once = function () { settled += 1; check(); };
      img.addEventListener("load", once, { once: true });
      img.addEventListener("error", once, { once: true });
    });
    check();
  }

  // a pair passes the filter when one of its images has the class (label, any case) or a
  // key that contains the text
  function passes(i) {
    var f = state.filter.trim().toLowerCase();
    if (!f) { return true; }
    var p = data.pairs[i];
    return [p[0], p[1]].some(function (id) {
      var info = data.images[String(id)];
      return (info.label !== null && String(info.label).toLowerCase() === f) ||
        info.key.toLowerCase().indexOf(f) >= 0;
    });
  }

  function render() {
    var view = data.views[state.view];
    var shown = view.pairs.filter(passes);
    var pages = Math.max(1, Math.ceil(shown.length / state.size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var list = document.getElementById("pm-pairs");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    var start = state.page * state.size;
    shown.slice(start, start + state.size).forEach(function (i) {
      list.appendChild(card(i));
    });
    document.getElementById("pm-page").textContent = "page " + (state.page + 1) + " of " +
      pages + " · " + (state.filter.trim() ? shown.length + " of " : "") +
      view.pairs.length + " pairs in this view";
    document.getElementById("pm-status").setAttribute("data-filter", state.filter);
    document.getElementById("pm-prev").disabled = state.page === 0;
    document.getElementById("pm-next").disabled = state.page >= pages - 1;
    document.getElementById("pm-viewnote").textContent = view.note;
    Array.prototype.forEach.call(document.querySelectorAll("#pm-views button"), function (b) {
      b.className = b.getAttribute("data-view") === state.view ? "active" : "";
    });
    watchImages();
  }

  function go(page) { state.page = page; render(); window.scrollTo(0, 0); }

  var nav = document.getElementById("pm-views");
  names.forEach(function (name) {
    var b = el("button", "", data.views[name].title + " (" + data.views[name].pairs.length + ")");
    b.type = "button";
    b.setAttribute("data-view", name);
    b.addEventListener("click", function () { state.view = name; go(0); });
    nav.appendChild(b);
  });
  var size = document.getElementById("pm-size");
  [10, 25, 50, 100, 200].concat([data.pageSize]).filter(function (v, i, all) {
    return all.indexOf(v) === i;
  }).sort(function (x, y) { return x - y; }).forEach(function (v) {
    var o = el("option", "", String(v));
    o.value = String(v);
    size.appendChild(o);
  });
  size.addEventListener("change", function () { state.size = +size.value; go(0); });
  var filter = document.getElementById("pm-filter");
  filter.addEventListener("input", function () { state.filter = filter.value; go(0); });
  Array.prototype.forEach.call(document.querySelectorAll("button.pm-class"), function (b) {
    b.addEventListener("click", function () {
      state.filter = b.getAttribute("data-class");
      filter.value = state.filter;
      go(0);
    });
  });
  document.getElementById("pm-prev").addEventListener("click", function () {
    go(state.page - 1);
  });
  document.getElementById("pm-next").addEventListener("click", function () {
    go(state.page + 1);
  });
  document.addEventListener("keydown", function (e) {
    if (e.target === filter) { return; }  // arrows move the caret there, not the page
    if (e.key === "ArrowLeft") { go(state.page - 1); }
    if (e.key === "ArrowRight") { go(state.page + 1); }
  });
  readHash();
  size.value = String(state.size);
  filter.value = state.filter;
  render();
})();
"""
