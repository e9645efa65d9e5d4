"""Live migration between two real QEMU nodes (each its own libvirtd), with real guests."""

import os
import time
from pathlib import Path

import libvirt
import pytest

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import FILL_DONE, boot_code_offset, busy_boot_image, fill_boot_image, qemu_domain_xml, virt_type
from pvc_dev.services import wait_until
from tests.conftest import SLOW_SESSION, paused, step_returned

QEMU_NODES = [NodeSpec("hq1", hypervisor="qemu"), NodeSpec("hq2", hypervisor="qemu")]


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def qemu_pid(c, node: str, vm: str) -> int | None:
    """The PID of the VM's QEMU on ``node`` if one runs there (libvirt's pid file in the node's private /run)."""
    pidfile = c.libvirtds[node].log_path.parent / "fs" / "run_libvirt" / "qemu" / f"{vm}.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"guest={vm}".encode() in cmdline else None


def libvirt_state(c, node: str, vm: str) -> tuple[int, int] | None:
    conn = libvirt.open(c.libvirtds[node].info["uri"])
    try:
        return tuple(conn.lookupByName(vm).state())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def start_busy_guest(c, vm: str, node: str, image=busy_boot_image, at: range = range(0, 0x200)) -> None:
    """Start a guest booting ``image`` (the busy guest unless told) and wait until it executes its boot sector at
    an offset in ``at``."""
    image = image(c.workdir / f"{vm}.img")
    assert c.define_vm(vm, node=node, start=True, xml=qemu_domain_xml(vm, 64, image))["state"] == "succeeded"
    # SeaBIOS needs a few seconds to reach the boot sector here; much longer when both cores are busy (a busy guest
    # that outlived its test once starved every later one: LocalCluster.stop now powers guests off first).
    uri = c.libvirtds[node].info["uri"]
    wait_until(lambda: boot_code_offset(uri, vm) in at, 180, f"{vm} to run its boot code")


def follow(c, job_id: str, timeout: float = 180, revisions: list | None = None) -> tuple[dict, list[int]]:
    """Long-poll the job to its end (at most ``timeout`` s), recording every percent seen (and every revision seen
    in ``revisions``)."""
    s, seen, job = c.session(), [], {"revision": -1, "state": "queued"}
    deadline = time.monotonic() + timeout
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout:g} s"
        job = s.get(f"{c.api_url}/api/v1/jobs/{job_id}", params={"wait": 5, "after": job.get("revision", -1)},
                    timeout=20).json()
        seen.append(job["percent"])
        if revisions is not None:
            revisions.append(job)
    return job, seen


@pytest.fixture(scope="module")
def qemu_pair(shared_cluster):
    return shared_cluster("qemu-pair", QEMU_NODES)


def test_live_migration_moves_the_running_guest(qemu_pair):
    """Live migration: QEMU runs on T and not on S, libvirt says running/migrated, progress only grows, and the
    VM's max_downtime reached the hypervisor."""
    c = qemu_pair
    start_busy_guest(c, "live1", "hq1")
    assert api(c, "put", "/vms/live1/meta", json={"max_downtime": 250}).status_code == 200
    source_pid = qemu_pid(c, "hq1", "live1")
    assert source_pid and qemu_pid(c, "hq2", "live1") is None

    job, seen = follow(c, api(c, "post", "/vms/live1/migrate", json={"target": "hq2"}).json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["how"] == "live"
    assert seen == sorted(seen) and max(seen) == 100 and all(0 <= p <= 100 for p in seen)
    texts = [m["text"] for m in job["messages"]]
    assert "hypervisor applied max downtime 250 ms" in texts

    assert qemu_pid(c, "hq2", "live1") and qemu_pid(c, "hq1", "live1") is None
    assert not Path(f"/proc/{source_pid}").exists()
    assert libvirt_state(c, "hq2", "live1") == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)
    assert libvirt_state(c, "hq1", "live1") is None  # undefined on the source
    vm = api(c, "get", "/vms/live1").json()
    assert (vm["node"], vm["last_node"], vm["state"]) == ("hq2", "hq1", "running")

    back = api(c, "post", "/vms/live1/unmigrate").json()
    assert c.wait_job(back["id"])["state"] == "succeeded"
    assert qemu_pid(c, "hq1", "live1") and qemu_pid(c, "hq2", "live1") is None
    assert c.wait_job(api(c, "post", "/vms/live1/state", json={"state": "stop"}).json()["id"])["state"] == "succeeded"


