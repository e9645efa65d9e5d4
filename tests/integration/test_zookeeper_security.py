"""ZooKeeper is readable and writable by pvc's identity alone, and the IPMI passwords in it are sealed."""

import socket
import stat
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE

from pvc_dev.bmc import BMC_PASSWORD
from pvc_dev.invariants import zk_snapshot
from pvc_tasks.secrets import PREFIX, SecretError, new_key, unseal


@pytest.fixture
def outsider(cluster):
    """A kazoo client on the cluster's tree that does not authenticate (anyone on the network)."""
    zk = KazooClient(hosts=cluster.zk_hosts, timeout=10)
    zk.start(timeout=15)
    yield zk
    zk.stop()
    zk.close()


def _denied(call) -> bool:
    """True when ZooKeeper refused ``call`` for want of rights (or the node was deleted meanwhile: a lock, a job)."""
    try:
        call()
    except (NoAuthError, NoNodeError):
        return True
    return False


def test_an_unauthenticated_client_reads_and_writes_nothing(cluster, outsider):
    """Every znode of the cluster (the chroot included) refuses an unauthenticated reader and writer."""
    schema = cluster.schema
    paths = sorted(zk_snapshot(cluster.zk))
    assert len(paths) > 100 and "/" in paths
    readable = [p for p in paths if not _denied(lambda p=p: outsider.get(p))]
    listable = [p for p in paths if not _denied(lambda p=p: outsider.get_children(p))]
    assert readable == [] and listable == []
    maintenance = schema.path("base.config.maintenance")
    xml_parent = schema.path("domain", "any-vm").rsplit("/", 1)[0]
    assert _denied(lambda: outsider.set(maintenance, b"true"))
    assert _denied(lambda: outsider.create(f"{xml_parent}/intruder", b"<domain/>"))
    assert _denied(lambda: outsider.create("/intruder", b""))
    assert _denied(lambda: outsider.delete(schema.path("base.config.maintenance")))
    assert _denied(lambda: outsider.set_acls(maintenance, OPEN_ACL_UNSAFE))
    assert cluster.zk.get(maintenance)[0] in (b"true", b"false")


def test_the_ipmi_password_is_sealed_with_a_key_that_is_not_in_zookeeper(cluster):
    """pvc itself reads the stored password only as a sealed token; the workers' key opens it, another key fails."""
    stored = cluster.zk.get(cluster.schema.path("node.ipmi.password", "hv1"))[0].decode()
    assert stored.startswith(PREFIX) and BMC_PASSWORD not in stored
    assert unseal(stored, cluster.secret_key) == BMC_PASSWORD
    with pytest.raises(SecretError, match="another secret_key"):
        unseal(stored, new_key())
    every_value = b"".join(zk_snapshot(cluster.zk).values())
    assert BMC_PASSWORD.encode() not in every_value and cluster.secret_key.encode() not in every_value


def test_upgrade_puts_the_acl_on_a_cluster_created_open(cluster, api, outsider):
    """A tree created before ACLs existed (world-readable) is closed by ``pvc cluster upgrade``; repeating it
    changes nothing."""
    opened = sorted(zk_snapshot(cluster.zk))
    for path in opened:
        try:
            cluster.zk.set_acls(path, OPEN_ACL_UNSAFE)
        except NoNodeError:
            pass
    assert outsider.get(cluster.schema.path("base.config.maintenance"))
    r = api.post(f"{api.base}/cluster/upgrade")
    assert r.status_code == 200, r.text
    assert r.json()["secured"] >= len(opened) - 5  # a few (locks, ephemeral) may have gone meanwhile
    assert [p for p in opened if not _denied(lambda p=p: outsider.get(p))] == []
    assert api.post(f"{api.base}/cluster/upgrade").json()["secured"] == 0


def _four_letter(port: int, word: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(word)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_the_server_keeps_its_data_private_and_tells_strangers_little(cluster):
    """The data directory (snapshots, transaction log) is 0700; of the four-letter words only ruok and srvr are
    answered."""
    server = cluster.zookeeper
    workdir = Path(server.log_path).parent
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700 and stat.S_IMODE((workdir / "data").stat().st_mode) == 0o700
    port = int(server.info["port"])
    assert _four_letter(port, b"ruok") == b"imok" and b"Zxid" in _four_letter(port, b"srvr")
    for word in (b"envi", b"conf", b"cons", b"dump", b"wchp", b"mntr"):
        assert b"not in the whitelist" in _four_letter(port, word), word


def test_init_and_upgrade_refuse_an_ensemble_root_unless_told_it_is_pvcs_alone(make_cluster):
    """An API whose ZooKeeper setting has no chroot refuses init and upgrade (409 ``no_chroot``) and leaves another
    tenant's top-level node as it was; with ``whole_ensemble`` it goes ahead (and that node gets pvc's ACL, which is
    exactly what the flag says is fine)."""
    from pvc_tasks.config import load_settings
    from pvc_web.app import create_app

    c = make_cluster(own_zookeeper=True)
    tenant = KazooClient(hosts=c.zk_servers, timeout=5)
    tenant.start(timeout=15)
    try:
        tenant.create("/other-tenant", b"theirs", acl=OPEN_ACL_UNSAFE)
        app = create_app(load_settings(env={**c.env(), "PVC_ZOOKEEPER": c.zk_servers}))
        client, headers = app.test_client(), {"X-Api-Key": c.token, "Content-Type": "application/json"}
        try:
            for path in ("/api/v1/cluster/init", "/api/v1/cluster/upgrade"):
                r = client.post(path, json={}, headers=headers)
                assert r.status_code == 409 and r.json["error"] == "no_chroot", r.json
                assert "--whole-ensemble" in r.json["message"]
            assert tenant.get_acls("/other-tenant")[0] == OPEN_ACL_UNSAFE
            assert tenant.exists("/nodes") is None  # init wrote nothing at the root
            r = client.post("/api/v1/cluster/init", json={"whole_ensemble": True}, headers=headers)
            assert r.status_code == 200 and r.json["secured"] >= 1, r.json
            with pytest.raises(NoAuthError):
                tenant.get("/other-tenant")
        finally:
            app.extensions["pvc_health"].stop()
            app.extensions["pvc"].stop()
    finally:
        tenant.stop()
        tenant.close()
