package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procGrammar is DRBD 8.4's /proc/drbd grammar: the version line, the
// build tag line, and per minor the state line and counters line, with
// optional tab-indented progress lines.
var procGrammar = regexp.MustCompile(`^version: \S+ \(api:\d+/proto:\d+-\d+\)\n[^\n]*\n(( ?\d+: cs:\w+ ro:\w+/\w+ ds:\w+/\w+ [ ABC] [rs][a-][p-][u-][-a-z][-s]\n    ns:\d+ nr:\d+ dw:\d+ dr:\d+ al:\d+ bm:\d+ lo:\d+ pe:\d+ ua:\d+ ap:\d+ ep:\d+ wo:[fdn] oos:\d+\n(\t[^\n]*\n)*)|( ?\d+: cs:Unconfigured\n)|\n)*$`)

// counter extracts a named counter ("dw") from the status file.
func counter(t *testing.T, status, name string) int64 {
	t.Helper()
	m := regexp.MustCompile(`\b` + name + `:(\d+)`).FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("no %s: counter in status:\n%s", name, status)
	}
	v, _ := strconv.ParseInt(m[1], 10, 64)
	return v
}

// singleNode starts one daemon with resource r0 on a 64 MiB file exported
// over TCP, and returns the node and the NBD URI.
func singleNode(t *testing.T) (*Node, string, string) {
	t.Helper()
	n := NewNode(t, "alice")
	disk := MakeDisk(t, filepath.Join(n.Dir, "alice.img"), 64<<20)
	port := FreePort(t, "127.0.0.1")
	// No kernel device: this host has no nbd module (the lab covers it).
	WriteResource(t, Resource{Name: "r0", Hosts: []Host{
		{Name: "alice", Disk: disk, NBDListen: fmt.Sprintf("127.0.0.1:%d", port)},
	}}, n)
	n.Start()
	n.MustAdm("create-md", "r0")
	n.MustAdm("up", "r0")
	return n, fmt.Sprintf("nbd://127.0.0.1:%d/r0", port), disk
}

