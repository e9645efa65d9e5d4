"""bench/xml_fuzz.py: the differential fuzzer of the VM XML policy, as long as you like (pvc_dev/xmlfuzz.py).

Generates ``--cases`` disguised documents per seed (every path-bearing field libvirt knows, the forbidden path
written in many ways), asks libvirt's own parser which ones it would resolve to /etc/shadow, and counts how many of
those pvc's reading and policy refuse. Prints the figures per seed and every hole (exit 1 when there is one).

    .venv/bin/python bench/xml_fuzz.py [--seeds 1,2,3] [--cases 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pvc_dev.xmlfuzz import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--cases", type=int, default=10000)
    args = parser.parse_args()
    holes = 0
    print(f"{'seed':>6} {'cases':>7} {'forbidden':>10} {'refused':>8} {'holes':>6} {'seconds':>8}")
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        outcome = run(seed, args.cases)
        print(f"{seed:>6} {outcome.cases:>7} {outcome.forbidden:>10} {outcome.refused:>8} {len(outcome.holes):>6} "
              f"{time.perf_counter() - started:>8.1f}")
        for field, disguise, text in outcome.holes:
            print(f"  HOLE {field} ({disguise}): {text}")
        holes += len(outcome.holes)
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
