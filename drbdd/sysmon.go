package main

import (
	"os"
	"strings"
	"syscall"
)

// sysmonAwakeSetting is the GODEBUG setting that keeps the Go runtime's
// monitor thread (sysmon) out of its deep sleep.
//
// Why: sysmon sleeps deeply whenever every P is idle, and the next system
// call wakes it with a futex; awake, it polls every 20 µs until the Ps
// are idle again. A node replicating one write at a time goes idle
// between every request and its peer's ack, so each write paid a futex
// wake, a nanosleep or two and a futex sleep on top of its real work. On
// the 2-CPU test host that was 3.5 of the Primary's 5.5 context switches
// per 4 KiB write at queue depth 1 and 2 of the Secondary's 3 (counted
// from /proc/PID/task/*/status), and 30 to 60 µs of the write's latency.
//
// The runtime has no switch for this; a scheduler trace interval does it,
// because sysmon stays awake to print the trace on time. The interval is
// the largest the runtime accepts (24.8 days), counted from the host's
// boot: a host up longer than that prints one "SCHED" line to stderr at
// start and another every 24.8 days. An awake, idle sysmon backs off to
// one wake-up every 10 ms.
const sysmonAwakeSetting = "schedtrace=2147483647"

// keepSysmonAwake re-executes the daemon with sysmonAwakeSetting added to
// GODEBUG, since the runtime reads that setting only at start. It returns
// without doing anything when GODEBUG already names a schedtrace (so
// GODEBUG=schedtrace=0 restores the runtime's default) or when the
// re-execution fails, and then the daemon simply runs as it is.
func keepSysmonAwake() {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "schedtrace=") {
		return
	}
	if godebug != "" {
		godebug += ","
	}
	if err := os.Setenv("GODEBUG", godebug+sysmonAwakeSetting); err != nil {
		return
	}
	// /proc/self/exe still names the running binary after a package
	// upgrade has replaced or removed the file.
	_ = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	os.Setenv("GODEBUG", strings.TrimSuffix(godebug, ","))
}
