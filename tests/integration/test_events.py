"""The events stream (``GET /api/v1/events``): a snapshot, then changes as they happen, and resume by event id."""

import json
import queue
import threading
import time

import pytest
import requests

from pvc_dev.cluster import NodeSpec, domain_xml
from tests.conftest import consumer

NODES = [NodeSpec("ev1"), NodeSpec("ev2")]


class Stream:
    """An open event stream read by a thread into a queue, so that every wait on it is bounded."""

    def __init__(self, c, last_id: str = "", **kw) -> None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        self.response = c.session().get(f"{c.api_url}/api/v1/events", headers=headers, stream=True,
                                        timeout=(5, 60), **kw)
        self.events: queue.Queue = queue.Queue()
        self.last_id = last_id
        if self.response.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event: dict = {}
        try:
            for line in self.response.iter_lines(chunk_size=1, decode_unicode=True):
                if not line:
                    if "data" in event:
                        self.events.put(event)
                    event = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(": ")
                    event[field] = value
        except (requests.RequestException, AttributeError):  # closed by the test
            pass

    def until(self, predicate, timeout: float = 60) -> list[dict]:
        """Events read until one satisfies ``predicate`` (included); fails after ``timeout`` s."""
        assert self.response.status_code == 200, self.response.text
        got, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no such event within {timeout:g} s; got {[(e['event'], e['data'][:80]) for e in got]}"
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            event["json"] = json.loads(event["data"])
            self.last_id = event.get("id", self.last_id)
            got.append(event)
            if predicate(event):
                return got

    def close(self) -> None:
        self.response.close()


def kind(name: str):
    return lambda e: e["event"] == name


def job_ended(job_id: str):
    return lambda e: e["event"] == "job" and e["json"]["id"] == job_id and e["json"]["state"] == "succeeded"


@pytest.fixture(scope="module")
def events_cluster(shared_cluster):
    return shared_cluster("events", NODES)


def test_a_stream_starts_with_a_snapshot_then_follows_a_job_as_it_runs(events_cluster):
    """A new stream lists the nodes and VMs, then `ready`; a start job then shows up queued, running and
    succeeded, and its VM running, as they happen."""
    c = events_cluster
    assert c.define_vm("evweb", node="ev1")["state"] == "succeeded"
    stream = Stream(c)
    try:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        snapshot = stream.until(kind("ready"))
        assert {e["json"]["name"] for e in snapshot if e["event"] == "node"} == {"ev1", "ev2"}
        assert any(e["event"] == "vm" and e["json"]["name"] == "evweb" for e in snapshot)
        job = c.session().post(f"{c.api_url}/api/v1/vms/evweb/state", json={"state": "start"}, timeout=10).json()
        seen = stream.until(job_ended(job["id"]))
        mine = [e["json"] for e in seen if e["event"] == "job" and e["json"]["id"] == job["id"]]
        assert mine[-1]["kind"] == "start" and mine[-1]["percent"] == 100 and "messages" not in mine[-1]
        running = lambda e: e["event"] == "vm" and e["json"]["name"] == "evweb" and e["json"]["state"] == "running"  # noqa: E731
        assert any(running(e) for e in seen) or stream.until(running)
    finally:
        stream.close()


def test_a_client_that_reconnects_with_its_last_event_id_gets_what_it_missed(events_cluster):
    """Changes made while a client was away come first when it resumes (no snapshot); an id this API does not
    know gets `reset`, then a snapshot."""
    c = events_cluster
    assert c.define_vm("evback", node="ev2", start=True)["state"] == "succeeded"
    stream = Stream(c)
    stream.until(kind("ready"))
    last = stream.last_id
    stream.close()

    job = c.session().post(f"{c.api_url}/api/v1/vms/evback/state", json={"state": "stop"}, timeout=10).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    resumed = Stream(c, last_id=last)
    try:
        seen = resumed.until(job_ended(job["id"]))
        assert not [e for e in seen if e["event"] in ("ready", "reset")], seen  # no snapshot: only changes
        assert all(int(e["id"].split("-")[1]) > int(last.split("-")[1]) for e in seen)
    finally:
        resumed.close()

    foreign = Stream(c, last_id="0000beef-12")
    try:
        first = foreign.until(lambda e: True)[0]
        assert first["event"] == "reset" and "not this API process's" in first["json"]["reason"]
        snapshot = foreign.until(kind("ready"))
        assert any(e["event"] == "vm" and e["json"]["name"] == "evback" and e["json"]["state"] == "stopped"
                   for e in snapshot)
    finally:
        foreign.close()


def test_a_flush_streams_its_progress_and_the_vms_in_flight(events_cluster):
    """While a flush runs, its job's events carry its progress: VMs done, total and in flight."""
    c = events_cluster
    for name in ("evf1", "evf2", "evf3"):
        assert c.define_vm(name, node="ev1")["state"] == "succeeded"
    stream = Stream(c)
    try:
        stream.until(kind("ready"))
        consumer(c, "ev2", False)  # the children wait for their target: the flush holds them in flight
        try:
            job = c.session().post(f"{c.api_url}/api/v1/nodes/ev1/flush", timeout=10).json()
            stream.until(lambda e: e["event"] == "job" and e["json"]["id"] == job["id"]
                         and e["json"]["progress"].get("in_flight"))
        finally:
            consumer(c, "ev2", True)
        stream.until(job_ended(job["id"]))
        ready = c.session().post(f"{c.api_url}/api/v1/nodes/ev1/ready", timeout=10).json()
        assert c.wait_job(ready["id"])["state"] == "succeeded"
    finally:
        stream.close()


def test_streams_need_a_token_and_are_bounded(events_cluster):
    """No token: 401; Basic (what a browser sends) is accepted; beyond a quarter of the API's threads, 503
    `too_many_streams` with Retry-After, before any stream is harmed."""
    c = events_cluster
    r = requests.get(f"{c.api_url}/api/v1/events", timeout=5)
    assert r.status_code == 401
    streams = [Stream(c, auth=("browser", c.token))]
    try:
        streams[0].until(kind("ready"))
        for _ in range(8):  # api_threads is 8 unless the cluster says otherwise: 2 streams
            s = Stream(c)
            streams.append(s)
            if s.response.status_code == 503:
                break
        refused = streams[-1].response
        assert refused.status_code == 503 and refused.json()["error"] == "too_many_streams", refused.text
        assert refused.headers["Retry-After"] == "5"
        assert len(streams) - 1 >= 1  # at least one stream besides the first was served
        job = c.session().post(f"{c.api_url}/api/v1/vms", json={"xml": domain_xml("evbound")}, timeout=10).json()
        streams[0].until(job_ended(job["id"]))  # the first stream still serves
    finally:
        for s in streams:
            s.close()
