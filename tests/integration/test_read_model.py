"""The API's lists come from its read model (``pvc_web.readmodel``), and a list that follows a job's end sees it."""

import os
import signal

from pvc_dev.services import wait_until


def lists(s, base: str, vm: str) -> tuple[dict, dict, dict, set[str]]:
    """The VM as ``/vms`` shows it, its newest job as ``/jobs`` shows it, ``/cluster``'s counts, and where each
    answer came from."""
    vms, jobs, status = (s.get(f"{base}{p}", params=q, timeout=30)
                         for p, q in (("/vms", None), ("/jobs", {"vm": vm, "limit": 1}), ("/cluster", None)))
    sources = {r.headers.get("X-PVC-Read-From") for r in (vms, jobs, status)}
    return next(v for v in vms.json() if v["name"] == vm), jobs.json()[0], status.json(), sources


def test_a_list_right_after_a_job_end_reflects_it(cluster, api, vm_name):
    """20 times: a start or stop of a VM ends (seen through the job's long-poll, which reads ZooKeeper) and the
    very next /vms, /jobs and /cluster show the VM's new state and the job ended, answered from the read model."""
    cluster.define_vm(vm_name, node="hv1")
    for i in range(20):
        action, expected = ("start", "running") if i % 2 == 0 else ("stop", "stopped")
        job = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": action}).json()
        ended = cluster.wait_job(job["id"])
        assert ended["state"] == "succeeded", ended
        vm, newest, status, sources = lists(api, api.base, vm_name)
        assert (vm["state"], vm["active_job"]) == (expected, ""), f"round {i}: {vm}"
        assert (newest["id"], newest["state"]) == (job["id"], "succeeded"), f"round {i}: {newest}"
        assert status["vms"][expected] >= 1 and newest["id"] in {j["id"] for j in api.get(
            f"{api.base}/jobs", params={"state": "succeeded", "since": job["created"]}).json()}
        assert sources == {"model"}, sources
    assert "xml" not in vm, "the list leaves the XML to the detail view"
    assert api.get(f"{api.base}/vms/{vm_name}").json()["xml"].startswith("<domain")
    cluster.wait_job(api.delete(f"{api.base}/vms/{vm_name}").json()["id"])
    names = {v["name"] for v in api.get(f"{api.base}/vms").json()}
    assert vm_name not in names, "an undefined VM leaves the list at once"


def half_closed(pid: int, port: int) -> bool:
    """The process holds a TCP connection to ``port`` that the other side closed (CLOSE_WAIT: a stopped process
    cannot close its end), read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "08" and fields[9] in inodes:
                    return True
    return False


def test_the_model_is_rebuilt_after_the_api_loses_its_zookeeper_session(make_cluster):
    """The API process stopped (SIGSTOP) until ZooKeeper expired its session, while a VM's meta is changed in
    ZooKeeper: the watches died with the session, and the model, rebuilt on the new one, shows the change."""
    c = make_cluster()
    c.define_vm("kept", node="hv1")
    s, base = c.session(), f"{c.api_url}/api/v1"
    first = s.get(f"{base}/vms", timeout=30)
    assert first.headers["X-PVC-Read-From"] == "model" and first.json()[0]["meta"]["node_limit"] == []
    zk_port = int(c.zk_servers.split(",")[0].rsplit(":", 1)[1])
    os.kill(c.api.pid, signal.SIGSTOP)
    try:
        c.zk.set(c.schema.path("domain.meta.node_limit", "kept"), b"hv2")
        wait_until(lambda: half_closed(c.api.pid, zk_port), 30, "ZooKeeper to expire the stopped API's session")
    finally:
        os.kill(c.api.pid, signal.SIGCONT)
    wait_until(lambda: s.get(f"{base}/vms", timeout=30).headers["X-PVC-Read-From"] == "model", 30,
               "the model to be rebuilt on the new session")
    assert s.get(f"{base}/vms", timeout=30).json()[0]["meta"]["node_limit"] == ["hv2"]
    assert "read model built" in c.api.log_path.read_text()


def test_the_model_follows_changes_across_a_zookeeper_restart(make_cluster):
    """The cluster's ZooKeeper SIGKILLed and started again (2 s down, sessions survive): a change written right
    after it came back reaches the model (its watches were set again on the reconnected session), and a job run
    after it shows in the lists at once."""
    c = make_cluster(own_zookeeper=True)
    c.define_vm("steady", node="hv1")
    s, base = c.session(), f"{c.api_url}/api/v1"
    assert s.get(f"{base}/vms", timeout=30).headers["X-PVC-Read-From"] == "model"
    c.restart_zookeeper(down=2.0)
    wait_until(lambda: c.zk.connected, 30, "the harness's client to reconnect")
    c.zk.set(c.schema.path("domain.meta.node_limit", "steady"), b"hv1,hv2")
    wait_until(lambda: (r := s.get(f"{base}/vms", timeout=30)).headers["X-PVC-Read-From"] == "model"
               and r.json()[0]["meta"]["node_limit"] == ["hv1", "hv2"], 30, "the change in the model")
    job = s.post(f"{base}/vms/steady/state", json={"state": "start"}, timeout=30).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    listed = s.get(f"{base}/vms", timeout=30)
    assert listed.headers["X-PVC-Read-From"] == "model" and listed.json()[0]["state"] == "running"
