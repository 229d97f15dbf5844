package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitDegraded waits until the Primary n lost its peer and serves alone.
func waitDegraded(t testing.TB, n *Node) {
	t.Helper()
	WaitFor(t, 20*time.Second, n.Name+" to lose its peer", func() bool {
		cs := admOut(n, "cstate")
		return (cs == "WFConnection" || cs == "Unconnected" || cs == "StandAlone") && admOut(n, "dstate") == "UpToDate/DUnknown"
	})
}

// TestResyncOnlyDirty: a Secondary that was disconnected while the Primary
// wrote N MiB gets exactly those blocks back, counted on the wire. The
// disconnect is issued on either node.
func TestResyncOnlyDirty(t *testing.T) {
	RequireTools(t, "nbdsh")
	for _, on := range []string{"bob", "alice"} {
		t.Run("disconnect-on-"+on, func(t *testing.T) { testResyncOnlyDirty(t, on) })
	}
}

func testResyncOnlyDirty(t *testing.T, on string) {
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	cut := p.B
	if on == "alice" {
		cut = p.A
	}

	cut.MustAdm("disconnect", "r0")
	if got := admOut(cut, "cstate"); got != "StandAlone" {
		t.Fatalf("%s after disconnect: cstate %q, want StandAlone", cut.Name, got)
	}
	waitDegraded(t, p.A)
	if oos := p.A.Counter("oos"); oos != 0 {
		t.Fatalf("alice oos:%d before any write while disconnected", oos)
	}

	// 8 MiB in 128 chunks of 64 KiB, spread over the whole device.
	const chunkSize = 64 << 10
	const count = 128
	const dirtyKiB = count * chunkSize >> 10
	chunks := scatterChunks(0xa5, count, chunkSize, p.DataSize(t))
	nbdshWrite(t, p.URI[p.A], chunks)

	oos := settledCounter(t, p.A, "oos")
	if oos < dirtyKiB || oos > dirtyKiB+64 {
		t.Fatalf("alice oos:%d KiB after writing %d KiB while disconnected", oos, dirtyKiB)
	}
	ns0 := settledCounter(t, p.A, "ns")
	mark := logLen(p.A)

	cut.MustAdm("connect", "r0")
	p.waitSyncedStrict(t, time.Minute)
	checkResyncSent(t, p.A, ns0, dirtyKiB)
	if m := regexp.MustCompile(`Began resync as SyncSource \(will sync (\d+) KB`).FindStringSubmatch(logAfter(p.A, mark)); m == nil {
		t.Errorf("alice did not log the start of a resync as SyncSource:\n%s", logAfter(p.A, mark))
	} else if kb, _ := strconv.ParseInt(m[1], 10, 64); kb != dirtyKiB {
		t.Errorf("alice will sync %d KB, want %d", kb, dirtyKiB)
	}
	if oos := settledCounter(t, p.A, "oos"); oos != 0 {
		t.Errorf("alice oos:%d after the resync", oos)
	}

	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], chunks) {
		t.Fatal("bob's backing file lacks the data written while it was disconnected")
	}
}

// alExtentsRE matches the attach log line that reports the activity log
// applied after an unclean shutdown.
var alExtentsRE = regexp.MustCompile(`applied activity log \((\d+) extents, (\d+) KiB marked out of sync\)`)

