"""The ``pvc`` CLI as an operator runs it: real processes against the module's cluster."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvc_cli.main import cli
from pvc_dev.cluster import domain_xml
from tests.conftest import consumer

PVC = [str(Path(sys.executable).with_name("pvc"))]


@pytest.fixture
def pvc(cluster):
    def run(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
        # The developer's own config must not leak in; a test's own PVC_CLI_CONFIG must reach the CLI.
        mine = {k: v for k, v in os.environ.items() if k != "PVC_CLI_CONFIG"}
        full_env = {**mine, **cluster.client_env(), **(env or {})}
        return subprocess.run(PVC + list(args), capture_output=True, text=True, env=full_env, input=stdin,
                              timeout=60)

    return run


def walk(group, path=()):
    for name, command in getattr(group, "commands", {}).items():
        yield (*path, name)
        yield from walk(command, (*path, name))


def test_every_command_has_help():
    """Every command and group answers --help with a description."""
    runner = CliRunner()
    commands = list(walk(cli))
    assert {("vm", "start"), ("vm", "define"), ("job", "watch"), ("node", "info"), ("cluster", "init")} \
        <= set(commands)
    for command in commands:
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_sriov_vf_set_waits_for_its_node_and_lists_show_it(cluster, pvc):
    """`pvc sriov vf set` waits for the node's job; list/info show the settings; a bad value exits 3 naming it."""
    done = pvc("sriov", "vf", "set", "hv3", "ens1f1v1", "--vlan-id", "300", "--no-spoof-check", "--mtu", "1450")
    assert done.returncode == 0, done.stderr
    assert "succeeded: applied mtu=1450, spoof_check=false, vlan_id=300" in done.stdout
    info = json.loads(pvc("sriov", "vf", "info", "hv3", "ens1f1v1", "-o", "json").stdout)
    assert (info["config"]["vlan_id"], info["config"]["spoof_check"], info["mtu"], info["in_sync"]) == \
        (300, False, 1450, True)
    listed = pvc("sriov", "vf", "list", "--node", "hv3", "--pf", "ens1f1")
    assert "ens1f1v1" in listed.stdout and "300" in listed.stdout and "ens1f0v0" not in listed.stdout
    assert "ens1f0" in pvc("sriov", "pf", "list", "--node", "hv3").stdout
    bad = pvc("sriov", "vf", "set", "hv3", "ens1f1v1", "--vlan-qos", "9")
    assert bad.returncode == 3 and "vlan_qos" in bad.stderr and "Traceback" not in bad.stderr
    assert pvc("sriov", "vf", "set", "hv3", "ens1f1v1").returncode == 2  # nothing to change: usage error


def test_start_waits_with_progress_then_conflict_exits_nonzero(cluster, pvc, vm_name):
    """`pvc vm start` shows progress and exits 0; the same on the running VM prints the 409 and exits 3."""
    cluster.define_vm(vm_name, node="hv2")
    done = pvc("vm", "start", vm_name)
    assert done.returncode == 0, done.stderr
    assert "succeeded on hv2 (VM running)" in done.stdout
    assert f"starting {vm_name} on hv2" in done.stderr and "100%" in done.stderr
    again = pvc("vm", "start", vm_name)
    assert again.returncode == 3
    assert f"cannot start VM {vm_name}: it is running [invalid_state]" in again.stderr
    assert "Traceback" not in again.stderr


def test_no_wait_then_watch_and_json_output(cluster, pvc, vm_name):
    """--no-wait returns the job at once; `job watch` follows it; -o json is parseable everywhere."""
    cluster.define_vm(vm_name, node="hv1")
    queued = pvc("vm", "start", vm_name, "--no-wait", "-o", "json")
    assert queued.returncode == 0
    job = json.loads(queued.stdout)
    watched = pvc("job", "watch", job["id"], "-o", "json")
    assert watched.returncode == 0 and json.loads(watched.stdout)["state"] == "succeeded"
    for args in (("vm", "list"), ("node", "list"), ("job", "list", "--vm", vm_name), ("vm", "info", vm_name),
                 ("node", "info", "hv1"), ("job", "show", job["id"]), ("cluster", "status")):
        out = pvc(*args, "-o", "json")
        assert out.returncode == 0, (args, out.stderr)
        json.loads(out.stdout)
    assert vm_name in pvc("vm", "list").stdout


