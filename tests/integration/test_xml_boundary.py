"""The host boundary at the VM XML, on real servers: the API refuses each dangerous document of the table, and a
worker refuses the same document when it is written straight into ZooKeeper, as whoever holds pvc's ZooKeeper
identity could (a define job planted beside its VM record, a VM's XML changed under a migration or a restart)."""

import subprocess

import pytest
from celery import Celery

from pvc_dev.invariants import libvirt_domains, zk_state
from pvc_dev.services import wait_until
from pvc_tasks import dispatch, kinds
from pvc_tasks.domain_xml import read
from pvc_tasks.jobs import Job, JobStore, commit
from pvc_tasks.routing import node_queue
from pvc_tasks.submit import meta_values
from tests.xml_cases import CASES, case_xml, document

REFUSED = [c for c in CASES if c[2] != "allowed"]
ALLOWED = [c for c in CASES if c[2] == "allowed"]


@pytest.fixture(scope="module")
def vm_root(tmp_path_factory):
    """A second VM root (``xml_vm_paths``) the tests can write image files into."""
    return tmp_path_factory.mktemp("vms")


@pytest.fixture(scope="module")
def xml_cluster(shared_cluster, vm_root):
    env = {"PVC_XML_ALLOWED_BRIDGES": "vmbr0", "PVC_XML_VM_PATHS": f"/var/lib/libvirt/images,{vm_root}"}
    return shared_cluster("xml", worker_env=env, api_env=env)


def plant_define(c, vm: str, xml: str, node: str) -> str:
    """What a ZooKeeper-identity attacker can do without the API: the VM record with any XML and a define job in
    one transaction, then the job's message (as the re-driver would publish it from the record). The job's id."""
    schema = c.schema
    job = Job.new("define", vm, node, {}, stage=kinds.get("define").first)
    record = dict(meta_values(c.zk, schema, {}), xml=xml, uuid="", node=node, state="defining", memory="64",
                  vcpus="1", active_job=job.id)
    commit(c.zk, [("create", p, d) for p, d in schema.create_ops("domain", vm, values=record)]
           + JobStore(c.zk, schema).create_ops(job))
    name, kwargs = dispatch.message(job)
    Celery("planter", broker=c.broker_url).send_task(name, kwargs=kwargs, queue=node_queue(node))
    return job.id


@pytest.mark.parametrize("case_id,parts,expected,needle", REFUSED, ids=[c[0] for c in REFUSED])
def test_the_api_refuses_each_dangerous_document(xml_cluster, vm_name, case_id, parts, expected, needle):
    """400 with the code and the element or reason named; nothing in ZooKeeper changes."""
    c = xml_cluster
    before = zk_state(c.zk)
    r = c.session().post(f"{c.api_url}/api/v1/vms", json={"xml": case_xml(case_id, parts, vm_name)}, timeout=30)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == ("xml_not_allowed" if expected == "refused" else "invalid_request"), body
    assert needle in f"{body['message']} {body['details']}", body
    assert zk_state(c.zk) == before


