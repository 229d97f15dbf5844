#!/usr/bin/env bash
# scripts/test.sh: THE test command (README, .ci/run). Installs what the
# tests need (Debian packages, staticcheck) and runs, each under a banner:
#
#   gofmt        gofmt -l on every Go file (fails listing the files)
#   vet          go vet ./...
#   staticcheck  staticcheck ./...
#   unit         go test of every package but ./testenv/...
#   fuzz         each Fuzz target for FUZZTIME (default 100000x: a
#                hundred thousand inputs), within FUZZ_BUDGET seconds in all
#                (default 150). A count, not a duration: Go 1.26's fuzz
#                coordinator can fail a target with "context deadline
#                exceeded" when a duration runs out while a worker is busy
#                (golang/go#75804, fixed in Go 1.27), with nothing found.
#   integration  go test -count=1 ./testenv/ (real daemons, real NBD clients)
#   lab          DRBDD_LAB=1 go test ./testenv/lab/... (when that exists);
#                once more if a VM's kernel crashed in its network stack
#   bench        scripts/bench.sh --quick: a smoke run; fails only on errors,
#                never on ratios
#
# Usage: scripts/test.sh [--quick] [--step NAME]... [--fail-fast] [--list]
#   --quick      skip fuzz, lab and bench
#   --step NAME  run only the named step(s) (repeatable)
#   --fail-fast  stop at the first failed step (default: run all, then fail)
# Runs without prompts (CI=true, no stdin). go test output goes through
# unchanged. Exit status is non-zero when any step failed; the last line is
# "test.sh: N passed, N failed, N skipped" (steps).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

ALL_STEPS=(gofmt vet staticcheck unit fuzz integration lab bench)
QUICK=0 FAIL_FAST=0 ONLY=()
: "${FUZZTIME:=100000x}" "${FUZZ_BUDGET:=150}"
while (($#)); do
	case "$1" in
	--quick) QUICK=1 ;;
	--step) [[ $# -ge 2 ]] || die "--step needs a name"; ONLY+=("$2"); shift ;;
	--step=*) ONLY+=("${1#--step=}") ;;
	--fail-fast) FAIL_FAST=1 ;;
	--list) printf '%s\n' "${ALL_STEPS[@]}"; exit 0 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (try --help)" ;;
	esac
	shift
done
for s in "${ONLY[@]}"; do
	[[ " ${ALL_STEPS[*]} " == *" $s "* ]] || die "unknown step $s (steps: ${ALL_STEPS[*]})"
done

# Debian packages of the programs the tests drive (tool=package).
BASE_TOOLS=(qemu-io=qemu-utils qemu-img=qemu-utils nbdinfo=libnbd-bin nbdcopy=libnbd-bin
	nbdsh=python3-libnbd py:nbd=python3-libnbd fio=fio nbdkit=nbdkit ip=iproute2 tc=iproute2
	ping=iputils-ping fallocate=util-linux python3=python3)
# The two-VM lab (testenv/lab): qemu with TCG, a busybox initramfs, depmod,
# unpacking the cloud kernel .deb (the same list as testenv/lab's hostTools,
# which also installs them itself).
LAB_TOOLS=(qemu-system-x86_64=qemu-system-x86 busybox=busybox-static cpio=cpio depmod=kmod
	mke2fs=e2fsprogs xz=xz-utils zstd=zstd dpkg-deb=dpkg)
# Root's sbin holds depmod, mkfs.ext4, ip and tc.
case ":$PATH:" in *":/usr/sbin:"*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac

# unit_pkgs: every package except the integration and lab ones.
unit_pkgs() { go list ./... | grep -v -e '/testenv$' -e '/testenv/'; }

step_gofmt() {
	local files bad
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		files=$(git ls-files -co --exclude-standard -- '*.go' | grep -v -e '/testdata/' -e '^testdata/' || true)
	else
		files=$(find . -name '*.go' -not -path '*/testdata/*' -not -path './.*' | sed 's|^\./||')
	fi
	[[ -n $files ]] || { echo "no Go files"; return 1; }
	# shellcheck disable=SC2086
	bad=$(echo "$files" | xargs -r ls -d 2>/dev/null | xargs -r gofmt -l) || return 1
	if [[ -n $bad ]]; then
		echo "gofmt: these files need formatting (run gofmt -w):"
		echo "$bad" | sed 's/^/  /'
		return 1
	fi
	echo "gofmt: $(echo "$files" | wc -l) files formatted"
}

step_vet() { go vet ./... && echo "vet: ok"; }

