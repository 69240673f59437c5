"""A real headless browser for the dashboard's tests: Debian's `chromium` driven by Selenium through
Debian's `chromium-driver` (`make system-deps` installs both). `find_chromium()` says where they are,
or why not (the test then skips with that reason); `headless_chromium()` starts one and quits it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
DRIVER_DIRS = ("/usr/bin", "/usr/lib/chromium", "/usr/lib/chromium-browser")


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in DRIVER_DIRS if os.access(Path(d) / name, os.X_OK)), None)
        if found:
            return found
    return None


def find_chromium() -> tuple[str, str] | str:
    """(browser, driver) paths, or a sentence saying what is missing."""
    browser, driver = _which(BROWSERS), _which(DRIVERS)
    if browser is None:
        return "no chromium on PATH: `make system-deps` (apt-get install chromium chromium-driver) installs it"
    if driver is None:
        return "no chromedriver on PATH: `make system-deps` (apt-get install chromium-driver) installs it"
    return browser, driver


@contextlib.contextmanager
def headless_chromium(browser: str, driver: str, width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium under Selenium (no download: Debian's driver is named), quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    with tempfile.TemporaryDirectory(prefix="imagend-chromium-") as profile:
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--disable-extensions", "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                         f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(argument)
        session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
        try:
            session.set_page_load_timeout(30)
            yield session
        finally:
            session.quit()
