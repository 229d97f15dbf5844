package meta

import (
	"fmt"
	"strings"
)

// DiskState is a disk state, numbered as DRBD's enum drbd_disk_state (and
// as drbdd/replication.DiskState, so converting is a plain conversion).
// It is repeated here so that this package stays a leaf.
type DiskState uint8

// Disk states, from worst to best.
const (
	DiskDiskless DiskState = iota
	DiskAttaching
	DiskFailed
	DiskNegotiating
	DiskInconsistent
	DiskOutdated
	DiskUnknown
	DiskConsistent
	DiskUpToDate
)

var diskStateNames = [...]string{
	"Diskless", "Attaching", "Failed", "Negotiating", "Inconsistent",
	"Outdated", "DUnknown", "Consistent", "UpToDate",
}

// String returns DRBD's name for the disk state.
func (d DiskState) String() string {
	if int(d) < len(diskStateNames) {
		return diskStateNames[d]
	}
	return fmt.Sprintf("DiskState(%d)", d)
}

// Policy is an after-split-brain or rr-conflict policy, numbered as DRBD's
// enum drbd_after_sb_p.
type Policy uint8

// Policies. Which ones are valid depends on the option: after-sb-0pri takes
// PolicyDisconnect, PolicyDiscardYoungerPrimary, PolicyDiscardOlderPrimary,
// PolicyDiscardZeroChanges, PolicyDiscardLeastChanges, PolicyDiscardLocal
// and PolicyDiscardRemote; after-sb-1pri takes PolicyDisconnect,
// PolicyConsensus, PolicyViolently, PolicyDiscardSecondary and
// PolicyCallHelper; after-sb-2pri takes PolicyDisconnect, PolicyViolently
// and PolicyCallHelper; rr-conflict takes PolicyDisconnect,
// PolicyViolently and PolicyCallHelper.
const (
	PolicyDisconnect Policy = iota
	PolicyDiscardYoungerPrimary
	PolicyDiscardOlderPrimary
	PolicyDiscardZeroChanges
	PolicyDiscardLeastChanges
	PolicyDiscardLocal
	PolicyDiscardRemote
	PolicyConsensus
	PolicyDiscardSecondary
	PolicyCallHelper
	PolicyViolently
)

var policyNames = [...]string{
	"disconnect", "discard-younger-primary", "discard-older-primary",
	"discard-zero-changes", "discard-least-changes", "discard-local",
	"discard-remote", "consensus", "discard-secondary",
	"call-pri-lost-after-sb", "violently-as0p",
}

// String returns the policy's drbd.conf name. PolicyCallHelper and
// PolicyViolently are named as for the after-sb options; rr-conflict
// calls them "call-pri-lost" and "violently".
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return fmt.Sprintf("Policy(%d)", p)
}

// ParsePolicy parses a policy by its drbd.conf name. The rr-conflict
// spellings "call-pri-lost" and "violently" are accepted too.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "call-pri-lost":
		return PolicyCallHelper, nil
	case "violently":
		return PolicyViolently, nil
	}
	for i, n := range policyNames {
		if n == s {
			return Policy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown split-brain policy %q", s)
}

// PeerEquivalent converts a policy received from the peer to this node's
// point of view (convert_after_sb): discard-local there is discard-remote
// here and vice versa. DRBD refuses to connect unless, after conversion,
// both sides configured the same policies.
func PeerEquivalent(p Policy) Policy {
	switch p {
	case PolicyDiscardRemote:
		return PolicyDiscardLocal
	case PolicyDiscardLocal:
		return PolicyDiscardRemote
	}
	return p
}

// HandshakeInput is everything drbd_sync_handshake reads.
type HandshakeInput struct {
	// Self and Peer are the two sides' P_UUIDS contents. Self.Flags must
	// include UUIDFlagCrashedPrimary when this node is a crashed primary.
	Self, Peer Gen
	// SelfPrimary and PeerPrimary are the current roles.
	SelfPrimary, PeerPrimary bool
	// SelfDisk is the local disk state. When it is DiskNegotiating,
	// SelfDiskNegotiated is the state the disk will have once attached
	// (DRBD's new_state_tmp.disk) and is used in its place.
	SelfDisk, SelfDiskNegotiated DiskState
	// PeerDisk is the peer's disk state from its P_STATE.
	PeerDisk DiskState
	// ResolveConflicts is DRBD's RESOLVE_CONFLICTS flag, set on exactly one
	// of the two nodes.
	ResolveConflicts bool
	// Protocol and Features are the agreed protocol version (0 meaning
	// ProtocolVersionMax) and feature flags.
	Protocol int
	Features uint32
	// AfterSB0Pri, AfterSB1Pri and AfterSB2Pri are the after-sb-0pri,
	// after-sb-1pri and after-sb-2pri policies; RRConflict is rr-conflict.
	AfterSB0Pri, AfterSB1Pri, AfterSB2Pri, RRConflict Policy
	// AlwaysASBP applies the after-sb policies even to unresolvable split
	// brains (rule 100), with a full sync (net option always-asbp).
	AlwaysASBP bool
	// DiscardMyData is the local discard-my-data flag; the peer's is
	// UUIDFlagDiscardMyData in Peer.Flags.
	DiscardMyData bool
	// DryRun is set for a tentative connect (--dry-run / tentative): the
	// decision is computed and logged but the connection is dropped.
	DryRun bool
	// TryDemote is called when call-pri-lost-after-sb wants this Primary
	// to give up its role to become SyncTarget. It reports whether the
	// demotion succeeded. nil means it cannot be done.
	TryDemote func() bool
}

// Action is what the handshake decides the connection does next.
type Action uint8

// Handshake actions.
const (
	// ActionDisconnect drops the connection (DRBD returns C_MASK).
	ActionDisconnect Action = iota
	// ActionConnected: no resync, go straight to Connected.
	ActionConnected
	// ActionSyncSource: exchange bitmaps as the future SyncSource (WFBitMapS).
	ActionSyncSource
	// ActionSyncTarget: exchange bitmaps as the future SyncTarget (WFBitMapT).
	ActionSyncTarget
)

var actionNames = [...]string{"Disconnect", "Connected", "WFBitMapS", "WFBitMapT"}

// String returns the connection state the action leads to.
func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", a)
}

