"""The fencing storm guard's rule (pure): a storm is two or more nodes looking dead at once, at least the
configured fraction of the nodes in play."""

import pytest

from pvc_workers.monitor import storm_guard


@pytest.mark.parametrize(("looking_dead", "in_play", "storm"), [
    (1, 2, False),   # 2-node cluster: the other node died; the primary still has ZooKeeper's quorum
    (1, 3, False),
    (2, 3, True),    # two of three at once: a shared switch or PDU is likelier than two crashes
    (1, 4, False),
    (2, 4, True),    # half of the cluster
    (2, 5, False),   # two of five: a minority, fenced
    (3, 5, True),
    (0, 1, False),
])
def test_storm_rule(looking_dead, in_play, storm):
    """Two or more nodes at once, and at least half of the nodes in play (primary included), is a storm."""
    assert storm_guard(looking_dead, in_play, 0.5) is storm


def test_a_fraction_above_one_turns_the_guard_off():
    """fence_storm_fraction > 1 never trips: an operator who wants every dead node fenced can say so."""
    assert not any(storm_guard(n, n, 1.01) for n in range(1, 10))
