"""Settings precedence and the routing table, without any server."""

import pytest

from pvc_tasks.config import load_settings
from pvc_tasks.routing import RoutingError, node_queue, route_task


def test_settings_precedence(tmp_path):
    """Explicit beats environment beats file beats defaults; tables in the file are flattened."""
    cfg = tmp_path / "pvc.toml"
    cfg.write_text('zookeeper = "file:1"\nredis = "redis://file"\n[worker]\nkeepalive_interval = 2\n'
                   '[api]\napi_tokens = ["a", "b"]\n')
    s = load_settings(cfg, env={"PVC_REDIS": "redis://env", "PVC_NODE": "envnode"}, node="explicit")
    assert (s.zookeeper, s.redis, s.node, s.keepalive_interval, s.api_tokens) == \
        ("file:1", "redis://env", "explicit", 2.0, ["a", "b"])
    assert load_settings(env={"PVC_API_TOKENS": "x, y"}).api_tokens == ["x", "y"]


def test_unknown_or_invalid_setting_is_an_error(tmp_path):
    """A misspelt key or a non-number is refused with its name."""
    cfg = tmp_path / "pvc.toml"
    cfg.write_text("keepalive_intervall = 2\n")
    with pytest.raises(ValueError, match="keepalive_intervall"):
        load_settings(cfg, env={})
    with pytest.raises(ValueError, match="invalid setting"):
        load_settings(env={"PVC_KEEPALIVE_INTERVAL": "soon"})


def test_the_broker_is_redis_unless_named_and_its_scheme_is_checked():
    """``broker`` defaults to the Redis URL, may name RabbitMQ, refuses any other scheme, and no URL (which carries
    a password) appears in the settings' repr, which logs may print."""
    redis = "redis://pvc:secret@h:6379/0"
    assert load_settings(env={"PVC_REDIS": redis}).broker_url == redis
    amqp = load_settings(env={"PVC_REDIS": redis, "PVC_BROKER": "amqp://pvc:secret@h:5672/pvc"})
    assert amqp.broker_url == "amqp://pvc:secret@h:5672/pvc" and "secret" not in repr(amqp)
    with pytest.raises(ValueError, match="broker URL must start with redis, rediss, amqp, amqps, not kafka://"):
        load_settings(env={"PVC_BROKER": "kafka://h"})


def test_vm_tasks_route_to_their_node_queue():
    """A pvc.vm.* task goes to the queue of the node named in its arguments."""
    route = route_task("pvc.vm.start", (), {"job_id": "j", "vm": "vm1", "node": "hv2"}, {})
    assert route["queue"].name == "node.hv2" and route["queue"].routing_key == "node.hv2"


@pytest.mark.parametrize("name,kwargs", [("pvc.vm.start", {}), ("pvc.other.x", {"node": "hv1"}),
                                         ("celery.chord_unlock", {})])
def test_unroutable_tasks_raise(name, kwargs):
    """No family or no node means an error, never a default queue."""
    with pytest.raises(RoutingError):
        route_task(name, (), kwargs, {})


def test_node_names_that_would_break_a_queue_are_refused():
    """A dot or slash in a node name would alias another queue."""
    with pytest.raises(RoutingError):
        node_queue("a.b")


def test_recovery_runs_on_the_target_and_fencing_on_the_cluster_queue():
    """pvc.recover.* follows its node argument (the target); pvc.cluster.* goes to the primary's queue."""
    assert route_task("pvc.recover.start", (), {"node": "hv3"}, {})["queue"].name == "node.hv3"
    assert route_task("pvc.cluster.fence", (), {"node": ""}, {})["queue"].name == "cluster"


def test_vf_settings_run_on_the_node_that_owns_the_nic():
    """pvc.sriov.* follows its node argument: the VF's NIC is on that node."""
    assert route_task("pvc.sriov.configure", (), {"node": "hv2", "vf": "ens1f0v1"}, {})["queue"].name == "node.hv2"
    with pytest.raises(ValueError, match="sriov_backend"):
        load_settings(env={"PVC_SRIOV_BACKEND": "netlink"})
    assert load_settings(env={"PVC_SRIOV_PFS": "ens1f0, ens1f1"}).sriov_pfs == ["ens1f0", "ens1f1"]


def test_fence_policies_are_validated():
    """A policy other than migrate or none is refused at start, not at the first fence."""
    with pytest.raises(ValueError, match="failed_fence"):
        load_settings(env={"PVC_FAILED_FENCE": "reboot"})
    assert load_settings(env={"PVC_COORDINATOR": "no"}).coordinator is False
