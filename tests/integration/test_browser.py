"""The live status page and Swagger UI in a real headless Chromium that can reach no other host."""

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from pvc_dev.browser import chromium, console_errors
from pvc_dev.cluster import NodeSpec, domain_xml
from tests.conftest import consumer

NODES = [NodeSpec("br1"), NodeSpec("br2"), NodeSpec("br3")]


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vms")


@pytest.fixture(scope="module")
def browser_cluster(shared_cluster, vm_root):
    roots = {"PVC_XML_VM_PATHS": str(vm_root)}  # VM directories the failure test can put a link into
    return shared_cluster("browser", NODES, worker_env=roots, api_env=roots)


@pytest.fixture(scope="module")
def browser(browser_cluster):
    with chromium(browser_cluster.token) as driver:
        yield driver


def wait(driver, what: str, check, timeout: float = 60):
    """Wait (bounded) until ``check(driver)`` is truthy; its value."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, f"the page to show {what}")


# The page redraws a section by replacing its elements, so each look is one script run in the page (an element
# found in one call may be gone by the next: Selenium's "stale element").
def text(driver, css: str) -> str | None:
    """The text of the first element matching ``css`` (None: there is none)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                                 css)


def count(driver, css: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length;", css)


def flush_bar(driver) -> int | None:
    """The percent the flush job's progress bar shows (None: no flush is running)."""
    return driver.execute_script("const b = document.querySelector('#jobs .job[data-kind=\"flush\"] .bar');"
                                 "return b ? Number(b.getAttribute('aria-valuenow')) : null;")


def test_status_page_shows_the_cluster_and_a_flush_bar_that_moves(browser_cluster, browser):
    """The page lists nodes and VMs from the events stream; during a flush its bar starts at 0 % with the VMs in
    flight named, then rises while the flush still runs (one VM held back), and the node ends flushed."""
    c = browser_cluster
    for i in range(4):
        assert c.define_vm(f"bw{i}", node="br1", start=i < 2)["state"] == "succeeded"
    # bw3 may only go to br3, the others only to br2: holding br3 back holds exactly bw3 in flight.
    for i in range(4):
        limit = ["br1", "br3"] if i == 3 else ["br1", "br2"]
        assert api(c, "put", f"/vms/bw{i}/meta", json={"node_limit": limit}).status_code == 200
    browser.get(f"{c.api_url}/api/v1/status")
    wait(browser, "live", lambda d: text(d, "#connection") == "live")
    wait(browser, "3 nodes and 4 VMs", lambda d: count(d, "#nodes tbody tr") == 3 and count(d, "#vms tbody tr") == 4)
    row = text(browser, '#vms tr[data-vm="bw0"]')
    assert "running" in row and "br1" in row

    consumer(c, "br2", False)
    consumer(c, "br3", False)
    try:
        job = api(c, "post", "/nodes/br1/flush").json()
        wait(browser, "the flush at 0 % with VMs in flight",
             lambda d: flush_bar(d) == 0 and "in flight: " in text(d, "#jobs"))
        consumer(c, "br2", True)
        # bw0-bw2 leave through br2; the flush still runs, waiting for bw3.
        wait(browser, "the flush bar at 75 %", lambda d: (flush_bar(d) or 0) >= 75)
        assert "in flight: bw3" in text(browser, "#jobs")
        assert api(c, "get", f"/jobs/{job['id']}").json()["state"] == "running"
    finally:
        consumer(c, "br2", True)
        consumer(c, "br3", True)
    wait(browser, "br1 flushed and no job running",
         lambda d: "flushed" in text(d, '#nodes tr[data-node="br1"]') and flush_bar(d) is None)
    assert console_errors(browser) == []
    assert c.wait_job(api(c, "post", "/nodes/br1/ready").json()["id"])["state"] == "succeeded"


def test_status_page_lists_a_failed_job_under_recent_failures(browser_cluster, browser, vm_root):
    """A job that fails (the node refuses the VM's disk: a link in its directory to a path outside it) shows up
    under recent failures with its reason, as text."""
    c = browser_cluster
    browser.get(f"{c.api_url}/api/v1/status")
    wait(browser, "live", lambda d: text(d, "#connection") == "live")
    (vm_root / "bwbad").mkdir()
    (vm_root / "bwbad" / "disk.img").symlink_to("/nonexistent/<b>nonsense")
    disk = (f"<devices><disk type='file'><source file='{vm_root}/bwbad/disk.img'/>"
            "<target dev='vda'/></disk></devices>")
    r = api(c, "post", "/vms", json={"xml": domain_xml("bwbad").replace("</os>", "</os>" + disk), "node": "br2"})
    job = c.wait_job(r.json()["id"])
    assert job["state"] == "failed", job
    item = wait(browser, "the failure", lambda d: text(d, f'#failures li[data-job="{job["id"]}"]'))
    assert "define bwbad" in item and "xml_not_allowed on br2" in item
    assert "<b>nonsense" in item  # the reason is shown as text, not interpreted as markup
    assert console_errors(browser) == []


def test_swagger_ui_renders_from_the_package_without_internet(browser_cluster, browser):
    """Swagger UI at /api/v1/docs renders the API's operations with no host but this one reachable, its files
    served by the API (pinned swagger-ui-bundle), and nothing fails to load."""
    c = browser_cluster
    console_errors(browser)  # forget what earlier pages logged
    browser.get(f"{c.api_url}/api/v1/docs")
    wait(browser, "the API's title", lambda d: "pvc-orchestrator API" in (text(d, ".swagger-ui .info .title") or ""))
    wait(browser, "the operations", lambda d: count(d, ".opblock") > 20)
    assert "/api/v1/events" in text(browser, ".swagger-ui")
    assert console_errors(browser) == []
    page = browser.page_source
    assert "cdn.jsdelivr" not in page and "/api/v1/docs/static/swagger-ui-bundle.js" in page
