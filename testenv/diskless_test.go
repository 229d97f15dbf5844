package testenv

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// resyncKB returns the size of the resync n announced after mark.
func resyncKB(t testing.TB, n *Node, mark int) int64 {
	t.Helper()
	m := waitLogAfter(t, n, mark, `Began resync as SyncTarget \(will sync (\d+) KB`, time.Minute)
	kb, _ := strconv.ParseInt(m[1], 10, 64)
	return kb
}

// TestDisklessPrimaryDetachAttach: a Primary whose disk is detached goes
// on serving its peer's data, as DRBD's does. One nbdsh client stays
// connected throughout: it writes before the detach, writes and reads
// back while diskless, and keeps writing while the disk is attached again
// and resynced (reading back at the end: reads served by the peer would
// blur the count of what the resync sent). No request may fail. The resync after the
// attach must copy only what was written while diskless, and in the end
// both disks hold every write.
func TestDisklessPrimaryDetachAttach(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)

	span := p.DataSize(t)
	const chunkSize = 64 << 10
	// Three disjoint sets: written before the detach, while diskless,
	// and during the attach.
	var before, diskless, during []wchunk
	for i, c := range scatterChunks(0x5d, 96, chunkSize, span) {
		switch i % 6 {
		case 0:
			before = append(before, c)
		case 5:
			during = append(during, c)
		default:
			diskless = append(diskless, c)
		}
	}
	dir := t.TempDir()
	f1, l1 := chunkFile(t, dir, "before", before)
	f2, l2 := chunkFile(t, dir, "diskless", diskless)
	f3, l3 := chunkFile(t, dir, "during", during)
	ready1, go1 := filepath.Join(dir, "ready1"), filepath.Join(dir, "go1")
	ready2, stop := filepath.Join(dir, "ready2"), filepath.Join(dir, "stop")
	script := fmt.Sprintf(`import os, time
def load(path, layout):
    f = open(path, 'rb')
    return [(off, f.read(n)) for off, n in layout]
before, diskless, during = load(%q, %s), load(%q, %s), load(%q, %s)
def write(s):
    for off, b in s:
        h.pwrite(b, off)
    h.flush()
def check(s, what):
    for off, b in s:
        if h.pread(len(b), off) != b:
            raise Exception('%%s: wrong data at %%d' %% (what, off))
def wait(p):
    while not os.path.exists(p):
        time.sleep(0.02)
write(before)
check(before, 'before')
open(%q, 'w').close()
wait(%q)
write(diskless)
check(before, 'before, read while diskless')
check(diskless, 'diskless')
open(%q, 'w').close()
n = 0
while not os.path.exists(%q):
    off, b = during[n %% len(during)]
    h.pwrite(b, off)
    n += 1
h.flush()
check(before, 'before, at the end')
check(diskless, 'diskless, at the end')
check(during, 'during, at the end')
print('ok', n)
`, f1, l1, f2, l2, f3, l3, ready1, go1, ready2, stop)
	cmd := NbdshCmd("-u", p.URI[p.A], "-c", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		os.WriteFile(stop, nil, 0o644)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	}()
	waitFile := func(path, what string) {
		t.Helper()
		WaitFor(t, time.Minute, what, func() bool {
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("nbdsh ended early (%v):\n%s", err, out.String())
			default:
			}
			_, err := os.Stat(path)
			return err == nil
		})
	}
	waitFile(ready1, "the first writes")

	// The detach: refused without a connected UpToDate peer, done with one.
	markA, markB := logLen(p.A), logLen(p.B)
	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	p.B.WaitState("dstate", "r0", "UpToDate/Diskless", 20*time.Second)
	if role := admOut(p.A, "role"); role != "Primary/Secondary" {
		t.Fatalf("alice role %q after detaching, want Primary/Secondary", role)
	}
	waitLogAfter(t, p.B, markB, `new current UUID \S+ \(lost the peer's copy of the data\)`, 20*time.Second)
	os.WriteFile(go1, nil, 0o644)
	waitFile(ready2, "the diskless writes and reads")
	if oos := settledCounter(t, p.B, "oos"); oos < int64(len(diskless))*chunkSize>>10 {
		t.Fatalf("bob oos:%d KiB, want at least the %d KiB written while alice was diskless", oos, len(diskless)*chunkSize>>10)
	}
	ns0 := p.B.Counter("ns")

	// The attach, while the client keeps writing.
	p.A.MustAdm("attach", "r0")
	kb := resyncKB(t, p.A, markA)
	dirty := int64(len(diskless)) * chunkSize >> 10
	most := dirty + int64(len(during))*chunkSize>>10
	if kb < dirty || kb > most {
		t.Errorf("alice will sync %d KB; want the %d..%d KB written while diskless", kb, dirty, most)
	}
	waitLogAfter(t, p.A, markA, `Resync done`, time.Minute)
	p.A.WaitState("dstate", "r0", "UpToDate/UpToDate", 20*time.Second)
	time.Sleep(500 * time.Millisecond) // a few more writes with the disk back
	os.WriteFile(stop, nil, 0o644)
	select {
	case err := <-exited:
		if err != nil || !strings.HasPrefix(strings.TrimSpace(out.String()), "ok ") {
			t.Fatalf("nbdsh: %v\n%s", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("nbdsh did not finish:\n%s", out.String())
	}
	t.Logf("nbdsh: %s", strings.TrimSpace(out.String()))
	checkResyncSent(t, p.B, ns0, kb)
	for _, n := range p.Nodes() {
		if oos := settledCounter(t, n, "oos"); oos != 0 {
			t.Errorf("%s oos:%d after the resync", n.Name, oos)
		}
	}

	p.downBoth(t)
	p.CompareDisks(t)
	for _, set := range [][]wchunk{before, diskless, during} {
		if !diskHolds(t, p.Disk[p.A], set) {
			t.Fatal("alice's disk lacks acknowledged writes")
		}
	}
}

// TestDisklessPromotion: a diskless Secondary may become Primary only
// while connected to a peer with UpToDate data; it then serves that
// data, and its later attach resyncs exactly what it wrote meanwhile.
func TestDisklessPromotion(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	demote(t, p.A)

	p.B.MustAdm("detach", "r0")
	p.B.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	p.B.MustAdm("disconnect", "r0")
	if out, err := p.B.Adm("primary", "r0"); err == nil || !strings.Contains(out, "refusing to promote without a local disk") {
		t.Fatalf("primary on diskless, disconnected bob: err=%v out=%q", err, out)
	}
	// A diskless node connects (there is nothing to resync) ...
	p.B.MustAdm("connect", "r0")
	p.B.WaitState("cstate", "r0", "Connected", 30*time.Second)
	p.B.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	// ... and may be promoted then.
	markA, markB := logLen(p.A), logLen(p.B)
	p.B.MustAdm("primary", "r0")
	waitLogAfter(t, p.A, markA, `new current UUID \S+ \(the diskless peer became Primary\)`, 20*time.Second)

	span := p.DataSize(t)
	chunks := scatterChunks(0x44, 96, 64<<10, span)
	nbdshWrite(t, p.URI[p.B], chunks)
	if got := nbdshBadChunks(t, "", p.URI[p.B], chunks, time.Minute); got != "bad []" {
		t.Fatalf("reading back through diskless bob: %s", got)
	}
	// alice holds the only disk now: detaching it is refused.
	if out, err := p.A.Adm("detach", "r0"); err == nil || !strings.Contains(out, "refusing to detach the only disk of a diskless Primary peer") {
		t.Fatalf("detach on alice under diskless Primary bob: err=%v out=%q", err, out)
	}
	dirty := int64(len(chunks)) * 64
	if oos := settledCounter(t, p.A, "oos"); oos != dirty {
		t.Fatalf("alice oos:%d KiB, want the %d KiB bob wrote", oos, dirty)
	}

	ns0 := p.A.Counter("ns")
	p.B.MustAdm("attach", "r0")
	if kb := resyncKB(t, p.B, markB); kb != dirty {
		t.Errorf("bob will sync %d KB, want the %d KB it wrote while diskless", kb, dirty)
	}
	waitLogAfter(t, p.B, markB, `Resync done`, time.Minute)
	p.B.WaitState("dstate", "r0", "UpToDate/UpToDate", 20*time.Second)
	checkResyncSent(t, p.A, ns0, dirty)
	if !regexp.MustCompile(`promoted without a local disk`).MatchString(logAfter(p.B, markB)) {
		t.Error("bob did not log its diskless promotion")
	}

	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], chunks) {
		t.Fatal("bob's disk lacks what it wrote while diskless")
	}
}

