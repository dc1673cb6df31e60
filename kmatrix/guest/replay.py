"""Replays a red cell: boots the QEMU command line a run recorded and runs the guest commands
of its failing tests again. This is what `reports/cells/<cell>/reproduce.sh` executes:

    python -m kmatrix.guest.replay --rundir DIR [--all] [--console] [--log FILE] -- QEMU ARGV...

The argv is the run's own, its socket and scratch-disk paths moved into DIR. On stdin, one
JSON object per line: first a header (`cell`, `boot`: "ok" or "no-boot", `boot_timeout`,
`failure`: the run's failure message), then the run's commands (`test`, `command`,
`timeout`, `exit_status`, `stdout_sha256`, `failing`: whether its test failed). Only the
failing tests' commands run (--test SUBSTRING: only those tests), unless --all (then every
command up to the last of them, in the run's order, for failures that depend on what earlier
tests did).

Exit status: 0 the cell behaved as in the run (the same boot outcome; every command exited
with the run's status), 1 it behaved differently, 2 bad input, 3 QEMU could not start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from kmatrix.errors import GuestError, KmatrixError, VMError
from kmatrix.guest.guest import console_tail
from kmatrix.guest.session import GuestSession
from kmatrix.vm.console import ConsoleRecorder
from kmatrix.vm.machine import Machine

CONNECT_TIMEOUT = 10.0


class _EchoingRecorder(ConsoleRecorder):
    """The console log, also shown live on stderr (--console)."""

    def _take(self, chunk: bytes) -> None:
        super()._take(chunk)
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()


def _read_input(text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    if not lines or not isinstance(lines[0], dict) or "boot" not in lines[0]:
        raise ValueError('stdin must start with the replay header ({"boot": ...})')
    for c in lines[1:]:
        if not isinstance(c, dict) or not isinstance(c.get("command"), str):
            raise ValueError(f"not a command line: {c!r}")
    return lines[0], lines[1:]


def select(
    commands: list[dict[str, Any]], everything: bool, test: str = ""
) -> list[dict[str, Any]]:
    """The failing tests' commands (those whose node id contains test, if given), or
    (everything) all commands up to the last of those."""

    def wanted(c: dict[str, Any]) -> bool:
        return bool(c.get("failing")) and test in str(c.get("test", ""))

    if not everything:
        return [c for c in commands if wanted(c)]
    last = max((i for i, c in enumerate(commands) if wanted(c)), default=-1)
    return commands[: last + 1]


def _say(msg: str) -> None:
    print(msg, flush=True)


def replay(
    argv: list[str],
    rundir: Path,
    header: dict[str, Any],
    commands: list[dict[str, Any]],
    log: Path,
    echo: bool,
) -> int:
    cell = str(header.get("cell", "cell"))
    expected_boot = header.get("boot", "ok")
    timeout = float(header.get("boot_timeout") or 120)
    if header.get("failure"):
        _say(f"the run's failure: {header['failure']}")
    machine = Machine(argv, rundir, rundir / "qemu.log", cell)
    recorder = (_EchoingRecorder if echo else ConsoleRecorder)(log)
    session: GuestSession | None = None
    try:
        try:
            machine.launch(before_cont=lambda: recorder.connect(rundir / "console.sock", 10.0))
        except VMError as e:
            _say(f"QEMU did not start: {e}")
            return 3
        _say(f"booting {cell} (console: {log}) ...")
        try:
            session = GuestSession.connect(
                rundir / "agent.sock", CONNECT_TIMEOUT, machine.is_running, cell, None
            )
            uptime = session.wait_ready(timeout)
        except GuestError as e:
            recorder.close(1.0)
            _say(f"the kernel did not reach userspace: {e}\nconsole tail:\n{console_tail(log, 25)}")
            same = expected_boot == "no-boot"
            _say(
                ("REPRODUCED" if same else "DIFFERENT")
                + ": no boot"
                + (", as in the run" if same else "; in the run it booted")
            )
            return 0 if same else 1
        _say(f"userspace answered after {uptime:.1f}s of guest uptime")
        if expected_boot == "no-boot":
            _say("DIFFERENT: the kernel booted; in the run it did not")
            return 1
        differ = same_out = 0
        test = None
        for c in commands:
            if c.get("test") != test:
                test = c.get("test")
                _say(f"\n# {test}")
            _say(f"$ {c['command']}")
            try:
                r = session.run(c["command"], timeout=float(c.get("timeout") or 60))
            except GuestError as e:
                _say(f"[the guest stopped answering: {e}]")
                differ += 1
                break
            if r.stdout:
                sys.stdout.write(r.stdout if r.stdout.endswith("\n") else r.stdout + "\n")
            if r.stderr:
                sys.stdout.write(r.stderr if r.stderr.endswith("\n") else r.stderr + "\n")
            was = c.get("exit_status")
            same = hashlib.sha256(r.stdout.encode()).hexdigest() == c.get("stdout_sha256")
            same_out += same
            note = "same output" if same else "other output"
            if r.exit_status != was:
                differ += 1
                _say(f"[exit {r.exit_status}; in the run {was} — DIFFERENT; {note}]")
            else:
                _say(f"[exit {r.exit_status}, as in the run; {note}]")
        if differ:
            _say(f"\nDIFFERENT: {differ} of {len(commands)} command(s) did not exit as in the run")
            return 1
        _say(
            f"\nREPRODUCED: all {len(commands)} command(s) exited as in the run, "
            f"{same_out} with the same output"
        )
        return 0
    finally:
        if session is not None:
            session.close()
        machine.shutdown()
        recorder.close(1.0)


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kmatrix.guest.replay", description=__doc__)
    p.add_argument("--rundir", type=Path, help="where the argv's sockets go (default: a new one)")
    p.add_argument("--all", action="store_true", help="every command up to the last failing one")
    p.add_argument("--console", action="store_true", help="show the console live on stderr")
    p.add_argument("--test", default="", help="only failing tests whose node id contains this")
    p.add_argument("--log", type=Path, help="the console log (default: RUNDIR/console.log)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- QEMU ARGV...")
    ns = p.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        p.error("no QEMU command line after --")
    try:
        header, commands = _read_input(sys.stdin.read())
    except ValueError as e:
        print(f"replay: bad input: {e}", file=sys.stderr)
        return 2
    rundir = ns.rundir or Path(tempfile.mkdtemp(prefix="kmx-replay-"))
    try:
        return replay(
            argv,
            rundir,
            header,
            select(commands, ns.all, ns.test),
            ns.log or rundir / "console.log",
            ns.console,
        )
    except KmatrixError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