// TestPrimaryCrashResyncsOnlyActivityLog: a Primary killed under a write
// load concentrated on a few extents resyncs only those extents after its
// restart, not the device.
func TestPrimaryCrashResyncsOnlyActivityLog(t *testing.T) {
	RequireTools(t, "fio")
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)

	// Random writes inside 6 MiB starting at 20 MiB: at most 3 extents
	// of 4 MiB (20..24, 24..28) are hot; unaligned start is avoided so
	// the region covers exactly two extents.
	const regionOff, regionLen = 20 << 20, 6 << 20
	stopFio := startFio(t, "--name=hot", "--ioengine=nbd", "--uri="+p.URI[p.A], "--rw=randwrite",
		"--bs=4k", "--iodepth=16", "--offset="+strconv.Itoa(regionOff), "--size="+strconv.Itoa(regionLen),
		"--time_based", "--runtime=60")
	WaitFor(t, 30*time.Second, "writes to flow on alice", func() bool { return p.A.Counter("dw") > 8<<10 })

	p.A.Kill()
	stopFio()
	// Bob stays Secondary and notices the loss.
	WaitFor(t, 20*time.Second, "bob to lose alice", func() bool {
		return admOut(p.B, "cstate") != "Connected"
	})

	markA, markB := logLen(p.A), logLen(p.B)
	nsA0, nsB0 := p.A.Counter("ns"), p.B.Counter("ns")
	_ = nsA0 // alice restarts: its counters start from zero
	p.A.Start()
	p.A.MustAdm("up", "r0")
	m := waitLogAfter(t, p.A, markA, alExtentsRE.String(), 10*time.Second)
	extents, _ := strconv.Atoi(m[1])
	t.Logf("alice applied %d activity-log extents", extents)
	if extents == 0 || extents > 3 {
		t.Errorf("alice's activity log held %d extents for a load on 2 extents", extents)
	}
	p.waitSyncedStrict(t, time.Minute)
	if got := admOut(p.A, "role"); got != "Secondary/Secondary" {
		t.Errorf("after restart: role %q, want Secondary/Secondary", got)
	}

	// Whichever side became SyncSource, it logged how much it would sync
	// and sent that much.
	began := regexp.MustCompile(`Began resync as SyncSource \(will sync (\d+) KB`)
	var source *Node
	var willSync int64
	for _, c := range []struct {
		n    *Node
		mark int
	}{{p.A, markA}, {p.B, markB}} {
		if m := began.FindStringSubmatch(logAfter(c.n, c.mark)); m != nil {
			source = c.n
			willSync, _ = strconv.ParseInt(m[1], 10, 64)
		}
	}
	if source == nil {
		t.Fatalf("no resync after the crashed Primary came back:\nalice:\n%s\nbob:\n%s", logAfter(p.A, markA), logAfter(p.B, markB))
	}
	var sent int64
	if source == p.A {
		sent = settledCounter(t, p.A, "ns") // alice's counters restarted at zero
	} else {
		sent = settledCounter(t, p.B, "ns") - nsB0
	}
	limit := int64(max(extents, 1)) * 4096
	devKiB := p.DataSize(t) >> 10
	t.Logf("SyncSource %s: will sync %d KB, sent %d KiB; AL bound %d KiB, device %d KiB", source.Name, willSync, sent, limit, devKiB)
	if willSync > limit || willSync == 0 {
		t.Errorf("resync of %d KB after a Primary crash; want 0 < KB <= %d (%d AL extents)", willSync, limit, extents)
	}
	if sent > limit*105/100+64 {
		t.Errorf("SyncSource sent %d KiB, more than the activity log covers (%d KiB)", sent, limit)
	}
	if sent*4 > devKiB {
		t.Errorf("SyncSource sent %d KiB of a %d KiB device: not far less than the device", sent, devKiB)
	}
	// DRBD 8.4: equal current UUIDs and alice a crashed Primary is rule
	// 40, and the crashed Primary's activity-log extents are copied from
	// it (it becomes SyncSource).
	if !regexp.MustCompile(`uuid_compare\(\)=1 by rule 40`).MatchString(logAfter(p.A, markA)) || source != p.A {
		t.Errorf("want alice (the crashed Primary) SyncSource by uuid_compare rule 40; got SyncSource %s:\n%s",
			source.Name, strings.Join(regexp.MustCompile(`.*uuid_compare.*`).FindAllString(logAfter(p.A, markA), -1), "\n"))
	}
	p.downBoth(t)
	p.CompareDisks(t)
}

// slowResync makes resync run at a fixed 8 MiB/s (no dynamic controller),
// so a 64 MiB full sync takes several seconds and can be watched.
var slowResync = map[string]string{"c-plan-ahead": "0", "resync-rate": "8M"}

// upSkipInitialSync brings a pair of fresh, identical (zero) disks up and
// declares them in sync with new-current-uuid --clear-bitmap, as DRBD's
// users do to skip the initial sync of empty disks.
func upSkipInitialSync(t *testing.T, p *Pair) {
	t.Helper()
	p.Up(t)
	p.A.MustAdm("new-current-uuid", "--clear-bitmap", "r0")
	p.waitSyncedStrict(t, 20*time.Second)
	if l := daemonLog(p.B); regexp.MustCompile(`Began resync`).MatchString(l) {
		t.Fatalf("new-current-uuid --clear-bitmap still resynced:\n%s", l)
	}
}

