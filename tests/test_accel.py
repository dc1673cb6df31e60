"""Accelerator choice: KVM only after a probe boot worked; the verdict cached per host boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.vm import accel


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))


def test_tcg_requested_never_probes() -> None:
    def probe() -> str | None:
        raise AssertionError("probed")

    assert accel.choose("tcg", probe) == accel.AccelChoice("tcg", "requested")


def test_auto_without_kvm_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_openable", lambda: "/dev/kvm cannot be opened (No such file)")
    c = accel.choose("auto", lambda: None)
    assert c.accel == "tcg"
    assert "KVM unavailable: /dev/kvm cannot be opened" in c.reason


def test_auto_probe_failure_falls_back_and_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_openable", lambda: None)
    calls: list[int] = []

    def probe() -> str | None:
        calls.append(1)
        return "no answer from userspace within 20s"

    first = accel.choose("auto", probe)
    second = accel.choose("auto", probe)
    assert first == second
    assert first.accel == "tcg"
    assert "KVM probe boot failed (no answer from userspace within 20s)" in first.reason
    assert calls == [1]


def test_auto_probe_success_uses_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_openable", lambda: None)
    assert accel.choose("auto", lambda: None) == accel.AccelChoice(
        "kvm", "KVM probe boot succeeded"
    )


def test_explicit_kvm_is_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_openable", lambda: "/dev/kvm cannot be opened (EACCES)")
    c = accel.choose("kvm", lambda: "unused")
    assert c.accel == "kvm" and "requested, but /dev/kvm cannot be opened" in c.reason


def test_qemu_version_is_read() -> None:
    v = accel.qemu_version()
    assert v[0].isdigit(), v
