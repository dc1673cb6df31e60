"""The CI examples (examples/ci/): each file parsed, its shard jobs' shell run for every shard
with a stand-in `kmx`/`kmatrix` that records its arguments (shard I of N, reports where the
merge looks), and its merge step run for real on synthetic shard reports laid out the way the
engine delivers them: every cell merged, none missing."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from synthetic import CELLS, cell_id
from test_merge import shard

from conftest import ROOT
from kmatrix.results.shard import parse_spec

EX = ROOT / "examples" / "ci"
ALL = [cell_id(*c) for c in CELLS]


def recorder(path: Path) -> None:
    """An executable that appends its argv (as JSON) to $KMX_RECORD and exits $KMX_EXIT."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "open(os.environ['KMX_RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "sys.exit(int(os.environ.get('KMX_EXIT', '0')))\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def real_kmatrix(path: Path) -> None:
    """The real `kmatrix` command, for the merge steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m kmatrix.cli "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


Done = subprocess.CompletedProcess[str]


def sh(script: str, cwd: Path, env: dict[str, str], shell: str = "bash") -> Done:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [shell, "-c", script], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
    )


def recorded(path: Path) -> list[list[str]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def synthetic_shards(dirs: dict[int, Path], total: int) -> None:
    """The three synthetic cells spread over `total` shards; dirs: shard number -> its
    reports directory (absent shards are left out; shards past the third get no cell)."""
    for i, d in dirs.items():
        shard(d, i, total, tuple(c for k, c in enumerate(CELLS) if k % total == i - 1))


def check_shard_argv(argv: list[str], i: int, n: int, reports: str) -> None:
    assert argv[:4] == ["run", "--run-dir", reports, "--"], argv
    spec = argv[argv.index("--kmatrix-shard") + 1]
    assert parse_spec(spec) == (i, n), spec


# --- GitHub Actions -----------------------------------------------------------------------------


def github() -> dict[str, Any]:
    doc = yaml.safe_load((EX / "github-actions.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def step(job: dict[str, Any], pred: Any) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in job["steps"] if pred(s)]
    assert len(found) == 1, [s.get("name") or s.get("uses") for s in job["steps"]]
    return found[0]


def test_github_actions_shards_and_merge(tmp_path: Path) -> None:
    jobs = github()["jobs"]
    shard_job = next(j for j in jobs.values() if "shard" in j.get("strategy", {}).get("matrix", {}))
    shards = shard_job["strategy"]["matrix"]["shard"]
    n = len(shards)
    assert shards == list(range(1, n + 1)) and n >= 2
    assert shard_job["strategy"]["fail-fast"] is False
    run = step(shard_job, lambda s: "--kmatrix-shard" in s.get("run", ""))["run"]
    upload = step(shard_job, lambda s: str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert "always()" in upload["if"]
    work = tmp_path / "shard-job"
    recorder(work / "kmx")
    names = []
    for i in shards:
        expand = {"${{ matrix.shard }}": str(i)}
        script = run
        for k, v in expand.items():
            script = script.replace(k, v)
        rec = tmp_path / f"gh-{i}.json"
        p = sh(script, work, {"KMX_RECORD": str(rec)})
        assert p.returncode == 0, p.stderr
        (argv,) = recorded(rec)
        reports = upload["with"]["path"].replace("${{ matrix.shard }}", str(i))
        check_shard_argv(argv, i, n, reports)  # the job uploads what kmatrix wrote
        names.append(upload["with"]["name"].replace("${{ matrix.shard }}", str(i)))
    assert len(set(names)) == n
    # With durations from an earlier run, every shard balances by them.
    (work / "durations.json").write_text("{}")
    rec = tmp_path / "gh-durations.json"
    assert (
        sh(run.replace("${{ matrix.shard }}", "1"), work, {"KMX_RECORD": str(rec)}).returncode == 0
    )
    assert "--kmatrix-durations=durations.json" in recorded(rec)[0]

    merge_job = next(j for j in jobs.values() if j is not shard_job)
    shard_name = next(k for k, j in jobs.items() if j is shard_job)
    needs = merge_job["needs"]
    assert shard_name in ([needs] if isinstance(needs, str) else needs)
    assert "always()" in merge_job["if"]
    dl = step(merge_job, lambda s: str(s.get("uses", "")).startswith("actions/download-artifact"))
    assert all(fnmatch.fnmatchcase(nm, dl["with"]["pattern"]) for nm in names)
    # download-artifact puts each artifact in its own directory under `path`.
    mwork = tmp_path / "merge-job"
    synthetic_shards(
        {i: mwork / dl["with"]["path"] / nm for i, nm in zip(shards, names, strict=True)}, n
    )
    real_kmatrix(mwork / ".venv" / "bin" / "kmatrix")
    merge_run = step(merge_job, lambda s: "kmatrix merge" in s.get("run", ""))["run"]
    p = sh(merge_run, mwork, {})
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{n} input(s)" in p.stdout and "complete:" in p.stdout, p.stdout
    out = re.search(r"kmatrix merge (\S+)", merge_run)
    assert out is not None
    merged = json.loads((mwork / out.group(1) / "results.json").read_text())
    assert [c["id"] for c in merged["cells"]] == ALL
    summary = step(merge_job, lambda s: "GITHUB_STEP_SUMMARY" in s.get("run", ""))["run"]
    assert (
        f"{out.group(1)}/summary.md" in summary and (mwork / out.group(1) / "summary.md").is_file()
    )


# --- GitLab CI ---------------------------------------------------------------------------------


def test_gitlab_parallel_shards_and_merge(tmp_path: Path) -> None:
    doc = yaml.safe_load((EX / "gitlab-ci.yml").read_text())
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    name, job = next((k, j) for k, j in jobs.items() if isinstance(j.get("parallel"), int))
    n = job["parallel"]
    assert n >= 2
    assert job["artifacts"]["when"] == "always"
    work = tmp_path / "shard-job"
    recorder(work / "kmx")
    script = "set -e\n" + "\n".join(job["script"])
    for i in range(1, n + 1):
        rec = tmp_path / f"gl-{i}.json"
        env = {"KMX_RECORD": str(rec), "CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(n)}
        p = sh(script, work, env)
        assert p.returncode == 0, p.stderr
        (argv,) = recorded(rec)
        reports = argv[2]
        check_shard_argv(argv, i, n, f"reports/shard-{i}")
        assert any(reports.startswith(a.rstrip("/")) for a in job["artifacts"]["paths"])
        assert fnmatch.fnmatchcase(
            f"{reports}/junit-cells.xml", job["artifacts"]["reports"]["junit"]
        )

    mname, merge = next(
        (k, j) for k, j in jobs.items() if "kmatrix merge" in "\n".join(j["script"])
    )
    assert doc["stages"].index(merge["stage"]) > doc["stages"].index(job["stage"])
    assert {"job": name, "artifacts": True} in merge["needs"]
    assert merge["when"] == "always"
    assert job["cache"]["key"] == merge["cache"]["key"]
    assert (job["cache"]["policy"], merge["cache"]["policy"]) == ("pull", "push")
    assert merge["cache"]["when"] == "always"
    # The needed jobs' artifacts are unpacked in place: reports/shard-1 .. reports/shard-N.
    mwork = tmp_path / "merge-job"
    synthetic_shards({i: mwork / "reports" / f"shard-{i}" for i in range(1, n + 1)}, n)
    real_kmatrix(mwork / ".venv" / "bin" / "kmatrix")
    line = next(ln for ln in merge["script"] if "kmatrix merge" in ln)
    p = sh(line, mwork, {})
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{n} input(s)" in p.stdout and "complete:" in p.stdout, p.stdout
    assert sh("\n".join(merge["after_script"]), mwork, {}).returncode == 0
    assert (mwork / job["cache"]["paths"][0]).is_file()  # durations for the next pipeline
    assert (
        fnmatch.fnmatchcase(
            "reports/merged/junit-cells.xml", merge["artifacts"]["reports"]["junit"]
        )
        and (mwork / "reports" / "merged" / "junit-cells.xml").is_file()
    )
    assert mname != name


# --- Kubernetes Indexed Job ----------------------------------------------------------------------


def k8s() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((EX / "kubernetes-indexed-job.yaml").read_text()) if d]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    jobs = [d for d in docs if d["kind"] == "Job"]
    shards = next(j for j in jobs if j["spec"].get("completionMode") == "Indexed")
    merge = next(j for j in jobs if j is not shards)
    return pvc, shards, merge


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("all_shards_finish", [True, False])
def test_kubernetes_indexed_job_shards_and_merge(tmp_path: Path, all_shards_finish: bool) -> None:
    pvc, shards, merge = k8s()
    spec = shards["spec"]
    n = spec["completions"]
    assert n >= 2 and 1 <= spec["parallelism"] <= n
    assert spec["backoffLimitPerIndex"] == 0  # a failed shard is never re-run into a pass
    assert spec["maxFailedIndexes"] >= n
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert env_of(c)["SHARDS"] == str(n)
    claim = pvc["metadata"]["name"]
    for job in (shards, merge):
        vols = job["spec"]["template"]["spec"]["volumes"]
        assert [v["persistentVolumeClaim"]["claimName"] for v in vols] == [claim]
    mount = c["volumeMounts"][0]["mountPath"]
    root = tmp_path / "volume"
    root.mkdir()
    bindir = tmp_path / "bin"
    recorder(bindir / "kmatrix")
    script = c["args"][0].replace(mount, str(root))
    finished = range(n) if all_shards_finish else range(n - 1)
    for index in finished:
        rec = tmp_path / f"k8s-{index}.json"
        env = {
            "KMX_RECORD": str(rec), "KMX_EXIT": "1", "JOB_COMPLETION_INDEX": str(index),
            "SHARDS": env_of(c)["SHARDS"], "PATH": f"{bindir}:{os.environ['PATH']}",
        }  # fmt: skip
        p = sh(script, tmp_path, env, shell="sh")
        assert p.returncode == 1, p.stderr  # the shard's failure status reaches Kubernetes
        (argv,) = recorded(rec)
        check_shard_argv(argv, index + 1, n, f"{root}/shard-{index + 1}")
        assert (root / f"shard-{index + 1}" / "done").is_file()
    # The merge pod waits for every shard's marker (or its deadline), then merges for real.
    synthetic_shards({i + 1: root / f"shard-{i + 1}" for i in finished}, n)
    (mc,) = merge["spec"]["template"]["spec"]["containers"]
    assert env_of(mc)["SHARDS"] == str(n)
    assert mc["volumeMounts"][0]["mountPath"] == mount
    mscript = mc["args"][0].replace(mount, str(root)).replace("sleep 15", "sleep 0.1")
    real_kmatrix(bindir / "kmatrix")
    env = {**env_of(mc), "WAIT_SECONDS": "2", "PATH": f"{bindir}:{os.environ['PATH']}"}
    p = sh(mscript, tmp_path, env, shell="sh")
    merged = json.loads((root / "merged" / "results.json").read_text())
    if all_shards_finish:
        assert p.returncode == 0, p.stdout + p.stderr
        assert [c["id"] for c in merged["cells"]] == ALL
    else:
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"MISSING shards: {n}/{n}" in p.stdout, p.stdout


def test_containerfile_installs_what_the_job_runs() -> None:
    text = (EX / "Containerfile").read_text()
    assert re.search(r"^FROM debian:12$", text, re.M)
    assert "./kmx setup" in text and "/kmatrix/.venv/bin" in text
    _, shards, merge = k8s()
    for job in (shards, merge):
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "kmatrix:latest" and "kmatrix" in c["args"][0]
