"""reports/cells/<cell>/reproduce.sh (kmatrix.reports.reproduce) and the replay it runs
(kmatrix.guest.replay): rendered from a run's records, then, for real, a failed cell's script
run by itself boots the same kernel with the same argv and shows the same failure, and
refuses to boot when the artefacts it names are gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, child_env, qemu_left_after, run_kmatrix_pytest
from kmatrix.guest.replay import select
from kmatrix.reports import reproduce
from kmatrix.results.runs import Run, load_run
from kmatrix.results.schema import SCHEMA

CASES = DATA / "reprocases" / "test_repro_guest.py"
CELL = "deb-6.1-cloud/Nehalem/virtio"


def synthetic(tmp_path: Path, boot: dict[str, Any], journal: list[dict[str, Any]]) -> Run:
    cid = "k/Haswell/virtio"
    d = tmp_path / "cells" / "k__Haswell__virtio"
    d.mkdir(parents=True)
    (d / "commands.jsonl").write_text("".join(json.dumps(j) + "\n" for j in journal))
    doc = {
        "schema": SCHEMA,
        "run": {"id": "r1", "started": "now", "matrix": "/m/x.yaml"},
        "cells": [{"id": cid, "kernel": "k", "cpu": "Haswell", "device": "virtio",
                   "status": "fail", "boot": boot}],
        "results": [
            {"cell": cid, "nodeid": f"t.py::test_a[{cid}]", "outcome": "passed"},
            {"cell": cid, "nodeid": f"t.py::test_b[{cid}]", "outcome": "failed",
             "message": "assert 'Linux' == 'Plan9'"},
        ],
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(doc))
    return load_run(tmp_path)


BOOT = {
    "qemu_argv": [
        "qemu-system-x86_64", "-name", "kmatrix:k/Haswell/virtio", "-kernel", "/c/vmlinux",
        "-append", "console=ttyS0 quiet $HOME `x`", "-chardev",
        "socket,id=qmp,path=/tmp/kmx-abc/qmp.sock,server=on,wait=off",
        "-drive", "file=/tmp/kmx-abc/disk0.img,if=none",
    ],
    "rundir": "/tmp/kmx-abc",
    "boot_image": "/c/vmlinux",
    "initrd": "/c/initrd.cpio",
    "config": "/c/config",
    "digests": {"kernel": "aa" * 32, "initrd": "bb" * 32, "config": "cc" * 32},
    "boot_timeout": 45,
    "scratch_disk": {"disk0.img": 64},
}  # fmt: skip
JOURNAL = [
    {"test": "t.py::test_a[k/Haswell/virtio]", "command": "echo a", "timeout": 30,
     "exit_status": 0, "stdout_sha256": "x"},
    {"test": "t.py::test_b[k/Haswell/virtio]", "command": "cat /proc/x\necho 'q'", "timeout": 5,
     "exit_status": 0, "stdout_sha256": "y"},
    {"test": "t.py::test_c[k/Haswell/virtio]", "command": "echo c", "timeout": 30,
     "exit_status": 0, "stdout_sha256": "z"},
]  # fmt: skip


def test_script_from_the_run_records(tmp_path: Path) -> None:
    run = synthetic(tmp_path, BOOT, JOURNAL)
    [path] = reproduce.write(run, python="/venv/bin/python")
    text = path.read_text()
    assert os.access(path, os.X_OK)
    subprocess.run(["sh", "-n", str(path)], check=True)  # valid shell
    assert "-append 'console=ttyS0 quiet $HOME `x`'" in text, "quoted, never expanded"
    assert '-chardev "socket,id=qmp,path=${run}/qmp.sock,server=on,wait=off"' in text
    assert 'truncate -s 64M "$run/disk0.img"' in text
    assert "# Interactively: kmatrix shell k/Haswell/virtio -m /m/x.yaml" in text
    assert "#   $ cat /proc/x ... (2 lines)" in text
    assert "python=${KMATRIX_PYTHON:-/venv/bin/python}" in text
    digests = (path.parent / "reproduce.sha256").read_text().splitlines()
    assert digests == [f"{'aa' * 32}  /c/vmlinux", f"{'bb' * 32}  /c/initrd.cpio",
                       f"{'cc' * 32}  /c/config"]  # fmt: skip
    body = text.split("<<'KMX_REPLAY'\n", 1)[1].split("KMX_REPLAY\n")[0]
    header, *cmds = [json.loads(line) for line in body.splitlines()]
    assert header == {"cell": "k/Haswell/virtio", "boot": "ok", "boot_timeout": 45,
                      "failure": "assert 'Linux' == 'Plan9'"}  # fmt: skip
    assert [c["failing"] for c in cmds] == [False, True, False]
    assert [c["command"] for c in select(cmds, False)] == ["cat /proc/x\necho 'q'"]
    assert [c["command"] for c in select(cmds, True)] == ["echo a", "cat /proc/x\necho 'q'"]
    assert select(cmds, False, "test_b") == select(cmds, False)
    assert select(cmds, False, "test_a") == [] and select(cmds, True, "test_a") == []
    assert reproduce.commands_for(run, run.cells[0]) == {
        "shell": "kmatrix shell k/Haswell/virtio -m /m/x.yaml",
        "reproduce": "cells/k__Haswell__virtio/reproduce.sh",
    }


def test_build_failure_and_too_little_recorded(tmp_path: Path) -> None:
    run = synthetic(tmp_path / "a", {"failure": "build"}, [])
    [path] = reproduce.write(run, python="/py")
    assert path.read_text().rstrip().endswith("exec /py -m kmatrix build -m /m/x.yaml k")
    assert reproduce.write(synthetic(tmp_path / "b", {}, []), python="/py") == []


@pytest.mark.boot
def test_failed_cell_reproduces_by_itself(tmp_path: Path, private_tmp: Path) -> None:
    reports = tmp_path / "reports"
    run = run_kmatrix_pytest([CASES], reports, "-k", "deb-6.1-cloud", tmpdir=private_tmp)
    res = run.results()
    outcomes = {r["nodeid"].split("::")[1]: r["outcome"] for r in res["results"]}
    assert outcomes == {f"test_harmless[{CELL}]": "passed",
                        f"test_ostype_is_plan9[{CELL}]": "failed"}, run.log  # fmt: skip
    script = reports / "cells" / CELL.replace("/", "__") / "reproduce.sh"
    assert script.is_file(), run.log
    boot = res["cells"][0]["boot"]
    text = script.read_text()
    for arg in boot["qemu_argv"]:  # the run's own argv, only its socket directory new
        assert (arg.replace(boot["rundir"], "${run}") in text) or (arg in text), arg
    env = child_env(private_tmp)

    def sh(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, timeout=300,
            env={**env, **extra}, cwd=tmp_path,
        )  # fmt: skip

    # The failing test alone: ostype prints Linux as in the run, but the file an earlier
    # test made is missing, so its command now exits 1: the script says it differs.
    p = sh()
    assert "$ cat /proc/sys/kernel/ostype; test -f /tmp/state" in p.stdout, p.stdout + p.stderr
    assert (
        "Linux" in p.stdout and "the run's failure: AssertionError: ostype is 'Linux'" in p.stdout
    )
    assert "[exit 1; in the run 0 — DIFFERENT" in p.stdout and p.returncode == 1
    # With every command up to it (KMX_REPLAY_ALL), the cell behaves exactly as in the run.
    p = sh(KMX_REPLAY_ALL="1")
    assert "REPRODUCED: all 2 command(s) exited as in the run" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0
    assert (script.parent / "reproduce-console.log").stat().st_size > 0
    assert not qemu_left_after(str(private_tmp), 10)
    # Artefacts gone (here: a digest that no longer matches): it refuses to boot.
    sums = script.parent / "reproduce.sha256"
    sums.write_text(sums.read_text().replace(sums.read_text()[:8], "00000000", 1))
    p = sh()
    assert p.returncode == 3 and "not booting something else" in p.stderr, p.stderr
    assert "booting" not in p.stdout
    page = (reports / "index.html").read_text()
    assert "cells/deb-6.1-cloud__Nehalem__virtio/reproduce.sh" in page


@pytest.mark.parametrize("bad", ["", '{"boot": "ok"}\nnot json\n', '{"no": 1}\n'])
def test_replay_bad_input(bad: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "kmatrix.guest.replay", "--", "true"],
        input=bad, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and "bad input" in p.stderr
