"""Scheduler smoke suite: placement, nice weights, policies, preemption, hotplug, bandwidth.

Loads come from stress-ng and rt-tests; what the kernel did is read back from /proc
(schedstat run times, the CPU field of /proc/<pid>/stat) and cgroupfs, never assumed.
Windows are short (a second or two) so the suite stays within seconds per cell under TCG;
tolerances are stated next to each assertion. Observers read only the workers' own /proc
files: under TCG a scan of every process costs a CPU for a good part of a second.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections import Counter
from typing import Any

import pytest
from guestlib import LOADED_TIMEOUT, SH_CHILDREN, TASKSET, online_cpus, parse_stat, stat_field

from kmatrix import Cell, GuestSession, KernelArtifact, needs_tools

pytestmark = pytest.mark.sched

# CFS/EEVDF load weights (kernel/sched/core.c sched_prio_to_weight): nice 0 and nice 5.
WEIGHT_NICE0 = 1024
WEIGHT_NICE5 = 335
NICE_TOLERANCE = 0.20  # relative, on the median run-time ratio of five 0.3 s windows
HOG = "stress-ng --cpu-method int64 -t 120"  # -t: a backstop if a kill is ever missed


def _all_sections(stdout: str) -> list[tuple[str, str]]:
    """'== name' delimited output -> [(name, text)], repeated names kept in order."""
    out: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines():
        if line.startswith("== "):
            out.append((line[3:].strip(), []))
        elif out:
            out[-1][1].append(line)
    return [(k, "\n".join(v)) for k, v in out]


def _sections(stdout: str) -> dict[str, str]:
    return dict(_all_sections(stdout))


def _stat_cpus(text: str) -> dict[int, int]:
    """/proc/<pid>/stat lines -> {pid: CPU it last ran on (field 39)}."""
    out = {}
    for line in text.splitlines():
        if ")" in line:
            pid, fields = parse_stat(line)
            out[pid] = stat_field(fields, 39)
    return out


def _runtimes(text: str) -> list[int]:
    """/proc/<pid>/schedstat lines -> run times in ns, in the order read."""
    return [int(line.split()[0]) for line in text.splitlines() if line.strip()]


def _cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """/proc/stat 'cpuN' lines -> {N: (busy jiffies, total jiffies)}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"cpu(\d+)\s+(.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
            out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


SPREAD_WAIT = 20  # seconds (guest time) the workers get to spread over the vCPUs
BUSY_WINDOW = 2.0  # seconds over which every vCPU's busy fraction is measured


@needs_tools
def test_every_vcpu_runs_a_task(guest: GuestSession, cell: Cell) -> None:
    """N CPU-bound stress-ng workers on N vCPUs end up on N distinct CPUs, and then every
    CPU is busy."""
    n = cell.smp
    # The workers start on the CPU that forked them and the load balancer spreads them;
    # under TCG the vCPUs share one host thread, so that can take a while: wait for it
    # (bounded), then measure. A snapshot's CPUs are where each worker last ran.
    # Field 39 of /proc/<pid>/stat is the 37th after the "(comm) " part.
    script = f"""{SH_CHILDREN}
{HOG} --cpu {n} >/dev/null 2>&1 & sp=$!
w=$(kmx_wait_kids $sp {n}); stats=$(kmx_files stat "$w")
end=$(( $(cut -d. -f1 /proc/uptime) + {SPREAD_WAIT} ))
while :; do
    s=$(cat $stats); echo "== sample"; echo "$s"
    [ $(echo "$s" | sed 's/.*) //' | cut -d' ' -f37 | sort -u | wc -l) -ge {n} ] && break
    [ $(cut -d. -f1 /proc/uptime) -ge $end ] && break
    sleep 0.2
done
echo "== before"; grep '^cpu[0-9]' /proc/stat
sleep {BUSY_WINDOW}
echo "== after"; grep '^cpu[0-9]' /proc/stat
kill $sp; wait
"""
    out = guest.run(script, timeout=LOADED_TIMEOUT + SPREAD_WAIT, check=True).stdout
    sec = _sections(out)
    snapshots = [_stat_cpus(v) for k, v in _all_sections(out) if k == "sample"]
    workers = {pid for snap in snapshots for pid in snap}
    assert len(workers) == n, f"saw {len(workers)} stress-ng CPU workers, started {n}: {out}"
    spread = [sorted(set(snap.values())) for snap in snapshots]
    assert len(spread[-1]) == n, (
        f"{n} CPU-bound workers were not on {n} distinct CPUs within {SPREAD_WAIT}s "
        f"({len(spread)} snapshots; CPUs of the last ones: {spread[-5:]})"
    )
    before, after = _cpu_times(sec["before"]), _cpu_times(sec["after"])
    busy = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        busy[cpu] = (b1 - b0) / max(1, t1 - t0)
    idle = {cpu: round(f, 2) for cpu, f in busy.items() if f < 0.5}
    assert not idle, f"CPUs mostly idle while {n} CPU hogs ran (busy fraction < 0.5): {idle}"
    online = online_cpus(guest.read_file("/sys/devices/system/cpu/online"))
    assert len(online) == n, f"online CPUs {online}, the cell has {n} vCPUs"


