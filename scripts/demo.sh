#!/usr/bin/env bash
# scripts/demo.sh: the README's main job (for now): one drbdd node exporting
# a file over NBD. Builds drbdd and drbdadm, starts a daemon on a temporary
# directory with a 256 MiB backing file, runs create-md, up and
# primary --force the way an admin would, prints the status file and how to
# reach the export, then waits until Ctrl-C (cleaning everything up).
#
# Usage: scripts/demo.sh [--once] [--size-mib N] [--port N] [--bin DIR]
#   --once        write and read back a pattern with qemu-io, show the
#                 counters, clean up and exit (a quick proof that it works)
#   --size-mib N  backing file size (default 256)
#   --port N      NBD TCP port on 127.0.0.1 (default 10809, or a free one)
#   --bin DIR     use drbdd/drbdadm from DIR instead of building them
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ONCE=0 SIZE_MIB=256 PORT="" BIN=""
while (($#)); do
	case "$1" in
	--once) ONCE=1 ;;
	--size-mib) SIZE_MIB=$2; shift ;;
	--port) PORT=$2; shift ;;
	--bin) BIN=$2; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

ensure_go
ensure_tools qemu-io=qemu-utils nbdinfo=libnbd-bin fallocate=util-linux python3=python3

DIR=$(mktemp -d "${TMPDIR:-/tmp}/drbdd-demo.XXXXXX")
DRBDD_PID=""
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	echo
	if [[ -n $DRBDD_PID ]] && kill -0 "$DRBDD_PID" 2>/dev/null; then
		echo "stopping: drbdadm down r0, then SIGTERM to drbdd"
		adm down r0 >/dev/null 2>&1 || true
		stop_pid "$DRBDD_PID" 20
	fi
	rm -rf "$DIR"
	echo "cleaned up $DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [[ -z $BIN ]]; then
	echo "building drbdd and drbdadm..."
	BIN=$DIR/bin
	build_binaries "$BIN"
fi
if [[ -z $PORT ]]; then
	if (exec 3<>/dev/tcp/127.0.0.1/10809) 2>/dev/null; then PORT=$(free_port 127.0.0.1); else PORT=10809; fi
fi

NODE=alice
CTL=$DIR/drbdd.sock STATUS=$DIR/status CONF=$DIR/etc DISK=$DIR/alice.img
URI="nbd://127.0.0.1:$PORT/r0"
ADM=("$BIN/drbdadm" --control "$CTL" --config-dir "$CONF" --node "$NODE")
adm() { "${ADM[@]}" "$@"; }
run() { echo "\$ drbdadm $*"; adm "$@"; }

mkdir -p "$CONF"
fallocate -l "${SIZE_MIB}M" "$DISK"
cat >"$CONF/r0.yaml" <<EOF
resource: r0
on:
  $NODE:
    disk: $DISK
    nbd-listen: 127.0.0.1:$PORT
EOF
echo "resource file $CONF/r0.yaml:"
sed 's/^/  /' "$CONF/r0.yaml"

setsid "$BIN/drbdd" --control "$CTL" --status-file "$STATUS" >"$DIR/drbdd.log" 2>&1 &
DRBDD_PID=$!
wait_socket "$CTL" "$DRBDD_PID" 10 || { cat "$DIR/drbdd.log" >&2; die "drbdd did not start"; }
echo "drbdd running (pid $DRBDD_PID, log $DIR/drbdd.log)"
echo
run create-md r0
run up r0
run primary --force r0
echo
run status r0
echo
echo "status file $STATUS (DRBD 8.4 /proc/drbd format):"
cat "$STATUS"
echo
cat <<EOF
The export is up: $URI
  nbdinfo $URI
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' $URI
  qemu-img info $URI
  fio --name=w --ioengine=nbd --uri=$URI --rw=randwrite --bs=4k --iodepth=32 --size=64m --runtime=10 --time_based
Administer it with:
  ${ADM[*]} status r0
  cat $STATUS
EOF

if ((ONCE)); then
	echo
	echo "\$ nbdinfo $URI"
	nbdinfo "$URI"
	echo "\$ qemu-io: write a 0x5a pattern, read it back"
	qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 1M 64k' \
		-c 'read -P 0x5a 0 1M' -c 'read -P 0xa5 1M 64k' -c flush "$URI"
	# The status file is rewritten at most once a second while counters move.
	sleep 1.2
	echo "status file after the I/O:"
	cat "$STATUS"
	echo "demo: ok"
	exit 0
fi
echo
echo "Press Ctrl-C to stop (drbdadm down r0, stop drbdd, remove $DIR)."
wait "$DRBDD_PID" || true
echo "drbdd exited by itself; its log:"
tail -20 "$DIR/drbdd.log"
exit 1
