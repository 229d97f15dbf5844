package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReplicationWritesReachBothDisks writes through the Primary's export
// with fio (verified) and qemu-io patterns, for each replication protocol
// and for protocol C on disks opened with O_DIRECT (where large blocks
// are read from the sockets straight into buffers of their own, and
// written with AIO), then takes both nodes down and compares the backing
// files byte for byte. The O_DIRECT case also resyncs writes the
// Secondary missed while disconnected.
func TestReplicationWritesReachBothDisks(t *testing.T) {
	RequireTools(t, "fio", "qemu-io")
	for _, tc := range []struct {
		name, proto string
		disk        map[string]string
	}{
		{"protocol C", "C", nil},
		{"protocol B", "B", nil},
		{"protocol A", "A", nil},
		{"protocol C direct-io", "C", map[string]string{"direct-io": "on"}},
	} {
		proto := tc.proto
		t.Run(tc.name, func(t *testing.T) {
			if tc.disk != nil {
				requireDirectIO(t)
			}
			p := NewPair(t, PairOptions{Protocol: proto, Disk: tc.disk})
			p.Up(t)
			p.InitialSync(t, p.A)
			sessionEnds := map[*Node]int{}
			for _, n := range p.Nodes() {
				sessionEnds[n] = n.logCount("session ended")
			}
			if got := strings.TrimSpace(p.B.MustAdm("role", "r0")); got != "Secondary/Primary" {
				t.Fatalf("bob role %q", got)
			}
			uri := p.URI[p.A]
			MustRun(t, 3*time.Minute, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
				"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=24M", "--verify=crc32c",
				"--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
			MustRun(t, 3*time.Minute, "fio", "--name=seq", "--ioengine=nbd", "--uri="+uri,
				"--rw=write", "--bs=1M", "--iodepth=4", "--offset=32M", "--size=16M", "--verify=crc32c",
				"--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
			MustRun(t, time.Minute, "qemu-io", "-f", "raw",
				"-c", "write -P 0x5a 100k 3k", // unaligned: read-modify-write of partial sectors
				"-c", "write -P 0x6b 1000 17",
				"-c", "write -P 0x77 40M 8M", // larger than one packet: split into 1 MiB P_DATA
				"-c", "write -z 50M 1M",
				"-c", "discard 52M 1M",
				"-c", "flush",
				"-c", "read -P 0x5a 100k 3k", "-c", "read -P 0x6b 1000 17", "-c", "read -P 0 50M 1M", "-c", "read -P 0x77 40M 8M",
				uri)
			// The status file shows the peer, and every write was sent.
			st := p.A.ReadStatus()
			if !strings.Contains(st, "cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate "+proto) {
				t.Fatalf("status file:\n%s", st)
			}
			if p.A.Counter("ns") < 40<<10 || p.B.Counter("nr") < 40<<10 || p.A.Counter("oos") != 0 {
				t.Fatalf("counters do not show the replicated writes:\n%s\n%s", st, p.B.ReadStatus())
			}
			out := p.A.MustAdm("status", "r0")
			if !strings.Contains(out, "bob role:Secondary") || !strings.Contains(out, "peer-disk:UpToDate") {
				t.Fatalf("drbdadm status:\n%s", out)
			}
			if tc.disk != nil {
				for _, n := range p.Nodes() {
					if !n.LogContains("(direct I/O)") {
						t.Fatalf("%s did not attach its disk with direct I/O", n.Name)
					}
					// A block read out of step with the stream would end
					// the session and be healed by a resync unseen.
					if n.logCount("session ended") != sessionEnds[n] {
						b, _ := os.ReadFile(n.LogPath)
						t.Fatalf("%s's session ended during the writes:\n%s", n.Name, b)
					}
				}
				p.B.MustAdm("disconnect", "r0")
				MustRun(t, time.Minute, "qemu-io", "-f", "raw",
					"-c", "write -P 0x3c 8M 5M", "-c", "write -P 0x4d 20M 64k", "-c", "flush", uri)
				p.B.MustAdm("connect", "r0")
				p.WaitSynced(t, time.Minute)
				MustRun(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 8M 5M", "-c", "read -P 0x4d 20M 64k", p.URI[p.A])
			}
			p.A.MustAdm("down", "r0")
			p.B.MustAdm("down", "r0")
			p.CompareDisks(t)
		})
	}
}

// requireDirectIO skips the test where the test directory's filesystem
// refuses O_DIRECT (tmpfs before Linux 6.6).
func requireDirectIO(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "direct"), os.O_CREATE|os.O_RDWR|syscall.O_DIRECT, 0o600)
	if err != nil {
		t.Skipf("no O_DIRECT in the test directory: %v", err)
	}
	f.Close()
}

// logCount counts the lines of n's log that contain s.
func (n *Node) logCount(s string) int {
	b, _ := os.ReadFile(n.LogPath)
	return strings.Count(string(b), s)
}