// TestPrimaryDiskErrorServesFromPeer: when the Primary's disk fails
// (errors injected with DRBDD_FAULT_DISK_DIR), on-io-error detaches it
// and the Primary goes on serving its peer's data: the write in flight
// fails, and the client's next writes and reads go through the diskless
// Primary. Once the disk is healthy and attached again, the resync brings
// it up to date, the failed write's blocks included, so that both disks
// end identical.
func TestPrimaryDiskErrorServesFromPeer(t *testing.T) {
	RequireTools(t, "nbdsh")
	faults := t.TempDir()
	t.Setenv("DRBDD_FAULT_DISK_DIR", faults)
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)

	span := p.DataSize(t)
	var before, after []wchunk
	for i, c := range scatterChunks(0x6e, 64, 64<<10, span) {
		if i%4 == 0 {
			before = append(before, c)
		} else {
			after = append(after, c)
		}
	}
	nbdshWrite(t, p.URI[p.A], before)

	markA := logLen(p.A)
	trigger := filepath.Join(faults, filepath.Base(p.Disk[p.A]))
	if err := os.WriteFile(trigger, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f1, l1 := chunkFile(t, dir, "before", before)
	f2, l2 := chunkFile(t, dir, "after", after)
	out := Nbdsh(t, 2*time.Minute, p.URI[p.A], fmt.Sprintf(`import time
def load(path, layout):
    f = open(path, 'rb')
    return [(off, f.read(n)) for off, n in layout]
before, after = load(%q, %s), load(%q, %s)
failed, written = [], []
for off, b in after:
    try:
        h.pwrite(b, off)
        written.append((off, b))
    except nbd.Error:
        failed.append(off)
        time.sleep(0.1)
h.flush()
bad = [off for off, b in before + written if h.pread(len(b), off) != b]
print('failed', ','.join(map(str, failed)), 'bad', bad)
`, f1, l1, f2, l2))
	var failedList, bad string
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "failed %s bad %s", &failedList, &bad); err != nil || bad != "[]" {
		t.Fatalf("writing through alice with a failing disk: %q", out)
	}
	// The writes that failed are not acknowledged, so they need not be
	// anywhere; but the disks must still end identical, whichever copy
	// of those blocks the peer took.
	failed := map[int64]bool{}
	for _, f := range strings.Split(failedList, ",") {
		off, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("nbdsh output %q", out)
		}
		failed[off] = true
	}
	if len(failed) == 0 || len(failed) > 3 {
		t.Fatalf("%d writes failed, want the one or few in flight when the disk failed: %q", len(failed), out)
	}
	var acked []wchunk
	for _, c := range after {
		if !failed[c.off] {
			acked = append(acked, c)
		}
	}
	t.Logf("%d write(s) failed while alice detached its disk", len(failed))
	waitLogAfter(t, p.A, markA, `local I/O error on write`, 20*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	if role := admOut(p.A, "role"); role != "Primary/Secondary" {
		t.Fatalf("alice role %q after its disk failed", role)
	}

	if err := os.Remove(trigger); err != nil {
		t.Fatal(err)
	}
	p.A.MustAdm("attach", "r0")
	dirty := int64(len(acked)) * 64
	if kb := resyncKB(t, p.A, markA); kb < dirty || kb > dirty+int64(len(failed))*64 {
		t.Errorf("alice will sync %d KB, want the %d KB written after its disk failed and the %d failed chunk(s)", kb, dirty, len(failed))
	}
	waitLogAfter(t, p.A, markA, `Resync done`, time.Minute)
	p.A.WaitState("dstate", "r0", "UpToDate/UpToDate", 20*time.Second)

	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.A], append(before, acked...)) {
		t.Fatal("alice's disk lacks acknowledged writes")
	}
}

