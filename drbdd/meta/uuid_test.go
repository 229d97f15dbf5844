package meta

import "testing"

func TestUUIDOperations(t *testing.T) {
	u := NewUUIDs()
	if u != (UUIDs{Current: UUIDJustCreated}) {
		t.Fatalf("NewUUIDs = %v", u)
	}
	// primary --force on just-created metadata.
	if !u.Promote(uX, false, true) {
		t.Fatal("forced promote generated no UUID")
	}
	if u != (UUIDs{Current: uX | 1, Bitmap: UUIDJustCreated}) {
		t.Fatalf("after forced promote: %v", u)
	}
	u.Demote()
	if u.Current != uX {
		t.Fatalf("demote: %v", u)
	}
	// Promote while connected to an UpToDate peer: no new UUID.
	if u.Promote(uY, true, false) || u.Current != uX|1 {
		t.Fatalf("connected promote: %v", u)
	}
	// Promote while disconnected, but a bitmap UUID is already set: no new
	// UUID either (the generation was already split off).
	u.Demote()
	if u.Promote(uY, false, false) || u.Current != uX|1 {
		t.Fatalf("disconnected promote with bitmap UUID set: %v", u)
	}

	// SetBitmap(0) rotates into history; SetBitmap(v) masks the primary bit.
	u = UUIDs{Current: uX, Bitmap: uY, History: [2]uint64{uA, uB}}
	if !u.SetBitmap(0) || u != (UUIDs{Current: uX, History: [2]uint64{uY, uA}}) {
		t.Fatalf("SetBitmap(0): %v", u)
	}
	if u.SetBitmap(0) || u != (UUIDs{Current: uX, History: [2]uint64{uY, uA}}) {
		t.Fatalf("SetBitmap(0) twice: %v", u)
	}
	if u.SetBitmap(uZ|1) || u.Bitmap != uZ {
		t.Fatalf("SetBitmap(v): %v", u)
	}
	if !u.SetBitmap(uC) || u.Bitmap != uC {
		t.Fatalf("SetBitmap over a set bitmap: %v", u)
	}

	// Disconnect while Primary and UpToDate: new current UUID.
	u = UUIDs{Current: uX | 1}
	if !u.LostPeerData(uY, true, false, true) || u != (UUIDs{Current: uY | 1, Bitmap: uX | 1}) {
		t.Fatalf("LostPeerData as primary: %v", u)
	}
	if u.LostPeerData(uZ, true, false, true) {
		t.Fatal("LostPeerData with bitmap UUID set generated a UUID")
	}
	u = UUIDs{Current: uX}
	if u.LostPeerData(uY, false, false, true) {
		t.Fatal("LostPeerData with two secondaries generated a UUID")
	}
	if !u.LostPeerData(uY, false, true, true) || u.Current != uY || u.Bitmap != uX {
		t.Fatalf("LostPeerData while peer primary: %v", u)
	}
	u = UUIDs{Current: uX}
	if u.LostPeerData(uY, true, false, false) {
		t.Fatal("LostPeerData on a non-UpToDate disk generated a UUID")
	}

	// NewCurrent over a set bitmap UUID reports it.
	u = UUIDs{Current: uX, Bitmap: uY}
	if !u.NewCurrent(uZ, false) || u.Bitmap != uX || u.Current != uZ {
		t.Fatalf("NewCurrent: %v", u)
	}

	// new-current-uuid --clear-bitmap on a just-synced pair.
	u = UUIDs{Current: uX, Bitmap: uY, History: [2]uint64{uA}}
	u.NewCurrentByUser(uZ, false, true)
	if u != (UUIDs{Current: uZ, History: [2]uint64{uY, uA}}) {
		t.Fatalf("NewCurrentByUser skip: %v", u)
	}
	u = UUIDs{Current: uX}
	u.NewCurrentByUser(uZ, true, false)
	if u != (UUIDs{Current: uZ | 1, Bitmap: uX}) {
		t.Fatalf("NewCurrentByUser: %v", u)
	}
	u = NewUUIDs()
	u.SkipInitialSync(uZ|1, false)
	if u != (UUIDs{Current: uZ}) {
		t.Fatalf("SkipInitialSync: %v", u)
	}
}