def test_define_rejected_by_libvirt_fails_and_leaves_nothing(cluster, pvc, tmp_path):
    """XML libvirt cannot read: the API reads it as libvirt does and refuses it with libvirt's reason, exit 3, and
    no VM record is made. (A node that refuses a define it was sent: tests/integration/test_xml_boundary.py.)"""
    xml = tmp_path / "bad.xml"
    disk = ("<devices><disk type='file'><source file='/var/lib/libvirt/images/badbus/x'/>"
            "<target dev='vda' bus='nonsense'/></disk></devices>")
    xml.write_text(domain_xml("badbus").replace("</os>", "</os>" + disk))
    result = pvc("vm", "define", str(xml), "--node", "hv1")
    assert result.returncode == 3
    assert "libvirt cannot read it" in result.stderr and "nonsense" in result.stderr, result.stderr
    assert pvc("vm", "info", "badbus").returncode == 3


def test_define_from_stdin_with_meta(pvc, vm_name):
    """`pvc vm define -` reads the XML from stdin and records the meta options."""
    result = pvc("vm", "define", "-", "--limit", "hv1,hv3", "--selector", "vms", "--autostart", "-o", "json",
                 stdin=domain_xml(vm_name))
    assert result.returncode == 0, result.stderr
    info = json.loads(pvc("vm", "info", vm_name, "-o", "json").stdout)
    assert info["meta"]["node_limit"] == ["hv1", "hv3"] and info["meta"]["autostart"] is True
    assert info["node"] in ("hv1", "hv3")


def test_timeout_exits_4_and_the_job_goes_on(cluster, pvc, vm_name):
    """A wait bounded by --timeout exits 4 and says how to follow the job, which still completes."""
    cluster.define_vm(vm_name, node="hv3", start=True)
    worker = cluster.workers["hv3"]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        result = pvc("vm", "stop", vm_name, "--timeout", "0.3")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert result.returncode == 4, result.stderr
    assert "pvc job watch" in result.stdout
    job_id = result.stdout.split()[1]
    assert cluster.wait_job(job_id)["state"] == "succeeded"


def test_connection_errors_are_one_line(pvc, tmp_path):
    """Unreachable API: exit 5; wrong token: exit 3; a config file supplies URL and token."""
    down = pvc("vm", "list", env={"PVC_API_URL": "http://127.0.0.1:9"})
    assert down.returncode == 5 and "cannot reach the pvc API" in down.stderr and "Traceback" not in down.stderr
    bad = pvc("vm", "list", env={"PVC_API_TOKEN": "wrong"})
    assert bad.returncode == 3 and "[unauthorised]" in bad.stderr
    config = tmp_path / "cli.toml"
    missing = pvc("--config", str(tmp_path / "nope.toml"), "vm", "list")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    config.write_text("api_url = 'http://127.0.0.1:9'\n")
    assert pvc("vm", "list", env={"PVC_CLI_CONFIG": str(config), "PVC_API_URL": ""}).returncode == 5


def test_node_flush_and_ready_wait_with_per_vm_lines(cluster, pvc, vm_name):
    """`pvc node flush` waits, shows a line per VM, ends with the count; `pvc node ready` brings them back."""
    cluster.define_vm(vm_name, 128, node="hv3", start=True)
    flushed = pvc("node", "flush", "hv3")
    assert flushed.returncode == 0, flushed.stderr
    assert f"{vm_name}: migrate done" in flushed.stderr and "VM(s) done" in flushed.stdout
    assert "flushed" in pvc("node", "info", "hv3").stdout
    noop = pvc("node", "flush", "hv3", "-o", "json")
    assert noop.returncode == 0 and json.loads(noop.stdout)["result"]["noop"]
    ready = pvc("node", "ready", "hv3")
    assert ready.returncode == 0 and "unflush hv3: succeeded" in ready.stdout, ready.stdout
    limits = pvc("cluster", "limits", "--out", "3", "-o", "json")
    assert limits.returncode == 0 and json.loads(limits.stdout)["migrate_out_per_node"] == 3
    assert pvc("cluster", "limits", "--out", "0").returncode == 2


def test_cluster_status_maintenance_and_node_info_show_ha_state(pvc):
    """Status names the primary and node daemon states; maintenance on/off shows fencing disabled/enabled; node
    info shows keepalive age and IPMI health, never the IPMI password."""
    from pvc_dev.bmc import BMC_PASSWORD

    status = pvc("cluster", "status")
    assert status.returncode == 0 and "primary node: hv" in status.stdout and "daemon run" in status.stdout
    on = pvc("cluster", "maintenance", "on")
    assert on.returncode == 0 and "DISABLED" in on.stdout
    assert "fencing disabled (maintenance mode)" in pvc("cluster", "status").stdout
    assert json.loads(pvc("cluster", "maintenance", "off", "-o", "json").stdout) == {"maintenance": False}
    info = pvc("node", "info", "hv1")
    assert "keepalive age" in info.stdout and "IPMI" in info.stdout and ": ok" in info.stdout, info.stdout
    assert BMC_PASSWORD not in info.stdout + pvc("node", "info", "hv1", "-o", "json").stdout


