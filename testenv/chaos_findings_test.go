package testenv

import (
	"strings"
	"testing"
	"time"
)

// Findings of the randomized scenario test (chaos_diskless_test.go, build
// tag chaos), kept as deterministic tests.

// TestOutdatedNotPromotedOverDisklessPeer (found by seed 2): bob
// detaches while alice is Primary, so his disk is Outdated and lacks
// what alice writes next. alice then demotes and detaches, bob attaches
// his old disk while connected to diskless alice: "Connected
// Outdated/Diskless". Promoting bob must be refused (no UpToDate data
// anywhere in reach); drbdd accepted it, and the promotion started a new
// generation on the stale disk. When alice attaches her UpToDate disk the
// handshake sees a split brain, and with after-sb-1pri discard-secondary
// alice's disk, the only one holding her acknowledged writes, becomes
// SyncTarget of bob's stale data.
func TestOutdatedNotPromotedOverDisklessPeer(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Net: map[string]string{"after-sb-1pri": "discard-secondary"}})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	p.B.MustAdm("detach", "r0")
	p.B.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	w := scatterChunks(0x71, 16, 64<<10, p.DataSize(t))
	nbdshWrite(t, p.URI[p.A], w)
	demote(t, p.A)
	p.A.MustAdm("detach", "r0")
	p.B.MustAdm("attach", "r0")
	p.B.WaitState("cstate", "r0", "Connected", 20*time.Second)
	t.Logf("before the promotion: %s", p.states())
	if out, err := p.B.Adm("primary", "r0"); err == nil {
		t.Errorf("bob was promoted on his Outdated disk with a diskless peer (%s)", admOut(p.B, "dstate"))
	} else {
		t.Logf("promotion refused: %s", strings.TrimSpace(out))
	}
	// Whatever the promotion did, alice's disk comes back.
	p.A.MustAdm("attach", "r0")
	WaitFor(t, 30*time.Second, "alice and bob to settle", func() bool {
		a, b := admOut(p.A, "cstate"), admOut(p.B, "cstate")
		return (a == "Connected" || a == "StandAlone") && (b == "Connected" || b == "StandAlone") &&
			!strings.Contains(admOut(p.A, "dstate"), "Inconsistent") && !strings.Contains(admOut(p.B, "dstate"), "Inconsistent")
	})
	t.Logf("after alice's attach: %s", p.states())
	if p.A.LogContains("Split-Brain detected") {
		t.Errorf("alice's attach met a split brain made by bob's promotion")
	}
	if !diskHolds(t, p.Disk[p.A], w) {
		t.Errorf("alice's disk lost the writes she acknowledged")
	}
}

// TestOutdatedSyncSourceBecomesUpToDate (found by seed 29): a
// resync whose SyncSource holds an Outdated disk ended with the SyncTarget
// UpToDate and the source still Outdated: "Connected Outdated/UpToDate"
// for good (a state DRBD's own rules call invalid, SS_CONNECTED_OUTDATES).
// DRBD's drbd_resync_finished makes both disks UpToDate, since both now
// hold the same data. Here alice's disk is outdated by hand while
// disconnected and bob's invalidated, so that alice must be the source.
func TestOutdatedSyncSourceBecomesUpToDate(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{})
	upSkipInitialSync(t, p)
	p.A.MustAdm("disconnect", "r0")
	p.B.MustAdm("disconnect", "r0")
	p.A.MustAdm("outdate", "r0")
	p.B.MustAdm("invalidate", "r0")
	t.Logf("before connecting: alice %s, bob %s", admOut(p.A, "dstate"), admOut(p.B, "dstate"))
	p.A.MustAdm("connect", "r0")
	p.B.MustAdm("connect", "r0")
	WaitFor(t, time.Minute, "the resync to end", func() bool {
		return admOut(p.B, "dstate") == "UpToDate/Outdated" || admOut(p.B, "dstate") == "UpToDate/UpToDate" || admOut(p.A, "cstate") == "StandAlone"
	})
	time.Sleep(2 * time.Second)
	t.Logf("after the resync: %s", p.states())
	if got := admOut(p.A, "dstate"); got != "UpToDate/UpToDate" {
		t.Errorf("alice, the SyncSource, ends %s; want UpToDate/UpToDate", got)
	}
}
