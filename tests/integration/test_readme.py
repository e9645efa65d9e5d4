"""The README's examples run as pasted, in order, against a fresh dev cluster (`pvc-dev up`), each ending with the
exit status its comment names (0 unless a comment says `exit N`)."""

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pvc_dev.services import wait_until

ROOT = Path(__file__).resolve().parents[2]
PVC_DEV = str(Path(sys.executable).with_name("pvc-dev"))
SKIP = "<!-- readme-test: not run"


def examples(readme: str) -> list[tuple[int, str, int]]:
    """Every command of every ```sh block not marked ``readme-test: not run``: (line number, command, expected
    exit status). A line ending in a backslash continues on the next; a comment line is not a command."""
    lines, found, i = readme.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```sh" and not (i > 0 and lines[i - 1].startswith(SKIP)):
            i += 1
            while lines[i].strip() != "```":
                start, command = i + 1, lines[i]
                while command.rstrip().endswith("\\"):
                    i += 1
                    command = command.rstrip()[:-1] + " " + lines[i].strip()
                code, _, comment = command.partition("  #")
                if code.strip() and not code.lstrip().startswith("#"):
                    status = re.search(r"\bexit (\d+)\b", comment)
                    found.append((start, code.strip(), int(status.group(1)) if status else 0))
                i += 1
        i += 1
    return found


def script(commands: list[tuple[int, str, int]]) -> str:
    """One bash script running the commands in order in one shell (``source`` and variables carry over), stopping
    at the first whose exit status is not the expected one."""
    out = ["exec </dev/null"]  # nothing answers a prompt: a command that asks must say so (exit 2)
    for line, command, status in commands:
        out.append(f"echo {shlex.quote(f'$ {command}')}")
        out.append(command)
        out.append(f'rc=$?; if [ $rc -ne {status} ]; then echo "README.md:{line}: exit $rc, expected {status}: "'
                   f'{shlex.quote(command)} >&2; exit 99; fi')
    return "\n".join(out) + "\necho README-EXAMPLES-DONE\n"


def test_the_parser_finds_every_example_with_its_status():
    """The README's blocks yield their commands (continuations joined) and the statuses their comments name."""
    found = examples((ROOT / "README.md").read_text())
    commands = [c for _, c, _ in found]
    assert "source .dev-cluster/env" in commands and "pvc --version" in commands
    assert ("pvc vm start batch1", 3) in [(c, s) for _, c, s in found]
    assert not any(c.startswith(("scripts/", ".venv/bin/python bench/")) for c in commands)
    assert any("-X POST $PVC_API_URL/api/v1/vms/db1/state" in c for c in commands)  # a continued line, joined
    assert len(found) >= 50


@pytest.mark.timeout(900)
def test_readme_examples_run_as_pasted_against_a_dev_cluster(tmp_path):
    """Every example, in order, in one shell beside the repository's .venv and examples/ (the dev cluster's
    directory is .dev-cluster, as the README says), with the statuses the README promises."""
    workdir = tmp_path / "repo"
    workdir.mkdir()
    for name in (".venv", "examples"):
        (workdir / name).symlink_to(ROOT / name)
    log = open(tmp_path / "dev.log", "w")
    launcher = subprocess.Popen([PVC_DEV, "--workdir", str(workdir / ".dev-cluster"), "up"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (workdir / ".dev-cluster" / "state.json").exists(), 180, "the dev cluster")
        body = script(examples((ROOT / "README.md").read_text()))
        (tmp_path / "readme.sh").write_text(body)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PVC_")}
        run = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=780)
        transcript = run.stdout[-6000:] + "\n--- stderr ---\n" + run.stderr[-4000:]
        assert run.returncode == 0 and "README-EXAMPLES-DONE" in run.stdout, transcript
    finally:
        os.killpg(launcher.pid, signal.SIGINT)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
        log.close()