func TestGenWords(t *testing.T) {
	g := Gen{UUIDs: UUIDs{1, 2, [2]uint64{3, 4}}, Bits: 5, Flags: UUIDFlagCrashedPrimary}
	if w := g.Words(); w != [6]uint64{1, 2, 3, 4, 5, 2} || GenFromWords(w) != g {
		t.Errorf("words %v", w)
	}
}

// node is one side of a two-node scenario.
type node struct {
	u       UUIDs
	primary bool
	crashed bool
	bits    uint64
}

func (n *node) gen() Gen {
	g := Gen{UUIDs: n.u, Bits: n.bits}
	if n.crashed {
		g.Flags |= UUIDFlagCrashedPrimary
	}
	return g
}

// handshake runs the comparison on both sides and checks they agree.
func handshakeBoth(t *testing.T, a, b *node) (Result, Rule) {
	t.Helper()
	ra, rulea := Compare(a.gen(), b.gen(), CompareContext{SelfPrimary: a.primary, PeerPrimary: b.primary, ResolveConflicts: true, Features: FeatureWSame})
	rb, ruleb := Compare(b.gen(), a.gen(), CompareContext{SelfPrimary: b.primary, PeerPrimary: a.primary, Features: FeatureWSame})
	mirrored := ra == -rb
	if abs(ra) >= 100 {
		mirrored = ra == rb
	}
	if !mirrored {
		t.Fatalf("sides disagree: A %d by %s, B %d by %s", int(ra), rulea, int(rb), ruleb)
	}
	return ra, rulea
}

func masked(u UUIDs) UUIDs {
	return UUIDs{u.Current &^ 1, u.Bitmap &^ 1, [2]uint64{u.History[0] &^ 1, u.History[1] &^ 1}}
}

// resync runs the UUID side of a resync from src to dst.
func resync(t *testing.T, src, dst *node, random uint64) {
	t.Helper()
	peerAtHandshake := src.u
	syncUUID := src.u.StartSyncSource(random)
	dst.u.StartSyncTarget(syncUUID, dst.primary)
	src.u.FinishResync(false, dst.u, src.primary)
	dst.u.FinishResync(true, peerAtHandshake, dst.primary)
	// Both sides now hold the same UUIDs, up to the primary bit (which
	// DRBD carries along in rotated UUIDs and always masks).
	if masked(src.u) != masked(dst.u) {
		t.Fatalf("after resync: src %v dst %v", src.u, dst.u)
	}
	src.bits, dst.bits, src.crashed, dst.crashed = 0, 0, false, false
}

