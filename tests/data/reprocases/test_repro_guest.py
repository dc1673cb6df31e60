"""A cell with one failing test, for tests/test_reproduce.py: its reproduce.sh must show the
same failure when run by itself."""

from kmatrix import GuestSession


def test_harmless(guest: GuestSession) -> None:
    guest.run("echo before > /tmp/state", check=True)


def test_ostype_is_plan9(guest: GuestSession) -> None:
    r = guest.run("cat /proc/sys/kernel/ostype; test -f /tmp/state")
    assert r.stdout.strip() == "Plan9", f"ostype is {r.stdout.strip()!r}"