// TestResyncUnderWriteLoad: a full resync (invalidate-remote) that runs
// while the Primary's clients keep writing, and is paused and resumed on
// the way. Application writes and resync must not race: fio verifies
// every block it wrote, and the disks end identical. Blocks the
// application rewrote during the resync are not copied twice.
func TestResyncUnderWriteLoad(t *testing.T) {
	RequireTools(t, "fio")
	p := NewPair(t, PairOptions{Disk: slowResync})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	devKiB := p.DataSize(t) >> 10
	ns0 := settledCounter(t, p.A, "ns")

	p.A.MustAdm("invalidate-remote", "r0")
	p.B.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	p.A.WaitState("cstate", "r0", "SyncSource", 10*time.Second)

	// The status file shows DRBD's progress lines while syncing.
	WaitFor(t, 10*time.Second, "resync progress lines in alice's status file", func() bool {
		return strings.Contains(p.A.ReadStatus(), "sync'ed:")
	})
	st := p.A.ReadStatus()
	if !procGrammar.MatchString(st) || !regexp.MustCompile(`\t\[[=>.]+\] sync'ed: +\d+\.\d% \(\d+/\d+\)[KM]\n\tfinish: \d+:\d\d:\d\d speed: [\d,]+ \([\d,]+\)`).MatchString(st) {
		t.Errorf("status file during resync:\n%s", st)
	}

	// Pause and resume.
	p.A.MustAdm("pause-sync", "r0")
	p.A.WaitState("cstate", "r0", "PausedSyncS", 10*time.Second)
	p.B.WaitState("cstate", "r0", "PausedSyncT", 10*time.Second)
	paused := settledCounter(t, p.A, "oos")
	if paused == 0 {
		t.Fatal("resync finished before it could be paused; slow it down")
	}
	if again := settledCounter(t, p.A, "oos"); again != paused {
		t.Errorf("oos moved from %d to %d while paused", paused, again)
	}
	p.A.MustAdm("resume-sync", "r0")
	p.A.WaitState("cstate", "r0", "SyncSource", 10*time.Second)

	// A verified write load while the resync runs.
	const fioKiB = 16 << 10
	fio := exec.Command("fio", "--name=during-resync", "--ioengine=nbd", "--uri="+p.URI[p.A], "--rw=randwrite",
		"--bs=4k", "--iodepth=16", "--size="+strconv.Itoa(fioKiB<<10), "--verify=crc32c", "--do_verify=1",
		"--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
	fio.Dir = t.TempDir()
	out, err := fio.CombinedOutput()
	if err != nil {
		t.Fatalf("fio during resync: %v\n%s", err, out)
	}
	if cs := admOut(p.A, "cstate"); cs != "SyncSource" {
		t.Logf("the resync ended before the write load (cstate %s): the race was not exercised", cs)
	} else if !p.B.LogContains(minRateSlowDown) {
		// The default c-min-rate (250 KiB/s) is far below the 8 MiB/s
		// of this resync, so the SyncTarget gives ticks to the peer's
		// writes.
		t.Errorf("bob's resync did not slow down for the write load (no %q in its log)", minRateSlowDown)
	}
	p.waitSyncedStrict(t, 2*time.Minute)
	sent := settledCounter(t, p.A, "ns") - ns0
	t.Logf("full resync of %d KiB with %d KiB written meanwhile: alice sent %d KiB", devKiB, fioKiB, sent)
	if sent < devKiB || sent > (devKiB+fioKiB)*105/100 {
		t.Errorf("alice sent %d KiB; want between %d (device) and %d (device + writes)", sent, devKiB, (devKiB+fioKiB)*105/100)
	}
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}

// minRateSlowDown starts the log line of a SyncTarget that leaves resync
// ticks to application I/O (c-min-rate).
const minRateSlowDown = "resync slows down for application I/O"

// TestResyncWithoutMinRate: with c-min-rate 0 the SyncTarget never gives
// way to application writes; the resync under the same write load as
// TestResyncUnderWriteLoad never slows down, and still ends with identical
// disks.
func TestResyncWithoutMinRate(t *testing.T) {
	RequireTools(t, "fio")
	disk := map[string]string{"c-min-rate": "0"}
	for k, v := range slowResync {
		disk[k] = v
	}
	p := NewPair(t, PairOptions{Disk: disk})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	p.A.MustAdm("invalidate-remote", "r0")
	p.B.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	fio := exec.Command("fio", "--name=during-resync", "--ioengine=nbd", "--uri="+p.URI[p.A], "--rw=randwrite",
		"--bs=4k", "--iodepth=16", "--size=16m", "--verify=crc32c", "--do_verify=1",
		"--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
	fio.Dir = t.TempDir()
	if out, err := fio.CombinedOutput(); err != nil {
		t.Fatalf("fio during resync: %v\n%s", err, out)
	}
	if cs := admOut(p.A, "cstate"); cs != "SyncSource" {
		t.Logf("the resync ended before the write load finished (cstate %s)", cs)
	}
	p.waitSyncedStrict(t, 2*time.Minute)
	if p.B.LogContains(minRateSlowDown) {
		t.Errorf("bob slowed its resync down with c-min-rate 0")
	}
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}

// TestInvalidateFullSync: `invalidate` on the Secondary discards its data;
// it becomes SyncTarget of a full sync of the device.
func TestInvalidateFullSync(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	chunks := scatterChunks(0x77, 16, 64<<10, p.DataSize(t))
	nbdshWrite(t, p.URI[p.A], chunks)
	// Corrupt bob behind drbdd's back: invalidate must repair it anyway.
	corruptBlock(t, p.Disk[p.B], chunks[5].off)
	ns0 := settledCounter(t, p.A, "ns")
	markB := logLen(p.B)
	p.B.MustAdm("invalidate", "r0")
	p.waitSyncedStrict(t, time.Minute)
	devKiB := p.DataSize(t) >> 10
	if m := regexp.MustCompile(`Began resync as SyncTarget \(will sync (\d+) KB`).FindStringSubmatch(logAfter(p.B, markB)); m == nil || m[1] != strconv.FormatInt(devKiB, 10) {
		t.Errorf("bob did not start a full resync of %d KB:\n%s", devKiB, logAfter(p.B, markB))
	}
	sent := settledCounter(t, p.A, "ns") - ns0
	if sent < devKiB || sent > devKiB*105/100 {
		t.Errorf("invalidate: alice sent %d KiB for a %d KiB device", sent, devKiB)
	}
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], chunks) {
		t.Fatal("bob lacks alice's data after invalidate")
	}
}

