package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as the probe's echo child, which
// the probe starts from os.Executable.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == probeEchoArg {
		echoChild()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestProbe runs the whole probe: both round trips must complete (the
// echo answers every request, in a thread and in a child process) and
// every figure must be a positive number of nanoseconds.
func TestProbe(t *testing.T) {
	var out strings.Builder
	if err := runProbe(&out); err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 3 {
		t.Fatalf("probe printed %q", out.String())
	}
	for i, key := range []string{"syscall_ns", "thread_rtt_ns", "process_rtt_ns"} {
		k, v, _ := strings.Cut(fields[i], "=")
		ns, err := strconv.ParseInt(v, 10, 64)
		if k != key || err != nil || ns <= 0 {
			t.Errorf("field %d: %q, want %s=<positive>", i, fields[i], key)
		}
	}
}