@needs_tools
def test_nice_weights(guest: GuestSession, cell: Cell, record_property: Any) -> None:
    """Two hogs pinned to CPU 0 at nice 0 and nice 5 share it in the ratio 1024:335."""
    # The observer stays off CPU 0 when it can; autogroup is off for the window because it
    # would give each session an equal share whatever the nice values.
    off_cpu0 = f"{TASKSET} -pc 1 $$ >/dev/null" if cell.smp > 1 else ":"
    script = f"""{SH_CHILDREN}
{off_cpu0}
ag=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)
[ -n "$ag" ] && echo 0 > /proc/sys/kernel/sched_autogroup_enabled
{HOG} --cpu 1 --taskset 0 >/dev/null 2>&1 & a=$!
nice -n 5 {HOG} --cpu 1 --taskset 0 >/dev/null 2>&1 & b=$!
w="$(kmx_wait_kids $a 1) $(kmx_wait_kids $b 1)"
echo "== nice"; for p in $w; do echo "$p $(cut -d' ' -f19 /proc/$p/stat)"; done
runs=$(kmx_files schedstat "$w")
sleep 0.2
for i in 0 1 2 3 4 5; do echo "== t$i"; cat $runs; sleep 0.3; done
kill $a $b; wait
[ -n "$ag" ] && echo "$ag" > /proc/sys/kernel/sched_autogroup_enabled
"""
    sections = _all_sections(guest.run(script, timeout=LOADED_TIMEOUT, check=True).stdout)
    nices = [int(line.split()[1]) for line in sections[0][1].splitlines()]
    assert nices == [0, 5], f"workers' nice values {nices}, expected [0, 5]"
    snaps = [_runtimes(text) for _, text in sections[1:]]
    # Under TCG a vCPU descheduled on the host charges the whole gap to whichever task was
    # running, so one window can be skewed: the median of five short windows is judged.
    ratios, windows = [], []
    for s0, s1 in itertools.pairwise(snaps):
        d0, d5 = s1[0] - s0[0], s1[1] - s0[1]
        windows.append(f"{d0 / 1e6:.0f}/{d5 / 1e6:.0f} ms")
        if d5 > 0:
            ratios.append(d0 / d5)
    assert ratios, f"the nice-5 worker got no CPU time in any window: {windows}"
    ratio = statistics.median(ratios)
    want = WEIGHT_NICE0 / WEIGHT_NICE5
    record_property("metric.nice0_nice5_ratio", round(ratio, 3))
    assert abs(ratio - want) <= NICE_TOLERANCE * want, (
        f"median run-time ratio nice0:nice5 = {ratio:.2f} over windows (nice 0/nice 5) "
        f"{windows}; expected {want:.2f} ± {NICE_TOLERANCE:.0%}"
    )


