"""The HTML report in a real headless browser (Chromium from the distribution's packages).

Skipped, with the reason shown, where Chromium or Playwright is missing; CI installs both.
Set IMGCLF_SCREENSHOT_DIR to keep the screenshots (the documentation's come from here).
"""

import os
import shutil
from pathlib import Path

import pytest

from imgclf.cli import main

CHROMIUM = os.environ.get("IMGCLF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORTS = {"laptop": (1366, 900), "phone": (390, 844)}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["run", "--model", "simple-cnn", "--epochs", "3", "--corruption-stage", "on", "--corruption-examples",
                 "60", "--out", str(out), "--quiet"]) == 0
    return out / "report.html"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)")
@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_report_loads_every_figure_without_errors(report, viewport, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        width, height = VIEWPORTS[viewport]
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("requestfailed", lambda request: errors.append(f"failed to load {request.url}"))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => ({alt: e.alt, ok: e.complete && e.naturalWidth > 0,"
                   " w: e.getBoundingClientRect().width, h: e.getBoundingClientRect().height}))")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide_tables = page.evaluate("""() => [...document.querySelectorAll('table')].filter(t =>
            t.getBoundingClientRect().right > window.innerWidth + 1
            || t.parentElement.scrollWidth > t.parentElement.clientWidth + 1).map(t => t.rows[0].innerText)""")
        contents = page.evaluate("""() => [...document.querySelectorAll('nav.toc a')].map(a =>
            [a.textContent, document.getElementById(a.getAttribute('href').slice(1)) !== null])""")
        sections = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('h2')].map(h => {
            const found = []; let e = h.nextElementSibling;
            while (e && e.tagName !== 'H2') { found.push(...e.querySelectorAll('img')); e = e.nextElementSibling; }
            const readable = Math.min(360, window.innerWidth - 40);  // figures at least this wide on screen
            return [h.textContent, found.filter(i => i.complete && i.naturalWidth > 0
                                                 && i.getBoundingClientRect().width >= readable).length];
        }))""")
        shot = tmp_path / f"report-{viewport}.png"
        page.screenshot(path=str(shot), full_page=viewport == "phone")
        browser.close()
    assert len(images) >= 6, images
    for section in ("Clean test metrics", "Robustness under attack", "Robustness to common corruptions",
                    "Calibration", "What the model looks at"):  # each with its figures, loaded and readable
        assert sections.get(section, 0) >= 1, (section, sections)
    assert all(image["ok"] and image["w"] > 0 and image["h"] > 0 for image in images), images
    assert errors == []
    assert overflow <= 1, f"the page is {overflow}px wider than the {viewport} screen"
    assert wide_tables == [], f"tables wider than the {viewport} screen: {wide_tables}"
    assert len(contents) >= 6 and all(found for _, found in contents), contents  # every link of the contents lands
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("IMGCLF_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
