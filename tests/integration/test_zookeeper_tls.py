"""A cluster whose ZooKeeper speaks mutual TLS: every pvc process connects over it; a client without TLS, trusting
another CA, or without a certificate of the cluster's CA, gets nowhere."""

import subprocess

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from pvc_tasks.config import load_settings
from pvc_tasks.zkclient import connect, tls_context
from tests.conftest import NODES


def _refused(**options) -> bool:
    zk = KazooClient(timeout=2, **options)
    try:
        zk.start(timeout=4)
    except KazooTimeoutError:
        return True
    finally:
        zk.stop()
        zk.close()
    return False


@pytest.fixture(scope="module")
def tls_cluster(shared_cluster):
    return shared_cluster("tls", NODES[:2], zookeeper_tls=True)


def test_a_cluster_over_tls_runs_jobs_and_other_clients_get_nowhere(tls_cluster, vm_name, tmp_path):
    """Workers and the API reach ZooKeeper over mutual TLS (a define and start succeed); plain TCP, TLS trusting a
    different CA, or TLS without a client certificate cannot connect to the server's TLS port."""
    c = tls_cluster
    assert c.env()["PVC_ZOOKEEPER"].startswith(c.zookeeper.info["tls_hosts"])
    assert c.define_vm(vm_name, node="hv2", start=True)["state"] == "succeeded"
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(other_ca), "-days", "1", "-subj", "/CN=someone-else"], check=True, capture_output=True)
    hosts = c.zookeeper.info["tls_hosts"]
    assert _refused(hosts=hosts)
    assert _refused(hosts=hosts, use_ssl=True, verify_certs=True, ca=str(other_ca))
    info = c.zookeeper.info
    assert _refused(hosts=hosts, use_ssl=True, verify_certs=True, ca=info["ca"])
    assert not _refused(hosts=hosts, use_ssl=True, verify_certs=True, ca=info["ca"], certfile=info["client_cert"],
                        keyfile=info["client_key"])


def test_pvc_checks_the_servers_name_and_trusts_only_the_clusters_ca(tls_cluster):
    """pvc's own client (``pvc_tasks.zkclient.connect``) connects by the names the server's certificate carries
    (127.0.0.1, localhost); by another name for the same server (``127.1``) it is refused, and connects once the
    name check is turned off: the check is what refused it. Its TLS context holds the cluster's CA and no other."""
    c = tls_cluster
    port = c.zookeeper.info["tls_hosts"].rsplit(":", 1)[1]
    env = {**c.env(), "PVC_ZOOKEEPER": ""}

    def connects(host: str, **extra: str) -> bool:
        zk = connect(load_settings(env={**env, "PVC_ZOOKEEPER": f"{host}:{port}", **extra}), timeout=2)
        try:
            zk.start(timeout=4)
            return zk.exists("/") is not None
        except KazooTimeoutError:
            return False
        finally:
            zk.stop()
            zk.close()

    assert connects("127.0.0.1") and connects("localhost")
    assert not connects("127.1")
    assert connects("127.1", PVC_ZOOKEEPER_TLS_CHECK_HOSTNAME="false")
    assert [ca["subject"] for ca in tls_context(load_settings(env=env)).get_ca_certs()] == \
        [((("commonName", "pvc-dev-ca"),),)]