step_staticcheck() {
	if ! command -v staticcheck >/dev/null 2>&1; then
		echo "installing staticcheck"
		go install honnef.co/go/tools/cmd/staticcheck@latest
	fi
	staticcheck ./... && echo "staticcheck: ok"
}

step_unit() {
	local pkgs
	pkgs=$(unit_pkgs)
	# shellcheck disable=SC2086
	go test -timeout 15m $pkgs
}

step_fuzz() {
	local pkg targets t start=$SECONDS failed=0 ran=0 left=0
	for pkg in $(unit_pkgs); do
		targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
		for t in $targets; do
			if ((SECONDS - start >= FUZZ_BUDGET)); then
				left=$((left + 1))
				continue
			fi
			echo "--- fuzz $pkg $t ($FUZZTIME)"
			# Minimizing a new input may take up to a minute by
			# default, with no inputs run meanwhile (FuzzPlanner
			# stalled twice for 30 s in one CI run); a smoke run
			# keeps the input as found.
			if go test -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 1000x "$pkg"; then
				ran=$((ran + 1))
			else
				failed=$((failed + 1))
			fi
		done
	done
	echo "fuzz: $ran targets ok, $failed failed, $left not run (budget ${FUZZ_BUDGET}s used: $((SECONDS - start))s)"
	((ran + failed > 0)) || { echo "fuzz: no fuzz targets found"; return 1; }
	((failed == 0))
}

step_integration() { go test -count=1 -timeout 20m ./testenv/; }

# step_lab runs the lab's tests, and runs them once more when they failed
# because a VM's own kernel crashed in its network stack: under TCG the
# guest kernel has once oopsed in net_rx_action (a NULL pointer in its
# poll list, below a read() of drbdd's), which says nothing about drbdd
# and leaves its VM dead. The failed run's output, with the console of
# the crashed VM, stays in the log, and a second failure fails the step.
step_lab() {
	[[ -d testenv/lab ]] || { echo "testenv/lab not present: skipped"; return 77; }
	ensure_tools "${LAB_TOOLS[@]}"
	local out rc=0 crashed=0
	out=$(mktemp)
	if ! DRBDD_LAB=1 go test -count=1 -timeout 40m ./testenv/lab/... 2>&1 | tee "$out"; then
		rc=1
		grep -q 'RIP: 0010:net_rx_action' "$out" && crashed=1
	fi
	rm -f "$out"
	if ((crashed)); then
		echo "lab: a VM's kernel crashed in net_rx_action (its console is above): a guest kernel fault, not drbdd's; running the lab tests once more"
		DRBDD_LAB=1 go test -count=1 -timeout 40m ./testenv/lab/...
		return
	fi
	return "$rc"
}

step_bench() { scripts/bench.sh --quick; }

# ---- runner ---------------------------------------------------------------
selected() {
	local s=$1
	if ((${#ONLY[@]})); then
		[[ " ${ONLY[*]} " == *" $s "* ]]
		return
	fi
	if ((QUICK)); then
		case $s in fuzz | lab | bench) return 1 ;; esac
	fi
	return 0
}

ensure_go
needs_tools=0
for s in unit fuzz integration lab bench; do selected "$s" && needs_tools=1; done
if ((needs_tools)); then
	banner "setup: tools"
	ensure_tools "${BASE_TOOLS[@]}"
	echo "go $(go env GOVERSION), fio $(fio --version), nbdkit $(nbdkit --version | awk '{print $2}'), $(qemu-io --version | head -1)"
fi

passed=0 failed=0 skipped=0 SUMMARY=()
for s in "${ALL_STEPS[@]}"; do
	if ! selected "$s"; then
		skipped=$((skipped + 1))
		SUMMARY+=("$(printf '  %-12s skipped' "$s")")
		continue
	fi
	banner "step $s"
	t0=$SECONDS
	set +e
	(set -e; "step_$s") </dev/null
	rc=$?
	set -e
	dt=$((SECONDS - t0))
	if ((rc == 0)); then
		passed=$((passed + 1))
		SUMMARY+=("$(printf '  %-12s PASS  %4ds' "$s" "$dt")")
	elif ((rc == 77)); then
		skipped=$((skipped + 1))
		SUMMARY+=("$(printf '  %-12s skipped (testenv/lab not present)' "$s")")
	else
		failed=$((failed + 1))
		SUMMARY+=("$(printf '  %-12s FAIL  %4ds (exit %d)' "$s" "$dt" "$rc")")
		echo "==== step $s FAILED (exit $rc)"
		((FAIL_FAST)) && break
	fi
done

banner "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "test.sh: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
