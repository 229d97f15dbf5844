package meta

import "fmt"

// Result is the outcome of the UUID comparison, with DRBD's numbers
// (the return value of drbd_uuid_compare), so that logs read the same:
// "uuid_compare()=%d by rule %d".
type Result int

// Comparison results.
const (
	// ResultSplitBrainAutoRecover: both sides changed the data since they
	// last shared a generation, but they share the bitmap UUID, so the
	// after-sb policies may pick a winner.
	ResultSplitBrainAutoRecover Result = 100
	// ResultSourceFull: become SyncSource and sync everything.
	ResultSourceFull Result = 2
	// ResultSourceBitmap: become SyncSource using the bitmap.
	ResultSourceBitmap Result = 1
	// ResultNoSync: the data is the same generation; no resync.
	ResultNoSync Result = 0
	// ResultTargetBitmap: become SyncTarget using the bitmap.
	ResultTargetBitmap Result = -1
	// ResultTargetFull: become SyncTarget and sync everything.
	ResultTargetFull Result = -2
	// ResultSplitBrain: split brain that the after-sb policies do not
	// resolve (only always-asbp or discard-my-data can).
	ResultSplitBrain Result = -100
	// ResultUnrelated: the two sides share no UUID at all.
	ResultUnrelated Result = -1000
	// ResultNeedsProto91: resolving this needs protocol version 91.
	ResultNeedsProto91 Result = -1091
)

// FeatureWSame is DRBD's DRBD_FF_WSAME feature flag, which DRBD also uses
// to mark peers new enough for rule 41.
const FeatureWSame uint32 = 4

// ProtocolVersionMax is the highest DRBD protocol version (PRO_VERSION_MAX).
const ProtocolVersionMax = 101

// ResultNeedsWSame is the result of rule 41 with a peer that lacks
// FeatureWSame: -(0x10000 | PRO_VERSION_MAX | (DRBD_FF_WSAME << 8)).
const ResultNeedsWSame = Result(-(0x10000 | ProtocolVersionMax | int(FeatureWSame)<<8))

// NeedsProtocol reports whether r says the connection needs a newer
// protocol version or feature set, and which.
func (r Result) NeedsProtocol() (version int, features uint32, ok bool) {
	switch {
	case r < -0x10000:
		v := -int(r)
		return v & 0xff, uint32(v>>8) & 0xff, true
	case r < -1000:
		return -int(r) - 1000, 0, true
	}
	return 0, 0, false
}