// TestUUIDScenarios walks through the classic DRBD life cycles and checks
// the handshake outcome at each reconnect.
func TestUUIDScenarios(t *testing.T) {
	a, b := &node{u: NewUUIDs()}, &node{u: NewUUIDs()}
	if r, rule := handshakeBoth(t, a, b); r != ResultNoSync || rule != Rule10 {
		t.Fatalf("fresh pair: %d by %s", int(r), rule)
	}
	// drbdadm primary --force on A: initial full sync A -> B.
	a.u.Promote(uX, true, true)
	a.primary = true
	if r, rule := handshakeBoth(t, a, b); r != ResultSourceFull || rule != Rule30 {
		t.Fatalf("after primary --force: %d by %s", int(r), rule)
	}
	resync(t, a, b, uY)
	if r, rule := handshakeBoth(t, a, b); r != ResultNoSync || rule != Rule40NoSync {
		t.Fatalf("after initial sync: %d by %s", int(r), rule)
	}

	// B goes away while A is Primary: A starts a new generation.
	if !a.u.LostPeerData(uZ, true, false, true) {
		t.Fatal("no new current UUID on peer loss")
	}
	a.bits = 10
	if r, rule := handshakeBoth(t, a, b); r != ResultSourceBitmap || rule != Rule70 {
		t.Fatalf("B returns: %d by %s", int(r), rule)
	}
	resync(t, a, b, 0)

	// A crashes as Primary; B is promoted while disconnected (failover).
	a.crashed = true
	a.primary = false
	if !b.u.Promote(uA, false, false) {
		t.Fatal("failover promote generated no UUID")
	}
	b.primary = true
	b.bits = 3
	if r, rule := handshakeBoth(t, a, b); r != ResultTargetBitmap || rule != Rule50 {
		t.Fatalf("old primary returns: %d by %s", int(r), rule)
	}
	resync(t, b, a, 0)

	// Split brain: both lose each other and both are Primary.
	a.primary = true
	a.u.Promote(0, true, false) // connected: only the primary bit
	if !a.u.LostPeerData(uB, true, false, true) || !b.u.LostPeerData(uC, true, false, true) {
		t.Fatal("no new UUIDs on split")
	}
	a.u.Demote()
	b.u.Demote()
	a.primary, b.primary = false, false
	if r, rule := handshakeBoth(t, a, b); r != ResultSplitBrainAutoRecover || rule != Rule90 {
		t.Fatalf("split brain: %d by %s", int(r), rule)
	}
}

// A resync whose sync UUID never reached the target is recognized by rules
// 51/71 and repaired.
func TestLostSyncUUID(t *testing.T) {
	a, b := &node{u: NewUUIDs()}, &node{u: NewUUIDs()}
	a.u.Promote(uX, true, true)
	resync(t, a, b, uY)
	a.u.LostPeerData(uZ, true, false, true)
	// A starts a resync but P_SYNC_UUID is lost: only A changed.
	before := a.u
	a.u.StartSyncSource(0)
	// B's current UUID is A's history[0] now, and A's bitmap UUID is it
	// plus UUIDNewBMOffset: rule 71 on A, rule 51 on B.
	if r, rule := handshakeBoth(t, a, b); r != ResultSourceBitmap || rule != Rule71 {
		t.Fatalf("lost sync UUID: %d by %s", int(r), rule)
	}
	if r, rule := Compare(b.gen(), a.gen(), CompareContext{}); r != ResultTargetBitmap || rule != Rule51 {
		t.Fatalf("lost sync UUID, B's view: %d by %s", int(r), rule)
	}
	self, peer := a.gen(), b.gen()
	c := CompareAndRepair(&self, &peer, CompareContext{})
	if c.Rule != Rule71 || !c.SelfRepaired || self.UUIDs.Bitmap != before.Bitmap {
		t.Fatalf("repair: %+v, self %v, before %v", c, self.UUIDs, before)
	}
}

// TestDisklessPeerPromoted: the node holding the only disk starts a new
// generation when its diskless peer becomes Primary, unless a bitmap UUID
// already separates the peer's disk's generation from the current one.
func TestDisklessPeerPromoted(t *testing.T) {
	u := UUIDs{Current: uX, History: [2]uint64{uA, uB}}
	if !u.DisklessPeerPromoted(uY, false) {
		t.Fatal("no new UUID with an empty bitmap UUID")
	}
	if u != (UUIDs{Current: uY, Bitmap: uX, History: [2]uint64{uA, uB}}) {
		t.Fatalf("after the diskless peer's promotion: %v", u)
	}
	// Promoted again later: the generation is already split off.
	if u.DisklessPeerPromoted(uZ, false) || u.Current != uY || u.Bitmap != uX {
		t.Fatalf("second promotion: %v", u)
	}
	// On a node that is Primary itself (two primaries) the new current
	// UUID carries the primary bit.
	u = UUIDs{Current: uX | 1}
	if !u.DisklessPeerPromoted(uY, true) || u.Current != uY|1 || u.Bitmap != uX|1 {
		t.Fatalf("as Primary: %v", u)
	}
}
