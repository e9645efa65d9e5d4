"""bench/events.py: what the events stream costs and how late its events are, in one run.

Starts its own local cluster (ZooKeeper, Redis, 3 test-driver workers, the API), defines one VM, then runs ROUNDS
start+stop round trips through the API (as bench/lifecycle.py) three times, alternating: with no stream open,
with STREAMS streams open (status pages), and with none again. While streams are open, each records when its
`job` event saying a job succeeded arrived; that job's ``finished`` (set by the worker in its ending transaction)
gives the event's delay.

    .venv/bin/python bench/events.py [--rounds 200] [--streams 2]

Prints the round trip's p50/p99 without and with streams (and their ratio) and the event delay's p50/p99.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lifecycle import job_round_trip, percentile  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402


class Listener(threading.Thread):
    """One open stream; notes (job id -> arrival time, epoch s) of each event saying a job succeeded."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.response = cluster.session().get(f"{cluster.api_url}/api/v1/events", stream=True, timeout=(5, 60))
        self.response.raise_for_status()
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        kind = ""
        try:
            for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                    self.ready.set() if kind == "ready" else None
                elif line.startswith("data: ") and kind == "job":
                    job = json.loads(line[6:])
                    if job["state"] == "succeeded":
                        self.arrived.setdefault(job["id"], time.time())
        except (requests.RequestException, AttributeError):
            pass  # closed at the end of the run


def rounds(s: requests.Session, base: str, n: int, ids: list[str] | None = None) -> list[float]:
    times = []
    for _ in range(n):
        times.append(job_round_trip(s, base, "bench", "start") + job_round_trip(s, base, "bench", "stop"))
    if ids is not None:
        ids += [j["id"] for j in s.get(f"{base}/jobs", params={"limit": 2 * n}, timeout=10).json()]
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--streams", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-"))
    cluster = LocalCluster(workdir, [NodeSpec("hv1"), NodeSpec("hv2"), NodeSpec("hv3")], flower=False,
                           api_env={"PVC_API_THREADS": str(max(8, 4 * args.streams))})
    print(f"starting a 3-node cluster in {workdir} ...", flush=True)
    cluster.start()
    try:
        cluster.define_vm("bench", node="hv1")
        s, base = cluster.session(), f"{cluster.api_url}/api/v1"
        rounds(s, base, 5)  # warm-up
        quiet = rounds(s, base, args.rounds)
        listeners = [Listener(cluster) for _ in range(args.streams)]
        for listener in listeners:
            listener.start()
            listener.ready.wait(30)
        ids: list[str] = []
        streamed = rounds(s, base, args.rounds, ids)
        time.sleep(1)  # the last events of the run
        for listener in listeners:
            listener.response.close()
        quiet += rounds(s, base, args.rounds)
        delays = []
        for job_id in ids:
            finished = s.get(f"{base}/jobs/{job_id}", timeout=10).json()["finished"]
            delays += [listener.arrived[job_id] - finished for listener in listeners if job_id in listener.arrived]
        missed = sum(job_id not in listener.arrived for job_id in ids for listener in listeners)
    finally:
        cluster.stop()
    q50, q99 = percentile(quiet, 50), percentile(quiet, 99)
    s50, s99 = percentile(streamed, 50), percentile(streamed, 99)
    print(f"\nstart+stop round trip through the API, {args.rounds} rounds each (ms)   p50      p99")
    print(f"  no stream open (before and after)                          {q50 * 1e3:7.2f}  {q99 * 1e3:7.2f}")
    print(f"  {args.streams} event streams open                                     {s50 * 1e3:7.2f}  "
          f"{s99 * 1e3:7.2f}")
    print(f"  ratio streams / none                                       {s50 / q50:7.2f}x {s99 / q99:7.2f}x")
    print(f"\ndelay from a job's end (its ending transaction) to its event, {len(delays)} events (ms): "
          f"p50 {percentile(delays, 50) * 1e3:.1f}, p99 {percentile(delays, 99) * 1e3:.1f}; missed {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
