package testenv

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTwoPrimariesRefused: with a Primary connected, promoting the peer
// fails with DRBD's message unless allow-two-primaries is set (issue 3).
func TestTwoPrimariesRefused(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		p := NewPair(t, PairOptions{})
		p.Up(t)
		p.InitialSync(t, p.A)
		out, err := p.B.Adm("primary", "r0")
		if err == nil || !strings.Contains(out, "(-1) Multiple primaries not allowed by config") {
			t.Fatalf("primary on bob while alice is Primary: err=%v out=%q", err, out)
		}
		if strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("drbdadm's error is not one line: %q", out)
		}
		// --force does not override the rule either.
		out, err = p.B.Adm("primary", "--force", "r0")
		if err == nil || !strings.Contains(out, "Multiple primaries not allowed by config") {
			t.Fatalf("primary --force on bob while alice is Primary: err=%v out=%q", err, out)
		}
		for n, want := range map[*Node]string{p.A: "Primary/Secondary", p.B: "Secondary/Primary"} {
			if got := strings.TrimSpace(n.MustAdm("role", "r0")); got != want {
				t.Errorf("%s: role %q, want %q", n.Name, got, want)
			}
		}
		p.A.WaitState("cstate", "r0", "Connected", 5*time.Second)
		// Once alice steps down, bob may be promoted.
		p.A.MustAdm("secondary", "r0")
		p.B.WaitState("role", "r0", "Secondary/Secondary", 10*time.Second)
		p.B.MustAdm("primary", "r0")
		p.A.WaitState("role", "r0", "Secondary/Primary", 10*time.Second)
		out, err = p.A.Adm("primary", "r0")
		if err == nil || !strings.Contains(out, "(-1) Multiple primaries not allowed by config") {
			t.Fatalf("primary on alice while bob is Primary: err=%v out=%q", err, out)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		p := NewPair(t, PairOptions{Net: map[string]string{"allow-two-primaries": "true"}})
		p.Up(t)
		p.InitialSync(t, p.A)
		p.B.MustAdm("primary", "r0")
		for _, n := range p.Nodes() {
			n.WaitState("role", "r0", "Primary/Primary", 10*time.Second)
		}
		p.A.WaitState("cstate", "r0", "Connected", 5*time.Second)
		// Both export the device; a write on either is seen on the other.
		ca := dialNBD(t, p.URI[p.A])
		defer ca.Close()
		cb := dialNBD(t, p.URI[p.B])
		defer cb.Close()
		wa, wb := blockPattern(10, 1), blockPattern(20, 2)
		if err := ca.WriteAt(wa, 10*blockSize, false); err != nil {
			t.Fatal(err)
		}
		if err := cb.WriteAt(wb, 20*blockSize, false); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, blockSize)
		if err := cb.ReadAt(got, 10*blockSize); err != nil || string(got) != string(wa) {
			t.Errorf("bob does not read alice's write: err=%v, %s", err, describeBlock(got))
		}
		if err := ca.ReadAt(got, 20*blockSize); err != nil || string(got) != string(wb) {
			t.Errorf("alice does not read bob's write: err=%v, %s", err, describeBlock(got))
		}
	})
}

// TestEventsStream: `drbdadm events r0 --count N` prints one line per
// state change while a connect and a promotion happen, then exits.
func TestEventsStream(t *testing.T) {
	p := NewPair(t, PairOptions{})
	for _, n := range p.Nodes() {
		n.MustAdm("create-md", "r0")
	}
	p.A.MustAdm("up", "r0")
	p.A.WaitState("cstate", "r0", "WFConnection", 10*time.Second)

	const count = 6
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	a := p.A
	cmd := exec.CommandContext(ctx, filepath.Join(a.bin, "drbdadm"), "--control", a.Control, "--config-dir", a.ConfigDir,
		"--node", a.Name, "events", "r0", "--count", strconv.Itoa(count))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// mu guards lines.
	var mu sync.Mutex
	var lines []string
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()
	snapshot := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lines...)
	}
	// The subscription reports the current state first; once that line
	// is out, every later change is streamed.
	WaitFor(t, 10*time.Second, "the first event line", func() bool { return len(snapshot()) > 0 })

	p.B.MustAdm("up", "r0")
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	p.A.MustAdm("primary", "--force", "r0")

	waitErr := make(chan error, 1)
	go func() {
		<-readDone
		waitErr <- cmd.Wait()
	}()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("drbdadm events --count %d: %v\nstderr: %s\nlines:\n%s", count, err, stderr.String(), strings.Join(snapshot(), "\n"))
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("drbdadm events --count %d did not exit after a connect and a promotion; it printed:\n%s\nstderr: %s",
			count, strings.Join(snapshot(), "\n"), stderr.String())
	}
	got := snapshot()
	t.Logf("events:\n%s", strings.Join(got, "\n"))
	if len(got) != count {
		t.Errorf("events --count %d printed %d lines", count, len(got))
	}
	if len(got) == 0 || !strings.HasPrefix(got[0], "exists resource name:r0 ") || !strings.Contains(got[0], "connection:WFConnection") {
		t.Errorf("the first event does not report r0's current state (WFConnection)")
	}
	connected, promoted := -1, -1
	for i, l := range got {
		if connected < 0 && strings.Contains(l, "connection:Connected peer-role:Secondary") {
			connected = i
		}
		if promoted < 0 && strings.Contains(l, "role:Primary") && strings.Contains(l, "role( Secondary -> Primary )") {
			promoted = i
		}
	}
	if connected < 0 || promoted < 0 || promoted < connected {
		t.Errorf("events do not show the connect (line %d) followed by the promotion (line %d)", connected, promoted)
	}
	for _, l := range got {
		if !strings.Contains(l, "name:r0 ") {
			t.Errorf("event line without the resource name: %q", l)
		}
	}
}