// Helper names DRBD calls (the handlers section of drbd.conf).
const (
	HelperInitialSplitBrain = "initial-split-brain"
	HelperSplitBrain        = "split-brain"
	HelperPriLost           = "pri-lost"
	HelperPriLostAfterSB    = "pri-lost-after-sb"
)

// Decision is the outcome of SyncHandshake.
type Decision struct {
	Action Action
	// Full asks for a full sync: set every bitmap bit and write the bitmap
	// before the bitmap exchange.
	Full bool
	// Compare and Rule are the raw UUID comparison, to be logged as
	// "uuid_compare()=%d by rule %d".
	Compare Result
	Rule    Rule
	// Result is the final decision in DRBD's numbers (hg): > 0 SyncSource,
	// < 0 SyncTarget, magnitude 2 for a full sync, 0 for no resync, ±100
	// or less for failures.
	Result Result
	// Reason is DRBD's message for a disconnect.
	Reason string
	// Log holds DRBD's informational and warning lines, in order.
	Log []string
	// Helpers lists the handlers DRBD would call, in order.
	Helpers []string
	// Demoted reports that TryDemote was called and succeeded.
	Demoted bool
	// Self and Peer are the UUIDs after the comparison's repairs.
	// SelfRepaired tells the caller to persist Self.
	Self, Peer                 UUIDs
	SelfRepaired, PeerRepaired bool
}

// String summarizes the decision for logs.
func (d Decision) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (hg=%d, uuid_compare()=%d by %s)", d.Action, int(d.Result), int(d.Compare), d.Rule)
	if d.Full {
		b.WriteString(", full sync")
	}
	if d.Reason != "" {
		b.WriteString(": " + d.Reason)
	}
	return b.String()
}

type handshake struct {
	in  *HandshakeInput
	d   *Decision
	pri bool // this node is (still) Primary
}

func (h *handshake) logf(format string, args ...any) {
	h.d.Log = append(h.d.Log, fmt.Sprintf(format, args...))
}

