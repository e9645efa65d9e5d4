"""A cluster whose ZooKeeper speaks mutual TLS: every pvc process connects over it; a client without TLS, trusting
another CA, or without a certificate of the cluster's CA, gets nowhere."""

import subprocess

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

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


def test_a_cluster_over_tls_runs_jobs_and_other_clients_get_nowhere(make_cluster, vm_name, tmp_path):
    """Workers and the API reach ZooKeeper over mutual TLS (a define and start succeed); plain TCP, TLS trusting a
    different CA, or TLS without a client certificate cannot connect to the server's TLS port."""
    c = make_cluster(NODES[:2], zookeeper_tls=True)
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
