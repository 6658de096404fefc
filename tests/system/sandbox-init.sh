#!/usr/bin/env bash
# The inside half of tests/system/sandbox.py: turn a fresh set of namespaces into a
# throw-away machine and exec systemd as its PID 1.  Not for direct use.
#
#   sandbox-init.sh enter STATE CGROUP   PID 1 of the new pid namespace (still on the
#                                        host's root): move into CGROUP, then a cgroup
#                                        namespace rooted there, then `boot`
#   sandbox-init.sh boot STATE           build the root (overlay of "/" on a tmpfs,
#                                        fresh /proc /sys /dev /run /tmp), pivot, exec
#                                        systemd
#
# Every mount is made in the sandbox's private mount namespace and every change to
# files lands in a tmpfs that exists only there: nothing outlives the sandbox.
set -euo pipefail

SYSTEMD=${CHATSVC_SYSTEST_SYSTEMD:-/lib/systemd/systemd}
INNER_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Units that would touch host-wide state (clock, sysctls, modules, disks) or wait
# for hardware that is not there.
MASK=(
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
    systemd-modules-load.service kmod-static-nodes.service systemd-sysctl.service
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
    systemd-random-seed.service systemd-timesyncd.service systemd-pstore.service
    systemd-firstboot.service systemd-repart.service systemd-pcrphase.service
    systemd-pcrphase-sysinit.service systemd-machine-id-commit.service
    systemd-remount-fs.service systemd-fsck-root.service
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
    sys-fs-fuse-connections.mount dev-hugepages.mount tmp.mount
    systemd-journald-audit.socket getty.target console-getty.service
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
    e2scrub_reap.service fstrim.timer man-db.timer logrotate.timer
)

enter() {
    local state=$1 cgroup=$2
    echo 0 >"$cgroup/cgroup.procs"
    exec unshare --cgroup -- bash "$0" boot "$state"
}

boot() {
    local state=$1 fs root p u
    fs=$state/fs
    root=$fs/root
    mount --make-rprivate /
    mount -t tmpfs -o mode=0755,size=2g chatsvc-systest "$fs"
    mkdir -p "$fs/upper" "$fs/work" "$root"
    mount -t overlay chatsvc-systest -o "lowerdir=/,upperdir=$fs/upper,workdir=$fs/work" "$root"

    mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
    for p in sys sysrq-trigger; do
        [ -e "$root/proc/$p" ] || continue
        mount --bind "$root/proc/$p" "$root/proc/$p"
        mount -o remount,bind,ro,nosuid,nodev,noexec "$root/proc/$p"
    done
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"

    mount -t tmpfs -o mode=0755,nosuid,size=4m chatsvc-dev "$root/dev"
    mknod -m 0666 "$root/dev/null" c 1 3
    mknod -m 0666 "$root/dev/zero" c 1 5
    mknod -m 0666 "$root/dev/full" c 1 7
    mknod -m 0666 "$root/dev/random" c 1 8
    mknod -m 0666 "$root/dev/urandom" c 1 9
    mknod -m 0666 "$root/dev/tty" c 5 0
    mkdir -m 0755 "$root/dev/pts"
    mkdir -m 1777 "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts \
        "$root/dev/pts"
    ln -s pts/ptmx "$root/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev chatsvc-shm "$root/dev/shm"
    ln -s /proc/self/fd "$root/dev/fd"
    ln -s /proc/self/fd/0 "$root/dev/stdin"
    ln -s /proc/self/fd/1 "$root/dev/stdout"
    ln -s /proc/self/fd/2 "$root/dev/stderr"
    mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m chatsvc-run "$root/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev,size=512m chatsvc-tmp "$root/tmp"

    local units=$root/etc/systemd/system
    mkdir -p "$units"
    cat >"$units/chatsvc-systest.target" <<'EOF'
[Unit]
Description=chatsvc system tests: journald and dbus only
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service dbus.socket
After=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service dbus.socket
AllowIsolate=yes
EOF
    for u in "${MASK[@]}"; do
        rm -f "$units/$u"
        ln -s /dev/null "$units/$u"
    done
    rm -rf "$units/timers.target.wants" "$units/getty.target.wants"
    mkdir -p "$root/etc/systemd/journald.conf.d" "$root/etc/systemd/system.conf.d"
    # The journal stays in memory; no rate limit, the tests read every line.
    printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' \
        >"$root/etc/systemd/journald.conf.d/90-chatsvc-systest.conf"
    # core_pattern is the host's: a crash inside must not hand a core to the host.
    printf '[Manager]\nDefaultLimitCORE=0\n' \
        >"$root/etc/systemd/system.conf.d/90-chatsvc-systest.conf"
    echo chatsvc-systest >"$root/etc/hostname"
    hostname chatsvc-systest

    mkdir -p "$root/.oldroot"
    cd "$root"
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    rmdir /.oldroot
    # Shared inside the sandbox (as systemd makes / on a host; it leaves that to the
    # container manager in a container): mounts that units make in namespaces of
    # their own, such as the credentials of LoadCredential=, must reach the others.
    mount --make-rshared /
    exec /usr/bin/env -i container=chatsvc-systest PATH="$INNER_PATH" LANG=C.UTF-8 \
        "$SYSTEMD" --unit=chatsvc-systest.target --show-status=yes --log-color=no
}

case ${1:-} in
    enter) enter "$2" "$3" ;;
    boot) boot "$2" ;;
    *) echo "usage: $0 enter STATE CGROUP | boot STATE" >&2; exit 2 ;;
esac
