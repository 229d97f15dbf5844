#!/usr/bin/env bash
# scripts/bench.sh: drbdd's performance targets (DESIGN.md "Targets"),
# measured as ratios in one run on this host.
#
# Targets compared, each on its own identical backing file (fallocate'd,
# so sparse-file effects do not skew, then written once and cached: see
# mkdisk), all exported over NBD on TCP loopback and driven by fio
# --ioengine=nbd:
#   nbdkit      nbdkit's file plugin (reference NBD server, default threads)
#   single      one drbdd, single-node resource, its NBD export
#   replicated  two drbdd, protocol C, 127.0.0.1 <-> 127.0.0.2; skipped
#               (printed "replication: not available") when `drbdadm up`
#               with two hosts fails or the nodes are not Connected in 60 s
# Jobs: 4 KiB random write QD1 (IOPS, mean latency: fio's lat, submission
#       to completion; clat alone shifts with how the nbd engine splits
#       slat/clat, so it is shown for information only),
#       4 KiB random write QD32 (IOPS), 1 MiB sequential write QD8 (MB/s).
# Jobs run job by job, in rounds (each round runs every target in turn,
# `sync` between runs), so the targets see the same machine state; each
# figure is the median of its rounds, which keeps one disturbed run (this
# host's page cache and writeback make single runs swing by a third) from
# deciding a ratio.
#
# Each run also records the CPU time that fio, the target's servers and
# the idle CPUs account for (sampled from /proc over the middle of the
# run); the report prints it per write, and the replicated/single ratio
# that equal CPU use would give.
#
# Ratios printed (targets): drbdd/nbdkit at QD32 and seq (>= 0.9),
# replicated/single seq (>= 0.8) and QD32 (>= 0.7), and QD1 latency
# replicated - single <= loopback RTT + 100 us (RTT measured in this run).
# Ratios below target are reported, never an error: the exit status is
# non-zero only when something failed (build, daemon, drbdadm, fio).
#
# The resync section (bench_resync) dirties N MiB while bob is
# disconnected, reconnects, and compares the resync (speed, bytes on the
# wire) with dd copying the same bytes between the same kind of files;
# each runs once a round, in at least three rounds (also with --quick),
# and the medians count.
#
# The memory section (bench_memory) runs two more drbdd on a 1 TiB device
# (sparse files) through a connect, a bitmap exchange and a resync, and
# prints each daemon's peak resident memory against the 64 MiB target.
#
# Usage: scripts/bench.sh [--quick] [--runtime SEC] [--rounds N]
#                         [--file-mib N] [--bin DIR] [--keep] [--resync-mib N]
#   --quick       one round of 3 s jobs, 1 s ramp, 256 MiB files (a smoke
#                 run; < 1.5 min)
#   --runtime S   seconds per job and round (default 8, ramp 2)
#   --rounds N    rounds of every job (default 3)
#   --file-mib N  backing file size (default 1024, quick 256)
#   --bin DIR     use drbdd/drbdadm from DIR instead of building them
#   --keep        keep the work directory (logs, fio JSON) for inspection
#   --resync-mib  dirty MiB for the resync section (default 256)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUICK=0 RUNTIME=8 RAMP=2 ROUNDS=3 FILE_MIB="" BIN="" KEEP=0 RESYNC_MIB=256
CONNECT_TIMEOUT=60 SYNC_TIMEOUT=90
while (($#)); do
	case "$1" in
	--quick) QUICK=1 RUNTIME=3 RAMP=1 ROUNDS=1 SYNC_TIMEOUT=30 ;;
	--runtime) RUNTIME=$2 RAMP=$(($2 >= 10 ? 3 : 1)); shift ;;
	--rounds) ROUNDS=$2; shift ;;
	--file-mib) FILE_MIB=$2; shift ;;
	--bin) BIN=$2; shift ;;
	--keep) KEEP=1 ;;
	--resync-mib) RESYNC_MIB=$2; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (try --help)" ;;
	esac
	shift
done
[[ -n $FILE_MIB ]] || FILE_MIB=$((QUICK ? 256 : 1024))
# fio works on the first 7/8 of the file: drbdd keeps its internal
# metadata at the end, so its export is a little smaller than the file.
FIO_SIZE_MIB=$((FILE_MIB * 7 / 8))

