# shellcheck shell=bash
# scripts/lib.sh: helpers shared by test.sh, bench.sh and demo.sh.
# Source it; it defines functions and a few variables and runs nothing.

# REPO_ROOT is the module root (the directory holding go.mod).
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# PY is the system python: it has Debian's libnbd module, which a python
# from a version manager (pyenv, ...) earlier in PATH does not.
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; else PY=python3; fi

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# banner NAME: one clearly visible line naming a step.
banner() { printf '\n==== %s ====\n' "$*"; }

# have_tool TOOL: whether TOOL (a program, or "py:MODULE" for a module of
# the system python) is present.
have_tool() {
	case "$1" in
	# -I: the module must come from the system, not from a directory of
	# the same name in the working directory (the repository has nbd/).
	py:*) "$PY" -I -c "import ${1#py:}" >/dev/null 2>&1 ;;
	*) command -v "$1" >/dev/null 2>&1 ;;
	esac
}

# ensure_tools TOOL=PACKAGE...: installs the Debian packages of the tools
# that are missing, quietly and without prompts. Nothing runs (no apt at all)
# when every tool is present; `apt-get update` runs only when the install
# fails without it (fresh machine, stale lists).
ensure_tools() {
	local pair tool pkg missing=()
	for pair in "$@"; do
		tool=${pair%%=*} pkg=${pair#*=}
		if ! have_tool "$tool"; then
			[[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
		fi
	done
	((${#missing[@]})) || return 0
	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 || die "missing packages ${missing[*]} and not root: install them first"
		sudo=(sudo -n)
	fi
	log "installing: ${missing[*]}"
	local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq
		-o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false)
	if ! "${apt[@]}" install "${missing[@]}" >/dev/null 2>&1 </dev/null; then
		"${sudo[@]}" apt-get -qq update </dev/null >/dev/null || die "apt-get update failed"
		"${apt[@]}" install "${missing[@]}" </dev/null >/dev/null ||
			die "apt-get install ${missing[*]} failed"
	fi
	for pair in "$@"; do
		have_tool "${pair%%=*}" || die "${pair%%=*} still missing after installing ${pair#*=}"
	done
}

# ensure_go: Go must be there already (the README's prerequisite); adds
# GOPATH/bin to PATH for tools installed with go install.
ensure_go() {
	command -v go >/dev/null 2>&1 || die "go not found in PATH: install Go first (see README.md)"
	local gobin
	gobin=$(go env GOBIN)
	[[ -n $gobin ]] || gobin="$(go env GOPATH)/bin"
	case ":$PATH:" in *":$gobin:"*) ;; *) PATH="$gobin:$PATH" ;; esac
	export PATH
}

# build_binaries DIR: go build drbdd and drbdadm into DIR.
build_binaries() {
	mkdir -p "$1"
	(cd "$REPO_ROOT" && go build -o "$1/" ./drbdd ./drbdadm) || die "go build failed"
}

# free_port HOST: a TCP port that was free on HOST a moment ago.
free_port() {
	"$PY" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])
EOF
}

# wait_socket PATH PID SECONDS: waits for a Unix socket to appear while
# the process PID lives.
wait_socket() {
	local i
	for ((i = 0; i < $3 * 20; i++)); do
		[[ -S $1 ]] && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

# stop_pid PID [SECONDS]: SIGTERM, wait, then SIGKILL. Only for processes
# this script started.
stop_pid() {
	local pid=$1 t=${2:-20} i
	kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < t * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid did not exit within ${t}s of SIGTERM: killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}
