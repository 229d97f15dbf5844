#!/usr/bin/env bash
# scripts/lab.sh: drbdd's two-VM lab, the README's main job. It builds the
# lab from Debian packages (cached in /var/cache/drbdd-lab: the first run
# installs qemu-system-x86, busybox-static, cpio, kmod, e2fsprogs and
# downloads the cloud kernel with apt-get download; later runs start in
# seconds), boots two qemu VMs with software emulation (no KVM needed;
# root is), and shows a filesystem surviving the death of its Primary.
#
# Usage:
#   scripts/lab.sh [scenario] [--nodes a,b] [--keep] [--fresh] [--fio] [--files N]
#                                     the scenario below; ends with PASS or FAIL
#   scripts/lab.sh bench [--kernel-drbd] [--rounds N] [--runtime 15s] [--size 128M] [--keep]
#                                     fio O_DIRECT on drbdd's /dev/nbd0 vs the raw
#                                     disk (and kernel DRBD 8.4's /dev/drbd0);
#                                     --rounds: targets take turns N times, medians
#   scripts/lab.sh up [--nodes a,b] [--fresh] [--fio]
#                                     boot the VMs, leave them running
#   scripts/lab.sh console NODE       a shell on NODE's serial console
#                                     (press Enter for a prompt; Ctrl-] quits)
#   scripts/lab.sh run NODE COMMAND...  run one command in NODE, e.g.
#                                     scripts/lab.sh run a drbdadm status r0
#   scripts/lab.sh status | down      list | kill the VMs
#
#   --nodes a,b    node names (one or two); node N is 10.99.0.N on the VMs'
#                  private link (UDP on 127.0.0.1; nothing leaves the host)
#   --keep         leave the VMs running at the end, for you to play with;
#                  then "console", "run" and "down" as above
#   --fresh        start from empty disks (otherwise a kept lab's disks
#                  are reused)
#   --fio          put fio and its libraries into the VMs
#   DRBDD_LAB_DIR    lab directory (default /var/tmp/drbdd-lab): per node its
#                    disk image, console log, qemu log and sockets
#   DRBDD_LAB_CACHE  download cache (default /var/cache/drbdd-lab)
#   DRBDD_LAB_KERNEL kernel package (default: the newest
#                    linux-image-*-cloud-amd64 apt knows)
#   DRBDD_LAB_DRBDD_ENV  environment for drbdd in the VMs, NAME=value
#                    words (e.g. DRBDD_NO_AIO=1 to compare blocking I/O)
#
# The scenario (issue 5), each step printed with its time, then a summary
# (boot, initial sync, both failover times, each resync's size):
#    1 boot a and b
#    2 write /etc/drbdd/r0.yaml (protocol C, /dev/nbd0, /dev/vda, internal
#      meta data, 16 activity log extents), start drbdd, create-md, up
#    3 wait for the nodes to connect (required)
#    4 drbdadm primary --force r0 on a: drbdd attaches /dev/nbd0 itself
#    5 initial sync until UpToDate/UpToDate
#    6 mkfs.ext4 /dev/nbd0, mount /mnt/r0
#    7 write 300 files and record their sha256 sums
#    8 drbdadm secondary must be refused while mounted
#    9 start a write load (64 KiB files, each fsynced before it counts as
#      acknowledged); print /run/drbdd/status of both nodes
#   10 write a 1 MiB pattern with sync(1) (FLUSH) and with O_DIRECT|O_DSYNC
#      overwrites (FUA), then at once hard-kill a (qemu SIGKILL)
#   11 failover: on b wait until it notices, drbdadm primary r0, mount
#      (journal replay), umount, e2fsck -fn clean, mount, every checksum,
#      acknowledged load write and the pattern verified; failover time =
#      kill to mounted
#   12 restart a: it comes back Secondary and resyncs only what it missed
#      (fails if it received more than its activity log plus 16 MiB)
#   13 on b: 100 more files, a write load
#   14 switchover back to a: stop the load, umount and secondary on b
#      (/dev/nbd0 detached), primary on a, e2fsck, mount, verify everything
#   15 on a: sync and FUA-write a second pattern, then kill a and b at once
#   16 on the host: a copy of each disk image, journal replayed, is clean
#      to e2fsck and holds the pattern (debugfs): FLUSH/FUA reached both
#   17 restart both: connect, resync (checked as in 12), primary on a,
#      e2fsck, mount, verify everything
# With --nodes a (one node) steps 3, 5 and 11-17 give way to: restart a
# alone, up, primary, the same e2fsck and checks.
# The last line is PASS or FAIL; the exit status follows it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

cmd=scenario
case "${1:-}" in
scenario | bench | up | console | run | status | down) cmd=$1; shift ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

((EUID == 0)) || die "the lab needs root (packages, /var/cache/drbdd-lab, qemu)"
ensure_go
case "$cmd" in
scenario | bench | up)
	# Debian packages of what the lab needs on the host.
	ensure_tools qemu-system-x86_64=qemu-system-x86 busybox=busybox-static cpio=cpio \
		depmod=kmod mke2fs=e2fsprogs xz=xz-utils zstd=zstd
	;;
esac

bin="${DRBDD_LAB_CACHE:-/var/cache/drbdd-lab}/bin"
mkdir -p "$bin"
go build -o "$bin/lab" ./testenv/lab/cmd/lab || die "go build ./testenv/lab/cmd/lab failed"
exec "$bin/lab" "$cmd" "$@"
