"""The flush capacity guard's estimate (pvc_tasks.capacity.drain): pure, no server."""

from pvc_tasks.capacity import drain, flush_order


def node(name, total=4096, allocated=0, state="ready", alive=True, reserved="{}"):
    return {"name": name, "alive": alive, "domain_state": state, "memory.total": str(total),
            "memory.allocated": str(allocated), "reserved": reserved}


def vm(name, where, memory, state="running", limit="", job=""):
    return {"name": name, "node": where, "memory": str(memory), "state": state, "meta.node_limit": limit,
            "active_job": job}


def test_everything_fits():
    """Room on the other ready nodes: nothing would be shut down."""
    estimate = drain([node("a", allocated=1024), node("b")], [vm("x", "a", 1024)], "a", [])
    assert estimate.fits and estimate.targets == ["b"]


def test_the_vms_that_do_not_fit_are_named_with_their_memory():
    """Largest first on the freest node; the VMs left over are the ones that would be shut down."""
    nodes = [node("a", 8192, 6144), node("b", 4096, 1024)]
    vms = [vm("big", "a", 3072), vm("mid", "a", 2048), vm("small", "a", 1024)]
    estimate = drain(nodes, vms, "a", [])
    assert (estimate.shut_down, estimate.shortfall_mib) == (["mid", "small"], 3072)


def test_stopped_vms_never_count_and_node_limit_does():
    """A stopped VM needs no room; a VM limited to its own node has nowhere to go."""
    nodes = [node("a", allocated=2048), node("b")]
    vms = [vm("off", "a", 4096, state="stopped"), vm("pinned", "a", 512, limit="a"), vm("free", "a", 512)]
    assert drain(nodes, vms, "a", []).shut_down == ["pinned"]


def test_draining_flushed_unflushing_and_absent_nodes_are_not_targets():
    """Only alive, ready nodes take VMs."""
    nodes = [node("a", allocated=512), node("b", state="flush"), node("c", state="flushed"),
             node("d", state="unflush"), node("e", alive=False)]
    assert drain(nodes, [vm("x", "a", 512)], "a", ["b"]).shut_down == ["x"]


def test_earlier_drains_are_placed_first():
    """The VMs of a flush accepted before this one take the room first."""
    nodes = [node("a", allocated=2048), node("b", allocated=2048, state="flush"), node("c", 4096)]
    vms = [vm("from-b", "b", 2048), vm("mine", "a", 2048), vm("also-mine", "a", 1024)]
    estimate = drain(nodes, vms, "a", ["b"])
    assert estimate.shut_down == ["also-mine"]


def test_a_vm_in_flight_is_already_counted_in_its_reservation():
    """A VM whose migration holds a reservation is not placed twice."""
    nodes = [node("a", allocated=2048), node("b", 4096, reserved='{"j1": {"memory": 2048}}')]
    vms = [vm("moving", "a", 2048, job="j1"), vm("staying", "a", 2048)]
    assert drain(nodes, vms, "a", [], in_flight=["j1"]).fits


def test_flush_order_is_running_first_then_largest_then_name():
    """The order a flush takes its VMs, which the estimate follows."""
    vms = [vm("s-big", "a", 9000, "stopped"), vm("r-small", "a", 256), vm("r-big", "a", 4096), vm("p", "a", 256,
                                                                                                  "paused")]
    assert [v["name"] for v in flush_order(vms)] == ["r-big", "p", "r-small", "s-big"]
