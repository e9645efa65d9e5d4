"""The IPMI adapter's pure parts: power-state parsing and the ipmitool command line (no password on it)."""

import pytest

from pvc_workers.ipmi import Bmc, IpmiError, ipmitool_argv, parse_power


@pytest.mark.parametrize("output, on", [
    ("Chassis Power is on\n", True),
    ("Chassis Power is off\n", False),
    ("chassis power is ON", True),  # PVC matched a case-sensitive string and misread successful fences
    ("CHASSIS POWER IS OFF\r\n", False),
    ("Warning: something\nChassis Power is on", True),
])
def test_power_state_is_parsed_whatever_the_case(output, on):
    """Any capitalisation of "Chassis Power is on/off", with noise around it, is read."""
    assert parse_power(output) is on


@pytest.mark.parametrize("output", ["", "Chassis Power Control: Down/Off", "Error: Unable to establish session"])
def test_unreadable_power_state_is_an_error(output):
    """What is not a power state is never taken for one."""
    with pytest.raises(IpmiError):
        parse_power(output)


def test_ipmitool_argv_carries_host_port_and_bounds_but_never_the_password():
    """The password goes in IPMI_PASSWORD (-E); the per-try timeout stays under the hard timeout."""
    bmc = Bmc("10.0.0.5:6230", "admin", "s3cret", timeout=5, cipher_suite=3)
    argv = ipmitool_argv(bmc, "chassis", "power", "status")
    assert argv == ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "10.0.0.5", "-p", "6230", "-U", "admin", "-E",
                    "-N", "2", "-R", "1", "chassis", "power", "status"]
    assert "s3cret" not in " ".join(argv) and "s3cret" not in repr(bmc)
    assert "-p" not in ipmitool_argv(Bmc("bmc1", "admin", "x"), "chassis", "power", "on")
