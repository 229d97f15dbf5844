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
// call wakes it with a futex and makes it poll every 20 µs again (for at
// least a millisecond). A node replicating one write at a time goes idle
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
// start and another every 24.8 days. A fatal runtime error also prints
// the scheduler's state before its message.
//
// The price: awake, sysmon backs off to one wake-up every 10 ms once it
// has found nothing to do for a millisecond, so a goroutine blocked in a
// long system call (an fdatasync) can keep the daemon's one P for up to
// two of those periods before sysmon hands the P on, where a freshly
// woken sysmon took 40 µs. Writes to a disk opened with O_DIRECT do not
// block (see bdev's AIO), and on the test host a flush after every write
// still ran faster with the setting (1964 and 2094 against 1560 and 1583
// writes and flushes per second, queue depth 1).
const sysmonAwakeSetting = "schedtrace=2147483647"

// keepSysmonAwake re-executes the daemon with sysmonAwakeSetting added to
// GODEBUG, since the runtime reads that setting only at start. It returns
// without doing anything when GODEBUG already names a schedtrace (so
// GODEBUG=schedtrace=0 restores the runtime's default) or when the
// re-execution fails, and then the daemon simply runs as it is.
func keepSysmonAwake() {
	godebug, had := os.LookupEnv("GODEBUG")
	if strings.Contains(godebug, "schedtrace=") {
		return
	}
	setting := sysmonAwakeSetting
	if godebug != "" {
		setting = godebug + "," + setting
	}
	if err := os.Setenv("GODEBUG", setting); err != nil {
		return
	}
	// The binary's own path keeps the process's name (the kernel takes it
	// from the path executed, and pgrep, killall and ps go by it).
	// /proc/self/exe still names the running binary after a package
	// upgrade has replaced or removed the file, but would rename the
	// process "exe".
	if exe, err := os.Readlink("/proc/self/exe"); err == nil && !strings.HasSuffix(exe, " (deleted)") {
		_ = syscall.Exec(exe, os.Args, os.Environ())
	}
	_ = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	// Both failed: the environment goes back to what it was.
	if had {
		os.Setenv("GODEBUG", godebug)
	} else {
		os.Unsetenv("GODEBUG")
	}
}
