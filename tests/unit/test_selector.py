"""Node selection: each method picks what its definition says, among valid candidates only."""

import json

import pytest

from pvc_tasks.selector import METHODS, candidates, keys_for, select


def node(name, total=8192, allocated=0, provisioned=0, load=0.0, vcpus=0, vms=0, alive=True, state="ready"):
    return {"name": name, "alive": alive, "domain_state": state, "memory.total": str(total),
            "memory.allocated": str(allocated), "memory.provisioned": str(provisioned), "load": str(load),
            "vcpu.allocated": str(vcpus), "vms.total": str(vms)}


NODES = [node("hv1", allocated=4000, provisioned=4000, load=0.5, vcpus=2, vms=5),
         node("hv2", allocated=1000, provisioned=7000, load=2.0, vcpus=8, vms=1),
         node("hv3", allocated=3000, provisioned=3000, load=0.1, vcpus=1, vms=3)]


@pytest.mark.parametrize("method,expected", [("mem", "hv2"), ("memprov", "hv3"), ("load", "hv3"),
                                             ("vcpus", "hv3"), ("vms", "hv2")])
def test_each_method_picks_by_its_definition(method, expected):
    """mem: most free; memprov: least provisioned; load/vcpus/vms: lowest."""
    assert select(NODES, method, 512) == expected


def test_ties_go_to_the_first_name():
    """Equal scores pick the node whose name sorts first, whatever the input order."""
    nodes = [node("hv9"), node("hv2"), node("hv5")]
    assert all(select(nodes, m, 512) == "hv2" for m in METHODS)


def test_candidates_exclude_dead_flushed_limited_and_full_nodes():
    """Only alive, ready nodes in the limit, not excluded, with room for the VM are candidates."""
    nodes = [node("dead", alive=False), node("flushed", state="flushed"), node("full", allocated=8000),
             node("other"), node("ok"), node("src")]
    names = [n["name"] for n in candidates(nodes, 512, node_limit=["ok", "src", "full", "dead", "flushed"],
                                           exclude=["src"])]
    assert names == ["ok"]


def test_nothing_fits_gives_none():
    """A VM bigger than every node's free memory has no target."""
    assert select(NODES, "mem", 100_000) is None


def test_unknown_method_raises():
    """A misspelt selector is an error naming the valid ones."""
    with pytest.raises(ValueError, match="mem"):
        select(NODES, "random", 1)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_decides_on_the_keys_placement_reads_for_it(method):
    """Records cut down to ``keys_for(method)`` (what placement fetches) give the same choice as whole records,
    whichever node each other key would favour."""
    for favoured in range(3):
        nodes = [dict(n, reserved=json.dumps({"j": {"memory": 100, "vcpus": 1}}) if i == favoured else "{}")
                 for i, n in enumerate(NODES)]
        cut = [{k: v for k, v in n.items() if k in keys_for(method) or k in ("name", "alive")} for n in nodes]
        assert select(cut, method, 512) == select(nodes, method, 512)
    assert set(keys_for(method)) < {k for k in NODES[0] if k not in ("name", "alive")} | {"reserved"}