def _bad_inputs(cluster, tmp_path: Path) -> list[tuple[list[str], dict, int, str]]:
    binary = tmp_path / "binary.xml"
    binary.write_bytes(bytes(range(256)))
    not_xml = tmp_path / "notes.txt"
    not_xml.write_text("this is not a domain\n")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("api_url = [unterminated\n")
    api = cluster.api_url
    return [
        (["--api-url", "foo", "vm", "list"], {}, 2, "is not http(s)://host"),
        (["--api-url", "ftp://127.0.0.1", "vm", "list"], {}, 2, "is not http(s)://host"),
        (["vm", "list"], {"PVC_API_URL": "127.0.0.1:7370"}, 2, "is not http(s)://host"),
        (["--api-url", "http://127.0.0.1:9", "vm", "list"], {}, 5, "cannot reach the pvc API"),
        (["--api-url", f"{api}/pvc", "vm", "list"], {}, 3, "no API endpoint GET /pvc/api/v1/vms"),
        (["--config", str(tmp_path / "missing.toml"), "vm", "list"], {}, 2, "missing.toml (--config) does not exist"),
        (["vm", "list"], {"PVC_CLI_CONFIG": str(tmp_path / "gone.toml")}, 2, "gone.toml (PVC_CLI_CONFIG) does not"),
        (["--config", str(bad_toml), "vm", "list"], {}, 2, "cannot read the CLI config file"),
        (["--config", str(binary), "vm", "list"], {}, 2, "cannot read the CLI config file"),
        (["vm", "define", str(binary)], {}, 2, "is not a text file"),
        (["vm", "define", str(tmp_path / "absent.xml")], {}, 2, "No such file or directory"),
        (["vm", "define", str(not_xml)], {}, 3, "[invalid_request]"),
        (["vm", "info", "no-such-vm"], {}, 3, "[vm_not_found]"),
        (["vm", "start"], {}, 2, "Missing argument"),
        (["vm", "list", "-o", "yaml"], {}, 2, "Invalid value for '-o'"),
        (["job", "watch", "nope", "--timeout", "-1"], {}, 2, "Invalid value for '--timeout'"),
        (["vm", "undefine", "no-such-vm"], {}, 2, "pass --yes"),  # stdin closed: no answer
        (["nonsense"], {}, 2, "No such command"),
    ]


def test_user_mistakes_exit_with_their_documented_status_and_no_traceback(cluster, pvc, tmp_path):
    """Each bad URL, config, file or flag gets one clear line and its documented exit status, never a traceback."""
    for args, env, status, says in _bad_inputs(cluster, tmp_path):
        result = pvc(*args, env=env, stdin="")
        assert (result.returncode, "Traceback" in result.stderr) == (status, False), (args, result.stderr)
        assert says in result.stderr, (args, result.stderr)


def test_pointed_at_flower_the_cli_names_the_url_instead_of_printing_html(cluster, pvc):
    """Flower's answer is not the pvc API's JSON: exit 3 naming the URL, no HTML on the terminal."""
    flower = cluster.start_flower()
    result = pvc("--api-url", flower.info["url"], "vm", "list")
    assert result.returncode == 3, result.stderr
    assert f"{flower.info['url']}/api/v1/vms answered HTTP" in result.stderr
    assert "is the API URL" in result.stderr and "<" not in result.stderr and "Traceback" not in result.stderr


def test_answering_no_changes_nothing_and_exits_0(cluster, pvc, vm_name):
    """Declining `vm undefine` is not a failure: exit 0, "nothing done", the VM stays."""
    cluster.define_vm(vm_name, node="hv1")
    result = pvc("vm", "undefine", vm_name, stdin="n\n")
    assert (result.returncode, "nothing done" in result.stderr) == (0, True), result.stderr
    assert pvc("vm", "info", vm_name).returncode == 0