POLICIES = {
    "SCHED_FIFO": "-f 10",
    "SCHED_RR": "-r 10",
    "SCHED_BATCH": "-b 0",
    "SCHED_IDLE": "-i 0",
    "SCHED_DEADLINE": "-d --sched-runtime 5000000 --sched-deadline 10000000 "
    "--sched-period 10000000 0",
}


@needs_tools
def test_policies_settable(guest: GuestSession) -> None:
    """chrt starts a task under each policy and the kernel reports that policy back."""
    # FIFO, RR, BATCH, IDLE and DEADLINE are core scheduler classes (no config option);
    # the root cgroup always has RT bandwidth, so each must be settable.
    script = "".join(
        f"echo '== {name}'; chrt {args} chrt -p 0 2>&1; echo \"rc=$?\"\n"
        for name, args in POLICIES.items()
    )
    sec = _sections(guest.run(script, timeout=LOADED_TIMEOUT).stdout)
    wrong = {}
    for name in POLICIES:
        text = sec.get(name, "")
        m = re.search(r"scheduling policy: (SCHED_\w+)", text)
        if m is None or m.group(1) != name or "rc=0" not in text:
            wrong[name] = text.strip()
    assert not wrong, f"policies not set as asked (expected policy -> chrt said): {wrong}"


FIFO_WINDOW = 1.0  # seconds both hogs are measured over
FIFO_MAX_OTHER_SHARE = 0.15  # of the two hogs' run time, left to the SCHED_OTHER one


@needs_tools
@pytest.mark.kmatrix_applies(
    lambda cell: cell.smp >= 2, "needs 2 vCPUs (one for the observer), the cell has {cell.smp}"
)
def test_fifo_preempts_normal(guest: GuestSession, record_property: Any) -> None:
    """A SCHED_FIFO hog on CPU 0 takes it from a SCHED_OTHER hog already running there."""
    # Both hogs' run times (schedstat, the task clock) over the same window: what the FIFO
    # hog leaves the normal one is judged against what the two got together. RT throttling
    # (and 6.12's fair server) is off for the window: it would give the normal hog a slice of
    # every period, and on a busy host whatever the host takes from the vCPU during that
    # slice is charged to the normal hog (22 % of the window was seen at load 5). Without it
    # the normal hog does not run at all while the FIFO one can; CPU 0 is left to the FIFO
    # hog for ~1.5 s, far below any stall detector.
    script = f"""{SH_CHILDREN}
{TASKSET} -pc 1 $$ >/dev/null
rt=/proc/sys/kernel/sched_rt_runtime_us
fs=/sys/kernel/debug/sched/fair_server/cpu0/runtime
read -r rt_old <$rt
fs_old=; [ -w $fs ] && read -r fs_old <$fs
restore() {{ echo "$rt_old" >$rt; [ -z "$fs_old" ] || echo "$fs_old" >$fs; }}
trap restore EXIT
echo -1 >$rt
[ -z "$fs_old" ] || echo 0 >$fs
{HOG} --cpu 1 --taskset 0 >/dev/null 2>&1 & n=$!
w=$(kmx_wait_kids $n 1)
sleep 0.2
echo "== normal alone"; cut -d' ' -f1 /proc/$w/schedstat; sleep 0.5
cut -d' ' -f1 /proc/$w/schedstat
chrt -f 50 {HOG} --cpu 1 --taskset 0 >/dev/null 2>&1 & f=$!
fw=$(kmx_wait_kids $f 1)
sleep 0.2
echo "== with fifo"; cat /proc/$w/schedstat /proc/$fw/schedstat; sleep {FIFO_WINDOW}
cat /proc/$w/schedstat /proc/$fw/schedstat
echo "== fifo policy"; chrt -p $fw
# The FIFO worker first: its FIFO parent could not run on CPU 0 to pass on a SIGTERM.
kill -9 $fw; kill $f $n; wait
"""
    sec = _sections(guest.run(script, timeout=LOADED_TIMEOUT, check=True).stdout)
    assert "SCHED_FIFO" in sec["fifo policy"], f"the FIFO worker is not FIFO: {sec['fifo policy']}"
    a0, a1 = _runtimes(sec["normal alone"])
    assert a1 > a0, f"the normal hog did not run on CPU 0 alone ({a0} -> {a1} ns)"
    both = _runtimes(sec["with fifo"])
    assert len(both) == 4, f"the two hogs' run times were not both read:\n{sec['with fifo']}"
    n0, f0, n1, f1 = both
    normal, fifo = n1 - n0, f1 - f0
    share = normal / max(1, normal + fifo)
    record_property("sched.fifo_other_share", f"{share:.3f}")
    # With RT throttling off the normal hog gets nothing while the FIFO one runs; the bound
    # leaves room for the moments around the FIFO hog's start.
    assert share <= FIFO_MAX_OTHER_SHARE, (
        f"with a FIFO hog on CPU 0 the normal hog still got {share:.0%} of the two hogs' "
        f"run time ({normal / 1e6:.0f} ms vs {fifo / 1e6:.0f} ms in {FIFO_WINDOW}s); "
        f"expected <= {FIFO_MAX_OTHER_SHARE:.0%}"
    )