// TestSyncTargetKilledMidResync: a SyncTarget killed in the middle of a
// resync resumes after its restart instead of starting over, and ends
// identical to the source.
func TestSyncTargetKilledMidResync(t *testing.T) {
	p := NewPair(t, PairOptions{Disk: slowResync})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	devKiB := p.DataSize(t) >> 10
	p.A.MustAdm("invalidate-remote", "r0")
	p.B.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	WaitFor(t, time.Minute, "half of the resync", func() bool {
		oos := p.A.Counter("oos")
		return oos >= 0 && oos < devKiB/2
	})
	p.B.Kill()
	left := settledCounter(t, p.A, "oos")
	t.Logf("bob killed with %d of %d KiB left to sync", left, devKiB)
	if left == 0 {
		t.Fatal("resync finished before the kill; slow it down")
	}
	markB := logLen(p.B)
	p.B.Start()
	p.B.MustAdm("up", "r0")
	if ds := admOut(p.B, "dstate"); !strings.HasPrefix(ds, "Inconsistent/") {
		t.Errorf("bob restarted with dstate %q, want Inconsistent (it died as SyncTarget)", ds)
	}
	p.waitSyncedStrict(t, time.Minute)
	m := regexp.MustCompile(`Began resync as SyncTarget \(will sync (\d+) KB`).FindStringSubmatch(logAfter(p.B, markB))
	if m == nil {
		t.Fatalf("bob did not resync after its restart:\n%s", logAfter(p.B, markB))
	}
	resumed, _ := strconv.ParseInt(m[1], 10, 64)
	t.Logf("bob resumed with %d KB to sync (%d KiB were left at the kill)", resumed, left)
	if resumed < left {
		t.Errorf("bob resynced %d KB, less than the %d KiB still out of sync at the kill", resumed, left)
	}
	if resumed >= devKiB*9/10 {
		t.Errorf("bob restarted the resync from scratch (%d of %d KB) instead of resuming", resumed, devKiB)
	}
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}

