"""The differential fuzzer of the VM XML policy (pvc_dev/xmlfuzz.py): of thousands of disguised documents, every
one that libvirt itself would resolve to a forbidden host file is refused by pvc. Seeded: set PVC_FUZZ_SEED to try
another sequence (the seed and the figures are printed); bench/xml_fuzz.py runs as many cases as you like."""

import os

from pvc_dev.xmlfuzz import FIELDS, run

SEED = int(os.environ.get("PVC_FUZZ_SEED", "20261208"))
CASES = 4000


def test_no_document_libvirt_resolves_to_a_forbidden_file_is_accepted(record_property):
    """0 holes; and the fuzzer is not idle: most fields reach libvirt's forbidden reading in many disguises."""
    outcome = run(SEED, CASES)
    record_property("figures", f"xml fuzz: seed {SEED}, {outcome.cases} cases, {outcome.forbidden} resolved by "
                               f"libvirt to /etc/shadow, {outcome.refused} refused by pvc, {len(outcome.holes)} "
                               f"accepted")
    assert outcome.holes == [], outcome.holes[:3]
    assert outcome.forbidden > CASES // 3
    assert len(outcome.by_field) >= len(FIELDS) - 2, sorted(set(f for f, _w, _t in FIELDS) - set(outcome.by_field))
