"""`edgeuq view`'s file rendered by Debian's headless Chromium (chromedriver + selenium):
the embedded log drives the same page as the live stream, with nothing fetched.
Missing chromium/chromedriver/selenium: skipped loudly, FAILED under CI=true."""
import sys
from pathlib import Path

from edgeuq.cli import main
from test_view import _log, _write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "tests"))
from serve_helpers import browser_or_skip, headless_chromium  # noqa: E402


def test_log_view_renders_in_chromium(tmp_path):
    chromium, driver = browser_or_skip("log-view")

    recs = _log(80)
    recs[-2]["abstain"], recs[-2]["reasons"] = False, []            # the last decision answers
    out = tmp_path / "run.html"
    assert main(["view", str(_write(tmp_path / "run.jsonl", recs)), "-o", str(out)]) == 0
    drv = headless_chromium(chromium, driver, "900,1000")
    try:
        drv.get(out.as_uri())
        txt = lambda i: drv.execute_script(f"return document.getElementById('{i}').textContent")  # noqa: E731
        dec = [r for r in recs if r["type"] == "decision"]
        assert drv.execute_script("return window.edgeuq.decisions") == len(dec)
        assert txt("cls") == dec[-1]["class"]
        assert txt("nwin") == str(len(dec))
        assert "flat signal" in txt("events") and "declared: inner_race" in txt("events")
        assert "source stalled" in txt("events")
        assert txt("mode") == "log file" and txt("conn") == "saved log"
        assert txt("p99") == "2.0 ms" and txt("rtf") == "50.0×"
        assert drv.execute_script("return window.edgeuq.draws") >= 1
        assert [e["level"] for e in drv.get_log("browser") if e["level"] == "SEVERE"] == []
        drv.save_screenshot(str(tmp_path / "log-view.png"))
    finally:
        drv.quit()