// TestDisklessPrimaryProtocolA: under protocol A a write normally
// completes once it is on the wire, because the Primary's own disk holds
// it. A diskless Primary has no copy of its own, so its writes wait for
// the peer's P_WRITE_ACK whatever the protocol: when the link is cut
// under it, a write fails instead of being acknowledged and lost. Every
// write acknowledged while the link was down must read back after the
// reconnect, as must those from before the cut.
func TestDisklessPrimaryProtocolA(t *testing.T) {
	RequireTools(t, "nbdsh", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodes(t, np, "A", map[string]string{"ping-int": "2s", "connect-int": "2s", "ping-timeout": "1s", "timeout": "1s"})
	p.Up(t)
	p.InitialSync(t, p.A)
	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	p.B.WaitState("dstate", "r0", "UpToDate/Diskless", 20*time.Second)

	span := p.DataSize(t)
	var before, during []wchunk
	for i, c := range scatterChunks(0x7a, 16, 4096, span) {
		if i%2 == 0 {
			before = append(before, c)
		} else {
			during = append(during, c)
		}
	}
	nbdshWriteIn(t, np.NS[0], p.URI[p.A], before)

	if err := np.SetLink(0, false); err != nil {
		t.Fatal(err)
	}
	f, layout := chunkFile(t, t.TempDir(), "during", during)
	out := nbdshIn(t, np.NS[0], p.URI[p.A], fmt.Sprintf(`f = open(%q, 'rb')
acked = []
for off, n in %s:
    b = f.read(n)
    try:
        h.pwrite(b, off)
        acked.append(off)
    except nbd.Error:
        pass
print('acked', ','.join(map(str, acked)) or '-')
`, f, layout), 2*time.Minute)
	var ackedList string
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "acked %s", &ackedList); err != nil {
		t.Fatalf("nbdsh: %q", out)
	}
	acked := map[int64]bool{}
	for _, a := range strings.Split(ackedList, ",") {
		if off, err := strconv.ParseInt(a, 10, 64); err == nil {
			acked[off] = true
		}
	}
	t.Logf("%d of %d writes acknowledged with the link down", len(acked), len(during))
	for _, n := range p.Nodes() {
		WaitFor(t, 20*time.Second, n.Name+" to notice the cut", func() bool {
			return !strings.HasPrefix(admOut(n, "cstate"), "Connected")
		})
	}
	if err := np.SetLink(0, true); err != nil {
		t.Fatal(err)
	}
	p.A.WaitState("cstate", "r0", "Connected", 30*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)

	check := before
	for _, c := range during {
		if acked[c.off] {
			check = append(check, c)
		}
	}
	if got := nbdshBadChunks(t, np.NS[0], p.URI[p.A], check, time.Minute); got != "bad []" {
		t.Fatalf("acknowledged writes lost (read back through alice after the reconnect): %s", got)
	}
}

