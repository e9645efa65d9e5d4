"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium, for the status page
and Swagger UI tests and for the screenshots in docs/.

It reaches nothing but this machine: every other host name resolves to nothing (``--host-resolver-rules``), so a
page that still loaded a script from a CDN would show it. The API token goes as HTTP Basic on every request the
page makes (DevTools' extra headers: it never appears in a URL). Selenium is a test extra: imported here only.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CHROMEDRIVER", "CHROMIUM", "chromium", "console_errors"]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach
# (machine-recipes: many refused connections at every start).
_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost")


@contextmanager
def chromium(token: str = "", width: int = 1280, height: int = 900) -> Iterator:
    """A Selenium driver of a fresh headless Chromium (its own profile, removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pvc-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(10)
        if token:
            basic = base64.b64encode(f"browser:{token}".encode()).decode()
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """What the page logged as errors since the last call (failed loads, Content Security Policy refusals)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
