"""The example VM definitions in examples/ pass the API's default XML policy (the test-driver one is also defined
through the CLI on a live cluster: tests/integration/test_cli.py)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pvc_tasks.domain_xml import read
from pvc_tasks.xml_policy import XmlPolicy, violations

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.xml"))


def test_there_are_examples_for_the_test_driver_and_for_qemu():
    """One example per hypervisor the README names."""
    assert {ET.parse(p).getroot().get("type") for p in EXAMPLES} == {"test", "kvm"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_passes_the_default_xml_policy(path):
    """Nothing in an example needs an xml_* setting changed (judged on libvirt's reading, as the API judges it)."""
    assert violations(read(path.read_text()), XmlPolicy()) == []
