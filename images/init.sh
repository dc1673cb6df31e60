#!/bin/sh
# kmatrix guest init, shell stage: run by /init (kmx-init, programs/kmx-init.c) once the
# kernel filesystems are mounted and the cell's modules loaded. Finds the agent channel and
# serves the host's commands on it, or gives a developer a shell (kmatrix shell).
# Under TCG each process costs ~10 ms (fork, exec, busybox's page faults): shell builtins
# (read, echo, printf) stand in for cat, cut and the like.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

channel=virtio
shell=0
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        kmatrix.channel=*) channel=${arg#kmatrix.channel=} ;;
        kmatrix.shell=1) shell=1 ;;
    esac
done

if [ "$shell" = 1 ]; then
    # A developer's shell gets every data disk (the suite tools) mounted up front.
    for d in /etc/kmatrix/datadisks/*; do
        [ -f "$d" ] && /usr/lib/kmatrix/mount-disk "${d##*/}"
    done
    echo "kmatrix: interactive shell on the console; exit it to power off"
    setsid cttyhack sh -l
    poweroff -f
fi

port=
if [ "$channel" = virtio ]; then
    # No udev here: find the agent port by its name in sysfs. Bounded wait for the driver.
    i=0
    while [ $i -lt 1000 ] && [ -z "$port" ]; do
        for p in /sys/class/virtio-ports/*; do
            name=
            [ -f "$p/name" ] && read -r name <"$p/name"
            [ "$name" = org.kmatrix.agent ] && port=/dev/${p##*/}
        done
        [ -n "$port" ] || { sleep 0.01; i=$((i + 1)); }
    done
    [ -n "$port" ] || echo "kmatrix: no virtio agent port found"
else
    port=/dev/ttyS1
    stty -F "$port" raw -echo -icanon 2>/dev/null
fi
# Its own process, not sourced into PID 1: the kernel shields PID 1 from signals, and a
# test that stops or kills the agent must find it stopped or gone, as with any process.
[ -n "$port" ] && [ -c "$port" ] && /usr/lib/kmatrix/agent "$port"
echo "kmatrix: agent ended, powering off"
poweroff -f
