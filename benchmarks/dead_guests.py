#!/usr/bin/env python3
"""How long kmatrix takes to give up on a dead guest (docs/verdicts.md quotes these).

    .venv/bin/python benchmarks/dead_guests.py [--reps 3] [--json out.json]

Sections, each repeated --reps times, with the host's load average printed alongside:
  halt     a Debian 6.1 cloud kernel booted with acpi=off cannot power off: it prints
           "reboot: System halted" and halts. Time from the poweroff request to QEMU
           stopped (an upper bound on halt -> stopped); the same with loglevel=0, where only
           the vCPU states tell; and, for scale, a normal poweroff of the same kernel.
  v3       matrix/patched.yaml's kmx-6.12-v3/Nehalem/virtio: an x86-64-v3 kernel on a CPU
           model without BMI2, which dies before printing anything. Time from `Guest.start()`
           to its no-boot verdict, against the cell's boot_timeout (what it waited before).
           Only when the build cache already holds the kernel (`kmatrix build -m
           matrix/patched.yaml`); never builds.
  watch    what the watching costs a boot that succeeds: the 6.1 cloud cell booted to its
           agent with the watch (two monitor reads a second) and without it, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmatrix.build.builder import cached_build  # noqa: E402
from kmatrix.guest.guest import BootFailure, Guest  # noqa: E402
from kmatrix.kernels import load_matrix  # noqa: E402
from kmatrix.vm.liveness import Sample  # noqa: E402

TWO = ROOT / "tests" / "data" / "matrices" / "two.yaml"
PATCHED = ROOT / "matrix" / "patched.yaml"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def matrix_with_args(args: str, work: Path) -> Path:
    text = TWO.read_text()
    deb = "deb: linux-image-6.1.0-57-cloud-amd64-unsigned"
    text = text.replace(deb, f"{deb}\n    kernel_args: {args}") if args else text
    text = text.replace("../../../matrix/devices/", str(ROOT / "matrix" / "devices") + "/")
    path = work / f"m{abs(hash(args))}.yaml"
    path.write_text(text)
    return path


def poweroff_once(args: str, work: Path) -> dict[str, object]:
    m = load_matrix(matrix_with_args(args, work))
    g = Guest(m.cell("deb-6.1-cloud/Nehalem/virtio"), Path(tempfile.mkdtemp(dir=work)), "tcg")
    g.start()
    try:
        t0 = time.monotonic()
        clean = g.poweroff(timeout=120)
        took = time.monotonic() - t0
    finally:
        g.stop()
    return {"seconds": round(took, 3), "clean": clean, "stopped": g.record.stopped[:160]}


def v3_once(work: Path) -> dict[str, object] | None:
    m = load_matrix(PATCHED)
    cell = m.cell("kmx-6.12-v3/Nehalem/virtio")
    if cell.kernel.build is None or cached_build(cell.kernel.build) is None:
        return None
    g = Guest(cell, Path(tempfile.mkdtemp(dir=work)), "tcg")
    g.prepare()
    t0 = time.monotonic()
    try:
        g.start()
        verdict = "booted (unexpected)"
    except BootFailure as e:
        verdict = str(e).splitlines()[0]
    finally:
        took = time.monotonic() - t0
        g.stop(collect=False)
    return {"seconds": round(took, 3), "boot_timeout": cell.boot_timeout, "verdict": verdict}


def boot_once(watch: bool, work: Path) -> dict[str, object]:
    m = load_matrix(matrix_with_args("", work))
    g = Guest(m.cell("deb-6.1-cloud/Nehalem/virtio"), Path(tempfile.mkdtemp(dir=work)), "tcg")
    if not watch:
        g._sample = lambda: Sample(time.monotonic(), (), 0.0, 0)  # type: ignore[method-assign]
    g.prepare()
    try:
        g.start()
    finally:
        g.stop(collect=False)
    return {"seconds": round(g.record.boot_seconds or 0.0, 3)}


def summary(name: str, runs: list[dict[str, object]]) -> None:
    secs = [float(r["seconds"]) for r in runs]  # type: ignore[arg-type]
    print(
        f"{name}: median {statistics.median(secs):.2f}s [{min(secs):.2f}-{max(secs):.2f}] "
        f"n={len(secs)}"
    )
    print(f"    {runs[-1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sections", default="halt,v3,watch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict[str, object] = {"load_before": load()}
    with tempfile.TemporaryDirectory(prefix="kmx-dead-") as tmp:
        work = Path(tmp)
        if "halt" in args.sections:
            for name, kargs in (
                ("poweroff, acpi=off (console line)", "[acpi=off]"),
                ("poweroff, acpi=off loglevel=0 (vCPU states)", "[acpi=off, loglevel=0]"),
                ("poweroff, normal (for scale)", ""),
            ):
                runs = [poweroff_once(kargs, work) for _ in range(args.reps)]
                out[name] = runs
                summary(name, runs)
        if "v3" in args.sections:
            runs_v3 = []
            for _ in range(args.reps):
                r = v3_once(work)
                if r is None:
                    print("v3: kmx-6.12-v3 is not in the build cache; skipped")
                    break
                runs_v3.append(r)
            if runs_v3:
                out["v3 on Nehalem: time to the no-boot verdict"] = runs_v3
                summary("v3 on Nehalem: time to the no-boot verdict", runs_v3)
        if "watch" in args.sections:
            runs_on: list[dict[str, object]] = []
            runs_off: list[dict[str, object]] = []
            for _ in range(args.reps):
                runs_on.append(boot_once(True, work))
                runs_off.append(boot_once(False, work))
            out["boot with the watch"], out["boot without it"] = runs_on, runs_off
            summary("boot with the watch", runs_on)
            summary("boot without it", runs_off)
    out["load_after"] = load()
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
