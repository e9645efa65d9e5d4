"""The harness on a busy machine: a port ``free_port`` picked but another process bound first does not fail a
start; the service comes up on another port (``pvc_dev.services.on_a_free_port``)."""

import socket

from pvc_dev import services
from pvc_dev.bmc import PowerSwitch, start_bmc


def _taken_first(monkeypatch, kind: int) -> tuple[socket.socket, list[int]]:
    """Hold a port and make ``free_port`` offer it first; the ports offered."""
    held = socket.socket(socket.AF_INET, kind)
    held.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        held.listen()
    real, offered = services.free_port, []

    def offer(udp: bool = False) -> int:
        offered.append(held.getsockname()[1] if not offered else real(udp=udp))
        return offered[-1]

    monkeypatch.setattr(services, "free_port", offer)
    return held, offered


def test_a_bmc_simulator_whose_port_was_taken_starts_on_another(monkeypatch, tmp_path):
    """ipmi_sim dies with "Address already in use"; it is started again on the next port and answers an RMCP ping
    there (the readiness check no longer mistakes the other process's socket for the simulator's)."""
    held, offered = _taken_first(monkeypatch, socket.SOCK_DGRAM)
    switch = PowerSwitch(tmp_path / "power.sock", lambda _n: None, lambda _n: None)
    bmc = start_bmc("hvp", switch, tmp_path / "bmc")
    try:
        assert len(offered) == 2 and bmc.info["hostname"] == f"127.0.0.1:{offered[1]}" and bmc.alive()
    finally:
        bmc.stop()
        held.close()


def test_redis_whose_port_was_taken_starts_on_another(monkeypatch, tmp_path):
    """The same for Redis (and the API, which goes through the same helper)."""
    held, offered = _taken_first(monkeypatch, socket.SOCK_STREAM)
    redis = services.start_redis(tmp_path / "redis")
    try:
        assert len(offered) == 2 and redis.info["port"] == offered[1] and redis.alive()
    finally:
        redis.stop()
        held.close()