def _preempt_model(kernel: KernelArtifact, dynamic: str, uname_v: str) -> tuple[str, str]:
    """(model, where it was read): the kernel's own report first, the config last."""
    m = re.search(r"\((\w+)\)", dynamic)
    if m:
        return m.group(1), "/sys/kernel/debug/sched/preempt"
    if "PREEMPT_RT" in uname_v:
        return "rt", "uname -v"
    if re.search(r"\bPREEMPT\b", uname_v) and "PREEMPT_DYNAMIC" not in uname_v:
        return "full", "uname -v"
    for opt, model in (
        ("PREEMPT_RT", "rt"),
        ("PREEMPT", "full"),
        ("PREEMPT_VOLUNTARY", "voluntary"),
        ("PREEMPT_NONE", "none"),
    ):
        if kernel.option(opt) == "y":
            return model, f"CONFIG_{opt}"
    return "unknown", ""


def test_scheduler_identified(
    guest: GuestSession, kernel: KernelArtifact, record_property: Any
) -> None:
    """Reports the fair-class scheduler, sched_ext, BORE and the preemption model, and checks
    each against the kernel config that should have produced it."""
    script = """
echo "== features"; cat /sys/kernel/debug/sched/features 2>/dev/null
echo "== preempt"; cat /sys/kernel/debug/sched/preempt 2>/dev/null
echo "== uname"; uname -v
echo "== release"; uname -r
echo "== cmdline"; cat /proc/cmdline
echo "== sched_ext"; [ -d /sys/kernel/sched_ext ] && cat /sys/kernel/sched_ext/state
echo "== sched_ext_ops"; cat /sys/kernel/sched_ext/root/ops 2>/dev/null
echo "== bore"; cat /proc/sys/kernel/sched_bore 2>/dev/null
echo "== tunables"; ls /proc/sys/kernel/ | grep '^sched' | tr '\\n' ' '
"""
    sec = _sections(guest.run(script, timeout=30).stdout)
    features = set(sec.get("features", "").split())
    version = tuple(int(x) for x in re.findall(r"\d+", sec["release"])[:2])
    if features & {"PLACE_LAG", "RUN_TO_PARITY", "PLACE_DEADLINE_INITIAL"}:
        klass, source = "EEVDF", "sched/features"
    elif features & {"GENTLE_FAIR_SLEEPERS", "START_DEBIT"}:
        klass, source = "CFS", "sched/features"
    else:  # no debugfs: EEVDF replaced CFS in 6.6
        klass, source = ("EEVDF" if version >= (6, 6) else "CFS"), "kernel version"
    model, model_source = _preempt_model(kernel, sec.get("preempt", ""), sec["uname"])
    scx_state = sec.get("sched_ext", "").strip()
    bore = sec.get("bore", "").strip()
    for key, value in (
        ("sched.class", klass),
        ("sched.class_source", source),
        ("sched.preempt_model", model),
        ("sched.preempt_source", model_source),
        ("sched.sched_ext", scx_state or "absent"),
        ("sched.sched_ext_ops", sec.get("sched_ext_ops", "").strip() or "none"),
        ("sched.bore", bore or "absent"),
        ("sched.tunables", sec.get("tunables", "").strip()),
    ):
        record_property(key, value)
    problems = []
    if kernel.config_known:
        if kernel.has("SCHED_CLASS_EXT") != bool(scx_state):
            problems.append(
                f"CONFIG_SCHED_CLASS_EXT={kernel.option('SCHED_CLASS_EXT')} but "
                f"/sys/kernel/sched_ext state is {scx_state or 'absent'!r}"
            )
        if kernel.has("SCHED_BORE") != bool(bore):
            problems.append(
                f"CONFIG_SCHED_BORE={kernel.option('SCHED_BORE')} but "
                f"/proc/sys/kernel/sched_bore is {bore or 'absent'!r}"
            )
        if kernel.has("PREEMPT_RT") and model != "rt" and model_source != "uname -v":
            problems.append(f"CONFIG_PREEMPT_RT=y but the kernel reports preemption {model!r}")
        if kernel.has("PREEMPT_DYNAMIC") and kernel.has("DEBUG_FS") and not sec.get("preempt"):
            problems.append(
                "CONFIG_PREEMPT_DYNAMIC=y but /sys/kernel/debug/sched/preempt is absent"
            )
    asked = re.search(r"\bpreempt=(\w+)", sec["cmdline"])
    if asked and model_source.startswith("/sys") and asked.group(1) != model:
        problems.append(f"booted with preempt={asked.group(1)} but the kernel runs {model!r}")
    assert not problems, "; ".join(problems)