// recover0p is drbd_asb_recover_0p: pick a side with no remaining primary.
func (h *handshake) recover0p() Result {
	in := h.in
	self := in.Self.Bitmap & UUIDPrimaryBit
	peer := in.Peer.Bitmap & UUIDPrimaryBit
	chSelf, chPeer := in.Self.Bits, in.Peer.Bits
	tieBreak := func() Result {
		if in.ResolveConflicts {
			return ResultTargetBitmap
		}
		return ResultSourceBitmap
	}
	p := in.AfterSB0Pri
	switch p {
	case PolicyConsensus, PolicyDiscardSecondary, PolicyCallHelper, PolicyViolently:
		h.logf("Configuration error.")
		return ResultSplitBrain
	case PolicyDisconnect:
		return ResultSplitBrain
	case PolicyDiscardLocal:
		return ResultTargetBitmap
	case PolicyDiscardRemote:
		return ResultSourceBitmap
	}
	// The remaining policies fall through into each other as in DRBD:
	// younger-primary -> older-primary -> zero-changes -> least-changes.
	if p == PolicyDiscardYoungerPrimary {
		if self == 0 && peer == 1 {
			return ResultTargetBitmap
		}
		if self == 1 && peer == 0 {
			return ResultSourceBitmap
		}
	}
	if p == PolicyDiscardYoungerPrimary || p == PolicyDiscardOlderPrimary {
		if self == 0 && peer == 1 {
			return ResultSourceBitmap
		}
		if self == 1 && peer == 0 {
			return ResultTargetBitmap
		}
		h.logf("Discard younger/older primary did not find a decision\nUsing discard-least-changes instead")
	}
	if p != PolicyDiscardLeastChanges {
		if chPeer == 0 && chSelf == 0 {
			return tieBreak()
		}
		if chPeer == 0 {
			return ResultSourceBitmap
		}
		if chSelf == 0 {
			return ResultTargetBitmap
		}
		if p == PolicyDiscardZeroChanges {
			return ResultSplitBrain
		}
	}
	switch {
	case chSelf < chPeer:
		return ResultTargetBitmap
	case chSelf > chPeer:
		return ResultSourceBitmap
	}
	return tieBreak()
}

// demote runs TryDemote for call-pri-lost-after-sb.
func (h *handshake) demote() bool {
	if h.in.TryDemote != nil && h.in.TryDemote() {
		h.d.Demoted = true
		h.pri = false
		h.logf("Successfully gave up primary role.")
		return true
	}
	h.d.Helpers = append(h.d.Helpers, HelperPriLostAfterSB)
	return false
}

// recover1p is drbd_asb_recover_1p: one node is Primary.
func (h *handshake) recover1p() Result {
	switch h.in.AfterSB1Pri {
	case PolicyDiscardYoungerPrimary, PolicyDiscardOlderPrimary, PolicyDiscardLeastChanges,
		PolicyDiscardLocal, PolicyDiscardRemote, PolicyDiscardZeroChanges:
		h.logf("Configuration error.")
	case PolicyDisconnect:
	case PolicyConsensus:
		hg := h.recover0p()
		if hg == ResultTargetBitmap && !h.pri {
			return hg
		}
		if hg == ResultSourceBitmap && h.pri {
			return hg
		}
	case PolicyViolently:
		return h.recover0p()
	case PolicyDiscardSecondary:
		if h.pri {
			return ResultSourceBitmap
		}
		return ResultTargetBitmap
	case PolicyCallHelper:
		hg := h.recover0p()
		if hg == ResultTargetBitmap && h.pri {
			if h.demote() {
				return hg
			}
			return ResultSplitBrain
		}
		return hg
	}
	return ResultSplitBrain
}

// recover2p is drbd_asb_recover_2p: both nodes are Primary.
func (h *handshake) recover2p() Result {
	switch h.in.AfterSB2Pri {
	case PolicyViolently:
		return h.recover0p()
	case PolicyDisconnect:
	case PolicyCallHelper:
		hg := h.recover0p()
		if hg == ResultTargetBitmap {
			if h.demote() {
				return hg
			}
			return ResultSplitBrain
		}
		return hg
	default:
		h.logf("Configuration error.")
	}
	return ResultSplitBrain
}

func abs(r Result) Result {
	if r < 0 {
		return -r
	}
	return r
}

