"""bench/fuzz_api.py: schemathesis against the live API; every operation, valid and invalid input; 0 server errors.

Starts a dev-style cluster (3 test-driver nodes, a few VMs), then runs schemathesis's ``examples``, ``coverage``
and ``fuzzing`` phases on every operation of ``/api/v1/openapi.json`` with the admin token, checking
``not_a_server_error`` (no 5xx). Mutations run for real on this throwaway cluster. Schemathesis lives in its own
venv (``.venv-fuzz``, created on first use) so that its dependencies never change the project's. The token goes
through the environment (``${PVC_API_TOKEN}`` in the config file), never argv. Bounded: ``--examples`` per
operation (default 30), seeded (``--seed``, default 1) for a run that can be replayed.

    .venv/bin/python bench/fuzz_api.py [--examples 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402

FUZZ_VENV = ROOT / ".venv-fuzz"
CONFIG = """headers = { "X-Api-Key" = "${PVC_API_TOKEN}" }
request-timeout = 60
"""


def schemathesis() -> Path:
    binary = FUZZ_VENV / "bin" / "schemathesis"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FUZZ_VENV)], check=True)
        subprocess.run([str(FUZZ_VENV / "bin" / "pip"), "install", "-q", "schemathesis>=4,<5"], check=True)
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=30, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    binary = schemathesis()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-fuzz-"))
    cluster = LocalCluster(workdir, [NodeSpec(f"hv{i}", 8192) for i in (1, 2, 3)], flower=False, fencing=False)
    cluster.start()
    try:
        for i, node in enumerate(("hv1", "hv2", "hv3")):
            cluster.define_vm(f"vm{i}", 256, node=node, start=i != 2)
        config = workdir / "schemathesis.toml"
        config.write_text(CONFIG)
        started = time.monotonic()
        run = subprocess.run(
            [str(binary), "--config-file", str(config), "run", f"{cluster.api_url}/api/v1/openapi.json",
             "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing", "--max-examples",
             str(args.examples), "--seed", str(args.seed), "--workers", "2", "--no-color",
             "--suppress-health-check", "all",
             # A stream that lasts 300 s per request by design (docs/api.md): tests/integration/test_events.py.
             "--exclude-path-regex", "/events$"],
            env={**os.environ, "PVC_API_TOKEN": cluster.token}, capture_output=True, text=True, cwd=workdir)
        elapsed = time.monotonic() - started
        output = run.stdout + run.stderr
        summary = output[output.rfind("SUMMARY"):] if "SUMMARY" in output else output[-4000:]
        print(summary.strip())
        api_log = Path(cluster.api.log_path).read_text(errors="replace")
        unhandled = len(re.findall(r"unhandled error", api_log))
        print(f"\nschemathesis exit {run.returncode} in {elapsed:.0f} s (seed {args.seed}, {args.examples} examples "
              f"per operation and phase); API log: {unhandled} unhandled error(s)")
        return 0 if run.returncode == 0 and unhandled == 0 else 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
