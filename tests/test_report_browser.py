"""The HTML report in a real browser: Debian's headless Chromium, driven by Playwright.

The page, served over http on the loopback, must load with no console or page errors and no
failed requests; every image must load, every same-origin link must resolve, and a full-page
screenshot must not be blank. The checks are generic (no figure names) and each returns a list
of problems, so a second test can show they catch a broken page.

Playwright never downloads a browser here: it launches `/usr/bin/chromium`
(`apt-get install chromium`). Without it the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_plots_report import synthetic_scores
from wxens.verification.report import report as html_report
from wxens.verification.verify import score

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.timeout(180)


def _unavailable(message: str):
    """Skip, but fail under CI: there a missing browser is a broken set-up, not a choice."""
    message += ": `apt-get install chromium` and `pip install -e '.[dev]'`"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run the browser test)")
    pytest.skip(message)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The folder served: `report/` (a gridded verification's report) and `index-report/`."""
    return tmp_path_factory.mktemp("site")


@pytest.fixture(scope="module")
def report(site) -> Path:
    """The report folder written by the real report writer (`index.html` and its figures)."""
    return html_report(synthetic_scores(), site / "report", "nwp").parent


@pytest.fixture(scope="module")
def index_report(site) -> Path:
    """The report of an index hindcast (no grid: no maps, spectra, ACC or energy score)."""
    rng = np.random.default_rng(1)
    days = pd.date_range("2030-01-01", periods=400, freq="D")
    truth = xr.Dataset({"nino34": ("time", np.sin(np.arange(400) / 30))}, coords={"time": days})
    inits, leads = days[:40:4], pd.to_timedelta(np.arange(0, 30, 5), "D")
    valid = truth.nino34.sel(time=(inits.values[:, None] + leads.values).ravel()).values
    members = valid.reshape(10, 6, 1) + rng.normal(size=(10, 6, 8)) * 0.2
    forecast = xr.Dataset(
        {"nino34": (("init_time", "lead_time", "member"), members)},
        coords={"init_time": inits, "lead_time": leads},
    )
    scores = score(forecast, truth, {"persistence": "persistence"})
    return html_report(scores, site / "index-report", "persistence").parent


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # no access log in the test output
        pass


@pytest.fixture(scope="module")
def server(site, report, index_report) -> Iterator[str]:
    """The reports' folder served on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, launched by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


# --- checks, each returning a list of problems -----------------------------------------------


class PageWatch:
    """A page with its console errors, uncaught exceptions and failed requests recorded."""

    def __init__(self, browser, url: str) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("requestfailed", self._request_failed)
        self.page.on("response", self._response)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    def _console(self, message) -> None:
        if message.type != "error":
            return
        self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

    def _request_failed(self, request) -> None:
        self.failed_requests.append(f"{request.url}: {request.failure}")

    def _response(self, response) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.url}: HTTP {response.status}")

    def problems(self) -> list[str]:
        return [
            *(f"console error: {text}" for text in self.console_errors),
            *(f"page error: {text}" for text in self.page_errors),
            *(f"failed request: {text}" for text in self.failed_requests),
        ]


# Scrolls each image into view (so lazily loaded ones start) and waits for it to load or fail.
_IMAGES_JS = """async (timeout) => {
    const images = Array.from(document.images);
    for (const img of images) {
        img.scrollIntoView();
        if (!img.complete) {
            await new Promise((done) => {
                img.addEventListener("load", done, {once: true});
                img.addEventListener("error", done, {once: true});
                setTimeout(done, timeout);
            });
        }
    }
    window.scrollTo(0, 0);
    return images.map((img) => ({
        src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth,
    }));
}"""


def image_problems(page) -> list[str]:
    """Every `<img>` complete with a natural width, and at least one of them."""
    images = page.evaluate(_IMAGES_JS, 5_000)
    if not images:
        return ["no <img> on the page"]
    return [
        f"image not loaded: {image['src']} (complete={image['complete']}, width={image['width']})"
        for image in images
        if not (image["complete"] and image["width"] > 0)
    ]


_LINKS_JS = """() => Array.from(document.querySelectorAll("a[href]"), (a) => ({
    href: a.getAttribute("href"), url: a.href, sameOrigin: a.origin === location.origin,
}))"""


def link_problems(page) -> list[str]:
    """Every in-page `#anchor` names an element, every other same-origin link answers < 400."""
    problems = []
    for link in page.evaluate(_LINKS_JS):
        href = link["href"]
        if href.startswith("#"):
            target = href[1:]
            if target and not page.evaluate("(id) => !!document.getElementById(id)", target):
                problems.append(f"link to a missing anchor: {href}")
        elif link["sameOrigin"]:
            status = page.request.get(link["url"].split("#")[0]).status
            if status >= 400:
                problems.append(f"broken link: {href} (HTTP {status})")
    return problems


def blank_problems(png: Path, min_std: float = 0.02, min_changed: float = 0.01) -> list[str]:
    """A screenshot is blank when its pixel values hardly vary or when almost every pixel has
    the background colour (the top-left pixel's)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]  # floats in 0..1
    std = float(pixels.std())
    changed = float(np.any(np.abs(pixels - pixels[0, 0]) > 0.02, axis=-1).mean())
    problems = []
    if std <= min_std:
        problems.append(f"screenshot nearly uniform: pixel std {std:.4f} <= {min_std}")
    if changed <= min_changed:
        problems.append(f"screenshot blank: {changed:.2%} of pixels differ from the background")
    return problems


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["report", "index-report"])
def test_report_renders_in_chromium(browser, server, tmp_path, folder):
    watch = PageWatch(browser, f"{server}{folder}/index.html")
    try:
        assert watch.page.title(), "the page has no title"
        images = image_problems(watch.page)
        links = link_problems(watch.page)
        png = tmp_path / "report.png"
        watch.page.screenshot(path=png, full_page=True)
        problems = watch.problems()
    finally:
        watch.page.close()
    assert problems == []
    assert images == []
    assert links == []
    assert blank_problems(png) == []