def test_shutdown_migration_of_a_guest_that_ignores_acpi(qemu_pair):
    """method=shutdown on a guest that ignores ACPI: with shutdown_force off the bounded shutdown fails and the VM
    keeps running on S; by default it is forced off after the bound and started on T, and the job says so."""
    c = qemu_pair
    assert c.define_vm("deaf", node="hq1", start=True, xml=qemu_domain_xml("deaf"))["state"] == "succeeded"
    assert api(c, "put", "/vms/deaf/meta", json={"shutdown_force": False}).status_code == 200
    job = c.wait_job(api(c, "post", "/vms/deaf/migrate",
                         json={"target": "hq2", "method": "shutdown", "timeout": 2}).json()["id"])
    assert job["state"] == "failed" and "did not shut down within 2 s" in job["reason"]
    assert qemu_pid(c, "hq1", "deaf") and qemu_pid(c, "hq2", "deaf") is None
    vm = api(c, "get", "/vms/deaf").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hq1", "running", "")
    assert api(c, "put", "/vms/deaf/meta", json={"shutdown_force": None}).status_code == 200  # the cluster's: on
    job = c.wait_job(api(c, "post", "/vms/deaf/migrate",
                         json={"target": "hq2", "method": "shutdown", "timeout": 2}).json()["id"])
    assert job["state"] == "succeeded" and job["result"]["forced"] is True, job
    assert qemu_pid(c, "hq2", "deaf") and qemu_pid(c, "hq1", "deaf") is None
    assert api(c, "get", "/vms/deaf").json()["node"] == "hq2"
    assert c.wait_job(api(c, "post", "/vms/deaf/state", json={"state": "stop"}).json()["id"])["state"] == "succeeded"


@pytest.fixture
def capped_pair(make_cluster):
    """QEMU nodes whose migrations are capped at 1 MiB/s: a busy guest with 1 ms of downtime never converges."""
    return make_cluster(QEMU_NODES, worker_env={"PVC_MIGRATION_BANDWIDTH": "1", "PVC_MIGRATION_TIMEOUT": "4"})


@pytest.mark.skipif(virt_type() != "kvm", reason="under TCG (the default, pvc_dev.guests.virt_type) this guest's "
                    "capped live migration converges in ~3 s although the guest keeps writing (seen, not yet "
                    "explained): needs KVM")
def test_convergence_timeout_fallback_and_cancel_of_a_running_migration(capped_pair):
    """A live migration that cannot converge is aborted after its timeout (method default then falls back to a
    shutdown migration), and one cancelled while running is aborted at once; each leaves the VM running on S only."""
    c = capped_pair
    start_busy_guest(c, "slow", "hq1")
    # 1 ms of downtime at 1 MiB/s is 1 KiB left to copy: never reached by a guest that keeps writing, whether it
    # runs under KVM or, on machines without /dev/kvm, much slower under TCG.
    assert api(c, "put", "/vms/slow/meta", json={"max_downtime": 1, "shutdown_force": False}).status_code == 200
    job = c.wait_job(api(c, "post", "/vms/slow/migrate", json={"target": "hq2", "method": "live"}).json()["id"])
    assert job["state"] == "failed" and "did not converge within 4 s" in job["reason"], job
    assert qemu_pid(c, "hq1", "slow") and qemu_pid(c, "hq2", "slow") is None
    assert libvirt_state(c, "hq1", "slow")[0] == libvirt.VIR_DOMAIN_RUNNING
    assert api(c, "get", "/vms/slow").json()["node"] == "hq1"

    # method default: live fails the same way, then it falls back to a shutdown migration, which this guest
    # (no OS, ignores ACPI) refuses within its bound: failed, still running on S.
    job = c.wait_job(api(c, "post", "/vms/slow/migrate", json={"target": "hq2", "timeout": 2}).json()["id"])
    assert job["state"] == "failed" and "did not shut down within 2 s" in job["reason"], job
    assert any("falling back to shutdown migration" in m["text"] for m in job["messages"])
    assert qemu_pid(c, "hq1", "slow") and qemu_pid(c, "hq2", "slow") is None

    c.worker_env["PVC_MIGRATION_TIMEOUT"] = "600"  # now only a cancel can stop it
    c.workers["hq1"].stop()
    c.start_worker("hq1")
    c.wait_worker("hq1")
    running = api(c, "post", "/vms/slow/migrate", json={"target": "hq2", "method": "live"}).json()
    wait_until(lambda: api(c, "get", f"/jobs/{running['id']}").json()["percent"] > 25, 30, "perform to run")
    assert os.path.exists(f"/proc/{qemu_pid(c, 'hq2', 'slow')}")  # the incoming QEMU exists during migration
    assert api(c, "post", f"/jobs/{running['id']}/cancel").json()["cancel_requested"] is True
    ended = c.wait_job(running["id"], timeout=60)
    assert ended["state"] == "cancelled" and "cancelled by request" in ended["reason"], ended
    assert qemu_pid(c, "hq1", "slow") and qemu_pid(c, "hq2", "slow") is None
    vm = api(c, "get", "/vms/slow").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hq1", "running", "")