func TestSingleNodeLifecycle(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdinfo", "nbdcopy", "nbdsh")
	n, uri, disk := singleNode(t)

	if got := strings.TrimSpace(n.MustAdm("dstate", "r0")); got != "Inconsistent/DUnknown" {
		t.Fatalf("fresh metadata: dstate %q, want Inconsistent/DUnknown", got)
	}
	// A Secondary refuses NBD clients at the handshake, with a reason
	// that qemu shows the user.
	out, err := Run(30*time.Second, "qemu-io", "-f", "raw", "-c", "read 0 4k", uri)
	if err == nil || !strings.Contains(out, "server reported: r0: not Primary (role Secondary)") {
		t.Fatalf("nbdinfo on a Secondary: err=%v out=%s", err, out)
	}
	// Without --force an Inconsistent disk cannot be promoted.
	out, err = n.Adm("primary", "r0")
	if err == nil || !strings.Contains(out, "(-2) Need access to UpToDate data") {
		t.Fatalf("primary on Inconsistent: err=%v out=%q", err, out)
	}
	n.MustAdm("primary", "--force", "r0")
	if got := strings.TrimSpace(n.MustAdm("role", "r0")); got != "Primary/Unknown" {
		t.Fatalf("role %q", got)
	}
	// Without a connected peer holding UpToDate data, a Primary that
	// detached its disk would have no data left: refused rather than
	// turning every request into an error.
	out, err = n.Adm("detach", "r0")
	if err == nil || !strings.Contains(out, "refusing to detach the disk of a Primary") {
		t.Fatalf("detach on a Primary: err=%v out=%q", err, out)
	}
	if got := strings.TrimSpace(n.MustAdm("dstate", "r0")); got != "UpToDate/DUnknown" {
		t.Fatalf("dstate %q after the refused detach", got)
	}

	info := MustRun(t, 30*time.Second, "nbdinfo", "--json", uri)
	for _, want := range []string{`"export-size": 66797568`, `"can_flush": true`, `"can_fua": true`, `"can_trim": true`, `"can_multi_conn": true`} {
		if !strings.Contains(info, want) {
			t.Errorf("nbdinfo: missing %s in\n%s", want, info)
		}
	}

	// Patterns written by qemu-io read back by qemu-io and by nbdcopy.
	MustRun(t, time.Minute, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M",
		"-c", "write -P 0xcd 5M 256k",
		"-c", "write -P 0x11 12345 7",
		"-c", "write -z 2M 64k",
		"-c", "read -P 0xab 0 12345",
		"-c", "read -P 0x11 12345 7",
		"-c", "read -P 0xcd 5M 256k",
		uri)
	copyPath := filepath.Join(n.Dir, "copy.img")
	MustRun(t, time.Minute, "nbdcopy", uri, copyPath)
	got, err := os.ReadFile(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 66797568)
	copy(want[0:1<<20], bytes.Repeat([]byte{0xab}, 1<<20))
	copy(want[12345:12352], bytes.Repeat([]byte{0x11}, 7))
	copy(want[5<<20:5<<20+256<<10], bytes.Repeat([]byte{0xcd}, 256<<10))
	if !bytes.Equal(got, want) {
		t.Fatalf("nbdcopy of the export differs from what qemu-io wrote")
	}
	// The backing file holds the same data: drbdd writes at offset 0.
	raw, _ := os.ReadFile(disk)
	if !bytes.Equal(raw[:len(want)], want) {
		t.Fatalf("backing file differs from the export")
	}

	// The status file follows /proc/drbd and its counters move.
	WaitFor(t, 5*time.Second, "status file with dw counter", func() bool {
		return strings.Contains(n.ReadStatus(), "ro:Primary/Unknown") && counter(t, n.ReadStatus(), "dw") > 0
	})
	st := n.ReadStatus()
	if !procGrammar.MatchString(st) {
		t.Fatalf("status file does not match the /proc/drbd grammar:\n%s", st)
	}
	if counter(t, st, "dw") < 1280 || counter(t, st, "dr") < 1024 {
		t.Fatalf("counters did not move as expected:\n%s", st)
	}

	// secondary is refused while an NBD client holds the device open.
	hold := NbdshCmd("-u", uri, "-c", "import time; time.sleep(30)")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer hold.Process.Kill()
	WaitFor(t, 10*time.Second, "NBD client to be counted", func() bool {
		out, _ := n.Adm("status", "r0")
		return strings.Contains(out, "open:yes")
	})
	out, err = n.Adm("secondary", "r0")
	if err == nil || !strings.Contains(out, "(-12) Device is held open by someone") {
		t.Fatalf("secondary while open: err=%v out=%q", err, out)
	}
	hold.Process.Kill()
	hold.Wait()
	WaitFor(t, 10*time.Second, "NBD client to go away", func() bool {
		_, err := n.Adm("secondary", "r0")
		return err == nil
	})

	// A clean restart keeps data and metadata: the disk comes back UpToDate.
	n.MustAdm("down", "r0")
	n.Stop()
	n.Start()
	n.MustAdm("up", "r0")
	if got := strings.TrimSpace(n.MustAdm("dstate", "r0")); got != "UpToDate/DUnknown" {
		t.Fatalf("after restart: dstate %q, want UpToDate/DUnknown", got)
	}
	n.MustAdm("primary", "r0")
	MustRun(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0xab 0 12345", "-c", "read -P 0x11 12345 7", "-c", "read -P 0xab 12352 1036224", "-c", "read -P 0xcd 5M 256k", uri)
}

func TestSingleNodeFio(t *testing.T) {
	RequireTools(t, "fio")
	n, uri, _ := singleNode(t)
	n.MustAdm("primary", "--force", "r0")
	for _, rw := range []string{"randwrite", "write"} {
		out := MustRun(t, 3*time.Minute, "fio", "--name=verify-"+rw, "--ioengine=nbd", "--uri="+uri,
			"--rw="+rw, "--bs=4k", "--iodepth=32", "--size=32M", "--verify=crc32c", "--do_verify=1",
			"--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
		if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
			t.Fatalf("fio verify failed:\n%s", out)
		}
	}
	// FUA writes and flushes succeed and reach the backing file.
	Nbdsh(t, time.Minute, uri, `
import nbd
h.pwrite(b"F" * 4096, 8192, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(4096, 8192) == b"F" * 4096
`)
}

// TestNBDRequestErrors sends requests a strict client would refuse to
// send, and checks the errors and that the export still serves.
func TestNBDRequestErrors(t *testing.T) {
	RequireTools(t, "nbdsh")
	n, uri, _ := singleNode(t)
	n.MustAdm("primary", "--force", "r0")
	out := Nbdsh(t, time.Minute, uri, `
import errno, nbd
h.set_strict_mode(0)
size = h.get_size()
def expect(name, want, fn):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            raise SystemExit("%s: errno %s, want %s" % (name, e.errnum, want))
        print(name, "ok")
        return
    raise SystemExit(name + ": succeeded, want an error")
expect("read past end", errno.EINVAL, lambda: h.pread(4096, size))
expect("read across end", errno.EINVAL, lambda: h.pread(8192, size - 4096))
expect("write past end", errno.ENOSPC, lambda: h.pwrite(b"x" * 4096, size))
expect("trim past end", errno.EINVAL, lambda: h.trim(4096, size))
expect("zero past end", errno.ENOSPC, lambda: h.zero(4096, size))
h.pwrite(b"still-serving", 0)
assert h.pread(13, 0) == b"still-serving"
print("served")
`)
	for _, want := range []string{"read past end ok", "write past end ok", "trim past end ok", "served"} {
		if !strings.Contains(out, want) {
			t.Fatalf("nbdsh output lacks %q:\n%s", want, out)
		}
	}
	if !n.Running() {
		t.Fatal("daemon died")
	}
}

// TestControlBadInput throws garbage at the control socket and checks that
// the daemon answers errors and keeps serving.
func TestControlBadInput(t *testing.T) {
	n, _, _ := singleNode(t)
	send := func(b []byte) []byte {
		c, err := net.Dial("unix", n.Control)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(b)
		c.(*net.UnixConn).CloseWrite()
		var buf bytes.Buffer
		buf.ReadFrom(c)
		return buf.Bytes()
	}
	// Pure garbage, a truncated header, a header claiming a huge length,
	// and a well-formed message with unknown command 99.
	send([]byte("this is not a netlink message at all, just bytes"))
	send([]byte{0x20, 0, 0})
	send([]byte{0xff, 0xff, 0xff, 0x7f, 0x1d, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	unknown := []byte{
		28, 0, 0, 0, 0x1d, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr
		99, 1, 0, 0, // genlmsghdr: command 99
		0, 0, 0, 0, 0, 0, 0, 0, // drbd header
	}
	if rep := send(unknown); len(rep) < 20 {
		t.Fatalf("unknown command got no reply (%d bytes)", len(rep))
	}
	out := n.MustAdm("status", "r0")
	if !strings.Contains(out, "r0 role:Secondary") {
		t.Fatalf("daemon not serving after bad input: %s", out)
	}
}

// TestAdmErrors checks drbdadm's one-line errors and exit codes.
func TestAdmErrors(t *testing.T) {
	n, _, _ := singleNode(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"up", "nosuch"}, "not defined"},
		{[]string{"--node", "carol", "up", "r0"}, "not in its 'on:' sections"},
		{[]string{"status", "nosuch"}, "unknown resource"},
		{[]string{"frobnicate", "r0"}, "unknown command"},
		{[]string{"--control", filepath.Join(n.Dir, "none.sock"), "primary", "r0"}, "is the daemon running?"},
		{[]string{"up", "r0"}, "already"},
	}
	for _, c := range cases {
		out, err := n.Adm(c.args...)
		if err == nil {
			t.Errorf("drbdadm %v succeeded: %s", c.args, out)
			continue
		}
		if !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("drbdadm %v: %q, want one line containing %q", c.args, out, c.want)
		}
	}
	// A broken resource file is reported with its path and line.
	bad := filepath.Join(n.ConfigDir, "bad.yaml")
	os.WriteFile(bad, []byte("resource: bad\non:\n  alice: [\n"), 0o644)
	if out, err := n.Adm("up", "bad"); err == nil || !strings.Contains(out, bad) || !strings.Contains(out, "line 3") {
		t.Errorf("up with invalid YAML: err=%v out=%q", err, out)
	}
	os.Remove(bad)
	// A missing backing disk is a clear attach error.
	WriteResource(t, Resource{Name: "r1", Hosts: []Host{{Name: "alice", Disk: filepath.Join(n.Dir, "missing.img")}}}, n)
	out, err := n.Adm("up", "r1")
	if err == nil || !strings.Contains(out, "missing.img") {
		t.Errorf("up with missing disk: err=%v out=%q", err, out)
	}
}