ensure_go
ensure_tools fio=fio nbdkit=nbdkit fallocate=util-linux ping=iputils-ping python3=python3

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/drbdd-bench.XXXXXX")
PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do stop_pid "$pid" 20; done
	if ((rc != 0)) && ((rc < 128)); then
		# A failure: show the daemons' last words and keep the logs.
		local f
		for f in "$WORK"/*/drbdd.log "$WORK"/nbdkit.log; do
			[[ -s $f ]] || continue
			log "--- last lines of $f ---"
			tail -n 25 "$f" >&2
		done
		find "$WORK" -name '*.img' -delete 2>/dev/null || true
		KEEP=1
	fi
	if ((KEEP)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z $BIN ]]; then
	BIN=$WORK/bin
	build_binaries "$BIN"
fi
[[ -x $BIN/drbdd && -x $BIN/drbdadm ]] || die "no drbdd/drbdadm in $BIN"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# mkdisk PATH: an identical, fully allocated backing file, every 4 KiB
# page of it written once with 4 KiB writes and synced. This puts each
# target's file in the same state, all of it in the page cache as small
# folios: a fresh file makes the first write to each page cost more (so a
# target that writes fewer pages in the QD1 run starts QD32 colder), and
# the pages that the replicated pair's initial sync reads or writes
# sequentially would become large folios, into which 4 KiB random writes
# are several times slower (seen on this host's ext4: nbdkit at QD32 fell
# from 110k to 36k IOPS), while the other targets' files have none.
mkdisk() {
	rm -f "$1"
	fallocate -l "${FILE_MIB}M" "$1"
	dd if=/dev/zero of="$1" bs=4k count=$((FILE_MIB * 256)) conv=notrunc status=none
	sync "$1"
}

# ---- nbdkit -------------------------------------------------------------
start_nbdkit() {
	mkdisk "$WORK/nbdkit.img"
	local port
	port=$(free_port 127.0.0.1)
	# nbdkit writes its pidfile once it listens.
	nbdkit -f --exit-with-parent -P "$WORK/nbdkit.pid" -i 127.0.0.1 -p "$port" \
		file file="$WORK/nbdkit.img" >"$WORK/nbdkit.log" 2>&1 &
	PIDS+=($!)
	NBDKIT_PID=$!
	NBDKIT_URI="nbd://127.0.0.1:$port/"
	local i
	for ((i = 0; i < 200; i++)); do
		[[ -s $WORK/nbdkit.pid ]] && return 0
		kill -0 "$NBDKIT_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$WORK/nbdkit.log" >&2
	die "nbdkit did not start"
}

# ---- drbdd nodes ----------------------------------------------------------
# start_node NAME: a drbdd daemon with its own socket, status and config dir.
start_node() {
	local n=$1 d=$WORK/$1
	mkdir -p "$d/etc"
	"$BIN/drbdd" --control "$d/drbdd.sock" --status-file "$d/status" >"$d/drbdd.log" 2>&1 &
	PIDS+=($!)
	eval "PID_$n=$!"
	wait_socket "$d/drbdd.sock" $! 10 || { cat "$d/drbdd.log" >&2; die "drbdd $n did not start"; }
}
# adm NAME ARGS...: drbdadm against node NAME.
adm() {
	local n=$1 d=$WORK/$1
	shift
	"$BIN/drbdadm" --control "$d/drbdd.sock" --config-dir "$d/etc" --node "$n" --timeout 30s "$@"
}
must_adm() {
	local out
	out=$(adm "$@" 2>&1) || { log "$out"; log "--- drbdd log of $1 ---"; cat "$WORK/$1/drbdd.log" >&2; die "drbdadm $*: failed"; }
	printf '%s\n' "$out" >"$WORK/$1/last-adm.out"
}
alive() { local v="PID_$1"; kill -0 "${!v}" 2>/dev/null; }

start_single() {
	start_node single
	mkdisk "$WORK/single/single.img"
	local port
	port=$(free_port 127.0.0.1)
	cat >"$WORK/single/etc/r0.yaml" <<EOF
resource: r0
on:
  single:
    disk: $WORK/single/single.img
    nbd-listen: 127.0.0.1:$port
EOF
	must_adm single create-md r0
	must_adm single up r0
	must_adm single primary --force r0
	SINGLE_URI="nbd://127.0.0.1:$port/r0"
}

# write_pair_resource A B NBDPORT EXTRA: resource r0, protocol C, for node
# A on 127.0.0.1 (exporting NBD on NBDPORT) and node B on 127.0.0.2, each
# with its backing file $WORK/N/N.img; EXTRA is YAML placed before `on:`.
# The same file goes into both nodes' config directories.
write_pair_resource() {
	local a=$1 b=$2 nbd=$3 extra=$4 pa pb
	pa=$(free_port 127.0.0.1)
	pb=$(free_port 127.0.0.2)
	{
		printf 'resource: r0\nprotocol: C\n'
		[[ -z $extra ]] || printf '%s\n' "$extra"
		cat <<EOF
on:
  $a:
    address: 127.0.0.1:$pa
    disk: $WORK/$a/$a.img
    nbd-listen: 127.0.0.1:$nbd
  $b:
    address: 127.0.0.2:$pb
    disk: $WORK/$b/$b.img
EOF
	} >"$WORK/$a/etc/r0.yaml"
	cp "$WORK/$a/etc/r0.yaml" "$WORK/$b/etc/r0.yaml"
}

# start_replicated: alice (127.0.0.1) and bob (127.0.0.2), protocol C.
# Returns 1 (after printing why) when replication is not available.
REPL_NOTE=""
start_replicated() {
	start_node alice
	start_node bob
	mkdisk "$WORK/alice/alice.img"
	mkdisk "$WORK/bob/bob.img"
	local nbd
	nbd=$(free_port 127.0.0.1)
	# The resync section measures how fast a resync can go: the rate
	# limits (resync-rate, and c-max-rate, which caps the dynamic
	# controller at 1 GiB/s by default) are raised to their maximum.
	write_pair_resource alice bob "$nbd" $'disk:\n  resync-rate: 4G\n  c-max-rate: 4G'
	must_adm alice create-md r0
	must_adm bob create-md r0
	local n out
	for n in alice bob; do
		if ! out=$(adm "$n" up r0 2>&1); then
			echo "replication: not available (drbdadm up on $n: $(echo "$out" | tail -1))"
			return 1
		fi
	done
	# Connected on both within CONNECT_TIMEOUT; StandAlone for 5 s after
	# `up` means this build does not connect at all yet.
	local start=$SECONDS ca cb
	while :; do
		ca=$(adm alice cstate r0 2>/dev/null || true)
		cb=$(adm bob cstate r0 2>/dev/null || true)
		[[ $ca == Connected && $cb == Connected ]] && break
		{ alive alice && alive bob; } || die "a drbdd died while connecting (logs in $WORK)"
		if ((SECONDS - start >= CONNECT_TIMEOUT)) ||
			{ ((SECONDS - start >= 5)) && [[ $ca == StandAlone || $cb == StandAlone ]]; }; then
			echo "replication: not available (cstate alice=${ca:-?} bob=${cb:-?} after $((SECONDS - start)) s)"
			return 1
		fi
		sleep 0.2
	done
	must_adm alice primary --force r0
	# Initial full sync (alice UpToDate -> bob): wait for it, bounded, so
	# that the measurements do not include resync traffic.
	local ds t0
	t0=$(date +%s.%N)
	start=$SECONDS
	while ds=$(adm alice dstate r0 2>/dev/null || true); [[ $ds != UpToDate/UpToDate ]]; do
		{ alive alice && alive bob; } || die "a drbdd died during the initial sync (logs in $WORK)"
		if ((SECONDS - start >= SYNC_TIMEOUT)); then
			REPL_NOTE="peer not UpToDate after ${SYNC_TIMEOUT}s (dstate $ds): replicated figures include resync traffic"
			break
		fi
		sleep 0.1
	done
	if [[ -z $REPL_NOTE ]]; then
		REPL_NOTE=$(awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$FILE_MIB" \
			'BEGIN {printf "initial full sync of the %d MiB device (Connected -> UpToDate/UpToDate): %.1f s, %.0f MB/s", m, b - a, m * 1.048576 / (b - a)}')
	fi
	REPL_URI="nbd://127.0.0.1:$nbd/r0"
	return 0
}

# ---- measurements --------------------------------------------------------
# server_pids TARGET: the processes that serve TARGET.
server_pids() {
	case $1 in
	nbdkit) echo "$NBDKIT_PID" ;;
	single) echo "$PID_single" ;;
	replicated) echo "$PID_alice $PID_bob" ;;
	esac
}

# server_cpu TARGET FIO_PID: prints "SERVER IDLE": the CPUs (CPU-seconds
# per second) that TARGET's server processes used, and that the whole
# machine left idle, over the middle of the fio run (after its ramp, and
# before its last second). Together with fio's own CPU this says what a
# write costs in CPU time, and how much of the machine was left unused.
server_cpu() {
	local pids window t0 t1 a b
	read -ra pids <<<"$(server_pids "$1")"
	window=$((RUNTIME > 2 ? RUNTIME - 1 : 1))
	sleep "$RAMP.2"
	# utime+stime of each process, then idle+iowait of all CPUs, in ticks.
	cpu_ticks() {
		local p
		for p in "${pids[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat" 2>/dev/null || printf '0 '; done
		awk '/^cpu / {print $5 + $6}' /proc/stat
	}
	a=$(cpu_ticks) t0=$(date +%s%N)
	sleep "$window"
	b=$(cpu_ticks) t1=$(date +%s%N)
	kill -0 "$2" 2>/dev/null || { echo "0 0"; return; }
	awk -v a="$a" -v b="$b" -v dt="$(((t1 - t0) / 1000))" -v hz="$(getconf CLK_TCK)" 'BEGIN {
		n = split(a, x, " "); split(b, y, " ")
		for (i = 1; i < n; i++) s += y[i] - x[i]
		printf "%.3f %.3f\n", s / hz / (dt / 1e6), (y[n] - x[n]) / hz / (dt / 1e6)
	}'
}

# run_fio TARGET JOB URI ROUND: one fio job; appends "target job iops
# lat_us clat_us MB/s fio_cpus server_cpus idle_cpus" (CPUs: CPU-seconds
# per second, see server_cpu).
run_fio() {
	local target=$1 job=$2 uri=$3 args out=$WORK/fio-$1-$2-$4.json
	case "$job" in
	qd1) args=(--rw=randwrite --bs=4k --iodepth=1) ;;
	qd32) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
	seq) args=(--rw=write --bs=1m --iodepth=8) ;;
	esac
	sync
	fio --name="$target-$job" --ioengine=nbd --uri="$uri" "${args[@]}" \
		--size="${FIO_SIZE_MIB}m" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
		--output-format=json --output="$out" >"$WORK/fio-$target-$job.log" 2>&1 &
	local fio_pid=$! cpu
	cpu=$(server_cpu "$target" "$fio_pid")
	if ! wait "$fio_pid"; then
		cat "$WORK/fio-$target-$job.log" >&2
		die "fio $target $job failed"
	fi
	"$PY" - "$out" "$target" "$job" $cpu >>"$RESULTS" <<'EOF' || die "fio $2 $3: bad output"
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]
if j.get("error"):
    sys.exit("fio error %s" % j["error"])
w = j["write"]
if w["total_ios"] == 0:
    sys.exit("fio did no I/O")
# fio's own CPU: usr_cpu and sys_cpu are percentages of one CPU over
# the job's runtime.
fio_cpus = (j["usr_cpu"] + j["sys_cpu"]) / 100
server, idle = (float(x) for x in sys.argv[4:6])
print("%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.3f\t%.3f\t%.3f" % (sys.argv[2], sys.argv[3], w["iops"],
      w["lat_ns"]["mean"] / 1000, w["clat_ns"]["mean"] / 1000, w["bw_bytes"] / 1e6,
      fio_cpus, server, idle))
EOF
	printf '  %-10s %-4s %s\n' "$target" "$job" "$(tail -1 "$RESULTS" | cut -f3- | awk -F'\t' '{printf "%s IOPS, lat %s us (clat %s), %s MB/s; CPUs: fio %.2f, server %.2f, idle %.2f", $1, $2, $3, $4, $5, $6, $7}')"
}

# measure_rtt: mean loopback round trip 127.0.0.1 -> 127.0.0.2 in us, by
# ping (ICMP) and by a TCP 1-byte ping-pong (TCP_NODELAY, python: includes
# some interpreter time). Sets RTT_PING_US, RTT_TCP_US.
measure_rtt() {
	local count=20 interval=0.2
	((QUICK)) && count=10 interval=0.05
	RTT_PING_US=$(ping -n -q -c "$count" -i "$interval" 127.0.0.2 2>/dev/null |
		awk -F'/' '/^rtt|^round-trip/ {printf "%.1f", $5 * 1000}') || true
	RTT_TCP_US=$("$PY" - <<'EOF'
import socket, threading, time
srv = socket.socket(); srv.bind(("127.0.0.2", 0)); srv.listen(1)
def echo():
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)):
        c.sendall(b)
threading.Thread(target=echo, daemon=True).start()
s = socket.create_connection(srv.getsockname(), source_address=("127.0.0.1", 0))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(200):
    s.sendall(b"x"); s.recv(1)
n = 2000; t = time.perf_counter()
for _ in range(n):
    s.sendall(b"x"); s.recv(1)
print("%.1f" % ((time.perf_counter() - t) / n * 1e6))
EOF
) || RTT_TCP_US=""
}

# counter NODE NAME: one /proc/drbd counter (KiB for ns/oos) of minor 0.
counter() { grep -o "\b$2:[0-9]*" "$WORK/$1/status" | head -1 | cut -d: -f2; }

# bench_resync: ROUNDS times (at least 3), disconnect bob, dirty
# RESYNC_MIB MiB through alice's export, reconnect and time the resync,
# counting what alice sent on the wire (ns:) against what was dirtied
# (oos:); and, interleaved, time dd copying the same bytes between the
# same kind of files, with and without fdatasync. Medians count.
# Targets: sent <= 1.05x dirtied, speed >= 0.8x dd.
bench_resync() {
	if [[ " ${TARGETS[*]} " != *" replicated "* ]]; then
		echo "resync benchmark: skipped (replication not available)"
		return
	fi
	local mib=$RESYNC_MIB
	((mib * 2 <= FILE_MIB)) || mib=$((FILE_MIB / 2))
	# The plain copy goes into a file prepared like bob's disk (mkdisk:
	# allocated, written once, cached), so that dd overwrites written
	# blocks as the resync does. The resync ends with its bytes on stable
	# storage (the SyncTarget flushes its disk before it clears the bitmap
	# and becomes UpToDate), so the reference is dd with conv=fdatasync;
	# dd into the page cache alone is shown too.
	FILE_MIB=$mib mkdisk "$WORK/bob/copy.img"
	local round oos ns0 ns1 t0 t1 d0 d1 conv
	local resyncs=() durable=() cached=()
	# At least three rounds, even in a quick run: a single resync or dd
	# swings by a third from run to run, and a round takes seconds.
	local rounds=$((ROUNDS > 3 ? ROUNDS : 3))
	for ((round = 1; round <= rounds; round++)); do
		must_adm bob disconnect r0
		fio --name=dirty --ioengine=nbd --uri="$REPL_URI" --rw=write --bs=1M --iodepth=8 \
			--offset=0 --size="${mib}M" --output="$WORK/fio-dirty.out" >/dev/null 2>&1 ||
			die "fio dirtying ${mib} MiB failed"
		sleep 1.2 # the status file is rewritten at most once a second
		oos=$(counter alice oos)
		ns0=$(counter alice ns)
		sync # the dirtying writes reach alice's disk before the clock starts, as before each dd
		# alice's state changes stream in as they happen: the clock stops
		# at the one that ends the resync.
		coproc EVENTS { adm alice events r0; }
		local ev line
		ev=${EVENTS[0]}
		t0=$(date +%s.%N)
		must_adm bob connect r0
		while :; do
			IFS= read -r -t 120 line <&"$ev" || die "resync did not finish within 120 s"
			[[ $line == *"disk:UpToDate peer-disk:UpToDate connection:Connected"* ]] && break
		done
		t1=$(date +%s.%N)
		kill "$EVENTS_PID" 2>/dev/null
		wait "$EVENTS_PID" 2>/dev/null || true
		sleep 1.2
		ns1=$(counter alice ns)
		resyncs+=("$oos,$((ns1 - ns0)),$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f", b - a}')")
		for conv in notrunc,fdatasync notrunc; do
			sync
			d0=$(date +%s.%N)
			dd if="$WORK/alice/alice.img" of="$WORK/bob/copy.img" bs=1M count="$mib" conv="$conv" status=none
			d1=$(date +%s.%N)
			if [[ $conv == *fdatasync ]]; then
				durable+=("$(awk -v a="$d0" -v b="$d1" 'BEGIN {printf "%.6f", b - a}')")
			else
				cached+=("$(awk -v a="$d0" -v b="$d1" 'BEGIN {printf "%.6f", b - a}')")
			fi
		done
	done
	rm -f "$WORK/bob/copy.img"
	"$PY" - "$mib" "${resyncs[*]}" "${durable[*]}" "${cached[*]}" <<'PYEOF'
import statistics, sys
mib = float(sys.argv[1])
resyncs = [tuple(float(v) for v in r.split(",")) for r in sys.argv[2].split()]
durable = [mib / float(x) for x in sys.argv[3].split()]
cached = [mib / float(x) for x in sys.argv[4].split()]
runs = lambda v: ", ".join("%.0f" % x for x in v)
speeds = [oos / 1024.0 / t for oos, _, t in resyncs]
ratios = [sent / oos if oos else 0 for oos, sent, _ in resyncs]
rs = statistics.median(speeds)
dd = statistics.median(durable)
dd_cached = statistics.median(cached)
oos, sent, t = resyncs[-1]
print("resync: %.0f MiB dirtied (oos) and %.1f MiB sent in the last run; %.0f MiB/s (%s)" % (
    oos / 1024.0, sent / 1024.0, rs, runs(speeds)))
print("dd of the same bytes: %.0f MiB/s with fdatasync (%s), %.0f MiB/s into the page cache only (%s)" % (
    dd, runs(durable), dd_cached, runs(cached)))
r = max(ratios)
print("%-36s %6.2f  (target <= 1.05) %s" % ("resync bytes sent / bytes dirtied", r, "ok" if r <= 1.05 else "ABOVE TARGET"))
r = rs / dd if dd else 0
print("%-36s %6.2f  (target >= 0.8) %s" % ("resync speed / dd speed", r, "ok" if r >= 0.8 else "BELOW TARGET"))
print("%-36s %6.2f  (no target)" % ("resync speed / page-cache dd speed", rs / dd_cached if dd_cached else 0))
PYEOF
}

# wait_adm NODE WHAT WANT SECONDS: until `drbdadm WHAT r0` on NODE says WANT.
wait_adm() {
	local start=$SECONDS
	until [[ $(adm "$1" "$2" r0 2>/dev/null) == "$3" ]]; do
		((SECONDS - start < $4)) || die "$1: $2 is $(adm "$1" "$2" r0 2>&1), not $3, after $4 s"
		sleep 0.1
	done
}

# hwm NODE: the drbdd's peak resident memory (VmHWM) in KiB.
hwm() { local v="PID_$1"; awk '/^VmHWM:/ {print $2}' "/proc/${!v}/status"; }

# bench_memory: two drbdd on a 1 TiB device (sparse backing files), the
# DESIGN target's case. They connect, skip the initial sync, mem2 goes
# away while mem1 writes 1000 blocks spread over the whole device, and
# mem2 comes back: a handshake exchanging the two 32 MiB bitmaps and a
# resync of what was written. Each daemon's peak resident memory (VmHWM,
# the most it ever held) is printed against the target of 64 MiB.
bench_memory() {
	local n nbd
	for n in mem1 mem2; do
		start_node "$n"
		truncate -s 1T "$WORK/$n/$n.img"
	done
	nbd=$(free_port 127.0.0.1)
	write_pair_resource mem1 mem2 "$nbd" ""
	for n in mem1 mem2; do
		must_adm "$n" create-md r0
		must_adm "$n" up r0
	done
	wait_adm mem1 cstate Connected 60
	must_adm mem1 new-current-uuid --clear-bitmap r0
	wait_adm mem1 dstate UpToDate/UpToDate 60
	must_adm mem1 primary r0
	must_adm mem2 disconnect r0
	fio --name=spread --ioengine=nbd --uri="nbd://127.0.0.1:$nbd/r0" --rw=randwrite --bs=4k \
		--number_ios=1000 --size=1000g --output="$WORK/fio-mem.out" >/dev/null 2>&1 ||
		die "fio writing to the 1 TiB device failed"
	must_adm mem2 connect r0
	wait_adm mem1 cstate Connected 120
	wait_adm mem1 dstate UpToDate/UpToDate 120
	local h1 h2
	h1=$(hwm mem1)
	h2=$(hwm mem2)
	"$PY" - "$h1" "$h2" <<'PYEOF'
import sys
h1, h2 = (int(x) / 1024 for x in sys.argv[1:3])
print("memory, 1 TiB device: peak resident %.1f MiB (Primary, wrote 1000 blocks while alone), %.1f MiB (Secondary, resynced them)" % (h1, h2))
m = max(h1, h2)
print("%-36s %6.1f  (target <= 64 MiB) %s" % ("peak resident memory, MiB", m, "ok" if m <= 64 else "ABOVE TARGET"))
PYEOF
	for n in mem1 mem2; do
		adm "$n" down r0 >/dev/null 2>&1 || true
	done
}

report() {
	"$PY" - "$RESULTS" "${RTT_PING_US:-}" "${RTT_TCP_US:-}" <<'EOF'
import os
import sys
import statistics
runs = {}
for line in open(sys.argv[1]):
    t, job, iops, lat, clat, mbs, fio_cpus, server_cpus, idle_cpus = line.rstrip("\n").split("\t")
    iops, mbs = float(iops), float(mbs)
    # CPU time per write: microseconds per 4 KiB write, milliseconds per
    # MiB of 1 MiB writes.
    per = 1e6 / iops if job != "seq" else 1e3 / (mbs / 1.048576)
    runs.setdefault((t, job), []).append((iops, float(lat), mbs, float(clat),
        float(fio_cpus) * per, float(server_cpus) * per, float(idle_cpus) * per))
# Each figure is the median of the rounds, field by field.
res = {k: tuple(statistics.median(r[i] for r in v) for i in range(7)) for k, v in runs.items()}
rounds = max(len(v) for v in runs.values())
if rounds > 1:
    print("\nmedians of %d rounds (each round runs every target in turn)" % rounds)
rtt_ping = float(sys.argv[2]) if sys.argv[2] else None
rtt_tcp = float(sys.argv[3]) if sys.argv[3] else None
targets = [t for t in ("nbdkit", "single", "replicated") if (t, "qd1") in res]
print()
print("%-11s %10s %11s %12s %11s %13s" % ("target", "QD1 IOPS", "QD1 lat us", "QD1 clat us", "QD32 IOPS", "seq 1M MB/s"))
for t in targets:
    print("%-11s %10.0f %11.1f %12.1f %11.0f %13.1f" % (t, res[(t, "qd1")][0], res[(t, "qd1")][1],
          res[(t, "qd1")][3], res[(t, "qd32")][0], res[(t, "seq")][2]))
print()
print("CPU time per write (medians; the %d CPUs are shared by fio and the servers; idle: CPU time left unused)" % os.cpu_count())
print("%-11s %26s %26s" % ("", "QD32: us per 4 KiB write", "seq: ms per MiB"))
print("%-11s %8s %8s %8s %8s %8s %8s" % ("target", "fio", "server", "idle", "fio", "server", "idle"))
for t in targets:
    q, sq = res[(t, "qd32")], res[(t, "seq")]
    print("%-11s %8.1f %8.1f %8.1f %8.3f %8.3f %8.3f" % (t, q[4], q[5], q[6], sq[4], sq[5], sq[6]))
if "replicated" in targets:
    # What the ratio would be if both setups kept the CPUs equally busy:
    # the CPU time per write of single (fio + server) over that of
    # replicated (fio + alice + bob). When it is below a target, the
    # target needs cheaper writes, not better overlap.
    for job, name in (("qd32", "QD32"), ("seq", "seq")):
        s, r = res[("single", job)], res[("replicated", job)]
        if r[4] + r[5] > 0:
            print("replicated/single %-4s at equal CPU use: (fio + single) / (fio + alice + bob) = %.2f"
                  % (name, (s[4] + s[5]) / (r[4] + r[5])))
print()
def ratio(name, num, den, target):
    r = num / den if den else 0.0
    if target is None:
        print("%-36s %6.2f  (no target)" % (name, r))
        return
    print("%-36s %6.2f  (target >= %.1f) %s" % (name, r, target, "ok" if r >= target else "BELOW TARGET"))
if "single" in targets:
    ratio("drbdd/nbdkit   QD32 4k randwrite", res[("single", "qd32")][0], res[("nbdkit", "qd32")][0], 0.9)
    ratio("drbdd/nbdkit   seq 1M write", res[("single", "seq")][2], res[("nbdkit", "seq")][2], 0.9)
    ratio("drbdd/nbdkit   QD1 4k randwrite", res[("single", "qd1")][0], res[("nbdkit", "qd1")][0], None)
if "replicated" in targets:
    ratio("replicated/single seq 1M write", res[("replicated", "seq")][2], res[("single", "seq")][2], 0.8)
    ratio("replicated/single QD32 4k randwrite", res[("replicated", "qd32")][0], res[("single", "qd32")][0], 0.7)
    rtt = rtt_ping if rtt_ping is not None else rtt_tcp
    over = res[("replicated", "qd1")][1] - res[("single", "qd1")][1]
    if rtt is None:
        print("QD1 latency: replicated - single = %.1f us (RTT not measured)" % over)
    else:
        lim = rtt + 100
        print("QD1 latency  replicated - single   %6.1f us (target <= RTT %.1f + 100 = %.1f us) %s"
              % (over, rtt, lim, "ok" if over <= lim else "BELOW TARGET"))
print("loopback RTT 127.0.0.1->127.0.0.2: ping %s us, TCP ping-pong %s us" % (
    "%.1f" % rtt_ping if rtt_ping is not None else "n/a",
    "%.1f" % rtt_tcp if rtt_tcp is not None else "n/a"))
EOF
}

# ---- main ----------------------------------------------------------------
echo "drbdd bench: $(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r), $(fio --version), nbdkit $(nbdkit --version | awk '{print $2}')"
echo "backing files ${FILE_MIB} MiB (fallocate), fio --size ${FIO_SIZE_MIB} MiB, ${ROUNDS} rounds of ${RUNTIME} s per job + ${RAMP} s ramp, NBD over TCP loopback"
start_nbdkit
start_single
TARGETS=(nbdkit single)
URIS=("$NBDKIT_URI" "$SINGLE_URI")
if start_replicated; then
	TARGETS+=(replicated)
	URIS+=("$REPL_URI")
	echo "replication: alice 127.0.0.1 <-> bob 127.0.0.2 Connected, protocol C"
	[[ -z $REPL_NOTE ]] || echo "note: $REPL_NOTE"
fi
measure_rtt
for job in qd1 qd32 seq; do
	for ((round = 1; round <= ROUNDS; round++)); do
		for i in "${!TARGETS[@]}"; do
			t=${TARGETS[$i]}
			case $t in
			nbdkit) kill -0 "$NBDKIT_PID" 2>/dev/null || die "nbdkit died" ;;
			single) alive single || die "drbdd single died (log: $WORK/single/drbdd.log)" ;;
			replicated) { alive alice && alive bob; } || die "a replicated drbdd died" ;;
			esac
			run_fio "$t" "$job" "${URIS[$i]}" "$round"
		done
	done
done
if [[ " ${TARGETS[*]} " == *" replicated "* ]]; then
	echo "replicated status after the run: alice $(adm alice cstate r0 2>&1) $(adm alice dstate r0 2>&1)"
fi
report
echo
bench_resync
echo
bench_memory
echo "bench: done"