@pytest.mark.parametrize("case_id,parts,expected,needle", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_worker_refuses_each_dangerous_document_from_zookeeper(xml_cluster, vm_name, case_id, parts, expected,
                                                                 needle):
    """A define planted in ZooKeeper fails ``xml_not_allowed`` on the node, which never hands it to libvirt; the
    half-made VM record goes with the job."""
    c = xml_cluster
    job = c.wait_job(plant_define(c, vm_name, case_xml(case_id, parts, vm_name), "hv1"))
    assert job["state"] == "failed" and job["reason"].startswith("xml_not_allowed on hv1: "), job
    assert needle in job["reason"], job["reason"]
    assert c.zk.exists(c.schema.path("domain", vm_name)) is None
    assert vm_name not in libvirt_domains(c, only=["hv1"])["hv1"]


def test_what_is_allowed_is_defined_as_libvirt_reads_it(xml_cluster, vm_name):
    """Each allowed case is defined; ZooKeeper holds the canonical text and libvirt's UUID; the node's libvirt has
    the same UUID."""
    c = xml_cluster
    s = c.session()
    for i, (case_id, parts, _expected, _needle) in enumerate(ALLOWED):
        vm = f"{vm_name[:50]}-{i}"
        xml = case_xml(case_id, parts, vm)
        r = s.post(f"{c.api_url}/api/v1/vms", json={"xml": xml, "node": "hv1"}, timeout=30)
        assert r.status_code == 202, (case_id, r.text)
        assert c.wait_job(r.json()["id"])["state"] == "succeeded", case_id
        stored = c.zk.get(c.schema.path("domain.xml", vm))[0].decode()
        recorded = c.zk.get(c.schema.path("domain.uuid", vm))[0].decode()
        assert stored == read(xml.replace("</name>", f"</name><uuid>{recorded}</uuid>")).xml, case_id
        assert libvirt_domains(c, only=["hv1"])["hv1"][vm]["uuid"] == recorded, case_id
        assert c.wait_job(s.delete(f"{c.api_url}/api/v1/vms/{vm}").json()["id"])["state"] == "succeeded"


def test_a_vf_named_through_a_character_reference_is_claimed(xml_cluster, vm_name):
    """``type='&#x64;irect'`` is a macvtap to libvirt: the define marks the VF used by the VM, undefine frees it."""
    c = xml_cluster
    xml = document(vm_name, devices="<interface type='&#x64;irect'><source dev='ens1f1v1' mode='passthrough'/>"
                                    "</interface>")
    assert c.define_vm(vm_name, node="hv2", xml=xml)["state"] == "succeeded"
    used = c.zk.get(c.schema.path("sriov_vf.used_by", "hv2", "ens1f1v1"))[0].decode()
    assert used == vm_name
    assert c.wait_job(c.session().delete(f"{c.api_url}/api/v1/vms/{vm_name}").json()["id"])["state"] == "succeeded"
    assert c.zk.get(c.schema.path("sriov_vf.used", "hv2", "ens1f1v1"))[0].decode() == "false"


def test_a_migration_refuses_xml_changed_in_zookeeper(xml_cluster, vm_name):
    """A VM's XML rewritten in ZooKeeper to reach for the host: its migration fails at the target's prepare with
    ``xml_not_allowed``, and the VM stays where it was."""
    c = xml_cluster
    assert c.define_vm(vm_name, 64, node="hv1")["state"] == "succeeded"
    evil = document(vm_name, devices="<disk type='file' device='disk'><source file='/etc/shadow'/><target "
                                     "dev='vda'/></disk>")
    c.zk.set(c.schema.path("domain.xml", vm_name), evil.encode())
    s = c.session()
    job = c.wait_job(s.post(f"{c.api_url}/api/v1/vms/{vm_name}/migrate", json={"target": "hv2"}).json()["id"])
    assert job["state"] == "failed" and "xml_not_allowed on hv2: " in job["reason"], job
    assert "/etc/shadow" in job["reason"]
    assert s.get(f"{c.api_url}/api/v1/vms/{vm_name}").json()["node"] == "hv1"
    assert vm_name not in libvirt_domains(c, only=["hv2"])["hv2"]
    assert c.wait_job(s.delete(f"{c.api_url}/api/v1/vms/{vm_name}").json()["id"])["state"] == "succeeded"


def test_a_restarted_worker_does_not_restore_xml_changed_in_zookeeper(xml_cluster, vm_name):
    """The reconciler defines a node's VMs again at start-up (the test driver forgets them): a VM whose XML was
    rewritten in ZooKeeper is not defined, and its failed reason says why."""
    c = xml_cluster
    assert c.define_vm(vm_name, 64, node="hv3")["state"] == "succeeded"
    evil = document(vm_name, top="<sysinfo type='fwcfg'><entry name='opt/x' file='/etc/shadow'/></sysinfo>")
    c.zk.set(c.schema.path("domain.xml", vm_name), evil.encode())
    c.workers["hv3"].stop()
    c.start_worker("hv3")
    c.wait_worker("hv3")
    reason = wait_until(lambda: c.zk.get(c.schema.path("domain.failed_reason", vm_name))[0].decode(), 30,
                        "the restore's failed reason")
    assert "xml_not_allowed on hv3: sysinfo[1]/entry[1]@file" in reason, reason
    assert vm_name not in libvirt_domains(c, only=["hv3"])["hv3"]
    assert c.wait_job(c.session().delete(f"{c.api_url}/api/v1/vms/{vm_name}").json()["id"])["state"] == "succeeded"


def _image(path, backing: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    command = ["qemu-img", "create", "-q", "-f", "qcow2", str(path)]
    command += ["-b", backing, "-F", "raw"] if backing else ["1M"]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def test_a_node_reads_what_an_image_header_and_a_link_would_open(xml_cluster, vm_root, vm_name):
    """Two things only the node can see: a qcow2 image whose header names ``/etc/shadow`` as its backing file, and
    a link in the VM's own directory to another VM's disk. The API lets both through; the node refuses both. An
    image whose backing file is the VM's own is defined."""
    c = xml_cluster
    own = vm_root / vm_name
    _image(own / "evil.qcow2", backing="/etc/shadow")
    _image(own / "base.qcow2")
    _image(own / "good.qcow2", backing=str(own / "base.qcow2"))
    (vm_root / "victim").mkdir()
    (vm_root / "victim" / "disk.img").write_bytes(b"")
    (own / "link.img").symlink_to(vm_root / "victim" / "disk.img")

    def disk(name: str, kind: str) -> str:
        return (f"<disk type='file' device='disk'><driver name='qemu' type='{kind}'/><source file='{own / name}'/>"
                f"<target dev='vda'/></disk>")

    s = c.session()
    for name, kind, needle in [("evil.qcow2", "qcow2", "backing file '/etc/shadow'"),
                               ("link.img", "raw", "leads to")]:
        r = s.post(f"{c.api_url}/api/v1/vms", json={"xml": document(vm_name, devices=disk(name, kind)),
                                                   "node": "hv1"}, timeout=30)
        assert r.status_code == 202, r.text
        job = c.wait_job(r.json()["id"])
        assert job["state"] == "failed" and job["reason"].startswith("xml_not_allowed on hv1: "), job
        assert needle in job["reason"], job["reason"]
    good = c.define_vm(vm_name, node="hv1", xml=document(vm_name, devices=disk("good.qcow2", "qcow2")))
    assert good["state"] == "succeeded", good
    assert c.wait_job(s.delete(f"{c.api_url}/api/v1/vms/{vm_name}").json()["id"])["state"] == "succeeded"