// TestCrashKeepsMetadata kills the daemon during writes and checks that
// metadata is readable and conservative afterwards.
func TestCrashKeepsMetadata(t *testing.T) {
	RequireTools(t, "fio")
	n, uri, _ := singleNode(t)
	n.MustAdm("primary", "--force", "r0")
	// --thread: killing fio must not leave a forked job holding the export.
	fio := exec.Command("fio", "--name=load", "--thread", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite",
		"--bs=4k", "--iodepth=8", "--size=48M", "--time_based", "--runtime=30")
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	defer fio.Process.Kill()
	WaitFor(t, 20*time.Second, "writes to flow", func() bool {
		return strings.Contains(n.ReadStatus(), "dw:") && counter(t, n.ReadStatus(), "dw") > 1024
	})
	n.Kill()
	fio.Process.Kill()
	fio.Wait()
	n.Start()
	n.MustAdm("up", "r0")
	if got := strings.TrimSpace(n.MustAdm("dstate", "r0")); got != "UpToDate/DUnknown" {
		t.Fatalf("after crash: dstate %q", got)
	}
	gi := n.MustAdm("get-gi", "r0")
	if !regexp.MustCompile(`^[0-9A-F]{16}(:[0-9A-F]{16}){3}(:[01]){7}\n$`).MatchString(gi) {
		t.Fatalf("get-gi: %q", gi)
	}
	log, _ := os.ReadFile(n.LogPath)
	if !strings.Contains(string(log), "not closed cleanly") {
		t.Fatalf("attach after kill -9 did not apply the activity log:\n%s", log)
	}
}

