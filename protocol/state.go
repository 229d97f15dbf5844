package protocol

import (
	"encoding/binary"
	"fmt"
)

// Role is DRBD's enum drbd_role.
type Role uint8

// Roles with DRBD's numbers. RoleMask is the all-ones field value used in
// state change masks.
const (
	RoleUnknown   Role = 0
	RolePrimary   Role = 1
	RoleSecondary Role = 2
	RoleMask      Role = 3
)

// String returns DRBD's name for the role ("Primary", "Secondary",
// "Unknown").
func (r Role) String() string {
	switch r {
	case RoleUnknown:
		return "Unknown"
	case RolePrimary:
		return "Primary"
	case RoleSecondary:
		return "Secondary"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Valid reports whether r is a real role rather than a mask or garbage.
func (r Role) Valid() bool { return r <= RoleSecondary }

// ConnState is DRBD's enum drbd_conns. The order matters: states below
// ConnWFReportParams have no socket, and the sync states are the range
// ConnSyncSource..ConnPausedSyncT.
type ConnState uint8

// Connection states with DRBD's numbers. ConnMask is the all-ones field
// value used in state change masks.
const (
	ConnStandAlone     ConnState = 0
	ConnDisconnecting  ConnState = 1
	ConnUnconnected    ConnState = 2
	ConnTimeout        ConnState = 3
	ConnBrokenPipe     ConnState = 4
	ConnNetworkFailure ConnState = 5
	ConnProtocolError  ConnState = 6
	ConnTearDown       ConnState = 7
	ConnWFConnection   ConnState = 8
	ConnWFReportParams ConnState = 9
	ConnConnected      ConnState = 10
	ConnStartingSyncS  ConnState = 11
	ConnStartingSyncT  ConnState = 12
	ConnWFBitMapS      ConnState = 13
	ConnWFBitMapT      ConnState = 14
	ConnWFSyncUUID     ConnState = 15
	ConnSyncSource     ConnState = 16
	ConnSyncTarget     ConnState = 17
	ConnVerifyS        ConnState = 18
	ConnVerifyT        ConnState = 19
	ConnPausedSyncS    ConnState = 20
	ConnPausedSyncT    ConnState = 21
	ConnAhead          ConnState = 22
	ConnBehind         ConnState = 23
	ConnMask           ConnState = 31
)

var connNames = [...]string{
	ConnStandAlone:     "StandAlone",
	ConnDisconnecting:  "Disconnecting",
	ConnUnconnected:    "Unconnected",
	ConnTimeout:        "Timeout",
	ConnBrokenPipe:     "BrokenPipe",
	ConnNetworkFailure: "NetworkFailure",
	ConnProtocolError:  "ProtocolError",
	ConnTearDown:       "TearDown",
	ConnWFConnection:   "WFConnection",
	ConnWFReportParams: "WFReportParams",
	ConnConnected:      "Connected",
	ConnStartingSyncS:  "StartingSyncS",
	ConnStartingSyncT:  "StartingSyncT",
	ConnWFBitMapS:      "WFBitMapS",
	ConnWFBitMapT:      "WFBitMapT",
	ConnWFSyncUUID:     "WFSyncUUID",
	ConnSyncSource:     "SyncSource",
	ConnSyncTarget:     "SyncTarget",
	ConnVerifyS:        "VerifyS",
	ConnVerifyT:        "VerifyT",
	ConnPausedSyncS:    "PausedSyncS",
	ConnPausedSyncT:    "PausedSyncT",
	ConnAhead:          "Ahead",
	ConnBehind:         "Behind",
}

// String returns DRBD's name for the connection state, as in /proc/drbd.
func (c ConnState) String() string {
	if int(c) < len(connNames) {
		return connNames[c]
	}
	return fmt.Sprintf("ConnState(%d)", uint8(c))
}

// Valid reports whether c is a real connection state.
func (c ConnState) Valid() bool { return c <= ConnBehind }

// IsSyncing reports whether c is one of the resync or verify states
// (SyncSource through PausedSyncT), DRBD's usual range test.
func (c ConnState) IsSyncing() bool { return c >= ConnSyncSource && c <= ConnPausedSyncT }

// DiskState is DRBD's enum drbd_disk_state.
type DiskState uint8

// Disk states with DRBD's numbers. DiskMask is the all-ones field value
// used in state change masks.
const (
	DiskDiskless     DiskState = 0
	DiskAttaching    DiskState = 1
	DiskFailed       DiskState = 2
	DiskNegotiating  DiskState = 3
	DiskInconsistent DiskState = 4
	DiskOutdated     DiskState = 5
	DiskUnknown      DiskState = 6
	DiskConsistent   DiskState = 7
	DiskUpToDate     DiskState = 8
	DiskMask         DiskState = 15
)

var diskNames = [...]string{
	DiskDiskless:     "Diskless",
	DiskAttaching:    "Attaching",
	DiskFailed:       "Failed",
	DiskNegotiating:  "Negotiating",
	DiskInconsistent: "Inconsistent",
	DiskOutdated:     "Outdated",
	DiskUnknown:      "DUnknown",
	DiskConsistent:   "Consistent",
	DiskUpToDate:     "UpToDate",
}

// String returns DRBD's name for the disk state, as in /proc/drbd.
func (d DiskState) String() string {
	if int(d) < len(diskNames) {
		return diskNames[d]
	}
	return fmt.Sprintf("DiskState(%d)", uint8(d))
}

// Valid reports whether d is a real disk state.
func (d DiskState) Valid() bool { return d <= DiskUpToDate }

// Bit positions and widths of union drbd_state's fields, as GCC lays out the
// bitfield on little-endian hosts (least significant bit first).
const (
	stateRoleShift    = 0
	statePeerShift    = 2
	stateConnShift    = 4
	stateDiskShift    = 9
	statePdskShift    = 13
	stateSuspShift    = 17
	stateAftrISPShift = 18
	statePeerISPShift = 19
	stateUserISPShift = 20
	stateSuspNodShift = 21
	stateSuspFenShift = 22

	stateRoleBits = 0x3
	stateConnBits = 0x1f
	stateDiskBits = 0xf
)

// StateSize is sizeof(struct p_state).
const StateSize = 4

// State is DRBD's union drbd_state: the node's view of its own and its
// peer's role and disk, the connection state, and the suspend and
// sync-pause flags. It doubles as the P_STATE payload. The same layout
// carries masks in state change requests, so fields may hold the *Mask
// values.
type State struct {
	Role    Role      // this node's role
	Peer    Role      // the peer's role
	Conn    ConnState // connection state
	Disk    DiskState // this node's disk
	PDsk    DiskState // the peer's disk
	Susp    bool      // I/O suspended by the user
	AftrISP bool      // sync paused by a resync-after dependency
	PeerISP bool      // sync paused by the peer
	UserISP bool      // sync paused by the user
	SuspNod bool      // I/O suspended because there is no data
	SuspFen bool      // I/O suspended while the fence-peer handler runs
}

func bit(b bool, shift uint) uint32 {
	if b {
		return 1 << shift
	}
	return 0
}

// Pack returns the 32-bit value of the union (state.i on a little-endian
// host). Fields wider than their bitfield are truncated.
func (s State) Pack() uint32 {
	return uint32(s.Role&stateRoleBits)<<stateRoleShift |
		uint32(s.Peer&stateRoleBits)<<statePeerShift |
		uint32(s.Conn&stateConnBits)<<stateConnShift |
		uint32(s.Disk&stateDiskBits)<<stateDiskShift |
		uint32(s.PDsk&stateDiskBits)<<statePdskShift |
		bit(s.Susp, stateSuspShift) |
		bit(s.AftrISP, stateAftrISPShift) |
		bit(s.PeerISP, statePeerISPShift) |
		bit(s.UserISP, stateUserISPShift) |
		bit(s.SuspNod, stateSuspNodShift) |
		bit(s.SuspFen, stateSuspFenShift)
}

// UnpackState decodes the 32-bit value of the union. The nine padding bits
// are ignored, as DRBD ignores them.
func UnpackState(v uint32) State {
	return State{
		Role:    Role(v >> stateRoleShift & stateRoleBits),
		Peer:    Role(v >> statePeerShift & stateRoleBits),
		Conn:    ConnState(v >> stateConnShift & stateConnBits),
		Disk:    DiskState(v >> stateDiskShift & stateDiskBits),
		PDsk:    DiskState(v >> statePdskShift & stateDiskBits),
		Susp:    v>>stateSuspShift&1 != 0,
		AftrISP: v>>stateAftrISPShift&1 != 0,
		PeerISP: v>>statePeerISPShift&1 != 0,
		UserISP: v>>stateUserISPShift&1 != 0,
		SuspNod: v>>stateSuspNodShift&1 != 0,
		SuspFen: v>>stateSuspFenShift&1 != 0,
	}
}

// Validate reports an error if a field holds a value that is no real state
// (a mask value or garbage from the wire).
func (s State) Validate() error {
	switch {
	case !s.Role.Valid():
		return fmt.Errorf("%w: state has invalid role %d", ErrMalformed, s.Role)
	case !s.Peer.Valid():
		return fmt.Errorf("%w: state has invalid peer role %d", ErrMalformed, s.Peer)
	case !s.Conn.Valid():
		return fmt.Errorf("%w: state has invalid connection state %d", ErrMalformed, s.Conn)
	case !s.Disk.Valid():
		return fmt.Errorf("%w: state has invalid disk state %d", ErrMalformed, s.Disk)
	case !s.PDsk.Valid():
		return fmt.Errorf("%w: state has invalid peer disk state %d", ErrMalformed, s.PDsk)
	}
	return nil
}

// String formats the state the way DRBD logs it, e.g.
// "{ cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate }" plus any set
// flags.
func (s State) String() string {
	str := fmt.Sprintf("{ cs:%s ro:%s/%s ds:%s/%s", s.Conn, s.Role, s.Peer, s.Disk, s.PDsk)
	flags := []struct {
		on   bool
		name string
	}{
		{s.Susp, "susp"}, {s.AftrISP, "aftr_isp"}, {s.PeerISP, "peer_isp"},
		{s.UserISP, "user_isp"}, {s.SuspNod, "susp_nod"}, {s.SuspFen, "susp_fen"},
	}
	for _, f := range flags {
		if f.on {
			str += " " + f.name
		}
	}
	return str + " }"
}

// FromPeer converts a state as the peer sees it (from P_STATE or a state
// change request) into this node's point of view, like DRBD's
// convert_state(): roles and disks swap sides, the peer's sync-pause flags
// become PeerISP, and the connection state maps StartingSyncS to
// StartingSyncT (and back), VerifyS to VerifyT and Disconnecting to
// TearDown. WFReportParams, Connected and the mask value map to themselves;
// every other connection state maps to StandAlone, exactly as DRBD's table
// does.
func (s State) FromPeer() State {
	m := s
	switch s.Conn {
	case ConnWFReportParams, ConnConnected, ConnMask:
		m.Conn = s.Conn
	case ConnStartingSyncS:
		m.Conn = ConnStartingSyncT
	case ConnStartingSyncT:
		m.Conn = ConnStartingSyncS
	case ConnDisconnecting:
		m.Conn = ConnTearDown
	case ConnVerifyS:
		m.Conn = ConnVerifyT
	default:
		m.Conn = ConnStandAlone
	}
	m.Peer = s.Role
	m.Role = s.Peer
	m.PDsk = s.Disk
	m.Disk = s.PDsk
	m.PeerISP = s.AftrISP || s.UserISP
	return m
}

// MarshalAppend appends the P_STATE payload: the packed state as a
// big-endian u32 (DRBD sends cpu_to_be32(state.i)).
func (s *State) MarshalAppend(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, s.Pack())
}

// Unmarshal decodes a 4-byte P_STATE payload. It does not validate the
// field values; call Validate for that.
func (s *State) Unmarshal(p []byte) error {
	if err := exactLen("p_state", p, StateSize); err != nil {
		return err
	}
	*s = UnpackState(binary.BigEndian.Uint32(p))
	return nil
}

// StateChangeResult is DRBD's enum drbd_state_rv, the result of a state
// change carried by P_STATE_CHG_REPLY and P_CONN_ST_CHG_REPLY. Values of
// SSSuccess and above mean success.
type StateChangeResult int32

// State change results with DRBD's numbers.
const (
	SSCWNoNeed            StateChangeResult = 4
	SSCWSuccess           StateChangeResult = 3
	SSNothingToDo         StateChangeResult = 2
	SSSuccess             StateChangeResult = 1
	SSUnknownError        StateChangeResult = 0
	SSTwoPrimaries        StateChangeResult = -1
	SSNoUpToDateDisk      StateChangeResult = -2
	SSNoLocalDisk         StateChangeResult = -4
	SSNoRemoteDisk        StateChangeResult = -5
	SSConnectedOutdates   StateChangeResult = -6
	SSPrimaryNOP          StateChangeResult = -7
	SSResyncRunning       StateChangeResult = -8
	SSAlreadyStandAlone   StateChangeResult = -9
	SSCWFailedByPeer      StateChangeResult = -10
	SSIsDiskless          StateChangeResult = -11
	SSDeviceInUse         StateChangeResult = -12
	SSNoNetConfig         StateChangeResult = -13
	SSNoVerifyAlg         StateChangeResult = -14
	SSNeedConnection      StateChangeResult = -15
	SSLowerThanOutdated   StateChangeResult = -16
	SSNotSupported        StateChangeResult = -17
	SSInTransientState    StateChangeResult = -18
	SSConcurrentStChg     StateChangeResult = -19
	SSOtherVolPeerPrimary StateChangeResult = -20
	SSOutdateWithoutConn  StateChangeResult = -21
	SSAfterLastError      StateChangeResult = -22
)

var stateChangeTexts = map[StateChangeResult]string{
	SSCWNoNeed:            "Cluster-wide state change not needed",
	SSCWSuccess:           "Cluster-wide state change succeeded",
	SSNothingToDo:         "Nothing to do",
	SSSuccess:             "Success",
	SSUnknownError:        "Unknown error",
	SSTwoPrimaries:        "Multiple primaries not allowed by config",
	SSNoUpToDateDisk:      "Need access to UpToDate data",
	SSNoLocalDisk:         "Can not resync without local disk",
	SSNoRemoteDisk:        "Can not resync without remote disk",
	SSConnectedOutdates:   "Refusing to be Outdated while Connected",
	SSPrimaryNOP:          "Refusing to be Primary while peer is not outdated",
	SSResyncRunning:       "Can not start OV/resync since it is already active",
	SSAlreadyStandAlone:   "Can not disconnect a StandAlone device",
	SSCWFailedByPeer:      "State change was refused by peer node",
	SSIsDiskless:          "Device is diskless, the requested operation requires a disk",
	SSDeviceInUse:         "Device is held open by someone",
	SSNoNetConfig:         "Have no net/connection configuration",
	SSNoVerifyAlg:         "Need a verify algorithm to start online verify",
	SSNeedConnection:      "Need a connection to start verify or resync",
	SSLowerThanOutdated:   "Disk state is lower than outdated",
	SSNotSupported:        "Peer does not support protocol",
	SSInTransientState:    "In transient state, retry after next state change",
	SSConcurrentStChg:     "Concurrent state changes detected and aborted",
	SSOtherVolPeerPrimary: "Other vol primary on peer not allowed by config",
	SSOutdateWithoutConn:  "Need a connection for a graceful disconnect/outdate peer",
}

// String returns DRBD's text for the result (drbd_strings.c for the
// failures), e.g. "Multiple primaries not allowed by config".
func (r StateChangeResult) String() string {
	if t, ok := stateChangeTexts[r]; ok {
		return t
	}
	return fmt.Sprintf("state change result %d", int32(r))
}

// Error returns the same text as String, so a failed result can be
// returned as an error.
func (r StateChangeResult) Error() string { return r.String() }

// IsSuccess reports whether r means the state change happened (or was not
// needed).
func (r StateChangeResult) IsSuccess() bool { return r >= SSSuccess }
