"""report.html of a real tiny run in headless Chromium (selenium + chromedriver): every image loads, the metrics
table shows the run's accuracy, no text from the data runs as HTML, and a screenshot is not blank.

Needs the Debian packages chromium and chromium-driver (CI: apt-get install -y chromium chromium-driver).
Skipped only when they cannot be found; set LORACLF_REQUIRE_BROWSER=1 to make that a failure instead."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest_report import real_run  # noqa: F401

from loraclf import report

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600"]


def _find(env: str, *names: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for n in names:
        found = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if found:
            return found
    return None


def _missing(what: str):
    msg = f"{what} not found (apt-get install -y chromium chromium-driver)"
    if os.environ.get("LORACLF_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " and LORACLF_REQUIRE_BROWSER=1")
    pytest.skip(msg)


@pytest.fixture
def browser(tmp_path):
    chromium = _find("CHROMIUM", "chromium", "chromium-browser", "google-chrome", "/usr/lib/chromium/chromium")
    driver_path = _find("CHROMEDRIVER", "chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
    if not chromium:
        _missing("Chromium")
    if not driver_path:
        _missing("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (PyPI) drives Chromium: pip install -e .[test]")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try the network
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def test_report_in_chromium(real_run, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    page = report.write(real_run)
    metrics = json.loads((real_run / "metrics.json").read_text())
    browser.get(Path(page).resolve().as_uri())  # an alert from unescaped text would make this raise

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
    pngs = list((real_run / "plots").glob("*.png"))
    assert len(images) == len(pngs) >= 5
    broken = [alt for alt, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"images that did not load: {broken}"

    table = browser.find_element(By.CSS_SELECTOR, "table.metrics").text
    assert f"{100 * metrics['test']['accuracy']:.2f}%" in table
    assert f"{100 * metrics['val']['accuracy']:.2f}%" in table
    assert browser.title.startswith("loraclf report")
    assert not browser.find_elements(By.CSS_SELECTOR, "td script, td b")  # texts from the data were escaped
    if "alert(" in browser.page_source:  # a hostile test text made it into the misclassifications: shown as text
        assert '<script>alert("x")</script>' in browser.find_element(By.TAG_NAME, "body").text

    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.width >= 1000 and rgb.height >= 1000
        assert any(lo != hi for lo, hi in rgb.getextrema()), "the screenshot is blank (all pixels the same)"
        colors = rgb.getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 50, "the screenshot is nearly blank"
    # scroll to the first plot and check that it is really painted (not just present in the DOM)
    browser.execute_script("document.images[0].scrollIntoView()")
    shot2 = tmp_path / "plot.png"
    browser.save_screenshot(str(shot2))
    with Image.open(shot2) as im:
        assert len(im.convert("L").getcolors(maxcolors=256)) > 10, "the plot is not painted"
