package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// This file holds helpers shared by the resync, split-brain, verify and
// netns tests. They drive drbdd only through drbdadm, NBD clients, the
// status file, the log and the backing files.

// wchunk is one write: len(data) bytes at off.
type wchunk struct {
	off  int64
	data []byte
}

// pattern returns n bytes of a recognisable pattern: the tag byte, then the
// offset of each 4 KiB block, so that misplaced blocks are detectable.
func tagPattern(tag byte, off int64, n int) []byte {
	b := bytes.Repeat([]byte{tag}, n)
	for i := 0; i+16 <= n; i += 4096 {
		copy(b[i+1:], fmt.Sprintf("%014x", off+int64(i)))
	}
	return b
}

// scattered returns count chunks of size bytes each, spread evenly over
// [0, span) and aligned to size, filled with tagPattern(tag).
func scatterChunks(tag byte, count int, size, span int64) []wchunk {
	stride := span / int64(count) / size * size
	out := make([]wchunk, 0, count)
	for i := range count {
		off := int64(i) * stride
		out = append(out, wchunk{off, tagPattern(tag, off, int(size))})
	}
	return out
}

// nbdWrite writes the chunks through the NBD export at uri and flushes.
// The data travels to nbdsh in a temporary file to keep the script small.
func nbdshWrite(t testing.TB, uri string, chunks []wchunk) {
	t.Helper()
	nbdshWriteIn(t, "", uri, chunks)
}

// nbdshWriteIn is nbdshWrite with nbdsh running inside network namespace
// netns (none when empty).
func nbdshWriteIn(t testing.TB, netns, uri string, chunks []wchunk) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "chunks-")
	if err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("f = open(" + strconv.Quote(f.Name()) + ", 'rb')\n")
	for _, c := range chunks {
		if _, err := f.Write(c.data); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "h.pwrite(f.read(%d), %d)\n", len(c.data), c.off)
	}
	f.Close()
	script.WriteString("h.flush()\nprint('written')\n")
	out := nbdshIn(t, netns, uri, script.String(), 2*time.Minute)
	if !strings.Contains(out, "written") {
		t.Fatalf("nbdsh did not finish writing: %s", out)
	}
}

// chunkFile writes the chunks' data to a file in dir and returns its path
// and the Python list of (offset, length) pairs that reads it back.
func chunkFile(t testing.TB, dir, name string, chunks []wchunk) (path, layout string) {
	t.Helper()
	path = filepath.Join(dir, name)
	var data bytes.Buffer
	var l strings.Builder
	l.WriteString("[")
	for i, c := range chunks {
		data.Write(c.data)
		if i > 0 {
			l.WriteString(", ")
		}
		fmt.Fprintf(&l, "(%d, %d)", c.off, len(c.data))
	}
	l.WriteString("]")
	if err := os.WriteFile(path, data.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, l.String()
}

// nbdshIn runs an nbdsh script against uri inside network namespace
// netns (none when empty) and returns its output. It fails the test when
// nbdsh fails or runs longer than timeout.
func nbdshIn(t testing.TB, netns, uri, script string, timeout time.Duration) string {
	t.Helper()
	if netns == "" {
		return Nbdsh(t, timeout, uri, script)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "nbdsh", "-u", uri, "-c", script)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh in %s: %v\n%s", netns, err, b)
	}
	return string(b)
}

// nbdshBadChunks reads the chunks back through uri (from inside netns
// when not empty) and returns nbdsh's verdict: "bad [...]", listing the
// offsets whose data differs ("bad []" when none).
func nbdshBadChunks(t testing.TB, netns, uri string, chunks []wchunk, timeout time.Duration) string {
	t.Helper()
	f, layout := chunkFile(t, t.TempDir(), "check", chunks)
	return strings.TrimSpace(nbdshIn(t, netns, uri, fmt.Sprintf(`f = open(%q, 'rb')
bad = [off for off, n in %s if h.pread(n, off) != f.read(n)]
print('bad', bad)
`, f, layout), timeout))
}

// readBacking reads n bytes at off of a backing file (drbdd stores the
// data area at offset 0 of the backing file).
func readBacking(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(io.NewSectionReader(f, off, int64(n)), b); err != nil {
		t.Fatal(err)
	}
	return b
}

// holds reports whether the backing file holds every wchunk.
func diskHolds(t testing.TB, path string, chunks []wchunk) bool {
	t.Helper()
	for _, c := range chunks {
		if !bytes.Equal(readBacking(t, path, c.off, len(c.data)), c.data) {
			return false
		}
	}
	return true
}