def test_version_is_printed():
    """`pvc --version` prints the installed version."""
    result = subprocess.run(PVC + ["--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("pvc ") and result.stdout.split()[1][0].isdigit()


def from_a_terminal(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT as a shell on a terminal leaves it (default), whatever this process's is.

    Why: twice in whole-suite runs under two test processes, the CLI ignored three Ctrl-C; its /proc status then
    showed SIGINT and SIGQUIT ignored (SigIgn 0x1001006), inherited from the test process at the moment it forked,
    as C's system() leaves them while its child runs (some library in the test process, not found). A process
    starts with the dispositions it inherits, and a shell cannot undo an ignored signal: this resets it, then
    execs ``argv``."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *argv]


def test_ctrl_c_while_waiting_says_the_job_goes_on_and_exits_130(cluster, api, vm_name):
    """Ctrl-C during a wait stops only the wait: exit 130, the job's id and how to follow it; the job completes."""
    cluster.define_vm(vm_name, node="hv3", start=True)
    consumer(cluster, "hv3", on=False)  # the stop job waits in hv3's queue; hv3 stays alive (no fence, no janitor)
    waiting = None
    try:
        # PYTHONFAULTHANDLER: should the CLI not end, SIGABRT makes it print where each of its threads is.
        waiting = subprocess.Popen(from_a_terminal(PVC + ["vm", "stop", vm_name]), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **cluster.client_env(), "PYTHONFAULTHANDLER": "1"})
        first = waiting.stderr.readline()  # the wait's first progress line: the job exists and is being watched
        job = api.get(f"{api.base}/vms/{vm_name}").json()["active_job"]
        err, stuck = "", ""
        for _attempt in range(3):
            waiting.send_signal(signal.SIGINT)
            try:
                err = waiting.communicate(timeout=10)[1]
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            stuck = Path(f"/proc/{waiting.pid}/status").read_text()
            waiting.send_signal(signal.SIGABRT)
            err = waiting.communicate(timeout=10)[1]
    finally:
        consumer(cluster, "hv3", on=True)
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 130, f"{first}{err}\n{stuck}"
    assert f"stopped waiting; job {job} goes on: `pvc job watch {job}`" in err
    assert "Traceback" not in err and "Aborted" not in err
    assert cluster.wait_job(job)["state"] == "succeeded"


def test_the_example_vm_defines_and_shows_its_xml_indented(cluster, pvc):
    """examples/test-vm.xml defines as is; `vm info --xml` shows a one-line definition indented; `job show` gives
    absolute times, durations and the result line by line."""
    example = Path(__file__).resolve().parents[2] / "examples" / "test-vm.xml"
    defined = pvc("vm", "define", str(example), "--node", "hv2", "--no-wait", "-o", "json")
    assert defined.returncode == 0, defined.stderr
    job_id = json.loads(defined.stdout)["id"]
    assert cluster.wait_job(job_id)["state"] == "succeeded"
    shown = pvc("job", "show", job_id)
    assert shown.returncode == 0 and "{" not in shown.stdout.split("result:")[1].splitlines()[0]
    assert " ran " in shown.stdout and "finished: 20" in shown.stdout
    try:
        one_line = pvc("vm", "define", "-", "--node", "hv2", stdin=domain_xml("example-oneline"))
        assert one_line.returncode == 0, one_line.stderr
        info = pvc("vm", "info", "example-oneline", "--xml")
        assert "\n  <memory" in info.stdout and "\n  <os>" in info.stdout
    finally:
        for vm in ("example", "example-oneline"):
            pvc("vm", "undefine", vm, "--yes")


def complete(cluster, words: str, env: dict | None = None) -> list[str]:
    """What bash completion offers after ``words`` (click's protocol: type,value lines)."""
    full = {k: v for k, v in os.environ.items() if k != "PVC_CLI_CONFIG"}
    full.update(cluster.client_env(), _PVC_COMPLETE="bash_complete", COMP_WORDS=words,
                COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)), **(env or {}))
    out = subprocess.run(PVC, capture_output=True, text=True, env=full, timeout=30)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines() if line.startswith("plain,")]


def test_completion_offers_the_clusters_vm_node_and_job_names(cluster, vm_name):
    """Bash completion completes VM names, node names and job ids from the API, and nothing (no error) when the
    API cannot be reached."""
    defined = cluster.define_vm(vm_name, node="hv1")
    assert vm_name in complete(cluster, f"pvc vm start {vm_name[:4]}")
    assert complete(cluster, "pvc node info hv") == ["hv1", "hv2", "hv3"]
    assert complete(cluster, "pvc vm migrate x --target hv2") == ["hv2"]
    assert defined["id"] in complete(cluster, f"pvc job show {defined['id'][:6]}")
    assert complete(cluster, "pvc vm start ", env={"PVC_API_URL": "http://127.0.0.1:9"}) == []