// TestDisklessAfterSyncTargetDetach: a Primary that is SyncTarget (its
// disk Inconsistent, resyncing from its peer) loses its disk. The device
// then shows the peer's data, whose generation it must follow, not the
// sync UUID its disk carries: it reconnects after the session ends, and
// after a blip. While disconnected it refuses to attach its old disk,
// which lacks what it acknowledged while diskless; connected, the attach
// resyncs, and everything written reads back.
func TestDisklessAfterSyncTargetDetach(t *testing.T) {
	for _, pause := range []bool{false, true} {
		name := "resync-running"
		if pause {
			name = "resync-paused"
		}
		t.Run(name, func(t *testing.T) { testDisklessAfterSyncTargetDetach(t, pause) })
	}
}

func testDisklessAfterSyncTargetDetach(t *testing.T, pause bool) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Disk: map[string]string{"c-plan-ahead": "0", "resync-rate": "1M"}})
	upSkipInitialSync(t, p)
	span := p.DataSize(t)

	// bob writes while alice is away: alice becomes his SyncTarget.
	p.A.MustAdm("disconnect", "r0")
	p.B.MustAdm("primary", "r0")
	nbdshWrite(t, p.URI[p.B], scatterChunks(0x33, 64, 64<<10, span))
	demote(t, p.B)
	p.A.MustAdm("connect", "r0")
	p.A.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	if pause {
		p.A.MustAdm("pause-sync", "r0")
		p.A.WaitState("cstate", "r0", "PausedSyncT", 10*time.Second)
	}
	p.A.MustAdm("primary", "r0")
	p.A.MustAdm("detach", "--force", "r0")
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)

	// Written while diskless, beside bob's chunks.
	chunks := scatterChunks(0x44, 8, 64<<10, span)
	for i := range chunks {
		chunks[i].off += 512 << 10
		chunks[i].data = tagPattern(0x44, chunks[i].off, len(chunks[i].data))
	}
	nbdshWrite(t, p.URI[p.A], chunks)

	// A blip: alice must take bob's data again.
	p.B.MustAdm("disconnect", "r0")
	p.B.MustAdm("connect", "r0")
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)

	// Disconnected, the old disk must stay out.
	p.A.MustAdm("disconnect", "r0")
	if out, err := p.A.Adm("attach", "r0"); err == nil {
		t.Fatalf("alice attached her old disk while disconnected: %s %s %s (%s)", admOut(p.A, "role"), admOut(p.A, "cstate"), admOut(p.A, "dstate"), out)
	} else {
		t.Logf("attach while disconnected refused: %s", strings.TrimSpace(out))
	}
	p.A.MustAdm("connect", "r0")
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	p.A.MustAdm("attach", "r0")
	if pause {
		WaitFor(t, 20*time.Second, "alice's resync to start", func() bool {
			cs := admOut(p.A, "cstate")
			return cs == "SyncTarget" || cs == "PausedSyncT"
		})
		if admOut(p.A, "cstate") == "PausedSyncT" {
			p.A.MustAdm("resume-sync", "r0")
		}
	}
	p.A.WaitState("dstate", "r0", "UpToDate/UpToDate", 2*time.Minute)
	if got := nbdshBadChunks(t, "", p.URI[p.A], chunks, time.Minute); got != "bad []" {
		t.Fatalf("writes acknowledged while diskless read back wrong: %s", got)
	}
	p.downBoth(t)
	p.CompareDisks(t)
}

