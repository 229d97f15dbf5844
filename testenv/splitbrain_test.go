package testenv

import (
	"crypto/sha256"
	"io"
	"maps"
	"os"
	"strings"
	"testing"
	"time"
)

// Split brain made on purpose: a synced pair with alice Primary is cut
// (drbdadm disconnect on both), bob is promoted, both sides write through
// NBD, roles are set as the scenario needs, and both reconnect. DRBD's
// promise: the split brain is detected every time and the data is never
// merged; an after-sb policy either names a victim (which then resyncs
// from the survivor, so both disks end identical and hold the survivor's
// data) or both nodes end StandAlone.

// splitBrain is one scenario.
type splitBrain struct {
	name string
	// net holds net options for both nodes; netA and netB override them
	// on alice and bob only (discard-local / discard-remote must differ).
	net, netA, netB map[string]string
	// aWrites and bWrites are how many 64 KiB chunks each side writes
	// while split. Bob is always promoted during the split.
	aWrites, bWrites int
	// aPrimary and bPrimary are the roles at reconnect.
	aPrimary, bPrimary bool
	// survivor is "alice" or "bob", or "" when both must end StandAlone.
	survivor string
	// log is a line the survivor (or, for StandAlone, alice) must log.
	log string
	// victimLog, if set, is a line the victim must log.
	victimLog string
}

// splitPair is a pair that went through a split brain.
type splitPair struct {
	*Pair
	a, b []wchunk
	// hash is each node's data area digest just before the reconnect.
	hash map[*Node][32]byte
	// mark is each node's log length before the reconnect.
	mark map[*Node]int
}