// SyncHandshake is DRBD 8.4's drbd_sync_handshake as a pure decision: it
// compares the UUIDs, adjusts for disk states, applies the after-sb
// policies to split brains, honours discard-my-data, and refuses to make an
// Inconsistent node SyncSource or (per rr-conflict) a Primary SyncTarget.
// The only side effect it can cause is calling in.TryDemote.
func SyncHandshake(in HandshakeInput) Decision {
	self, peer := in.Self, in.Peer
	c := CompareAndRepair(&self, &peer, CompareContext{
		SelfPrimary:      in.SelfPrimary,
		PeerPrimary:      in.PeerPrimary,
		ResolveConflicts: in.ResolveConflicts,
		Protocol:         in.Protocol,
		Features:         in.Features,
	})
	d := Decision{
		Compare:      c.Result,
		Rule:         c.Rule,
		Self:         self.UUIDs,
		Peer:         peer.UUIDs,
		SelfRepaired: c.SelfRepaired,
		PeerRepaired: c.PeerRepaired,
	}
	h := &handshake{in: &in, d: &d, pri: in.SelfPrimary}
	// The policies see the repaired UUIDs, as DRBD's do.
	in.Self.UUIDs, in.Peer.UUIDs = self.UUIDs, peer.UUIDs
	h.logf("uuid_compare()=%d by rule %d", int(c.Result), c.Rule.Nr)

	fail := func(reason string) Decision {
		d.Action = ActionDisconnect
		d.Reason = reason
		return d
	}
	hg := c.Result
	d.Result = hg
	if hg == ResultUnrelated {
		return fail("Unrelated data, aborting!")
	}
	if v, f, ok := hg.NeedsProtocol(); ok {
		if f != 0 {
			return fail(fmt.Sprintf("To resolve this both sides have to support at least protocol %d and feature flags 0x%x", v, f))
		}
		return fail(fmt.Sprintf("To resolve this both sides have to support at least protocol %d", v))
	}

	mydisk := in.SelfDisk
	if mydisk == DiskNegotiating {
		mydisk = in.SelfDiskNegotiated
	}
	if (mydisk == DiskInconsistent && in.PeerDisk > DiskInconsistent) ||
		(in.PeerDisk == DiskInconsistent && mydisk > DiskInconsistent) {
		full := hg == ResultSplitBrain || abs(hg) == 2
		hg = ResultTargetBitmap
		if mydisk > DiskInconsistent {
			hg = ResultSourceBitmap
		}
		if full {
			hg *= 2
		}
		if hg > 0 {
			h.logf("Becoming sync source due to disk states.")
		} else {
			h.logf("Becoming sync target due to disk states.")
		}
	}

	if abs(hg) == 100 {
		d.Helpers = append(d.Helpers, HelperInitialSplitBrain)
	}

	if hg == ResultSplitBrainAutoRecover || (hg == ResultSplitBrain && in.AlwaysASBP) {
		pcount := 0
		if in.SelfPrimary {
			pcount++
		}
		if in.PeerPrimary {
			pcount++
		}
		forced := hg == ResultSplitBrain
		switch pcount {
		case 0:
			hg = h.recover0p()
		case 1:
			hg = h.recover1p()
		case 2:
			hg = h.recover2p()
		}
		if abs(hg) < 100 {
			from := "this"
			if hg < 0 {
				from = "peer"
			}
			h.logf("Split-Brain detected, %d primaries, automatically solved. Sync from %s node", pcount, from)
			if forced {
				h.logf("Doing a full sync, since UUIDs where ambiguous.")
				hg *= 2
			}
		}
	}

	if hg == ResultSplitBrain {
		peerDiscard := in.Peer.Flags&UUIDFlagDiscardMyData != 0
		if in.DiscardMyData && !peerDiscard {
			hg = ResultTargetBitmap
		}
		if !in.DiscardMyData && peerDiscard {
			hg = ResultSourceBitmap
		}
		if abs(hg) < 100 {
			from := "this"
			if hg < 0 {
				from = "peer"
			}
			h.logf("Split-Brain detected, manually solved. Sync from %s node", from)
		}
	}
	d.Result = hg

	if hg == ResultSplitBrain || hg == ResultSplitBrainAutoRecover {
		d.Helpers = append(d.Helpers, HelperSplitBrain)
		return fail("Split-Brain detected but unresolved, dropping connection!")
	}

	if hg > 0 && mydisk <= DiskInconsistent {
		return fail("I shall become SyncSource, but I am inconsistent!")
	}

	// By intention DRBD uses the current disk state here, not mydisk.
	if hg < 0 && h.pri && in.SelfDisk >= DiskConsistent {
		switch in.RRConflict {
		case PolicyCallHelper:
			d.Helpers = append(d.Helpers, HelperPriLost)
			return fail("I shall become SyncTarget, but I am primary!")
		case PolicyDisconnect:
			return fail("I shall become SyncTarget, but I am primary!")
		case PolicyViolently:
			h.logf("Becoming SyncTarget, violating the stable-data assumption")
		}
	}

	if in.DryRun {
		if hg == 0 {
			return fail("dry-run connect: No resync, would become Connected immediately.")
		}
		state, kind := "SyncSource", "bit-map based"
		if hg < 0 {
			state = "SyncTarget"
		}
		if abs(hg) >= 2 {
			kind = "full"
		}
		return fail(fmt.Sprintf("dry-run connect: Would become %s, doing a %s resync.", state, kind))
	}

	if abs(hg) >= 2 {
		d.Full = true
		h.logf("Writing the whole bitmap, full sync required after drbd_sync_handshake.")
	}
	switch {
	case hg > 0:
		d.Action = ActionSyncSource
	case hg < 0:
		d.Action = ActionSyncTarget
	default:
		d.Action = ActionConnected
		if in.Self.Bits != 0 {
			h.logf("No resync, but %d bits in bitmap!", in.Self.Bits)
		}
	}
	return d
}