// TestDaemonKeepsSysmonAwake checks that the daemon re-executes itself,
// under the same process ID, with the GODEBUG setting that keeps the Go
// runtime's sysmon out of deep sleep, and that a schedtrace the user gave
// is left alone, and that the process keeps its name.
func TestDaemonKeepsSysmonAwake(t *testing.T) {
	godebugOf := func(n *Node) string {
		t.Helper()
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", n.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
				return v
			}
		}
		return ""
	}
	for _, c := range []struct{ given, want string }{
		{"", "schedtrace=2147483647"},
		{"madvdontneed=1", "madvdontneed=1,schedtrace=2147483647"},
		{"schedtrace=0", "schedtrace=0"},
	} {
		t.Setenv("GODEBUG", c.given)
		n := NewNode(t, "alice")
		n.Start()
		// The control socket is up, so any re-execution has happened.
		if got := godebugOf(n); got != c.want {
			t.Errorf("GODEBUG %q given: daemon runs with %q, want %q", c.given, got, c.want)
		}
		// The process keeps its name, which pgrep and killall go by.
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n.Pid())); err != nil || strings.TrimSpace(string(comm)) != "drbdd" {
			t.Errorf("GODEBUG %q given: process name %q (%v), want drbdd", c.given, comm, err)
		}
		if _, err := n.Adm("status"); err != nil {
			t.Errorf("GODEBUG %q given: drbdadm status: %v", c.given, err)
		}
		n.Stop()
	}
}
