package testenv

import (
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSecondaryReconnectNoSplitBrain cuts the link between a live Primary
// and a live Secondary, twice: once with `drbdadm disconnect` on the
// Secondary, once by freezing the Secondary (SIGSTOP) until the Primary's
// ping times out. Only the Primary wrote meanwhile, so each reconnect must
// resync Primary -> Secondary; it must never be taken for a split brain.
func TestSecondaryReconnectNoSplitBrain(t *testing.T) {
	p := NewPair(t, PairOptions{Protocol: "C"})
	p.Up(t)
	p.InitialSync(t, p.A)
	c := dialNBD(t, p.URI[p.A])
	defer c.Close()
	var seq atomic.Uint64
	write := func(from, n int64) *writeLoad {
		blocks := make([]int64, n)
		for i := range blocks {
			blocks[i] = from + int64(i)
		}
		l := startWriteLoad(c, blocks, 8, false, &seq)
		l.wg.Wait()
		if errs := l.Errors(); len(errs) > 0 {
			t.Fatalf("writes failed: %v", errs)
		}
		return l
	}
	write(0, 256)

	// 1. An administrative disconnect of the Secondary.
	p.B.MustAdm("disconnect", "r0")
	p.A.WaitState("cstate", "r0", "WFConnection", 20*time.Second)
	write(1000, 256)
	p.B.MustAdm("connect", "r0")
	p.WaitSynced(t, 30*time.Second)
	if p.A.LogContains("Split-Brain") || p.B.LogContains("Split-Brain") {
		t.Errorf("disconnect/connect of the Secondary was taken for a split brain")
	}

	// 2. The Secondary freezes; the Primary's ping times out.
	pid := daemonPID(t, p.B)
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 20*time.Second, "alice to give up on the frozen bob", func() bool {
		out, _ := p.A.Adm("cstate", "r0")
		return strings.TrimSpace(out) != "Connected"
	})
	write(2000, 256)
	if err := syscall.Kill(-pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	p.WaitSynced(t, 30*time.Second)
	if p.A.LogContains("Split-Brain") || p.B.LogContains("Split-Brain") {
		t.Errorf("a ping timeout was taken for a split brain")
	}
	c.Close()
	for _, n := range p.Nodes() {
		n.MustAdm("down", "r0")
	}
	p.CompareDisks(t)
}

// daemonPID returns the process id of a node's daemon.
func daemonPID(t testing.TB, n *Node) int {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		t.Fatalf("%s: daemon not running", n.Name)
	}
	return n.cmd.Process.Pid
}
