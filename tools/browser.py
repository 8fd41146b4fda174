"""Headless Chromium for the page tests and tools/screenshots.py, driven by Playwright.

    with browser.Chromium() as chromium:
        page = chromium.open("file:///.../gallery.html")
        ...
        assert chromium.console_errors == []

The browser is the system's Chromium (Debian: ``apt-get install chromium``; another path with
CHROMIUM=/path), never one Playwright downloads. The flags keep it off the network (no
update, sync or first-run traffic: the machines running the tests have none), and every
instance gets a fresh profile folder. Console messages of level error and uncaught page
errors are collected from every page opened.
"""

import os
import pathlib
import shutil
import tempfile

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # every wait of a page (load, selector, navigation) is bounded by this


class Chromium:
    """A headless Chromium (context manager); ``console_errors`` lists what pages reported."""

    def __init__(self, width: int = 1200, height: int = 900):
        if not pathlib.Path(CHROMIUM).is_file():
            raise FileNotFoundError(f"Chromium not found at {CHROMIUM}: install it "
                                    "(apt-get install chromium) or set CHROMIUM=/path/to/it")
        self.viewport = {"width": width, "height": height}
        self.console_errors: list[str] = []

    def __enter__(self):
        self._profile = tempfile.mkdtemp(prefix="tempret-chromium-")
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                self._profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport=self.viewport)
        except BaseException:
            self._playwright.stop()
            raise
        self._context.set_default_timeout(TIMEOUT_MS)
        return self

    def __exit__(self, *exc):
        try:
            self._context.close()
        finally:
            self._playwright.stop()
            shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, url: str):
        """A new page showing ``url`` (loaded); its console errors go to ``console_errors``."""
        page = self._context.new_page()
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{m.text} ({m.location.get('url', '')})"))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.goto(url, wait_until="load")
        return page


def broken_images(page) -> list[str]:
    """The alt texts (or sources) of the page's <img>s that did not decode (naturalWidth 0)."""
    return page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                         ".map(i => i.alt || i.src.slice(0, 60))")