// settledCounter waits until a status counter stops moving (the status
// file is rewritten at least once a second) and returns its value.
func settledCounter(t testing.TB, n *Node, name string) int64 {
	t.Helper()
	last := n.Counter(name)
	for range 60 {
		time.Sleep(1200 * time.Millisecond)
		v := n.Counter(name)
		if v == last {
			return v
		}
		last = v
	}
	t.Fatalf("%s: counter %s did not settle (last %d)", n.Name, name, last)
	return 0
}

// readLog returns the daemon's log.
func daemonLog(n *Node) string {
	b, _ := os.ReadFile(n.LogPath)
	return string(b)
}

// logMatches returns every match of re in the daemon's log.
func logAllMatches(n *Node, re string) [][]string {
	return regexp.MustCompile(re).FindAllStringSubmatch(daemonLog(n), -1)
}

// logSince returns the part of the daemon's log written after mark (a
// length returned by logMark).
func logAfter(n *Node, mark int) string {
	l := daemonLog(n)
	if mark > len(l) {
		return ""
	}
	return l[mark:]
}

// logMark returns the current length of the daemon's log.
func logLen(n *Node) int { return len(daemonLog(n)) }

// waitLog waits until the daemon's log after mark matches re and returns
// the submatches.
func waitLogAfter(t testing.TB, n *Node, mark int, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	var m []string
	WaitFor(t, timeout, fmt.Sprintf("%s log to match %q", n.Name, re), func() bool {
		m = rx.FindStringSubmatch(logAfter(n, mark))
		return m != nil
	})
	return m
}

// checkResyncSent checks that n sent no less than the dirtyKiB a resync
// had to move since its "ns" counter read ns0, and at most 5% (and one
// 64 KiB request) more.
func checkResyncSent(t testing.TB, n *Node, ns0, dirtyKiB int64) {
	t.Helper()
	ns1 := settledCounter(t, n, "ns")
	sent := ns1 - ns0
	t.Logf("resync of %s dirty: %s sent %s (ns %d -> %d)", kibToMiB(dirtyKiB), n.Name, kibToMiB(sent), ns0, ns1)
	if limit := dirtyKiB*105/100 + 64; sent < dirtyKiB || sent > limit {
		t.Errorf("resync sent %d KiB for %d KiB dirty; want within [%d, %d]", sent, dirtyKiB, dirtyKiB, limit)
	}
}

// state returns `drbdadm <what> r0`, trimmed.
func admOut(n *Node, what string) string {
	out, _ := n.Adm(what, "r0")
	return strings.TrimSpace(out)
}

// states says both nodes' connection and disk states, for logs and
// failure messages: "alice Connected UpToDate/UpToDate, bob ...".
func (p *Pair) states() string {
	return fmt.Sprintf("%s %s %s, %s %s %s", p.A.Name, admOut(p.A, "cstate"), admOut(p.A, "dstate"),
		p.B.Name, admOut(p.B, "cstate"), admOut(p.B, "dstate"))
}

// downBoth takes r0 down on both nodes, demoting first.
func (p *Pair) downBoth(t testing.TB) {
	t.Helper()
	for _, n := range p.Nodes() {
		n.MustAdm("down", "r0")
	}
}

// mib formats a KiB count as MiB for messages.
func kibToMiB(kib int64) string { return fmt.Sprintf("%.2f MiB", float64(kib)/1024) }

// waitSyncedStrict is WaitSynced that fails at once, with the reason from the
// logs, when either node gives up the connection (StandAlone) instead.
func (p *Pair) waitSyncedStrict(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := true
		for _, n := range p.Nodes() {
			cs := admOut(n, "cstate")
			if cs == "StandAlone" {
				var why []string
				for _, m := range logAllMatches(n, `.*(uuid_compare|Split-Brain|giving up).*`) {
					why = append(why, m[0])
				}
				t.Fatalf("%s went StandAlone instead of syncing:\n%s", n.Name, strings.Join(why, "\n"))
			}
			if cs != "Connected" || admOut(n, "dstate") != "UpToDate/UpToDate" {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not synced after %v: %s", timeout, p.states())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// demote runs drbdadm secondary until it succeeds: an NBD client that
// was just killed takes a moment to be noticed as gone.
func demote(t testing.TB, n *Node) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := n.Adm("secondary", "r0")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			st, _ := n.Adm("status", "r0")
			ps, _ := Run(5*time.Second, "sh", "-c", "ps -eo pid,ppid,stat,args | grep -E '[f]io|[n]bdsh' || true")
			t.Fatalf("%s: secondary still refused after 20s: %s\nstatus:\n%s\nclients:\n%s", n.Name, out, st, ps)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startFio starts fio with its jobs as threads (a forked job outlives a
// killed parent), in its own process group, in a
// scratch directory; the returned stop kills the whole group and waits.
func startFio(t testing.TB, args ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command("fio", append(args, "--thread", "--verify_state_save=0")...)
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	return stop
}