// dataHash digests a node's data area in its backing file.
func (p *Pair) dataHash(t testing.TB, n *Node) [32]byte {
	t.Helper()
	f, err := os.Open(p.Disk[n])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, p.DataSize(t))); err != nil {
		t.Fatal(err)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// makeSplitBrain runs the scenario up to (not including) the reconnect.
func makeSplitBrain(t *testing.T, sc splitBrain) *splitPair {
	t.Helper()
	p := NewPair(t, PairOptions{Net: sc.net})
	for n, extra := range map[*Node]map[string]string{p.A: sc.netA, p.B: sc.netB} {
		if len(extra) == 0 {
			continue
		}
		r := p.Res
		r.Net = maps.Clone(p.Res.Net)
		maps.Copy(r.Net, extra)
		WriteResource(t, r, n)
	}
	p.Up(t)
	p.InitialSync(t, p.A)

	p.A.MustAdm("disconnect", "r0")
	p.B.MustAdm("disconnect", "r0")
	for _, n := range p.Nodes() {
		if got := admOut(n, "cstate"); got != "StandAlone" {
			t.Fatalf("%s after disconnect: cstate %q", n.Name, got)
		}
	}
	p.B.MustAdm("primary", "r0")

	span := p.DataSize(t) / 2
	sp := &splitPair{Pair: p, hash: map[*Node][32]byte{}, mark: map[*Node]int{}}
	if sc.aWrites > 0 {
		sp.a = scatterChunks(0xaa, sc.aWrites, 64<<10, span)
		nbdshWrite(t, p.URI[p.A], sp.a)
	}
	if sc.bWrites > 0 {
		// Bob's chunks start 32 KiB later: the first ones overlap alice's.
		for _, c := range scatterChunks(0xbb, sc.bWrites, 64<<10, span) {
			off := c.off + 32<<10
			sp.b = append(sp.b, wchunk{off, tagPattern(0xbb, off, len(c.data))})
		}
		nbdshWrite(t, p.URI[p.B], sp.b)
	}
	if !sc.aPrimary {
		p.A.MustAdm("secondary", "r0")
	}
	if !sc.bPrimary {
		p.B.MustAdm("secondary", "r0")
	}
	for _, n := range p.Nodes() {
		sp.hash[n] = p.dataHash(t, n)
		sp.mark[n] = logLen(n)
	}
	if sc.aWrites > 0 && sc.bWrites > 0 && sp.hash[p.A] == sp.hash[p.B] {
		t.Fatal("test bug: both sides hold the same data after writing different data")
	}
	return sp
}

// connectBoth runs drbdadm connect on alice, then bob.
func (sp *splitPair) connectBoth(t *testing.T) {
	t.Helper()
	sp.A.MustAdm("connect", "r0")
	sp.B.MustAdm("connect", "r0")
}

// expectStandAlone checks that the reconnect found a split brain that no
// policy resolved: both StandAlone, each with its own data.
func (sp *splitPair) expectStandAlone(t *testing.T, why string) {
	t.Helper()
	for _, n := range sp.Nodes() {
		n.WaitState("cstate", "r0", "StandAlone", 30*time.Second)
	}
	for _, n := range sp.Nodes() {
		l := logAfter(n, sp.mark[n])
		if !strings.Contains(l, why) {
			t.Errorf("%s did not log %q after the reconnect:\n%s", n.Name, why, l)
		}
		if strings.Contains(l, "Began resync") {
			t.Errorf("%s started a resync although the split brain is unresolved:\n%s", n.Name, l)
		}
		if h := sp.dataHash(t, n); h != sp.hash[n] {
			t.Errorf("%s's data changed although the split brain is unresolved", n.Name)
		}
	}
	if len(sp.a) > 0 && (!diskHolds(t, sp.Disk[sp.A], sp.a) || diskHolds(t, sp.Disk[sp.B], sp.a)) {
		t.Errorf("alice's writes are not exactly on alice: data merged or lost")
	}
	if len(sp.b) > 0 && (!diskHolds(t, sp.Disk[sp.B], sp.b) || diskHolds(t, sp.Disk[sp.A], sp.b)) {
		t.Errorf("bob's writes are not exactly on bob: data merged or lost")
	}
}

// expectSurvivor checks that the split brain was resolved in favour of
// survivor: the other node resynced from it, both disks are identical
// and hold exactly the survivor's data as it was before the reconnect.
func (sp *splitPair) expectSurvivor(t *testing.T, survivor *Node, logWant string) {
	t.Helper()
	victim := sp.Peer(survivor)
	sp.waitSyncedStrict(t, time.Minute)
	if logWant != "" {
		if l := logAfter(survivor, sp.mark[survivor]); !strings.Contains(l, logWant) {
			t.Errorf("%s did not log %q:\n%s", survivor.Name, logWant, l)
		}
	}
	if l := logAfter(victim, sp.mark[victim]); !strings.Contains(l, "Began resync as SyncTarget") {
		t.Errorf("victim %s did not become SyncTarget:\n%s", victim.Name, l)
	}
	sp.downBoth(t)
	sp.CompareDisks(t)
	for _, n := range sp.Nodes() {
		if h := sp.dataHash(t, n); h != sp.hash[survivor] {
			t.Errorf("%s does not hold the survivor %s's data", n.Name, survivor.Name)
		}
	}
}

func (sp *splitPair) node(name string) *Node {
	if name == "alice" {
		return sp.A
	}
	return sp.B
}

// TestSplitBrainDefault: with the default policies (disconnect) a split
// brain is detected on every reconnect and leaves both StandAlone with
// their own data; `connect --discard-my-data` on the victim resolves it.
func TestSplitBrainDefault(t *testing.T) {
	RequireTools(t, "nbdsh")
	sp := makeSplitBrain(t, splitBrain{aWrites: 16, bWrites: 8})
	for attempt := range 2 {
		for _, n := range sp.Nodes() {
			sp.mark[n] = logLen(n)
		}
		sp.connectBoth(t)
		sp.expectStandAlone(t, "Split-Brain detected")
		if t.Failed() {
			t.Fatalf("attempt %d: split brain not handled", attempt+1)
		}
	}
	// Manual recovery: bob is the victim.
	for _, n := range sp.Nodes() {
		sp.mark[n] = logLen(n)
	}
	sp.B.MustAdm("connect", "--discard-my-data", "r0")
	sp.A.MustAdm("connect", "r0")
	sp.expectSurvivor(t, sp.A, "Split-Brain detected, manually solved. Sync from this node")
	if !diskHolds(t, sp.Disk[sp.B], sp.a) {
		t.Error("bob lacks alice's writes after the manual recovery")
	}
}

// TestSplitBrainDiscardMyDataRefusedOnPrimary: DRBD refuses
// --discard-my-data on a Primary.
func TestSplitBrainDiscardMyDataRefusedOnPrimary(t *testing.T) {
	RequireTools(t, "nbdsh")
	sp := makeSplitBrain(t, splitBrain{aWrites: 2, bWrites: 2, bPrimary: true})
	out, err := sp.B.Adm("connect", "--discard-my-data", "r0")
	if err == nil || !strings.Contains(out, "not allowed when primary") {
		t.Fatalf("connect --discard-my-data on a Primary: err=%v out=%q", err, out)
	}
}

// runSplitBrain runs scenarios, each with a fresh pair.
func runSplitBrain(t *testing.T, cases []splitBrain) {
	RequireTools(t, "nbdsh")
	for _, sc := range cases {
		t.Run(sc.name, func(t *testing.T) {
			sp := makeSplitBrain(t, sc)
			sp.connectBoth(t)
			if sc.survivor == "" {
				sp.expectStandAlone(t, sc.log)
				return
			}
			survivor := sp.node(sc.survivor)
			sp.expectSurvivor(t, survivor, sc.log)
			if victim := sp.Peer(survivor); sc.victimLog != "" {
				if l := logAfter(victim, sp.mark[victim]); !strings.Contains(l, sc.victimLog) {
					t.Errorf("victim %s did not log %q:\n%s", victim.Name, sc.victimLog, l)
				}
			}
		})
	}
}

func netOpts(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestSplitBrainAfterSB0Pri: both nodes Secondary at the reconnect.
func TestSplitBrainAfterSB0Pri(t *testing.T) {
	const solved = "Split-Brain detected, 0 primaries, automatically solved. Sync from this node"
	runSplitBrain(t, []splitBrain{
		{name: "discard-zero-changes/bob-idle", net: netOpts("after-sb-0pri", "discard-zero-changes"),
			aWrites: 8, survivor: "alice", log: solved},
		{name: "discard-zero-changes/alice-idle", net: netOpts("after-sb-0pri", "discard-zero-changes"),
			bWrites: 8, survivor: "bob", log: solved},
		{name: "discard-zero-changes/both-wrote", net: netOpts("after-sb-0pri", "discard-zero-changes"),
			aWrites: 8, bWrites: 8, log: "Split-Brain detected"},
		{name: "discard-least-changes/bob-fewer", net: netOpts("after-sb-0pri", "discard-least-changes"),
			aWrites: 16, bWrites: 4, survivor: "alice", log: solved},
		{name: "discard-least-changes/alice-fewer", net: netOpts("after-sb-0pri", "discard-least-changes"),
			aWrites: 3, bWrites: 12, survivor: "bob", log: solved},
		// Alice was Primary when the split happened, bob became Primary
		// later: bob is the younger primary.
		{name: "discard-younger-primary", net: netOpts("after-sb-0pri", "discard-younger-primary"),
			aWrites: 4, bWrites: 12, survivor: "alice", log: solved},
		{name: "discard-older-primary", net: netOpts("after-sb-0pri", "discard-older-primary"),
			aWrites: 12, bWrites: 4, survivor: "bob", log: solved},
		{name: "discard-local-on-bob", netA: netOpts("after-sb-0pri", "discard-remote"), netB: netOpts("after-sb-0pri", "discard-local"),
			aWrites: 4, bWrites: 12, survivor: "alice", log: solved},
		{name: "discard-local-on-alice", netA: netOpts("after-sb-0pri", "discard-local"), netB: netOpts("after-sb-0pri", "discard-remote"),
			aWrites: 12, bWrites: 4, survivor: "bob", log: solved},
	})
}

// TestSplitBrainAfterSB1Pri: alice still Primary at the reconnect.
func TestSplitBrainAfterSB1Pri(t *testing.T) {
	const solved = "Split-Brain detected, 1 primaries, automatically solved. Sync from this node"
	runSplitBrain(t, []splitBrain{
		{name: "disconnect", net: netOpts("after-sb-0pri", "discard-zero-changes"),
			aWrites: 8, bWrites: 8, aPrimary: true, log: "Split-Brain detected"},
		{name: "discard-secondary", net: netOpts("after-sb-1pri", "discard-secondary"),
			aWrites: 4, bWrites: 12, aPrimary: true, survivor: "alice", log: solved},
		// consensus: the after-sb-0pri verdict stands only if it discards
		// the Secondary.
		{name: "consensus/agrees", net: netOpts("after-sb-0pri", "discard-zero-changes", "after-sb-1pri", "consensus"),
			aWrites: 8, aPrimary: true, survivor: "alice", log: solved},
		{name: "consensus/disagrees", net: netOpts("after-sb-0pri", "discard-zero-changes", "after-sb-1pri", "consensus"),
			bWrites: 8, aPrimary: true, log: "Split-Brain detected"},
		// Bob is the Primary this time.
		{name: "discard-secondary/bob-primary", net: netOpts("after-sb-1pri", "discard-secondary"),
			aWrites: 12, bWrites: 4, bPrimary: true, survivor: "bob", log: solved},
		// call-pri-lost-after-sb: the after-sb-0pri verdict decides; a
		// Primary it discards gives up its role and becomes SyncTarget.
		{name: "call-pri-lost-after-sb/primary-keeps", net: netOpts("after-sb-0pri", "discard-zero-changes", "after-sb-1pri", "call-pri-lost-after-sb"),
			aWrites: 8, aPrimary: true, survivor: "alice", log: solved},
		{name: "call-pri-lost-after-sb/primary-loses", net: netOpts("after-sb-0pri", "discard-zero-changes", "after-sb-1pri", "call-pri-lost-after-sb"),
			bWrites: 8, aPrimary: true, survivor: "bob", log: solved, victimLog: "Successfully gave up primary role."},
	})
}

// TestSplitBrainAfterSB2Pri: both Primary at the reconnect; with
// after-sb-2pri disconnect nothing is resolved, whatever the other
// policies say.
func TestSplitBrainAfterSB2Pri(t *testing.T) {
	runSplitBrain(t, []splitBrain{
		{name: "disconnect", net: netOpts("after-sb-0pri", "discard-zero-changes", "after-sb-1pri", "discard-secondary", "after-sb-2pri", "disconnect"),
			aWrites: 8, aPrimary: true, bPrimary: true, log: "Split-Brain detected"},
	})
}

// TestAfterSBIncompatible: the same discard-local on both nodes contradicts
// itself (each would discard its own data), so DRBD refuses to connect at
// all (convert_after_sb in receive_protocol): both StandAlone.
func TestAfterSBIncompatible(t *testing.T) {
	p := NewPair(t, PairOptions{Net: netOpts("after-sb-0pri", "discard-local")})
	for _, n := range p.Nodes() {
		n.MustAdm("create-md", "r0")
		n.MustAdm("up", "r0")
	}
	for _, n := range p.Nodes() {
		n.WaitState("cstate", "r0", "StandAlone", 30*time.Second)
	}
	for _, n := range p.Nodes() {
		if !n.LogContains("incompatible after-sb-0pri settings") {
			t.Errorf("%s did not log the incompatible after-sb-0pri settings:\n%s", n.Name, daemonLog(n))
		}
	}
}
