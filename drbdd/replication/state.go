// Package replication is the pure core of drbdd's state machine: roles,
// connection and disk states, and the rules that say which state changes
// are allowed, with DRBD 8.4's reasons when they are not.
//
// Nothing here touches sockets, clocks or disks. The engine asks Check
// before it commits a change and logs Diff afterwards, so every rule can be
// tested exhaustively with plain values.
package replication

import (
	"fmt"
	"strings"

	"drbdd/protocol"
)

// Role, ConnState and DiskState are the wire protocol's enums (DRBD's
// numbers and names), so that P_STATE packs without conversion; the short
// constant names below are for readable rules.
type (
	Role      = protocol.Role
	ConnState = protocol.ConnState
	DiskState = protocol.DiskState
)

// Roles.
const (
	RoleUnknown = protocol.RoleUnknown
	Primary     = protocol.RolePrimary
	Secondary   = protocol.RoleSecondary
)

// Connection states. Everything below Connected means "no usable peer";
// everything from Connected up means the peer is there.
const (
	StandAlone     = protocol.ConnStandAlone
	Disconnecting  = protocol.ConnDisconnecting
	Unconnected    = protocol.ConnUnconnected
	Timeout        = protocol.ConnTimeout
	BrokenPipe     = protocol.ConnBrokenPipe
	NetworkFailure = protocol.ConnNetworkFailure
	ProtocolError  = protocol.ConnProtocolError
	TearDown       = protocol.ConnTearDown
	WFConnection   = protocol.ConnWFConnection
	WFReportParams = protocol.ConnWFReportParams
	Connected      = protocol.ConnConnected
	StartingSyncS  = protocol.ConnStartingSyncS
	StartingSyncT  = protocol.ConnStartingSyncT
	WFBitMapS      = protocol.ConnWFBitMapS
	WFBitMapT      = protocol.ConnWFBitMapT
	WFSyncUUID     = protocol.ConnWFSyncUUID
	SyncSource     = protocol.ConnSyncSource
	SyncTarget     = protocol.ConnSyncTarget
	VerifyS        = protocol.ConnVerifyS
	VerifyT        = protocol.ConnVerifyT
	PausedSyncS    = protocol.ConnPausedSyncS
	PausedSyncT    = protocol.ConnPausedSyncT
	Ahead          = protocol.ConnAhead
	Behind         = protocol.ConnBehind
)

// Disk states, from worst to best.
const (
	Diskless     = protocol.DiskDiskless
	Attaching    = protocol.DiskAttaching
	Failed       = protocol.DiskFailed
	Negotiating  = protocol.DiskNegotiating
	Inconsistent = protocol.DiskInconsistent
	Outdated     = protocol.DiskOutdated
	DUnknown     = protocol.DiskUnknown
	Consistent   = protocol.DiskConsistent
	UpToDate     = protocol.DiskUpToDate
)

// State is the complete state of one device as DRBD tracks it in union
// drbd_state: our role and disk, the peer's role and disk as we last heard
// them, the connection, and the suspend/sync-inhibit flags.
type State struct {
	Role    Role
	Peer    Role
	Conn    ConnState
	Disk    DiskState
	PDsk    DiskState
	Susp    bool // I/O suspended by the user
	AftrIsp bool // resync paused: waiting for a sync-after dependency
	PeerIsp bool // resync paused by the peer
	UserIsp bool // resync paused by the user (pause-sync)
}

// Initial is the state of a freshly created device: Secondary, Diskless,
// StandAlone, which /proc/drbd shows as "Unconfigured".
func Initial() State {
	return State{Role: Secondary, Peer: RoleUnknown, Conn: StandAlone, Disk: Diskless, PDsk: DUnknown}
}

// Unconfigured reports whether DRBD would print this device as
// "cs:Unconfigured".
func (s State) Unconfigured() bool {
	return s.Conn == StandAlone && s.Disk == Diskless && s.Role == Secondary
}

// Diff renders the fields that changed from old to s the way DRBD logs
// them: "role( Secondary -> Primary ) disk( Inconsistent -> UpToDate )".
// It returns the empty string when nothing changed.
func (s State) Diff(old State) string {
	var b strings.Builder
	add := func(name, from, to string) {
		if from == to {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s( %s -> %s )", name, from, to)
	}
	add("role", old.Role.String(), s.Role.String())
	add("peer", old.Peer.String(), s.Peer.String())
	add("conn", old.Conn.String(), s.Conn.String())
	add("disk", old.Disk.String(), s.Disk.String())
	add("pdsk", old.PDsk.String(), s.PDsk.String())
	flag := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	add("susp", flag(old.Susp), flag(s.Susp))
	add("aftr_isp", flag(old.AftrIsp), flag(s.AftrIsp))
	add("peer_isp", flag(old.PeerIsp), flag(s.PeerIsp))
	add("user_isp", flag(old.UserIsp), flag(s.UserIsp))
	return b.String()
}
