"""The report in a real browser: headless Chromium loads every inline image and shows the key numbers."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from cellflow.report import build_report
from tests.report.test_html import decoded_pngs, make_run_dir, parse_page

BROWSER = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                if (found := shutil.which(name))), None)

# Appended to a copy of the report: after load, write each image's natural size into the DOM.
_PROBE = """<pre id="probe"></pre><script>
window.addEventListener("load", function () {
  document.getElementById("probe").textContent = Array.from(document.images).map(
    function (img) { return "img " + img.naturalWidth + "x" + img.naturalHeight + " " + img.complete; }).join("\\n");
});
</script>"""


def _png_size(png: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk follows the 8-byte signature
    return width, height


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH")
def test_headless_chromium_loads_every_image(tmp_path):
    run_dir = make_run_dir(tmp_path)
    report = build_report(run_dir)
    expected = [_png_size(png) for png in decoded_pngs(parse_page(report))]
    wrapper = tmp_path / "probe.html"
    wrapper.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
         "--dump-dom", wrapper.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    seen = [(int(w), int(h), done) for w, h, done in re.findall(r"img (\d+)x(\d+) (\w+)", dom)]
    assert [(w, h) for w, h, _ in seen] == expected and all(done == "true" for *_, done in seen)
    assert all(w > 0 and h > 0 for w, h in expected)
    for number in ("20261121T101500Z-ab12cd", "0.613", "ValueError: &lt;bad&gt; field &amp; co"):
        assert number in dom, number
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(b"\x89PNG") and _png_size(shot.read_bytes()) == (1280, 2000)
