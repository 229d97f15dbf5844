package meta

import "testing"

// Distinct, even (non-primary) UUIDs for the tables.
const (
	uX = 0x1000_0000_0000_1000
	uY = 0x2000_0000_0000_2000
	uZ = 0x3000_0000_0000_3000
	uA = 0x4000_0000_0000_4000
	uB = 0x5000_0000_0000_5000
	uC = 0x6000_0000_0000_6000
	uD = 0x7000_0000_0000_7000
)

func gen(c, b, h0, h1 uint64) Gen {
	return Gen{UUIDs: UUIDs{Current: c, Bitmap: b, History: [2]uint64{h0, h1}}}
}

func withFlags(g Gen, f UUIDFlags) Gen { g.Flags = f; return g }

func TestCompareRules(t *testing.T) {
	primary := CompareContext{SelfPrimary: true}
	peerPrimary := CompareContext{PeerPrimary: true}
	wsame := func(c CompareContext) CompareContext { c.Features = FeatureWSame; return c }
	tests := []struct {
		name       string
		self, peer Gen
		ctx        CompareContext
		want       Result
		rule       Rule
		// repaired UUIDs, when a rule rewrites them
		selfAfter, peerAfter *UUIDs
	}{
		{"10 both just created", gen(UUIDJustCreated, 0, 0, 0), gen(UUIDJustCreated, 0, 0, 0), CompareContext{}, ResultNoSync, Rule10, nil, nil},
		{"10 primary bit masked", gen(UUIDJustCreated|1, 0, 0, 0), gen(UUIDJustCreated, 0, 0, 0), CompareContext{}, ResultNoSync, Rule10, nil, nil},
		{"20 I am just created", gen(UUIDJustCreated, 0, 0, 0), gen(uX, UUIDJustCreated, 0, 0), CompareContext{}, ResultTargetFull, Rule20, nil, nil},
		{"20 I have current zero", gen(0, 0, 0, 0), gen(uX, 0, 0, 0), CompareContext{}, ResultTargetFull, Rule20, nil, nil},
		{"30 peer just created", gen(uX|1, UUIDJustCreated, 0, 0), gen(UUIDJustCreated, 0, 0, 0), CompareContext{}, ResultSourceFull, Rule30, nil, nil},
		{"30 peer current zero", gen(uX, 0, 0, 0), gen(0, 0, 0, 0), CompareContext{}, ResultSourceFull, Rule30, nil, nil},
		{"30 needs protocol 91 (my bitmap set)", gen(uX, uY, 0, 0), gen(uX, 0, 0, 0), CompareContext{Protocol: 90}, ResultNeedsProto91, Rule30Proto91, nil, nil},
		{"30 needs protocol 91 (peer bitmap set)", gen(uX, 0, 0, 0), gen(uX, uY, 0, 0), CompareContext{Protocol: 90}, ResultNeedsProto91, Rule30Proto91, nil, nil},
		{"34 was SyncSource, missed resync finished", gen(uX, uY, uA, uB), gen(uX, 0, uY, uA), CompareContext{}, ResultSourceBitmap, Rule34,
			&UUIDs{uX, 0, [2]uint64{uY, uA}}, nil},
		{"34 masks primary bits", gen(uX|1, uY|1, uA, uB), gen(uX, 0, uY, uA|1), CompareContext{}, ResultSourceBitmap, Rule34,
			&UUIDs{uX | 1, 0, [2]uint64{uY | 1, uA}}, nil},
		{"36 was SyncSource, peer failed to write sync UUID", gen(uX, uY, uA, uB), gen(uX, 0, uC, uD), CompareContext{}, ResultSourceBitmap, Rule36, nil, nil},
		{"35 was SyncTarget, peer missed resync finished", gen(uX, 0, uY, uA), gen(uX, uY, uA, uB), CompareContext{}, ResultTargetBitmap, Rule35,
			nil, &UUIDs{uX, 0, [2]uint64{uY, uA}}},
		{"37 was SyncTarget, failed to write sync UUID", gen(uX, 0, uC, uD), gen(uX, uY, uA, uB), CompareContext{}, ResultTargetBitmap, Rule37, nil, nil},
		{"40 equal, no crash", gen(uX, 0, uA, uB), gen(uX, 0, uA, uB), CompareContext{}, ResultNoSync, Rule40NoSync, nil, nil},
		{"40 equal, no crash, primary bits differ", gen(uX|1, 0, uA, uB), gen(uX, 0, uA, uB), primary, ResultNoSync, Rule40NoSync, nil, nil},
		{"40 I was crashed primary", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), gen(uX, 0, 0, 0), CompareContext{}, ResultSourceBitmap, Rule40Self, nil, nil},
		{"40 peer was crashed primary", gen(uX, 0, 0, 0), withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), CompareContext{}, ResultTargetBitmap, Rule40Peer, nil, nil},
		{"40 both crashed, I resolve conflicts", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary),
			CompareContext{ResolveConflicts: true}, ResultTargetBitmap, Rule40Both, nil, nil},
		{"40 both crashed, peer resolves conflicts", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary),
			CompareContext{}, ResultSourceBitmap, Rule40Both, nil, nil},
		{"41 primary present, peer lacks WSAME", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), gen(uX, 0, 0, 0), primary, ResultNeedsWSame, Rule41NoWSame, nil, nil},
		{"41 both primary", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), gen(uX, 0, 0, 0), wsame(CompareContext{SelfPrimary: true, PeerPrimary: true}), ResultSplitBrain, Rule41Both, nil, nil},
		{"41 I am primary", gen(uX, 0, 0, 0), withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), wsame(primary), ResultSourceBitmap, Rule41Self, nil, nil},
		{"41 peer is primary", withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), gen(uX, 0, 0, 0), wsame(peerPrimary), ResultTargetBitmap, Rule41Peer, nil, nil},
		{"50 my current is peer's bitmap", gen(uX, 0, 0, 0), gen(uY|1, uX|1, 0, 0), CompareContext{}, ResultTargetBitmap, Rule50, nil, nil},
		{"51 lost sync UUID (proto 96+)", gen(uX, 0, uA, 0), gen(uY, uX+UUIDNewBMOffset, uX, uB), CompareContext{}, ResultTargetBitmap, Rule51,
			nil, &UUIDs{uY, uX, [2]uint64{uB, uB}}},
		{"51 lost sync UUID (proto 95)", gen(uX, 0, uA, 0), gen(uY, uC, uX, uA), CompareContext{Protocol: 95}, ResultTargetBitmap, Rule51,
			nil, &UUIDs{uY, uX, [2]uint64{uA, uA}}},
		{"51 needs protocol 91", gen(uX, 0, uA, 0), gen(uY, uC, uX, uA), CompareContext{Protocol: 90}, ResultNeedsProto91, Rule51Proto91, nil, nil},
		{"51 not a lost sync UUID falls to 60", gen(uX, 0, uA, 0), gen(uY, uC, uX, uB), CompareContext{}, ResultTargetFull, Rule60, nil, nil},
		{"60 my current in peer's history[1]", gen(uX, 0, 0, 0), gen(uY, uC, uD, uX|1), CompareContext{}, ResultTargetFull, Rule60, nil, nil},
		{"70 my bitmap is peer's current", gen(uY|1, uX|1, 0, 0), gen(uX, 0, 0, 0), CompareContext{}, ResultSourceBitmap, Rule70, nil, nil},
		{"71 lost sync UUID (proto 96+)", gen(uY, uX+UUIDNewBMOffset, uX, uB), gen(uX, 0, uA, 0), CompareContext{}, ResultSourceBitmap, Rule71,
			&UUIDs{uY, uX, [2]uint64{uB, uB}}, nil},
		{"71 lost sync UUID (proto 95)", gen(uY, uC, uX, uA), gen(uX, 0, uA, 0), CompareContext{Protocol: 95}, ResultSourceBitmap, Rule71,
			&UUIDs{uY, uX, [2]uint64{uA, uA}}, nil},
		{"71 needs protocol 91", gen(uY, uC, uX, uA), gen(uX, 0, uA, 0), CompareContext{Protocol: 90}, ResultNeedsProto91, Rule71Proto91, nil, nil},
		{"80 peer's current in my history", gen(uY, uC, uD, uX), gen(uX, 0, 0, 0), CompareContext{}, ResultSourceFull, Rule80, nil, nil},
		{"90 same bitmap UUID: split brain", gen(uY|1, uX|1, uA, 0), gen(uZ, uX, uA, 0), CompareContext{}, ResultSplitBrainAutoRecover, Rule90, nil, nil},
		{"100 shared history", gen(uY, uX, uA, uB), gen(uZ, uC, uD, uA), CompareContext{}, ResultSplitBrain, Rule100, nil, nil},
		{"100 zero history slots count as shared", gen(uY, uX, 0, 0), gen(uZ, uC, 0, 0), CompareContext{}, ResultSplitBrain, Rule100, nil, nil},
		{"unrelated", gen(uY, uX, uA, uB), gen(uZ, uC, uD, uD+2), CompareContext{}, ResultUnrelated, Rule100Unrelated, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rule := Compare(tt.self, tt.peer, tt.ctx)
			if r != tt.want || rule != tt.rule {
				t.Fatalf("uuid_compare()=%d by %s, want %d by %s", int(r), rule, int(tt.want), tt.rule)
			}
			self, peer := tt.self, tt.peer
			c := CompareAndRepair(&self, &peer, tt.ctx)
			if c.Result != r || c.Rule != rule {
				t.Fatalf("CompareAndRepair differs from Compare: %v", c)
			}
			if c.SelfRepaired != (tt.selfAfter != nil) || c.PeerRepaired != (tt.peerAfter != nil) {
				t.Fatalf("repaired self=%v peer=%v", c.SelfRepaired, c.PeerRepaired)
			}
			if tt.selfAfter != nil && self.UUIDs != *tt.selfAfter {
				t.Errorf("self repaired to %v, want %v", self.UUIDs, *tt.selfAfter)
			}
			if tt.peerAfter != nil && peer.UUIDs != *tt.peerAfter {
				t.Errorf("peer repaired to %v, want %v", peer.UUIDs, *tt.peerAfter)
			}
			if tt.selfAfter == nil && self != tt.self || tt.peerAfter == nil && peer != tt.peer {
				t.Errorf("UUIDs changed without a repair")
			}
		})
	}
}

