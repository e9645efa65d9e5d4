"""The ZooKeeper connection's wait (pvc_tasks.zkclient.PollHandler) answers as select(2) does, on real sockets."""

import socket
import time

import pytest

from pvc_tasks.zkclient import PollHandler


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_socket_with_data_is_readable_and_the_other_is_not(pair):
    """Only the socket with bytes waiting is returned as readable."""
    a, b = pair
    b.send(b"x")
    assert PollHandler().select([a, b], [], [], 0) == ([a], [], [])


def test_a_connected_socket_is_writable(pair):
    """A socket with room in its send buffer is returned as writable, by object, as passed."""
    a, _ = pair
    assert PollHandler().select([], [a], [], 0) == ([], [a], [])


def test_a_hang_up_wakes_the_reader(pair):
    """The peer closing wakes the wait, so the reader's next read sees the end of the stream."""
    a, b = pair
    b.close()
    assert PollHandler().select([a], [], [], 5) == ([a], [], [])


def test_nothing_ready_waits_out_the_timeout(pair):
    """With nothing to read the wait returns empty after its timeout (in seconds, not milliseconds)."""
    a, _ = pair
    started = time.monotonic()
    assert PollHandler().select([a], [], [], 0.2) == ([], [], [])
    assert time.monotonic() - started >= 0.15
