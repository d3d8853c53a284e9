"""The report's document model: Markdown and a self-contained HTML page; and the Chromium check
the report's rendering test relies on."""

import base64
import re

from cp.doc import Doc
from tests.chromium import coloured_fraction, needs_chromium, png_pixels, render


def test_doc_renders_markdown_and_a_self_contained_html_page(tmp_path):
    fig = png_pixels(tmp_path, "red")
    doc = Doc("T `x`")
    doc.p("**bold** <script>alert(1)</script> and `code`")
    doc.fig(fig, "a red square")
    doc.table(["a", "b|c"], [["1", "x|y"]])
    md = doc.markdown(tmp_path)
    assert "![a red square](red.png)" in md and "| 1 | x/y |" in md
    page = doc.html()
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # text is escaped
    (data,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(data) == fig.read_bytes()


def test_the_chromium_check_sees_console_errors_and_missing_figures(tmp_path):
    needs_chromium()
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>text only</p><script>console.error('boom')</script>"
                   "</body></html>")
    rc, pixels, console = render(bad, tmp_path, size=(800, 600))
    assert rc == 0 and any("boom" in line for line in console)
    assert coloured_fraction(pixels) < 0.001  # no figure, no colour
