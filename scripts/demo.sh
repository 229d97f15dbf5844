#!/usr/bin/env bash
# scripts/demo.sh: drbdd on two nodes without VMs. Two daemons, alice on
# 127.0.0.1 and bob on 127.0.0.2 (both are loopback addresses), replicate a
# 256 MiB file each, driven only through drbdadm, the way an admin would:
#
#   create-md, up on both; primary --force on alice; the initial sync;
#   writes through alice's NBD export (qemu-io patterns, checked);
#   kill -9 alice; primary on bob; the data is there; restart alice: it
#   comes back Secondary and resyncs only what bob changed meanwhile.
#
# Every step prints the status file like /proc/drbd. The last line is PASS
# or FAIL. For the full story with /dev/nbd0, ext4 and two VMs, see
# scripts/lab.sh.
#
# Usage: scripts/demo.sh [--keep] [--size-mib N] [--bin DIR]
#   --keep        leave both daemons running at the end and print how to
#                 drive them (Ctrl-C stops them)
#   --size-mib N  backing file size (default 256)
#   --bin DIR     use drbdd/drbdadm from DIR instead of building them
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEEP=0 SIZE_MIB=256 BIN=""
while (($#)); do
	case "$1" in
	--keep) KEEP=1 ;;
	--once) ;; # accepted for compatibility: the demo always ends by itself
	--size-mib) SIZE_MIB=$2; shift ;;
	--bin) BIN=$2; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

ensure_go
ensure_tools qemu-io=qemu-utils nbdinfo=libnbd-bin fallocate=util-linux python3=python3

DIR=$(mktemp -d "${TMPDIR:-/tmp}/drbdd-demo.XXXXXX")
declare -A PID=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for n in "${!PID[@]}"; do stop_pid "${PID[$n]}" 20; done
	if ((rc == 0)); then
		rm -rf "$DIR"
	else
		echo "logs kept in $DIR (alice/drbdd.log, bob/drbdd.log)"
	fi
	exit "$rc"
}
trap cleanup EXIT INT TERM

if [[ -z $BIN ]]; then
	BIN=$DIR/bin
	build_binaries "$BIN"
fi

step() { printf '\n== %s\n' "$*"; }
adm() {
	local n=$1
	shift
	"$BIN/drbdadm" --control "$DIR/$n/drbdd.sock" --config-dir "$DIR/$n/etc" --node "$n" "$@"
}
show() { for n in alice bob; do [[ -f $DIR/$n/status ]] && { echo "-- $n: $DIR/$n/status"; cat "$DIR/$n/status"; }; done; }
start() {
	local n=$1
	rm -f "$DIR/$n/drbdd.sock" # a killed daemon leaves its socket behind
	"$BIN/drbdd" --control "$DIR/$n/drbdd.sock" --status-file "$DIR/$n/status" >>"$DIR/$n/drbdd.log" 2>&1 &
	PID[$n]=$!
	wait_socket "$DIR/$n/drbdd.sock" "${PID[$n]}" 10 || { cat "$DIR/$n/drbdd.log"; die "drbdd $n did not start"; }
}
# wait_for NODE CMD WANT SECONDS
wait_for() {
	local i
	for ((i = 0; i < $4 * 10; i++)); do
		[[ $(adm "$1" "$2" r0 2>/dev/null) == "$3" ]] && return 0
		sleep 0.1
	done
	die "$1: $2 is $(adm "$1" "$2" r0 2>&1), expected $3 after $4 s"
}
fail() {
	echo "FAIL: $*"
	exit 1
}

PA=$(free_port 127.0.0.1) PB=$(free_port 127.0.0.2) NA=$(free_port 127.0.0.1) NB=$(free_port 127.0.0.2)
for n in alice bob; do
	mkdir -p "$DIR/$n/etc"
	fallocate -l "${SIZE_MIB}M" "$DIR/$n/disk.img"
done
for n in alice bob; do
	cat >"$DIR/$n/etc/r0.yaml" <<YAML
resource: r0
protocol: C
net:
  shared-secret: "demo-secret"
  ping-int: 2s
  timeout: 1s
  connect-int: 2s
disk:
  al-extents: 16
on:
  alice:
    address: 127.0.0.1:$PA
    disk: $DIR/alice/disk.img
    nbd-listen: 127.0.0.1:$NA
  bob:
    address: 127.0.0.2:$PB
    disk: $DIR/bob/disk.img
    nbd-listen: 127.0.0.2:$NB
YAML
done
URI_A=nbd://127.0.0.1:$NA/r0 URI_B=nbd://127.0.0.2:$NB/r0

step "start drbdd on alice and bob; drbdadm create-md r0; drbdadm up r0"
for n in alice bob; do
	start "$n"
	adm "$n" create-md r0 >/dev/null
	adm "$n" up r0
done
wait_for alice cstate Connected 20
show

step "drbdadm primary --force r0 on alice: the initial full sync"
t0=$SECONDS
adm alice primary --force r0
sleep 1
show
wait_for bob dstate UpToDate/UpToDate 120
echo "initial sync done in $((SECONDS - t0)) s"
adm alice status r0

step "write through alice's export ($URI_A) with qemu-io"
qemu-io -f raw -c "write -P 0xa1 0 8M" -c "write -P 0xb2 100M 4M" -c flush "$URI_A" | grep -v '^[0-9.]* MiB'
show

step "kill -9 alice (no shutdown), then drbdadm primary r0 on bob"
kill -KILL "${PID[alice]}"
wait "${PID[alice]}" 2>/dev/null || true
unset 'PID[alice]'
wait_for bob cstate WFConnection 20
adm bob primary r0
qemu-io -f raw -c "read -P 0xa1 0 8M" -c "read -P 0xb2 100M 4M" "$URI_B" >/dev/null || fail "bob lacks data alice acknowledged"
echo "bob serves everything alice acknowledged"
qemu-io -f raw -c "write -P 0xc3 200M 2M" "$URI_B" >/dev/null
show

step "restart alice: it comes back Secondary and resyncs only what it missed"
start alice
adm alice up r0
wait_for alice dstate UpToDate/UpToDate 60
show
grep -h "Began resync\|uuid_compare" "$DIR/alice/drbdd.log" | tail -3
sent=$(grep -o 'will sync [0-9]* KB' "$DIR/alice/drbdd.log" | tail -1 | awk '{print $3}')
echo "resynced ${sent:-?} KiB of a $((SIZE_MIB * 1024)) KiB device"
[[ -n $sent ]] && ((sent < SIZE_MIB * 1024 / 2)) || fail "the resync copied (almost) the whole device"

if ((KEEP)); then
	cat <<EOT

Both daemons keep running. Try:
  $BIN/drbdadm --control $DIR/bob/drbdd.sock --config-dir $DIR/bob/etc --node bob status r0
  nbdinfo $URI_B
  cat $DIR/alice/status
Ctrl-C stops them and removes $DIR.
EOT
	while :; do sleep 3600; done
fi
echo
echo "PASS"