// TestOutdate: an Outdated Secondary cannot be promoted; reconnected to
// its UpToDate peer of the same generation it is UpToDate again.
func TestOutdate(t *testing.T) {
	p := NewPair(t, PairOptions{})
	upSkipInitialSync(t, p)
	p.B.MustAdm("disconnect", "r0")
	p.B.MustAdm("outdate", "r0")
	if ds := admOut(p.B, "dstate"); ds != "Outdated/DUnknown" {
		t.Fatalf("bob after outdate: dstate %q", ds)
	}
	out, err := p.B.Adm("primary", "r0")
	if err == nil || !strings.Contains(out, "(-2) Need access to UpToDate data") {
		t.Fatalf("primary on Outdated data: err=%v out=%q", err, out)
	}
	p.B.MustAdm("connect", "r0")
	p.waitSyncedStrict(t, 20*time.Second)
}

// TestBitmapSurvivesPrimaryCrash: a Primary that lost its peer writes to
// more extents than its activity log holds (al-extents 7), so the bits of
// the early extents live only in the on-disk bitmap when it is killed.
// After its restart and the reconnect every written block must still be
// resynced: the disks end identical.
func TestBitmapSurvivesPrimaryCrash(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Disk: map[string]string{"al-extents": "7"}})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")

	// Bob dies (no drbdadm disconnect: the Primary alone sees the loss).
	p.B.Kill()
	waitDegraded(t, p.A)
	// 64 KiB in each of 15 extents, in order: the first ones leave the
	// 7-slot activity log long before the crash.
	var chunks []wchunk
	for e := range int64(15) {
		off := e*(4<<20) + 1<<20
		chunks = append(chunks, wchunk{off, tagPattern(0xe1, off, 64<<10)})
	}
	nbdshWrite(t, p.URI[p.A], chunks)
	if oos := settledCounter(t, p.A, "oos"); oos != 15*64 {
		t.Fatalf("alice oos:%d, want %d", oos, 15*64)
	}
	p.A.Kill()

	markA := logLen(p.A)
	p.A.Start()
	p.A.MustAdm("up", "r0")
	m := waitLogAfter(t, p.A, markA, alExtentsRE.String(), 10*time.Second)
	t.Logf("alice after the crash: %s", m[0])
	// The status file is rewritten asynchronously after the attach.
	if oos := settledCounter(t, p.A, "oos"); oos < 15*64 {
		t.Errorf("alice restarted with oos:%d, fewer than the %d KiB written while bob was away", oos, 15*64)
	}
	p.B.Start()
	p.B.MustAdm("up", "r0")
	p.waitSyncedStrict(t, time.Minute)
	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], chunks) {
		t.Fatal("bob lacks writes alice made while it was away")
	}
}

// TestDetachAttachResyncsOnlyMissed: the Secondary detaches its disk
// (drbdadm detach, as for disk maintenance) while the Primary writes,
// then attaches it again while still connected. The disk's flags say
// UpToDate, but it missed those writes: the Primary must start a new
// data generation when the peer's disk goes away, and the attach must
// re-run the sync handshake, which resyncs exactly the blocks written
// meanwhile. Taken as UpToDate without a resync, the disk would lose
// every acknowledged write of that time in a failover.
//
// In the second case the Primary is promoted only after the Secondary
// detached, so the new generation starts at the promotion (DRBD's
// drbd_set_role: the peer's disk is unreachable).
func TestDetachAttachResyncsOnlyMissed(t *testing.T) {
	RequireTools(t, "nbdsh")
	for _, promoteAfter := range []bool{false, true} {
		name := "detach-under-primary"
		if promoteAfter {
			name = "promote-after-detach"
		}
		t.Run(name, func(t *testing.T) { testDetachAttach(t, promoteAfter) })
	}
}