@needs_tools
@pytest.mark.kmatrix_applies(
    lambda cell: cell.smp >= 2, "needs 2 vCPUs to offline one, the cell has {cell.smp}"
)
@pytest.mark.kmatrix_config("HOTPLUG_CPU")
def test_cpu_hotplug(guest: GuestSession, cell: Cell) -> None:
    """Offline the last vCPU while a hog pinned to it runs: the hog is moved off and keeps
    running; the vCPU comes back online and takes a pinned task again."""
    cpu = max(online_cpus(guest.read_file("/sys/devices/system/cpu/online")))
    script = f"""{SH_CHILDREN}
{HOG} --cpu 1 --taskset {cpu} >/dev/null 2>&1 & s=$!
w=$(kmx_wait_kids $s 1)
sleep 0.1
echo "== before"; cat /proc/$w/stat
echo 0 > /sys/devices/system/cpu/cpu{cpu}/online
echo "== online after offline"; cat /sys/devices/system/cpu/online
sleep 0.2
echo "== run0"; cat /proc/$w/schedstat
sleep 0.5
echo "== run1"; cat /proc/$w/schedstat
echo "== after"; cat /proc/$w/stat
kill $s; wait
echo 1 > /sys/devices/system/cpu/cpu{cpu}/online
echo "== online after online"; cat /sys/devices/system/cpu/online
echo "== pinned"; {TASKSET} -c {cpu} cat /proc/self/stat
"""
    try:
        out = guest.run(script, timeout=LOADED_TIMEOUT).stdout
    finally:
        guest.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=30)
    sec = _sections(out)
    before = _stat_cpus(sec["before"])
    assert list(before.values()) == [cpu], f"the hog pinned to CPU {cpu} ran on {before}"
    assert cpu not in online_cpus(sec["online after offline"]), (
        f"CPU {cpu} still online after offlining it: {sec['online after offline']!r}"
    )
    after = _stat_cpus(sec["after"])
    assert after and cpu not in after.values(), f"the hog is still on offline CPU {cpu}: {after}"
    (r0,), (r1,) = _runtimes(sec["run0"]), _runtimes(sec["run1"])
    assert r1 > r0, f"the hog stopped running after CPU {cpu} went offline ({r0} -> {r1} ns)"
    assert online_cpus(sec["online after online"]) == list(range(cell.smp)), (
        f"online CPUs after bringing {cpu} back: {sec['online after online']!r}"
    )
    pinned = _stat_cpus(sec["pinned"])
    assert list(pinned.values()) == [cpu], (
        f"a task pinned to CPU {cpu} after re-onlining ran on {pinned}"
    )