// Rules that are mirror images of each other give opposite answers when the
// two sides run the comparison.
func TestCompareMirrors(t *testing.T) {
	pairs := []struct{ a, b Gen }{
		{gen(uX, uY, uA, uB), gen(uX, 0, uY, uA)},                               // 34/35
		{gen(uX, uY, uA, uB), gen(uX, 0, uC, uD)},                               // 36/37
		{gen(uX, 0, 0, 0), gen(uY, uX, 0, 0)},                                   // 50/70
		{gen(uX, 0, uA, 0), gen(uY, uX+UUIDNewBMOffset, uX, uB)},                // 51/71
		{gen(uX, 0, 0, 0), gen(uY, uC, uD, uX)},                                 // 60/80
		{gen(uX, 0, 0, 0), gen(UUIDJustCreated, 0, 0, 0)},                       // 30/20
		{withFlags(gen(uX, 0, 0, 0), UUIDFlagCrashedPrimary), gen(uX, 0, 0, 0)}, // 40
	}
	for i, p := range pairs {
		ra, rulea := Compare(p.a, p.b, CompareContext{ResolveConflicts: true})
		rb, ruleb := Compare(p.b, p.a, CompareContext{})
		if ra != -rb || ra == 0 {
			t.Errorf("pair %d: %d by %s vs %d by %s", i, int(ra), rulea, int(rb), ruleb)
		}
	}
}

func TestResultNeedsProtocol(t *testing.T) {
	if v, f, ok := ResultNeedsWSame.NeedsProtocol(); !ok || v != 101 || f != FeatureWSame {
		t.Errorf("WSAME: %d %x %v", v, f, ok)
	}
	if v, f, ok := ResultNeedsProto91.NeedsProtocol(); !ok || v != 91 || f != 0 {
		t.Errorf("91: %d %x %v", v, f, ok)
	}
	if _, _, ok := ResultUnrelated.NeedsProtocol(); ok {
		t.Error("unrelated needs a protocol?")
	}
	for _, r := range []Result{100, 2, 1, 0, -1, -2, -100, -1000, -1091, ResultNeedsWSame, 7} {
		if r.String() == "" {
			t.Errorf("%d: empty string", int(r))
		}
	}
	if s := Rule40NoSync.String(); s != "rule 40: current UUIDs equal, no crashed primary: no sync" {
		t.Errorf("rule string %q", s)
	}
}
