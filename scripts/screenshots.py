"""Make docs/img/status-page.png and docs/img/swagger-ui.png: a 3-node test-driver cluster with a flush under way
(one target held back, so the bar stands part-way with a VM in flight) seen in headless Chromium.

Run: .venv/bin/python scripts/screenshots.py   (about 30 s; needs what scripts/bootstrap.sh installs)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.browser import chromium  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402

NODES = [NodeSpec("hv1", 8192), NodeSpec("hv2", 16384), NodeSpec("hv3", 4096)]


def shows(driver, script: str, what: str) -> None:
    WebDriverWait(driver, 60, poll_frequency=0.2).until(lambda d: d.execute_script(script), f"the page to show {what}")


def main() -> int:
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pvc-shots-") as tmp:
        c = LocalCluster(Path(tmp), NODES).start()
        try:
            s = c.session()
            for i, (node, memory, start) in enumerate([("hv1", 1024, True), ("hv1", 2048, True), ("hv1", 512, True),
                                                        ("hv2", 1024, True), ("hv3", 512, False)]):
                c.define_vm(f"vm{i}", memory, node=node, start=start)
            s.put(f"{c.api_url}/api/v1/vms/vm2/meta", json={"node_limit": ["hv1", "hv3"]}, timeout=10)
            bad = "<devices><disk type='file'><target dev='vda' bus='nonsense'/></disk></devices>"
            from pvc_dev.cluster import domain_xml
            c.wait_job(s.post(f"{c.api_url}/api/v1/vms", json={"xml": domain_xml("broken").replace(
                "</os>", "</os>" + bad), "node": "hv2"}, timeout=10).json()["id"])
            c.consume("hv3", False)  # vm2 may only go to hv3: the flush stands part-way with vm2 in flight
            s.post(f"{c.api_url}/api/v1/nodes/hv1/flush", timeout=10)
            with chromium(c.token, width=1100, height=760) as driver:
                driver.get(f"{c.api_url}/api/v1/status")
                shows(driver, "const b = document.querySelector('#jobs .job[data-kind=\"flush\"] .bar');"
                              "return b && Number(b.getAttribute('aria-valuenow')) >= 60;", "the flush part-way")
                driver.save_screenshot(str(out / "status-page.png"))
                driver.get(f"{c.api_url}/api/v1/docs")
                shows(driver, "return document.querySelectorAll('.opblock').length > 20;", "the operations")
                driver.save_screenshot(str(out / "swagger-ui.png"))
            c.consume("hv3", True)
        finally:
            c.stop()
    for name in ("status-page.png", "swagger-ui.png"):
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
