"""The `show` page's three escaping functions, one per context a user's string lands in:
element text, a quoted attribute, the inline JSON block. (tests/test_show_browser.py loads a
page full of hostile names in a real browser.)"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pairmine.quality.page import html_attr, html_text, script_json
from pairmine.quality.report import render_page

HOSTILE = ["<!--<script>", "</script><script>alert(1)</script>", '"><img src=x onerror=x()>',
           "' onmouseover='x()", "&amp;", "a\u2028b\u2029c", "😀", "back\\slash", "-->",
           "</SCRIPT >", "<!--", "]]>", "\x00", "x" * 300]
# the JSON block must never hold anything the HTML tokenizer reacts to inside <script>
SCRIPT_UNSAFE = re.compile(r"[<>&\u2028\u2029]|</script|<!--", re.IGNORECASE)

deterministic = settings(derandomize=True, max_examples=150, deadline=None)


def test_html_text_escapes_markup_and_keeps_quotes() -> None:
    assert html_text("<!--<script>&\"'") == "&lt;!--&lt;script&gt;&amp;\"'"
    assert html_text("&amp;") == "&amp;amp;"  # an entity written out stays text
    assert html_text("a\u2028b 😀") == "a\u2028b 😀"  # harmless in text: left as it is


def test_html_attr_also_escapes_both_quotes() -> None:
    assert html_attr('"><img src=x onerror=x()>') == "&quot;&gt;&lt;img src=x onerror=x()&gt;"
    assert html_attr("' x='y") == "&#x27; x=&#x27;y"


def test_lone_surrogates_become_the_replacement_character() -> None:
    name = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # os.fsdecode of Latin-1 bytes
    assert html_text(name) == html_attr(name) == "caf\ufffd.jpg"
    html_text(name).encode("utf-8")  # the page can be written
    assert json.loads(script_json({"k": name})) == {"k": name}  # JSON keeps them, escaped


@deterministic
@given(st.text())
def test_html_text_round_trips_and_opens_nothing(value: str) -> None:
    out = html_text(value)
    assert "<" not in out and ">" not in out
    assert html.unescape(out) == re.sub("[\ud800-\udfff]", "\ufffd", value)


@deterministic
@given(st.text())
def test_html_attr_round_trips_and_cannot_close_the_attribute(value: str) -> None:
    out = html_attr(value)
    assert not set(out) & set("<>\"'")
    assert html.unescape(out) == re.sub("[\ud800-\udfff]", "\ufffd", value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=10)


@deterministic
@given(json_values)
def test_script_json_round_trips_and_is_inert(value: Any) -> None:
    out = script_json(value)
    assert json.loads(out) == value
    assert out.isascii() and not SCRIPT_UNSAFE.search(out)


def test_script_json_of_hostile_names() -> None:
    data = {name: [name, {"key": name}] for name in HOSTILE}
    out = script_json(data)
    assert json.loads(out) == data and not SCRIPT_UNSAFE.search(out)
    assert "\\u003c!--\\u003cscript\\u003e" in out  # the very sequence that froze the page


class Parts(HTMLParser):
    """The page's <title> text, its element ids, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.scripts: list[str] = []
        self.ids: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [v for k, v in attrs if k == "id" and v]
        self._in = tag
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "script":
            self.scripts[-1] += data


def test_a_page_of_hostile_names_parses_back_to_its_parts() -> None:
    data = {"pageSize": 10, "pairs": [], "views": {}, "images": {
        str(i): {"key": name, "label": name, "src": None} for i, name in enumerate(HOSTILE)}}
    title = "pairmine pairs: " + "".join(HOSTILE)
    page = render_page(title=title, subtitle="".join(HOSTILE), summary="", histogram="",
                       warning="", data=data, thumb_px=64)
    parts = Parts()
    parts.feed(page)
    parts.close()
    assert parts.title == title
    assert len(parts.scripts) == 2 and json.loads(parts.scripts[0]) == data
    # nothing from a name became an element: the ids are the template's, once each
    assert len(parts.ids) == len(set(parts.ids)) and "pm-status" in parts.ids
    assert page.count("<script") == 2 and page.count("<img") == 0