CPU_MAX_QUOTA = 0.20  # 20 ms per 100 ms period
CPU_MAX_TOLERANCE = 0.05  # absolute, of one CPU


def _cpu_stat(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split() for ln in text.splitlines() if len(ln.split()) == 2)}


@needs_tools
@pytest.mark.kmatrix_config("CGROUP_SCHED", "FAIR_GROUP_SCHED", "CFS_BANDWIDTH")
def test_cgroup_cpu_max(guest: GuestSession) -> None:
    """A CPU hog in a cgroup with cpu.max '20000 100000' gets 20% ± 5% of a CPU."""
    cg = "/sys/fs/cgroup/kmx-cpumax"
    period = 100000
    quota = int(CPU_MAX_QUOTA * period)
    script = f"""{SH_CHILDREN}
root=/sys/fs/cgroup
grep -qw cpu $root/cgroup.subtree_control || echo +cpu > $root/cgroup.subtree_control
mkdir -p {cg} && echo "{quota} {period}" > {cg}/cpu.max || exit 3
sh -c 'echo $$ > {cg}/cgroup.procs; exec {HOG} --cpu 1' >/dev/null 2>&1 & s=$!
kmx_wait_kids $s 1 >/dev/null
sleep 0.3
echo "== u0"; cat {cg}/cpu.stat; sleep 2; echo "== u1"; cat {cg}/cpu.stat
echo "== stat"; cat {cg}/cpu.stat
kill $s; wait
"""
    try:
        res = guest.run(script, timeout=LOADED_TIMEOUT)
    finally:
        guest.run(f"rmdir {cg} 2>/dev/null; true", timeout=30)
    assert res.exit_status == 0, f"could not set up cpu.max: {res.stderr or res.stdout}"
    sec = _sections(res.stdout)
    # Usage per enforcement period, both read from one cpu.stat snapshot at each end: a
    # loaded host delays the guest's shell between reads, which skews a wall-clock window.
    s0, s1 = (_cpu_stat(sec[k]) for k in ("u0", "u1"))
    periods = s1["nr_periods"] - s0["nr_periods"]
    assert periods >= 5, f"only {periods} cpu.max periods elapsed:\n{sec['u1']}"
    share = (s1["usage_usec"] - s0["usage_usec"]) / (periods * period)
    assert abs(share - CPU_MAX_QUOTA) <= CPU_MAX_TOLERANCE, (
        f"a hog under cpu.max {quota} {period} used {share:.1%} of a CPU; "
        f"expected {CPU_MAX_QUOTA:.0%} ± {CPU_MAX_TOLERANCE:.0%}\n{sec['u1']}"
    )
    assert s1["nr_throttled"] > s0["nr_throttled"], f"never throttled:\n{sec['u1']}"