func testDetachAttach(t *testing.T, promoteAfter bool) {
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	if promoteAfter {
		demote(t, p.A)
	}

	markA := logLen(p.A)
	p.B.MustAdm("detach", "r0")
	p.B.WaitState("dstate", "r0", "Diskless/UpToDate", 30*time.Second)
	p.A.WaitState("dstate", "r0", "UpToDate/Diskless", 30*time.Second)
	if cs := admOut(p.A, "cstate"); cs != "Connected" {
		t.Fatalf("alice cstate %q after bob detached, want Connected", cs)
	}
	why := "lost the peer's copy of the data"
	if promoteAfter {
		p.A.MustAdm("primary", "r0")
		why = "promoted without the peer's disk"
	}
	waitLogAfter(t, p.A, markA, `new current UUID \S+ \(`+regexp.QuoteMeta(why)+`\)`, 30*time.Second)

	const chunkSize = 64 << 10
	const count = 128
	const dirtyKiB = count * chunkSize >> 10
	chunks := scatterChunks(0x5c, count, chunkSize, p.DataSize(t))
	nbdshWrite(t, p.URI[p.A], chunks)
	if oos := settledCounter(t, p.A, "oos"); oos < dirtyKiB || oos > dirtyKiB+64 {
		t.Fatalf("alice oos:%d KiB after writing %d KiB with bob diskless", oos, dirtyKiB)
	}
	ns0 := settledCounter(t, p.A, "ns")

	markB := logLen(p.B)
	p.B.MustAdm("attach", "r0")
	m := waitLogAfter(t, p.B, markB, `Began resync as SyncTarget \(will sync (\d+) KB`, time.Minute)
	if kb, _ := strconv.ParseInt(m[1], 10, 64); kb != dirtyKiB {
		t.Errorf("bob will sync %d KB, want the %d written while it was detached", kb, dirtyKiB)
	}
	waitLogAfter(t, p.B, markB, `Resync done`, time.Minute)
	p.waitSyncedStrict(t, time.Minute)
	checkResyncSent(t, p.A, ns0, dirtyKiB)
	if oos := settledCounter(t, p.A, "oos"); oos != 0 {
		t.Errorf("alice oos:%d after the resync", oos)
	}

	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], chunks) {
		t.Fatal("bob's backing file lacks the data written while it was detached")
	}
}

// TestPrimarySyncTargetNeedsItsSource: a Primary whose own disk is
// Inconsistent (invalidated, resyncing as SyncTarget) has UpToDate data
// only through its peer. Once the peer is gone its writes must fail:
// acknowledged on the Inconsistent disk alone, they would be overwritten
// with the peer's older blocks when the resync resumes. Writes made
// while the peer was there, and after it is back, survive.
func TestPrimarySyncTargetNeedsItsSource(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Disk: slowResync})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	p.A.MustAdm("invalidate", "r0")
	p.A.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	span := p.DataSize(t)
	before := scatterChunks(0x31, 8, 64<<10, span)
	nbdshWrite(t, p.URI[p.A], before)

	// A client connected while the peer is there (a new one would be
	// refused at the handshake) writes again once it is gone.
	ready, goOn := filepath.Join(t.TempDir(), "ready"), filepath.Join(t.TempDir(), "go")
	script := fmt.Sprintf(`import os, time
h.pwrite(b'\x5a' * 4096, 1048576)
open(%q, 'w').close()
while not os.path.exists(%q):
    time.sleep(0.05)
try:
    h.pwrite(b'\x5b' * 4096, 2097152)
    h.flush()
    print('accepted')
except Exception as e:
    print('refused:', e)
`, ready, goOn)
	cmd := NbdshCmd("-u", p.URI[p.A], "-c", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, time.Minute, "nbdsh's first write", func() bool { _, err := os.Stat(ready); return err == nil })
	p.B.MustAdm("disconnect", "r0")
	p.A.WaitState("dstate", "r0", "Inconsistent/DUnknown", 20*time.Second)
	os.WriteFile(goOn, nil, 0o644)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "refused:") {
		t.Fatalf("a write to a Primary with no UpToDate data reachable was not refused: %s", out.String())
	}
	if !strings.Contains(daemonLog(p.A), "no access to UpToDate data") {
		t.Errorf("alice did not log why the write failed")
	}

	p.B.MustAdm("connect", "r0")
	p.waitSyncedStrict(t, 2*time.Minute)
	// Next to the first chunks, which they must not disturb.
	var after []wchunk
	for _, c := range before {
		off := c.off + 128<<10
		after = append(after, wchunk{off, tagPattern(0x32, off, 64<<10)})
	}
	nbdshWrite(t, p.URI[p.A], after)
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.A], before) || !diskHolds(t, p.Disk[p.A], after) {
		t.Fatal("alice lacks writes acknowledged while the peer was reachable")
	}
}
