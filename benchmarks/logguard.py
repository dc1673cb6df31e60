#!/usr/bin/env python3
"""What the kernel-log guard costs per test: one guest boot, then, interleaved repetition by
repetition so machine noise spreads alike,

  command   a guest command doing nothing (`true` through the agent): the floor of any test
  guard     the guard's read when nothing is new (KMX-KMSG: kmx-kmsg on the agent's open
            /dev/kmsg, from where the last read stopped), as after most tests
  guard+1   the same after a line was printed (one record read, parsed)
  full      reading the whole log from the oldest record (what each read would cost without
            the agent's open descriptor), for comparison

    .venv/bin/python benchmarks/logguard.py [--reps 30] [--cell deb-6.1-cloud/Nehalem/virtio]

Prints medians and the load average; nothing is asserted (see docs/kernel-log.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import read_kmsg, render
from kmatrix.kernels import load_matrix
from kmatrix.results.logparse import parse_kernel_log

TWO = Path(__file__).resolve().parent.parent / "tests" / "data" / "matrices" / "two.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--cell", default="deb-6.1-cloud/Nehalem/virtio")
    args = ap.parse_args()
    cell = load_matrix(TWO).cell(args.cell)
    with tempfile.TemporaryDirectory(prefix="kmx-bench-") as tmp:
        g = Guest(cell, Path(tmp), accel="tcg")
        g.start()
        try:
            s = g.session
            assert s is not None
            read_kmsg(s)

            def guard() -> None:
                parse_kernel_log(render(read_kmsg(s).records, kernel_only=True))

            def guard_one() -> None:
                s.run("echo kmatrix-bench > /dev/kmsg")
                t0 = time.monotonic()
                guard()
                times["guard+1"].append(time.monotonic() - t0)

            cases: dict[str, Callable[[], object]] = {
                "command": lambda: s.run("true"),
                "guard": guard,
                "full": lambda: read_kmsg(s, 0),
            }
            times: dict[str, list[float]] = {k: [] for k in [*cases, "guard+1"]}
            load0 = os.getloadavg()[0]
            for _ in range(args.reps):
                for name, fn in cases.items():
                    t0 = time.monotonic()
                    fn()
                    times[name].append(time.monotonic() - t0)
                guard_one()
            records = len(read_kmsg(s, 0).records)
        finally:
            g.stop(collect=False)
    print(
        f"{cell.id}, {args.reps} repetitions, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"the whole log: {records} records")
    for name, ts in times.items():
        print(
            f"{name:8} median {statistics.median(ts) * 1000:7.1f} ms   min {min(ts) * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