# The two metric tests run on a just-booted guest (the cell's post-boot snapshot restored):
# they come after test_cpu_hotplug, whose failure can leave a vCPU offline (cyclictest would
# fail on a thread per vCPU, hackbench would time one CPU fewer), and their numbers feed
# `kmatrix compare`, so they must not depend on which tests ran before them in the cell.
@pytest.mark.kmatrix_clean
@needs_tools
def test_hackbench(guest: GuestSession, record_property: Any) -> None:
    """hackbench (2 groups x 10 fd pairs, 50 loops) completes; its time is a metric."""
    res = guest.run("hackbench -g 2 -f 10 -l 50", timeout=LOADED_TIMEOUT)
    assert res.exit_status == 0, f"hackbench failed ({res.exit_status}): {res.stderr}"
    m = re.search(r"Time:\s*([0-9.]+)", res.stdout)
    assert m, f"no 'Time:' in hackbench output: {res.stdout}"
    record_property("metric.hackbench_seconds", float(m.group(1)))


CYCLIC_LOOPS = 1000  # wake-ups: the run ends when the first thread has made them
CYCLIC_INTERVAL_US = 1000
CYCLIC_DEADLINE = 45  # seconds (guest time) they get: a timer that fires gets there
CYCLIC_BEHIND = 0.5  # every other thread made at least this fraction of them by then


def _percentile(hist: dict[str, int], q: float) -> int:
    total = sum(hist.values())
    seen = 0
    for lat in sorted(hist, key=int):
        seen += hist[lat]
        if seen >= q * total:
            return int(lat)
    return 0


@pytest.mark.kmatrix_clean
@needs_tools
def test_cyclictest_latency(guest: GuestSession, cell: Cell, record_property: Any) -> None:
    """cyclictest (SCHED_FIFO 90, one thread per vCPU, 1 ms interval) makes 1000 wake-ups,
    and the threads on the other vCPUs keep up; max and p99 wake-up latency are metrics."""
    # A count of wake-ups, not a duration: under TCG on a busy host a vCPU runs only part
    # of the time and misses intervals, so the time 1000 wake-ups take varies; a timer that
    # does not fire never gets there (the deadline ends the run short). The vCPUs share
    # the host's time alike, so a thread far behind the first is a vCPU whose timer fails.
    cmd = (
        f"cyclictest -m -q -a -t {cell.smp} -p 90 -i {CYCLIC_INTERVAL_US} -l {CYCLIC_LOOPS} "
        f"-D {CYCLIC_DEADLINE} -h 20000 --json=/tmp/kmx-cyclic.json >/dev/null && "
        "cat /tmp/kmx-cyclic.json; rm -f /tmp/kmx-cyclic.json"
    )
    res = guest.run(cmd, timeout=CYCLIC_DEADLINE + 30)
    assert res.exit_status == 0, f"cyclictest failed ({res.exit_status}): {res.stderr}"
    data = json.loads(res.stdout)
    threads = data["thread"]
    assert len(threads) == cell.smp, f"{len(threads)} cyclictest threads, want {cell.smp}"
    hist: Counter[str] = Counter()
    for t in threads.values():
        hist.update({k: int(v) for k, v in t.get("histogram", {}).items()})
    worst = max(int(t["max"]) for t in threads.values())
    p99 = _percentile(dict(hist), 0.99)
    record_property("metric.cyclictest_max_us", worst)
    record_property("metric.cyclictest_p99_us", p99)
    cycles = {n: int(t["cycles"]) for n, t in threads.items()}
    assert max(cycles.values()) >= CYCLIC_LOOPS, (
        f"no thread made {CYCLIC_LOOPS} wake-ups within {CYCLIC_DEADLINE}s: {cycles}"
    )
    behind = {n: c for n, c in cycles.items() if c < CYCLIC_BEHIND * CYCLIC_LOOPS}
    assert not behind, (
        f"threads with < {CYCLIC_BEHIND:.0%} of the {CYCLIC_LOOPS} wake-ups the first one "
        f"made: {behind} (all: {cycles})"
    )