def test_cancel_after_the_guest_arrived_rolls_forward(make_cluster):
    """A cancel that reaches the migration after libvirt moved the guest (finish waits on T): rolling back would
    kill the only running copy, so the job commits forward instead; the VM is recorded on T and runs only there."""
    c = make_cluster(QEMU_NODES, worker_env=SLOW_SESSION)
    assert c.define_vm("fwd", node="hq1", start=True, xml=qemu_domain_xml("fwd"))["state"] == "succeeded"
    source, target = c.workers["hq1"], c.workers["hq2"]
    job = api(c, "post", "/vms/fwd/migrate", json={"target": "hq2", "method": "live"}).json()
    wait_until(lambda: step_returned(target, "pvc.migrate.prepare", job["id"]), 30, "prepare on hq2")
    with paused(target):  # finish will wait in hq2's queue
        wait_until(lambda: step_returned(source, "pvc.migrate.perform", job["id"]), 7, "the live migration")
        assert qemu_pid(c, "hq2", "fwd") and qemu_pid(c, "hq1", "fwd") is None  # the guest has arrived
        assert api(c, "post", f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    ended = c.wait_job(job["id"])
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"])
    assert any("already runs on hq2: the migration is committed instead of rolled back" in m["text"]
               for m in ended["messages"])
    vm = api(c, "get", "/vms/fwd").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hq2", "running", "")
    assert qemu_pid(c, "hq2", "fwd") and qemu_pid(c, "hq1", "fwd") is None


def test_a_live_migration_longer_than_the_step_lease_is_never_cut_off(make_cluster):
    """A live migration capped at 1 MiB/s lasts several step leases of 2 s: every look of its watcher at the data
    moving renews the lease, so the job completes live and nothing rolls it back. (The fill guest: 4 MiB written
    once, so the copy takes ~6 s and converges; the busy guest's writes outrun 1 MiB/s for minutes.) Meanwhile the
    job shows the MiB sent and left and the rate, in its progress figures and its phase."""
    # A stuck step is judged at most lease + janitor interval (2.25 s) after its last renewal.
    c = make_cluster(QEMU_NODES, worker_env={"PVC_MIGRATION_BANDWIDTH": "1", "PVC_STEP_LEASE": "2",
                                             "PVC_JANITOR_INTERVAL": "0.25"})
    start_busy_guest(c, "long", "hq1", image=fill_boot_image, at=FILL_DONE)
    revisions: list[dict] = []
    job, _seen = follow(c, api(c, "post", "/vms/long/migrate", json={"target": "hq2", "method": "live"}).json()["id"],
                        revisions=revisions)
    assert job["state"] == "succeeded" and job["result"]["how"] == "live", job
    moving = [r for r in revisions if r["phase"].startswith("live migration: ") and r["progress"]]
    assert len(moving) >= 3, [r["phase"] for r in revisions]
    sent = [r["progress"]["sent_mib"] for r in moving]
    assert sent == sorted(sent) and sent[-1] > sent[0] >= 0, sent
    first = moving[0]["progress"]
    assert first["total_mib"] >= 64 and 0 < first["remaining_mib"] <= first["total_mib"], first
    assert all(0 < r["progress"]["mib_per_s"] < 20 for r in moving[1:]), moving  # capped at 1 MiB/s, mean
    assert f"{first['sent_mib']:g} of {first['total_mib']:g} MiB sent" in moving[0]["phase"]
    assert any(m["text"].startswith("live migration sent ") and " MiB/s)" in m["text"] for m in job["messages"])
    times = {m["text"].split(" ")[0]: m["time"] for m in job["messages"]}
    lasted = times["long"] - times["live-migrating"]  # "live-migrating long to hq2 ..." .. "long left hq1 (live)..."
    print(f"\nlive migration lasted {lasted:.1f} s with a step lease of 2 s")
    assert lasted > 4.5, "the migration ended before two lapsed leases could have been judged: nothing was shown"
    assert qemu_pid(c, "hq2", "long") and qemu_pid(c, "hq1", "long") is None