// String describes the result the way DRBD's comment table does.
func (r Result) String() string {
	switch r {
	case ResultSplitBrainAutoRecover:
		return "split brain, try auto recover"
	case ResultSourceFull:
		return "SyncSource, set bitmap (full sync)"
	case ResultSourceBitmap:
		return "SyncSource, use bitmap"
	case ResultNoSync:
		return "no sync"
	case ResultTargetBitmap:
		return "SyncTarget, use bitmap"
	case ResultTargetFull:
		return "SyncTarget, set bitmap (full sync)"
	case ResultSplitBrain:
		return "split brain, disconnect"
	case ResultUnrelated:
		return "unrelated data"
	}
	if v, f, ok := r.NeedsProtocol(); ok {
		if f != 0 {
			return fmt.Sprintf("requires protocol %d and feature flags 0x%x", v, f)
		}
		return fmt.Sprintf("requires protocol %d", v)
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// Rule names the branch of drbd_uuid_compare that produced a Result. Nr is
// DRBD's rule number (the value of *rule_nr when the function returned);
// some numbers cover several branches, which Desc tells apart.
type Rule struct {
	Nr   int
	Desc string
}

// String formats the rule as "rule 40: ...".
func (r Rule) String() string { return fmt.Sprintf("rule %d: %s", r.Nr, r.Desc) }

// The rules of drbd_uuid_compare, in evaluation order. "Self" is this node,
// "peer" the other; all UUIDs are compared with the primary bit masked.
var (
	Rule10 = Rule{10, "both current UUIDs are just-created: no sync"}
	Rule20 = Rule{20, "my current UUID is just-created or zero, the peer's is not: full sync as SyncTarget"}
	Rule30 = Rule{30, "the peer's current UUID is just-created or zero, mine is not: full sync as SyncSource"}
	// Rule30Proto91 is reported when equal current UUIDs with exactly one
	// bitmap UUID set need protocol 91; DRBD's rule number is still 30.
	Rule30Proto91 = Rule{30, "current UUIDs equal, one bitmap UUID zero: needs protocol 91"}
	Rule34        = Rule{34, "was SyncSource, missed the resync-finished event, corrected myself: I am SyncSource"}
	Rule35        = Rule{35, "was SyncTarget, peer missed the resync-finished event, corrected peer: I am SyncTarget"}
	Rule36        = Rule{36, "was SyncSource, peer failed to write the sync UUID: I am SyncSource"}
	Rule37        = Rule{37, "was SyncTarget, failed to write the sync UUID: I am SyncTarget"}
	Rule40NoSync  = Rule{40, "current UUIDs equal, no crashed primary: no sync"}
	Rule40Self    = Rule{40, "current UUIDs equal, I was the crashed primary: I am SyncSource"}
	Rule40Peer    = Rule{40, "current UUIDs equal, the peer was the crashed primary: I am SyncTarget"}
	Rule40Both    = Rule{40, "current UUIDs equal, both were crashed primaries: resolve-conflicts decides"}
	Rule41NoWSame = Rule{41, "current UUIDs equal, crashed primary and a Primary present: peer too old"}
	Rule41Both    = Rule{41, "current UUIDs equal, crashed primary and both are Primary: cannot resolve"}
	Rule41Self    = Rule{41, "current UUIDs equal, crashed primary, I am Primary: I am SyncSource"}
	Rule41Peer    = Rule{41, "current UUIDs equal, crashed primary, the peer is Primary: I am SyncTarget"}
	Rule50        = Rule{50, "my current UUID equals the peer's bitmap UUID: I am SyncTarget"}
	Rule51        = Rule{51, "my current UUID equals the peer's history[0]: last sync UUID lost, corrected peer: I am SyncTarget"}
	Rule51Proto91 = Rule{51, "my current UUID equals the peer's history[0]: needs protocol 91"}
	Rule60        = Rule{60, "my current UUID is in the peer's history: full sync as SyncTarget"}
	Rule70        = Rule{70, "my bitmap UUID equals the peer's current UUID: I am SyncSource"}
	Rule71        = Rule{71, "my history[0] equals the peer's current UUID: last sync UUID lost, corrected myself: I am SyncSource"}
	Rule71Proto91 = Rule{71, "my history[0] equals the peer's current UUID: needs protocol 91"}
	Rule80        = Rule{80, "the peer's current UUID is in my history: full sync as SyncSource"}
	Rule90        = Rule{90, "bitmap UUIDs equal and not zero: split brain, try the after-sb policies"}
	Rule100       = Rule{100, "a history UUID is shared: split brain, disconnect"}
	// Rule100Unrelated is the fall-through: DRBD's rule number stays 100.
	Rule100Unrelated = Rule{100, "no UUID shared at all: unrelated data"}
)

// CompareContext carries what drbd_uuid_compare reads besides the UUIDs.
type CompareContext struct {
	// SelfPrimary and PeerPrimary are the current roles.
	SelfPrimary, PeerPrimary bool
	// ResolveConflicts is DRBD's RESOLVE_CONFLICTS connection flag. It must
	// be set on exactly one of the two nodes; it breaks ties.
	ResolveConflicts bool
	// Protocol is the agreed protocol version; 0 means ProtocolVersionMax.
	Protocol int
	// Features are the agreed feature flags (DRBD_FF_*).
	Features uint32
}

func (c CompareContext) protocol() int {
	if c.Protocol == 0 {
		return ProtocolVersionMax
	}
	return c.Protocol
}

// Comparison is the full outcome of CompareAndRepair.
type Comparison struct {
	Result Result
	Rule   Rule
	// SelfRepaired and PeerRepaired report that rule 34, 35, 51 or 71
	// rewrote the local or the peer's UUIDs (DRBD logs "corrected
	// myself"/"corrected peer"). The caller must persist repaired local
	// UUIDs.
	SelfRepaired, PeerRepaired bool
}

const noPrimary = ^UUIDPrimaryBit

// Compare runs DRBD 8.4's drbd_uuid_compare on copies of the UUIDs and
// returns the result and the rule that decided it. See CompareAndRepair
// for the variant that also applies the rules' UUID corrections.
func Compare(self, peer Gen, ctx CompareContext) (Result, Rule) {
	c := CompareAndRepair(&self, &peer, ctx)
	return c.Result, c.Rule
}

// CompareAndRepair is DRBD 8.4's drbd_uuid_compare. Like DRBD, some rules
// repair the UUIDs of one side when they detect that a resync-finished or
// sync-UUID event was lost (rules 34, 35, 51 and 71); those repairs are
// applied to *self and *peer and reported in the Comparison.
func CompareAndRepair(self, peer *Gen, ctx CompareContext) Comparison {
	s := self.Current & noPrimary
	p := peer.Current & noPrimary
	done := func(r Result, rule Rule) Comparison { return Comparison{Result: r, Rule: rule} }

	if s == UUIDJustCreated && p == UUIDJustCreated {
		return done(ResultNoSync, Rule10)
	}
	if (s == UUIDJustCreated || s == 0) && p != UUIDJustCreated {
		return done(ResultTargetFull, Rule20)
	}
	if s != UUIDJustCreated && (p == UUIDJustCreated || p == 0) {
		return done(ResultSourceFull, Rule30)
	}

	if s == p {
		if peer.Bitmap == 0 && self.Bitmap != 0 {
			if ctx.protocol() < 91 {
				return done(ResultNeedsProto91, Rule30Proto91)
			}
			if self.Bitmap&noPrimary == peer.History[0]&noPrimary &&
				self.History[0]&noPrimary == peer.History[1]&noPrimary {
				// Was SyncSource, missed the resync finished event.
				self.moveHistory()
				self.History[0] = self.Bitmap
				self.Bitmap = 0
				c := done(ResultSourceBitmap, Rule34)
				c.SelfRepaired = true
				return c
			}
			return done(ResultSourceBitmap, Rule36)
		}
		if self.Bitmap == 0 && peer.Bitmap != 0 {
			if ctx.protocol() < 91 {
				return done(ResultNeedsProto91, Rule30Proto91)
			}
			if self.History[0]&noPrimary == peer.Bitmap&noPrimary &&
				self.History[1]&noPrimary == peer.History[0]&noPrimary {
				// Was SyncTarget, the peer missed the resync finished event.
				peer.History[1] = peer.History[0]
				peer.History[0] = peer.Bitmap
				peer.Bitmap = 0
				c := done(ResultTargetBitmap, Rule35)
				c.PeerRepaired = true
				return c
			}
			return done(ResultTargetBitmap, Rule37)
		}

		// Common power failure: roles at crash time. Bit 0: I was a
		// crashed primary; bit 1: the peer was.
		rct := 0
		if self.Flags&UUIDFlagCrashedPrimary != 0 {
			rct |= 1
		}
		if peer.Flags&UUIDFlagCrashedPrimary != 0 {
			rct |= 2
		}
		if rct == 0 {
			return done(ResultNoSync, Rule40NoSync)
		}
		if ctx.SelfPrimary || ctx.PeerPrimary {
			if ctx.Features&FeatureWSame == 0 {
				return done(ResultNeedsWSame, Rule41NoWSame)
			}
			if ctx.SelfPrimary && ctx.PeerPrimary {
				return done(ResultSplitBrain, Rule41Both)
			}
			if ctx.SelfPrimary {
				return done(ResultSourceBitmap, Rule41Self)
			}
			return done(ResultTargetBitmap, Rule41Peer)
		}
		switch rct {
		case 1:
			return done(ResultSourceBitmap, Rule40Self)
		case 2:
			return done(ResultTargetBitmap, Rule40Peer)
		default:
			if ctx.ResolveConflicts {
				return done(ResultTargetBitmap, Rule40Both)
			}
			return done(ResultSourceBitmap, Rule40Both)
		}
	}

	if s == peer.Bitmap&noPrimary {
		return done(ResultTargetBitmap, Rule50)
	}

	if s == peer.History[0]&noPrimary {
		var lost bool
		if ctx.protocol() < 96 {
			lost = self.History[0]&noPrimary == peer.History[1]&noPrimary
		} else {
			lost = s+UUIDNewBMOffset == peer.Bitmap&noPrimary
		}
		if lost {
			// The last P_SYNC_UUID did not get through: undo the peer's
			// sync-source UUID changes.
			if ctx.protocol() < 91 {
				return done(ResultNeedsProto91, Rule51Proto91)
			}
			peer.Bitmap = peer.History[0]
			peer.History[0] = peer.History[1]
			c := done(ResultTargetBitmap, Rule51)
			c.PeerRepaired = true
			return c
		}
	}

	for _, h := range peer.History {
		if s == h&noPrimary {
			return done(ResultTargetFull, Rule60)
		}
	}

	if self.Bitmap&noPrimary == p {
		return done(ResultSourceBitmap, Rule70)
	}

	if sh := self.History[0] & noPrimary; sh == p {
		var lost bool
		if ctx.protocol() < 96 {
			lost = self.History[1]&noPrimary == peer.History[0]&noPrimary
		} else {
			lost = sh+UUIDNewBMOffset == self.Bitmap&noPrimary
		}
		if lost {
			// The last P_SYNC_UUID did not get through: undo our own
			// sync-source UUID changes.
			if ctx.protocol() < 91 {
				return done(ResultNeedsProto91, Rule71Proto91)
			}
			self.Bitmap = self.History[0]
			self.History[0] = self.History[1]
			c := done(ResultSourceBitmap, Rule71)
			c.SelfRepaired = true
			return c
		}
	}

	for _, h := range self.History {
		if p == h&noPrimary {
			return done(ResultSourceFull, Rule80)
		}
	}

	if sb := self.Bitmap & noPrimary; sb == peer.Bitmap&noPrimary && sb != 0 {
		return done(ResultSplitBrainAutoRecover, Rule90)
	}

	// DRBD compares every history slot with every history slot, zeros
	// included: two nodes that both still have an empty history slot are
	// judged split brain, not unrelated.
	for _, sh := range self.History {
		for _, ph := range peer.History {
			if sh&noPrimary == ph&noPrimary {
				return done(ResultSplitBrain, Rule100)
			}
		}
	}
	return done(ResultUnrelated, Rule100Unrelated)
}