// TestDetachedPrimaryDiskComesBackOutdated: a Primary detaches its disk
// and writes on, diskless; then both nodes crash. The detached disk must
// come back Outdated, not UpToDate from the flags it had, so that it
// cannot be promoted alone (without --force) with stale data.
func TestDetachedPrimaryDiskComesBackOutdated(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	nbdshWrite(t, p.URI[p.A], scatterChunks(0x55, 8, 64<<10, p.DataSize(t)))
	p.A.Kill()
	p.B.Kill()
	p.A.Start()
	p.A.MustAdm("up", "r0")
	p.A.WaitState("dstate", "r0", "Outdated/DUnknown", 20*time.Second)
	if out, err := p.A.Adm("primary", "r0"); err == nil {
		t.Fatalf("alice was promoted alone on the disk she had detached: %s", out)
	}
}

// TestDisklessWritesSurviveUnseenDetach: alice (Primary) detaches her
// disk while the link to bob is already cut but the cut is not yet
// noticed, so bob never processes her P_STATE(Diskless) and starts no
// new generation. Alice reconnects diskless (bob's current UUID is the
// one she exposes) and writes W, which only bob holds, in his bitmap,
// under the generation alice's old disk still carries. Alice then
// demotes and attaches her old disk: it must become SyncTarget (it lacks
// W), and W must survive on both disks.
func TestDisklessWritesSurviveUnseenDetach(t *testing.T) {
	testUnseenDetach(t, true)
}

// TestDisklessUnseenDetachReconnects: as above without the extra
// reconnect after the initial sync: alice's record of bob's current UUID
// (session.peerCurrent) is still bob's just-created UUID from before the
// sync, and the detach exposes that stale UUID. The reconnect must
// succeed all the same (bob holds exactly the data alice showed).
func TestDisklessUnseenDetachReconnects(t *testing.T) {
	testUnseenDetach(t, false)
}