def test_checks_catch_a_broken_page(browser, server, report, tmp_path):
    """A copy of the report with a missing image, a throwing script and a dead link fails each
    check; an empty page fails the blank check."""
    page = (report / "index.html").read_text(encoding="utf-8")
    broken = (
        '<img src="missing.png" alt="missing">'
        '<a href="missing.csv">missing</a><a href="#nowhere">nowhere</a>'
        '<script>throw new Error("boom")</script></body>'
    )
    (report / "broken.html").write_text(page.replace("</body>", broken), encoding="utf-8")
    (report / "empty.html").write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>empty</title>'
        '<link rel="icon" href="data:,"></head>'
        "<body></body></html>",
        encoding="utf-8",
    )
    try:
        watch = PageWatch(browser, server + "report/broken.html")
        try:
            images = image_problems(watch.page)
            links = link_problems(watch.page)
        finally:
            watch.page.close()
        empty = PageWatch(browser, server + "report/empty.html")
        try:
            no_images = image_problems(empty.page)
            png = tmp_path / "empty.png"
            empty.page.screenshot(path=png, full_page=True)
            empty_problems = empty.problems()
        finally:
            empty.page.close()
    finally:
        (report / "broken.html").unlink()
        (report / "empty.html").unlink()

    assert any("missing.png: HTTP 404" in text for text in watch.failed_requests)
    assert any("404" in text for text in watch.console_errors)
    assert any("boom" in text for text in watch.page_errors)
    assert len(images) == 1 and "missing.png" in images[0]  # the report's own images load
    assert sorted(links) == [
        "broken link: missing.csv (HTTP 404)",
        "link to a missing anchor: #nowhere",
    ]
    assert empty_problems == []
    assert no_images == ["no <img> on the page"]
    assert len(blank_problems(png)) == 2


_CAPTIONS_JS = """() => Array.from(document.querySelectorAll("figure"))
    .filter((figure) => !figure.hidden).map((figure) => figure.textContent.trim())"""


def test_the_selector_changes_the_figures_shown(browser, server):
    """The report opens on the first variable and the main region; choosing another variable
    shows its figures instead, and `all` shows every variable's."""
    watch = PageWatch(browser, f"{server}report/index.html")
    try:
        page = watch.page
        first = page.evaluate(_CAPTIONS_JS)
        variables = page.eval_on_selector_all(
            "select[data-facet=variable] option", "options => options.map(o => o.value)"
        )
        assert variables[0] == "all" and len(variables) >= 3
        chosen, other = variables[1], variables[2]
        assert page.input_value("select[data-facet=variable]") == chosen
        assert not any(f": {other}," in caption for caption in first)
        page.select_option("select[data-facet=variable]", other)
        second = page.evaluate(_CAPTIONS_JS)
        assert any(f": {other}," in caption for caption in second)
        assert not any(f": {chosen}," in caption for caption in second)
        page.select_option("select[data-facet=variable]", "all")
        every = page.evaluate(_CAPTIONS_JS)
        assert len(every) > len(first) and set(first) | set(second) <= set(every)
        headline = page.locator("table.headline td[title]").first.get_attribute("title")
        assert headline and "CRPS" in headline  # the hover value of the first skill cell
        problems = watch.problems()
    finally:
        watch.page.close()
    assert problems == []