func testUnseenDetach(t *testing.T, reconnectFirst bool) {
	RequireTools(t, "nbdsh", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodes(t, np, "", map[string]string{"ping-int": "6s", "ping-timeout": "1s", "timeout": "1500ms", "connect-int": "2s"})
	p.Up(t)
	p.InitialSync(t, p.A)
	if reconnectFirst {
		// A fresh handshake while both are Secondary (no new
		// generation, no resync), so that alice knows bob's current UUID.
		demote(t, p.A)
		p.B.MustAdm("disconnect", "r0")
		p.B.MustAdm("connect", "r0")
		p.WaitSynced(t, 30*time.Second)
		p.A.MustAdm("primary", "r0")
	}
	t.Logf("alice %s, bob %s", admOut(p.A, "get-gi"), admOut(p.B, "get-gi"))

	if err := np.SetLink(0, false); err != nil {
		t.Fatal(err)
	}
	// The cut is not noticed yet (ping-int 6s): the detach goes ahead,
	// but its P_STATE never reaches bob.
	p.A.MustAdm("detach", "r0")
	for _, n := range p.Nodes() {
		WaitFor(t, 30*time.Second, n.Name+" to notice the cut", func() bool {
			return !strings.HasPrefix(admOut(n, "cstate"), "Connected")
		})
	}
	if err := np.SetLink(0, true); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 30*time.Second, "alice to reconnect diskless", func() bool {
		if cs := admOut(p.A, "cstate"); cs == "StandAlone" {
			for _, m := range logAllMatches(p.A, `.*giving up.*`) {
				t.Log(m[0])
			}
			t.Fatalf("alice (diskless Primary) went StandAlone; exposed a stale UUID? alice %s, bob %s", admOut(p.A, "get-gi"), admOut(p.B, "get-gi"))
		}
		return admOut(p.A, "cstate") == "Connected" && admOut(p.A, "dstate") == "Diskless/UpToDate"
	})
	t.Logf("alice reconnected diskless; bob's UUIDs: %v", admOut(p.B, "get-gi"))

	w := scatterChunks(0x5e, 8, 64<<10, p.DataSize(t))
	nbdshWriteIn(t, np.NS[0], p.URI[p.A], w)
	t.Logf("bob after alice's diskless writes: %v", admOut(p.B, "get-gi"))

	demote(t, p.A)
	p.A.MustAdm("attach", "r0")
	mark := logLen(p.A)
	waitLogAfter(t, p.A, mark, `Resync done|uuid_compare\(\)=0`, time.Minute)
	for _, n := range p.Nodes() {
		n.WaitState("cstate", "r0", "Connected", 30*time.Second)
	}
	t.Logf("after the attach: %s", p.states())
	p.downBoth(t)
	if !diskHolds(t, p.Disk[p.B], w) {
		t.Errorf("bob's disk lost writes acknowledged while alice was diskless")
	}
	if !diskHolds(t, p.Disk[p.A], w) {
		t.Errorf("alice's disk lacks writes acknowledged while she was diskless")
	}
}

// TestDisklessAckedClearedAfterDemote: a diskless Primary writes, loses
// its peer, and the admin takes the way out: demote, attach the old disk
// (it comes back Outdated), primary --force. The device then shows that
// disk's data, so a later forced detach of this disconnected Primary's
// disk can be undone by attaching the same disk again: the refusal for
// "writes acknowledged while diskless" no longer applies.
func TestDisklessAckedClearedAfterDemote(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	nbdshWrite(t, p.URI[p.A], scatterChunks(0x61, 4, 64<<10, p.DataSize(t)))
	p.A.MustAdm("disconnect", "r0")
	demote(t, p.A)
	p.A.MustAdm("attach", "r0")
	p.A.MustAdm("primary", "--force", "r0")
	p.A.WaitState("dstate", "r0", "UpToDate/DUnknown", 20*time.Second)
	nbdshWrite(t, p.URI[p.A], scatterChunks(0x62, 4, 64<<10, p.DataSize(t)))
	p.A.MustAdm("detach", "--force", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/DUnknown", 20*time.Second)
	if out, err := p.A.Adm("attach", "r0"); err != nil {
		t.Fatalf("re-attaching the disk just detached was refused: %s", strings.TrimSpace(out))
	}
}

// TestDisklessPrimarySeesPeersNewGeneration: bob is promoted while alice
// is diskless, which starts a new generation on bob (her disk is out of
// his reach). Bob demotes and alice is promoted diskless: the device now
// shows bob's new generation, so alice's own old disk, of the generation
// before, must not be attached while the two are apart; and alice must
// reconnect to bob. (The randomized scenario test found alice keeping
// bob's old current UUID: she refused to reconnect, took her stale disk,
// wrote to it, and the next handshake made bob SyncSource over those
// writes.)
func TestDisklessPrimarySeesPeersNewGeneration(t *testing.T) {
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	p.A.MustAdm("secondary", "r0")
	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	p.B.MustAdm("primary", "r0")
	p.B.MustAdm("secondary", "r0")
	p.A.MustAdm("primary", "r0")
	p.A.WaitState("role", "r0", "Primary/Secondary", 20*time.Second)

	p.B.MustAdm("disconnect", "r0")
	p.A.WaitState("cstate", "r0", "WFConnection", 20*time.Second)
	if out, err := p.A.Adm("attach", "r0"); err == nil {
		t.Fatalf("alice attached her disk of the old generation while the device shows bob's new one: %s\n%s", out, p.states())
	}
	p.B.MustAdm("connect", "r0")
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
}
