// Package netlink holds drbdd's generic netlink speakers.
//
// The control plane between drbdadm and drbdd lives in control.go (the
// command set, attribute schema and codec) and transport.go (the Unix socket
// server and client). Only kernel code can register a generic netlink family,
// so drbdd cannot be reached through a netlink socket the way the DRBD kernel
// module is. Instead drbdadm encodes each command as a real generic netlink
// message, framed by its nlmsghdr exactly as it would be on a netlink socket,
// and sends it over a Unix stream socket (/run/drbdd/drbdd.sock):
//
//	nlmsghdr     length, type ControlFamilyID, flags, sequence, port id
//	genlmsghdr   command (DRBD_ADM_* numbering), version ControlVersion
//	drbd header  minor uint32, flags uint32 (requests) or ret_code int32 (replies)
//	attributes   nested top-level attributes numbered as DRBD's DRBD_NLA_*
//
// All integers are in native byte order, as on a netlink socket.
//
// Attribute numbers follow DRBD 8.4's include/linux/drbd_genl.h wherever DRBD
// has a field with the same meaning; fields drbdd adds are numbered from 64
// up. The payload types are drbdd's own and not wire compatible with the DRBD
// kernel module: enumerations (on-io-error, after-sb-0pri, ...) travel as
// their drbdsetup names, durations as signed 64-bit nanoseconds, sizes in
// bytes and rates in bytes per second.
//
// Every field attribute in a Request carries DRBD's "mandatory" type bit
// (AttrMandatory): a daemon that does not know such an attribute rejects the
// request instead of silently ignoring, say, a new --force option. Reply
// attributes never carry it, so an older drbdadm skips status fields it does
// not know. Decoders keep the first error, never panic, and bound every string
// (MaxStringLen, MaxInfoLen), list (MaxStates, MaxUUIDs) and message
// (MaxMessageSize).
package netlink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mdlayher/genetlink"
	mnl "github.com/mdlayher/netlink"
)

// Wire constants of the control protocol.
const (
	// ControlFamilyID is the nlmsghdr type of every control message. A kernel
	// would assign a generic netlink family id dynamically; drbdd has no
	// kernel family, so the id is fixed.
	ControlFamilyID mnl.HeaderType = 0x1d

	// ControlFamilyName is the name DRBD registers its generic netlink
	// family under; drbdd uses it in messages only.
	ControlFamilyName = "drbd"

	// ControlVersion is the genlmsghdr version of every control message.
	ControlVersion uint8 = 1

	// MaxMessageSize bounds a framed control message, nlmsghdr included.
	MaxMessageSize = 1 << 20

	// MaxStringLen bounds every string attribute except the reply text.
	MaxStringLen = 4096

	// MaxInfoLen bounds the human-readable text of a reply.
	MaxInfoLen = 32 << 10

	// MaxStates bounds the number of StateInfo attributes in one reply.
	MaxStates = 4096

	// MaxUUIDs bounds the number of generation UUIDs in one StateInfo.
	MaxUUIDs = 8

	// AttrMandatory is DRBD's DRBD_GENLA_F_MANDATORY bit of the netlink
	// attribute type. A decoder rejects an unknown attribute that carries
	// it and skips an unknown attribute that does not.
	AttrMandatory uint16 = 1 << 14

	// FlagSetDefaults is DRBD's DRBD_GENL_F_SET_DEFAULTS request flag: options
	// a change request (ChgDiskOpts, ChgNetOpts, ResourceOpts) leaves out
	// revert to their defaults instead of keeping their current values.
	FlagSetDefaults uint32 = 1
)

const (
	ctlNlmsgHeaderLen = 16 // struct nlmsghdr
	ctlGenlHeaderLen  = 4  // struct genlmsghdr
	ctlDrbdHeaderLen  = 8  // struct drbd_genlmsghdr
	ctlMinMessageLen  = ctlNlmsgHeaderLen + ctlGenlHeaderLen + ctlDrbdHeaderLen
)

// A Command is a control command, carried in genlmsghdr.cmd. The numbers are
// DRBD 8.4's genl operations (DRBD_ADM_*); Subscribe is drbdd's own.
type Command uint8

// Control commands.
const (
	Event          Command = 1  // DRBD_EVENT: a state change notification (daemon to client).
	GetStatus      Command = 2  // DRBD_ADM_GET_STATUS
	NewMinor       Command = 5  // DRBD_ADM_NEW_MINOR
	DelMinor       Command = 6  // DRBD_ADM_DEL_MINOR
	NewResource    Command = 7  // DRBD_ADM_NEW_RESOURCE
	DelResource    Command = 8  // DRBD_ADM_DEL_RESOURCE
	ResourceOpts   Command = 9  // DRBD_ADM_RESOURCE_OPTS
	Connect        Command = 10 // DRBD_ADM_CONNECT
	Disconnect     Command = 11 // DRBD_ADM_DISCONNECT
	Attach         Command = 12 // DRBD_ADM_ATTACH
	Resize         Command = 13 // DRBD_ADM_RESIZE
	Primary        Command = 14 // DRBD_ADM_PRIMARY
	Secondary      Command = 15 // DRBD_ADM_SECONDARY
	NewCurrentUUID Command = 16 // DRBD_ADM_NEW_C_UUID
	StartOV        Command = 17 // DRBD_ADM_START_OV
	Detach         Command = 18 // DRBD_ADM_DETACH
	Invalidate     Command = 19 // DRBD_ADM_INVALIDATE
	InvalidatePeer Command = 20 // DRBD_ADM_INVAL_PEER
	PauseSync      Command = 21 // DRBD_ADM_PAUSE_SYNC
	ResumeSync     Command = 22 // DRBD_ADM_RESUME_SYNC
	SuspendIO      Command = 23 // DRBD_ADM_SUSPEND_IO
	ResumeIO       Command = 24 // DRBD_ADM_RESUME_IO
	Outdate        Command = 25 // DRBD_ADM_OUTDATE
	GetTimeoutType Command = 26 // DRBD_ADM_GET_TIMEOUT_TYPE
	Down           Command = 27 // DRBD_ADM_DOWN
	ChgDiskOpts    Command = 28 // DRBD_ADM_CHG_DISK_OPTS
	ChgNetOpts     Command = 29 // DRBD_ADM_CHG_NET_OPTS
	GetResources   Command = 30 // DRBD_ADM_GET_RESOURCES
	GetDevices     Command = 31 // DRBD_ADM_GET_DEVICES
	GetConnections Command = 32 // DRBD_ADM_GET_CONNECTIONS
	GetPeerDevices Command = 33 // DRBD_ADM_GET_PEER_DEVICES

	// Subscribe asks the daemon to stream Event messages until the client
	// disconnects. It is drbdd's own command.
	Subscribe Command = 64
)

var commandNames = map[Command]string{
	Event:          "event",
	GetStatus:      "get-status",
	NewMinor:       "new-minor",
	DelMinor:       "del-minor",
	NewResource:    "new-resource",
	DelResource:    "del-resource",
	ResourceOpts:   "resource-options",
	Connect:        "connect",
	Disconnect:     "disconnect",
	Attach:         "attach",
	Resize:         "resize",
	Primary:        "primary",
	Secondary:      "secondary",
	NewCurrentUUID: "new-current-uuid",
	StartOV:        "verify",
	Detach:         "detach",
	Invalidate:     "invalidate",
	InvalidatePeer: "invalidate-remote",
	PauseSync:      "pause-sync",
	ResumeSync:     "resume-sync",
	SuspendIO:      "suspend-io",
	ResumeIO:       "resume-io",
	Outdate:        "outdate",
	GetTimeoutType: "get-timeout-type",
	Down:           "down",
	ChgDiskOpts:    "disk-options",
	ChgNetOpts:     "net-options",
	GetResources:   "get-resources",
	GetDevices:     "get-devices",
	GetConnections: "get-connections",
	GetPeerDevices: "get-peer-devices",
	Subscribe:      "subscribe",
}

// String returns the drbdsetup-style name of c, such as "primary" or
// "connect", or "Command(N)" for a number drbdd does not know.
func (c Command) String() string {
	if s, ok := commandNames[c]; ok {
		return s
	}
	return fmt.Sprintf("Command(%d)", uint8(c))
}

// Known reports whether c is one of the commands defined by this package.
func (c Command) Known() bool {
	_, ok := commandNames[c]
	return ok
}

// A RetCode is the return code of a reply, carried where DRBD carries
// ret_code. The values are DRBD 8.4's: NoError (101) and the ERR_* codes
// above it for configuration requests, the SS_* state change results (1 and
// below) for state changes, plus drbdd's own codes from 1000 up.
//
// A reply succeeded if its code is NoError or one of the SS_* successes
// (SSSuccess, SSNothingToDo, SSCWSuccess, SSCWNoNeed); everything else,
// including the zero value SSUnknownError, is a failure. Handlers should use
// NoError for success and the most specific failure code:
//
//	bad or undecodable request        ErrInvalidRequest (162)
//	no handler for the command        ErrUnknownCommand (1000)
//	unknown resource                  ErrResNotKnown (158), alias ErrNoResource
//	refused state change              the SS_* code, e.g. SSNoUpToDateDisk (-2);
//	                                  SSUnknownError (0) if none fits (alias ErrStateChange)
//	caller not allowed                ErrPerm (152), alias ErrPermission
//	I/O error on the data disk        ErrIO (1001)
//	bug or resource exhaustion        ErrInternal (1002)
//	too many control connections      ErrBusy (1003)
type RetCode int32

// State change results (DRBD's enum drbd_state_rv).
const (
	SSCWNoNeed           RetCode = 4
	SSCWSuccess          RetCode = 3
	SSNothingToDo        RetCode = 2
	SSSuccess            RetCode = 1
	SSUnknownError       RetCode = 0
	SSTwoPrimaries       RetCode = -1
	SSNoUpToDateDisk     RetCode = -2
	SSNoLocalDisk        RetCode = -4
	SSNoRemoteDisk       RetCode = -5
	SSConnectedOutdates  RetCode = -6
	SSPrimaryNOP         RetCode = -7
	SSResyncRunning      RetCode = -8
	SSAlreadyStandAlone  RetCode = -9
	SSCWFailedByPeer     RetCode = -10
	SSIsDiskless         RetCode = -11
	SSDeviceInUse        RetCode = -12
	SSNoNetConfig        RetCode = -13
	SSNoVerifyAlg        RetCode = -14
	SSNeedConnection     RetCode = -15
	SSLowerThanOutdated  RetCode = -16
	SSNotSupported       RetCode = -17
	SSInTransientState   RetCode = -18
	SSConcurrentStChg    RetCode = -19
	SSOVolPeerPri        RetCode = -20
	SSOutdateWithoutConn RetCode = -21
)

// Configuration results (DRBD's enum drbd_ret_code) and drbdd's own codes.
const (
	NoError               RetCode = 101
	ErrLocalAddr          RetCode = 102
	ErrPeerAddr           RetCode = 103
	ErrOpenDisk           RetCode = 104
	ErrOpenMetaDisk       RetCode = 105
	ErrDiskNotBdev        RetCode = 107
	ErrMetaNotBdev        RetCode = 108
	ErrDiskTooSmall       RetCode = 111
	ErrMetaDiskTooSmall   RetCode = 112
	ErrBdClaimDisk        RetCode = 114
	ErrBdClaimMetaDisk    RetCode = 115
	ErrMetaIdxInvalid     RetCode = 116
	ErrIOMetaDisk         RetCode = 118
	ErrMetaInvalid        RetCode = 119
	ErrAuthAlg            RetCode = 120
	ErrAuthAlgND          RetCode = 121
	ErrNoMem              RetCode = 122
	ErrDiscard            RetCode = 123
	ErrDiskConfigured     RetCode = 124
	ErrNetConfigured      RetCode = 125
	ErrMandatoryTag       RetCode = 126
	ErrMinorInvalid       RetCode = 127
	ErrIntr               RetCode = 129
	ErrResizeResync       RetCode = 130
	ErrNoPrimary          RetCode = 131
	ErrResyncAfter        RetCode = 132
	ErrResyncAfterCycle   RetCode = 133
	ErrPauseIsSet         RetCode = 134
	ErrPauseIsClear       RetCode = 135
	ErrPacketNr           RetCode = 137
	ErrNoDisk             RetCode = 138
	ErrNotProtoC          RetCode = 139
	ErrNoMemBitmap        RetCode = 140
	ErrIntegrityAlg       RetCode = 141
	ErrIntegrityAlgND     RetCode = 142
	ErrCPUMaskParse       RetCode = 143
	ErrCsumsAlg           RetCode = 144
	ErrCsumsAlgND         RetCode = 145
	ErrVerifyAlg          RetCode = 146
	ErrVerifyAlgND        RetCode = 147
	ErrCsumsResyncRunning RetCode = 148
	ErrVerifyRunning      RetCode = 149
	ErrDataNotCurrent     RetCode = 150
	ErrConnected          RetCode = 151
	ErrPerm               RetCode = 152
	ErrNeedAPV93          RetCode = 153
	ErrStonithAndProtA    RetCode = 154
	ErrCongNotProtoA      RetCode = 155
	ErrPicAfterDep        RetCode = 156
	ErrPicPeerDep         RetCode = 157
	ErrResNotKnown        RetCode = 158
	ErrResInUse           RetCode = 159
	ErrMinorConfigured    RetCode = 160
	ErrMinorExists        RetCode = 161
	ErrInvalidRequest     RetCode = 162
	ErrNeedAPV100         RetCode = 163
	ErrNeedAllowTwoPri    RetCode = 164
	ErrMetaUnclean        RetCode = 165

	// ErrUnknownCommand means the daemon has no handler for the command.
	ErrUnknownCommand RetCode = 1000
	// ErrIO means an I/O error on a data or metadata disk.
	ErrIO RetCode = 1001
	// ErrInternal means a bug or resource exhaustion in the daemon.
	ErrInternal RetCode = 1002
	// ErrBusy means the daemon refused the connection: too many are open.
	ErrBusy RetCode = 1003
)

// Aliases with task-level names.
const (
	ErrNoResource  = ErrResNotKnown
	ErrPermission  = ErrPerm
	ErrStateChange = SSUnknownError
)

var retCodeText = map[RetCode]string{
	SSCWNoNeed:            "state change not needed",
	SSCWSuccess:           "state change succeeded",
	SSNothingToDo:         "nothing to do",
	SSSuccess:             "state change succeeded",
	SSUnknownError:        "state change failed",
	SSTwoPrimaries:        "state change failed: multiple primaries not allowed by config",
	SSNoUpToDateDisk:      "state change failed: need access to UpToDate data",
	SSNoLocalDisk:         "state change failed: can not resync without local disk",
	SSNoRemoteDisk:        "state change failed: can not resync without remote disk",
	SSConnectedOutdates:   "state change failed: refusing to be Outdated while Connected",
	SSPrimaryNOP:          "state change failed: refusing to be Primary while peer is not outdated",
	SSResyncRunning:       "state change failed: can not start OV/resync since it is already active",
	SSAlreadyStandAlone:   "state change failed: can not disconnect a StandAlone device",
	SSCWFailedByPeer:      "state change failed: state change was refused by peer node",
	SSIsDiskless:          "state change failed: the operation needs a local disk",
	SSDeviceInUse:         "state change failed: device is held open by someone",
	SSNoNetConfig:         "state change failed: have no net/connection configuration",
	SSNoVerifyAlg:         "state change failed: need a verify algorithm to start online verify",
	SSNeedConnection:      "state change failed: need a connection to start verify or resync",
	SSLowerThanOutdated:   "state change failed: disk state is lower than outdated",
	SSNotSupported:        "state change failed: peer does not support protocol",
	SSInTransientState:    "state change failed: transient state, retry later",
	SSConcurrentStChg:     "state change failed: aborted by a concurrent state change",
	SSOVolPeerPri:         "state change failed: another volume is Primary on the peer",
	SSOutdateWithoutConn:  "state change failed: can not outdate without a connection",
	NoError:               "no error",
	ErrLocalAddr:          "local address (port) already in use",
	ErrPeerAddr:           "remote address (port) already in use",
	ErrOpenDisk:           "can not open backing device",
	ErrOpenMetaDisk:       "can not open meta device",
	ErrDiskNotBdev:        "lower device is not a block device",
	ErrMetaNotBdev:        "meta device is not a block device",
	ErrDiskTooSmall:       "backing device smaller than the requested size",
	ErrMetaDiskTooSmall:   "meta device too small",
	ErrBdClaimDisk:        "lower device is already claimed",
	ErrBdClaimMetaDisk:    "meta device is already claimed",
	ErrMetaIdxInvalid:     "invalid meta device index",
	ErrIOMetaDisk:         "I/O error on meta data",
	ErrMetaInvalid:        "no valid meta-data signature found",
	ErrAuthAlg:            "the cram-hmac-alg is unknown",
	ErrAuthAlgND:          "the cram-hmac-alg is not a digest",
	ErrNoMem:              "out of memory",
	ErrDiscard:            "discard-my-data is not allowed on a Primary",
	ErrDiskConfigured:     "device is attached to a disk (use detach first)",
	ErrNetConfigured:      "device has a net-config (use disconnect first)",
	ErrMandatoryTag:       "unknown mandatory tag",
	ErrMinorInvalid:       "device minor not allocated",
	ErrIntr:               "interrupted",
	ErrResizeResync:       "resize not allowed during resync",
	ErrNoPrimary:          "need one primary node to resize",
	ErrResyncAfter:        "invalid resync-after minor",
	ErrResyncAfterCycle:   "resync-after would form a cycle",
	ErrPauseIsSet:         "sync-pause flag is already set",
	ErrPauseIsClear:       "sync-pause flag is already cleared",
	ErrPacketNr:           "unknown packet number",
	ErrNoDisk:             "local disk is missing",
	ErrNotProtoC:          "protocol C required",
	ErrNoMemBitmap:        "out of memory for the bitmap",
	ErrIntegrityAlg:       "the integrity-alg is unknown",
	ErrIntegrityAlgND:     "the integrity-alg is not a digest",
	ErrCPUMaskParse:       "invalid cpu-mask",
	ErrCsumsAlg:           "the csums-alg is unknown",
	ErrCsumsAlgND:         "the csums-alg is not a digest",
	ErrVerifyAlg:          "the verify-alg is unknown",
	ErrVerifyAlgND:        "the verify-alg is not a digest",
	ErrCsumsResyncRunning: "can not change csums-alg while resync is in progress",
	ErrVerifyRunning:      "can not change verify-alg while online verify runs",
	ErrDataNotCurrent:     "refusing to become primary without current data",
	ErrConnected:          "device is connected",
	ErrPerm:               "permission denied",
	ErrNeedAPV93:          "protocol version 93 required",
	ErrStonithAndProtA:    "fencing policy resource-and-stonith only with protocol B or C",
	ErrCongNotProtoA:      "on-congestion policy pull-ahead only with protocol A",
	ErrPicAfterDep:        "resync-after dependency paused the sync",
	ErrPicPeerDep:         "peer paused the sync",
	ErrResNotKnown:        "unknown resource",
	ErrResInUse:           "resource is in use",
	ErrMinorConfigured:    "minor is configured",
	ErrMinorExists:        "minor or volume exists already",
	ErrInvalidRequest:     "invalid configuration request",
	ErrNeedAPV100:         "protocol version 100 required",
	ErrNeedAllowTwoPri:    "allow-two-primaries required",
	ErrMetaUnclean:        "unclean meta-data found",
	ErrUnknownCommand:     "unknown command",
	ErrIO:                 "I/O error",
	ErrInternal:           "internal error",
	ErrBusy:               "daemon busy",
}

// Success reports whether c is a success: NoError or an SS_* success.
func (c RetCode) Success() bool {
	return c == NoError || (c >= SSSuccess && c <= SSCWNoNeed)
}

// String returns a short description of c in DRBD's words.
func (c RetCode) String() string {
	if s, ok := retCodeText[c]; ok {
		return s
	}
	return fmt.Sprintf("error %d", int32(c))
}

// Error is the error a Client returns for a reply whose RetCode is a failure.
// Its message is the reply's Info text, or a description of Code when the
// daemon sent no text.
type Error struct {
	// Command is the command that failed.
	Command Command
	// Code is the reply's return code.
	Code RetCode
	// Info is the reply's human-readable text.
	Info string
}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Info != "" {
		return e.Info
	}
	return e.Command.String() + ": " + e.Code.String()
}

// Top-level attribute numbers (DRBD_NLA_*; 20 and up are drbdd's).
const (
	tlaCfgReply        = 1
	tlaCfgContext      = 2
	tlaDiskConf        = 3
	tlaResourceOpts    = 4
	tlaNetConf         = 5
	tlaSetRoleParms    = 6
	tlaResizeParms     = 7
	tlaStateInfo       = 8
	tlaStartOVParms    = 9
	tlaNewCUUIDParms   = 10
	tlaTimeoutParms    = 11
	tlaDisconnectParms = 12
	tlaDetachParms     = 13
	tlaDeviceConf      = 20
	tlaConnectParms    = 21
	tlaMax             = 32 // exclusive bound for the duplicate check
)

// DRBD's meta_dev_idx values for meta-disk "internal" and external meta data.
const (
	metaIndexInternal     int32 = -1 // DRBD_MD_INDEX_INTERNAL
	metaIndexFlexExternal int32 = -2 // DRBD_MD_INDEX_FLEX_EXT
	metaIndexFlexInternal int32 = -3 // DRBD_MD_INDEX_FLEX_INT
)

// Protocol values of NetConf.Protocol (DRBD_PROT_*).
const (
	ProtocolA uint32 = 1
	ProtocolB uint32 = 2
	ProtocolC uint32 = 3
)

// Timeout types of Reply.TimeoutType (DRBD's enum drbd_timeout_flag).
const (
	TimeoutDefault      uint32 = 0
	TimeoutDegraded     uint32 = 1
	TimeoutPeerOutdated uint32 = 2
)

// CfgContext names the object a request operates on (DRBD_NLA_CFG_CONTEXT).
type CfgContext struct {
	Volume       uint32 // attribute 1
	ResourceName string // attribute 2
	MyAddr       string // attribute 3, "host:port"
	PeerAddr     string // attribute 4, "host:port"
}

// DiskConf is the disk configuration of attach and disk-options
// (DRBD_NLA_DISK_CONF).
type DiskConf struct {
	BackingDev string // attribute 1
	MetaDev    string // attribute 2; empty when MetaInternal
	// MetaInternal selects internal meta data. On the wire it is DRBD's
	// meta_dev_idx (attribute 3): -3 (flexible internal) when set, absent
	// otherwise; a decoder also accepts -1 (internal) and -2 (flexible
	// external).
	MetaInternal bool
	DiskSize     uint64        // attribute 4, bytes; 0 means the whole backing device
	OnIOError    string        // attribute 6: "pass_on", "call-local-io-error", "detach"
	Fencing      string        // attribute 7: "dont-care", "resource-only", "resource-and-stonith"
	ResyncRate   uint64        // attribute 8, bytes per second
	ALExtents    uint32        // attribute 10
	CPlanAhead   time.Duration // attribute 11
	CDelayTarget time.Duration // attribute 12
	CFillTarget  uint64        // attribute 13, bytes
	CMaxRate     uint64        // attribute 14, bytes per second
	CMinRate     uint64        // attribute 15, bytes per second
	DirectIO     string        // attribute 64: "auto", "on" or "off"
	// DiskFlushes (attribute 18, DRBD's disk_flushes) makes the peer flush
	// its disk at every epoch barrier (write ordering "f"); without it
	// barriers only drain, and the disk is flushed when a client flushes.
	DiskFlushes bool
}

// ResOpts holds the resource options (DRBD_NLA_RESOURCE_OPTS, DRBD's
// struct res_opts). It is not named ResourceOpts because that is the command.
type ResOpts struct {
	CPUMask            string // attribute 1
	OnNoDataAccessible string // attribute 2: "io-error" or "suspend-io"
}

// NetConf is the network configuration of connect and net-options
// (DRBD_NLA_NET_CONF). Durations travel as signed 64-bit nanoseconds.
type NetConf struct {
	SharedSecret      string        // attribute 1
	CramHMACAlg       string        // attribute 2
	IntegrityAlg      string        // attribute 3
	VerifyAlg         string        // attribute 4
	CsumsAlg          string        // attribute 5
	Protocol          uint32        // attribute 6: ProtocolA, ProtocolB or ProtocolC; 0 means default
	ConnectInt        time.Duration // attribute 7
	Timeout           time.Duration // attribute 8
	PingInt           time.Duration // attribute 9
	PingTimeout       time.Duration // attribute 10
	SndBufSize        uint32        // attribute 11, bytes
	RcvBufSize        uint32        // attribute 12, bytes
	KoCount           uint32        // attribute 13
	MaxBuffers        uint32        // attribute 14
	MaxEpochSize      uint32        // attribute 15
	AfterSB0Pri       string        // attribute 17
	AfterSB1Pri       string        // attribute 18
	AfterSB2Pri       string        // attribute 19
	RRConflict        string        // attribute 20
	AllowTwoPrimaries bool          // attribute 24
	DiscardMyData     bool          // attribute 25
	PeerName          string        // attribute 64
	MyAddr            string        // attribute 65, "host:port"
	PeerAddr          string        // attribute 66, "host:port"
}

// SetRoleParms holds the options of primary and secondary
// (DRBD_NLA_SET_ROLE_PARMS).
type SetRoleParms struct {
	AssumeUptodate bool // attribute 1: primary --force
}

// ResizeParms holds the options of resize (DRBD_NLA_RESIZE_PARMS).
type ResizeParms struct {
	Size     uint64 // attribute 1, bytes; 0 means as large as possible
	Force    bool   // attribute 2
	NoResync bool   // attribute 3
}

// StartOVParms holds the range of an online verify
// (DRBD_NLA_START_OV_PARMS), in 512-byte sectors as in DRBD.
type StartOVParms struct {
	Start uint64 // attribute 1
	Stop  uint64 // attribute 2; 0 means the end of the device
}

// NewCUUIDParms holds the options of new-current-uuid
// (DRBD_NLA_NEW_C_UUID_PARMS).
type NewCUUIDParms struct {
	ClearBitmap bool // attribute 1
}

// DisconnectParms holds the options of disconnect
// (DRBD_NLA_DISCONNECT_PARMS).
type DisconnectParms struct {
	Force bool // attribute 1
}

// DetachParms holds the options of detach (DRBD_NLA_DETACH_PARMS).
type DetachParms struct {
	Force bool // attribute 1
}

// DeviceConf describes how a volume is exposed (drbdd's top-level
// attribute 20).
type DeviceConf struct {
	Minor        uint32 // attribute 1
	KernelDevice string // attribute 2, e.g. "/dev/nbd0"; empty for none
	NBDListen    string // attribute 3, "host:port" or "unix:/path"; empty for none
}

// ConnectParms holds the one-shot options of connect (drbdd's top-level
// attribute 21).
type ConnectParms struct {
	DiscardMyData bool // attribute 1
}

// StateInfo is the state of one volume of one resource
// (DRBD_NLA_STATE_INFO). A status reply carries one per volume; an Event
// carries the one that changed. The daemon fills the names in DRBD's words
// ("Primary", "WFConnection", "UpToDate"). Counters are in KiB as in DRBD's
// /proc/drbd unless noted.
type StateInfo struct {
	ResourceName  string // attribute 64
	PeerName      string // attribute 65
	Minor         uint32 // attribute 66
	Volume        uint32 // attribute 67
	Role          string // attribute 68
	PeerRole      string // attribute 69
	ConnState     string // attribute 70
	DiskState     string // attribute 71
	PeerDiskState string // attribute 72
	Protocol      string // attribute 73: "A", "B" or "C"
	Flags         string // attribute 74: the 6-character I/O flags field, e.g. "r-----"
	Size          uint64 // attribute 3, bytes

	NetSend    uint64 // attribute 15, ns:
	NetRecv    uint64 // attribute 16, nr:
	DiskRead   uint64 // attribute 17, dr:
	DiskWrite  uint64 // attribute 18, dw:
	ALWrites   uint64 // attribute 19, al: (count)
	BMWrites   uint64 // attribute 20, bm: (count)
	LocalCount uint64 // attribute 75, lo:
	Pending    uint64 // attribute 76, pe:
	Unacked    uint64 // attribute 77, ua:
	AppPending uint64 // attribute 78, ap:
	Epochs     uint64 // attribute 79, ep:
	OutOfSync  uint64 // attribute 80, oos: (KiB)

	WriteOrdering string // attribute 81, wo: "f", "d" or "n"

	RsTotal uint64 // attribute 82, KiB to resync in total
	RsLeft  uint64 // attribute 83, KiB still to resync
	RsSpeed uint64 // attribute 84, KiB/s
	RsWant  uint64 // attribute 85, KiB/s
	RsETA   uint64 // attribute 86, seconds
	Verify  bool   // attribute 87: the sync fields describe an online verify

	// UUIDs are the generation UUIDs: current, bitmap, history. On the wire
	// they are one binary attribute (7) of 8 native-endian bytes each, at
	// most MaxUUIDs.
	UUIDs []uint64

	NBDClients   uint32 // attribute 88: connected NBD export clients
	KernelDevice string // attribute 89, e.g. "/dev/nbd0"
	EventKind    string // attribute 90, events only: "change", "exists" or "destroy"
	Message      string // attribute 91, events only: e.g. "r0: conn( WFConnection -> Connected )"
}

// A Request is a command from drbdadm to drbdd. Optional parts are pointers;
// nil means absent.
type Request struct {
	Command Command
	Seq     uint32 // nlmsghdr sequence; Client.Do and Client.Subscribe set it
	Minor   uint32 // drbd header minor
	Flags   uint32 // drbd header flags, e.g. FlagSetDefaults
	Ctx     CfgContext

	ResOpts    *ResOpts
	Disk       *DiskConf // required by Attach and ChgDiskOpts
	Net        *NetConf  // required by Connect and ChgNetOpts
	Role       *SetRoleParms
	Resize     *ResizeParms
	StartOV    *StartOVParms
	NewCUUID   *NewCUUIDParms
	Disconnect *DisconnectParms
	Detach     *DetachParms
	Device     *DeviceConf
	Connect    *ConnectParms
}

// A Reply is drbdd's answer to a Request, or an Event message on a
// subscription.
type Reply struct {
	Command Command
	Seq     uint32 // the sequence number of the request answered
	Minor   uint32 // drbd header minor
	RetCode RetCode
	Info    string // human-readable text (DRBD_NLA_CFG_REPLY info_text)
	Version string // daemon version (drbdd's attribute 64 of DRBD_NLA_CFG_REPLY)

	// TimeoutType answers GetTimeoutType (DRBD_NLA_TIMEOUT_PARMS).
	TimeoutType uint32

	// States holds one StateInfo per volume, in order.
	States []StateInfo
}

// NewReply returns a reply with the given code and formatted Info text.
// The server fills in Command, Seq and Minor.
func NewReply(code RetCode, format string, args ...any) *Reply {
	return &Reply{RetCode: code, Info: fmt.Sprintf(format, args...)}
}

// Err returns nil if r succeeded and an *Error otherwise.
func (r *Reply) Err() error {
	if r.RetCode.Success() {
		return nil
	}
	return &Error{Command: r.Command, Code: r.RetCode, Info: r.Info}
}

// check validates the parts of a request that do not depend on daemon state.
func (r *Request) check() error {
	switch r.Command {
	case Connect, ChgNetOpts:
		if r.Net == nil {
			return fmt.Errorf("%s needs a net configuration", r.Command)
		}
	case Attach, ChgDiskOpts:
		if r.Disk == nil {
			return fmt.Errorf("%s needs a disk configuration", r.Command)
		}
	}
	if r.Net != nil && r.Net.Protocol > ProtocolC {
		return fmt.Errorf("invalid protocol %d", r.Net.Protocol)
	}
	return nil
}

func (r *Reply) check() error {
	if len(r.States) > MaxStates {
		return fmt.Errorf("%d states exceed the limit of %d", len(r.States), MaxStates)
	}
	return nil
}

// MarshalBinary encodes r as a framed control message, nlmsghdr included.
func (r *Request) MarshalBinary() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	ae := mnl.NewAttributeEncoder()
	e := &ctlEncoder{ae: ae, mand: AttrMandatory}
	if r.Ctx != (CfgContext{}) {
		e.nested(tlaCfgContext, r.Ctx.encode)
	}
	if r.Disk != nil {
		e.nested(tlaDiskConf, r.Disk.encode)
	}
	if r.ResOpts != nil {
		e.nested(tlaResourceOpts, r.ResOpts.encode)
	}
	if r.Net != nil {
		e.nested(tlaNetConf, r.Net.encode)
	}
	if r.Role != nil {
		e.nested(tlaSetRoleParms, func(e *ctlEncoder) { e.flag(1, r.Role.AssumeUptodate) })
	}
	if r.Resize != nil {
		e.nested(tlaResizeParms, r.Resize.encode)
	}
	if r.StartOV != nil {
		e.nested(tlaStartOVParms, func(e *ctlEncoder) {
			e.u64(1, r.StartOV.Start)
			e.u64(2, r.StartOV.Stop)
		})
	}
	if r.NewCUUID != nil {
		e.nested(tlaNewCUUIDParms, func(e *ctlEncoder) { e.flag(1, r.NewCUUID.ClearBitmap) })
	}
	if r.Disconnect != nil {
		e.nested(tlaDisconnectParms, func(e *ctlEncoder) { e.flag(1, r.Disconnect.Force) })
	}
	if r.Detach != nil {
		e.nested(tlaDetachParms, func(e *ctlEncoder) { e.flag(1, r.Detach.Force) })
	}
	if r.Device != nil {
		e.nested(tlaDeviceConf, r.Device.encode)
	}
	if r.Connect != nil {
		e.nested(tlaConnectParms, func(e *ctlEncoder) { e.flag(1, r.Connect.DiscardMyData) })
	}
	attrs, err := e.encode()
	if err != nil {
		return nil, fmt.Errorf("encode %s request: %w", r.Command, err)
	}
	return frameControl(r.Command, mnl.Request|mnl.Acknowledge, r.Seq, r.Minor, r.Flags, attrs)
}

// MarshalBinary encodes r as a framed control message, nlmsghdr included.
// Event replies carry the NLM_F_MULTI flag.
func (r *Reply) MarshalBinary() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	ae := mnl.NewAttributeEncoder()
	e := &ctlEncoder{ae: ae}
	if r.Info != "" || r.Version != "" {
		e.nested(tlaCfgReply, func(e *ctlEncoder) {
			e.strMax(1, r.Info, MaxInfoLen)
			e.str(64, r.Version)
		})
	}
	if r.TimeoutType != 0 {
		e.nested(tlaTimeoutParms, func(e *ctlEncoder) { e.u32(1, r.TimeoutType) })
	}
	for i := range r.States {
		e.nested(tlaStateInfo, r.States[i].encode)
	}
	attrs, err := e.encode()
	if err != nil {
		return nil, fmt.Errorf("encode %s reply: %w", r.Command, err)
	}
	var flags mnl.HeaderFlags
	if r.Command == Event {
		flags = mnl.Multi
	}
	return frameControl(r.Command, flags, r.Seq, r.Minor, uint32(r.RetCode), attrs)
}

// frameControl wraps attrs in the drbd, genl and netlink headers.
func frameControl(cmd Command, flags mnl.HeaderFlags, seq, minor, word uint32, attrs []byte) ([]byte, error) {
	payload := make([]byte, ctlDrbdHeaderLen+len(attrs))
	binary.NativeEndian.PutUint32(payload[0:], minor)
	binary.NativeEndian.PutUint32(payload[4:], word)
	copy(payload[ctlDrbdHeaderLen:], attrs)
	gb, err := genetlink.Message{
		Header: genetlink.Header{Command: uint8(cmd), Version: ControlVersion},
		Data:   payload,
	}.MarshalBinary()
	if err != nil {
		return nil, err
	}
	n := ctlNlmsgHeaderLen + len(gb)
	if n > MaxMessageSize {
		return nil, fmt.Errorf("%s message of %d bytes exceeds the limit of %d", cmd, n, MaxMessageSize)
	}
	return mnl.Message{
		Header: mnl.Header{Length: uint32(n), Type: ControlFamilyID, Flags: flags, Sequence: seq},
		Data:   gb,
	}.MarshalBinary()
}

// ctlHeader is a control message with its headers decoded.
type ctlHeader struct {
	cmd   Command
	flags mnl.HeaderFlags
	seq   uint32
	minor uint32
	word  uint32
	attrs []byte
}

// unframeControl checks and strips the netlink, genl and drbd headers of b, which
// must hold exactly one message.
func unframeControl(b []byte) (ctlHeader, error) {
	var p ctlHeader
	if len(b) > MaxMessageSize {
		return p, fmt.Errorf("message of %d bytes exceeds the limit of %d", len(b), MaxMessageSize)
	}
	if len(b) < ctlMinMessageLen {
		return p, fmt.Errorf("message of %d bytes is shorter than its headers (%d)", len(b), ctlMinMessageLen)
	}
	var m mnl.Message
	if err := m.UnmarshalBinary(b); err != nil {
		return p, fmt.Errorf("bad netlink header: %w", err)
	}
	if int(m.Header.Length) != len(b) {
		return p, fmt.Errorf("netlink header length %d does not match message length %d", m.Header.Length, len(b))
	}
	if m.Header.Type != ControlFamilyID {
		return p, fmt.Errorf("wrong message type %#x: not a %s control message (%#x)", uint16(m.Header.Type), ControlFamilyName, uint16(ControlFamilyID))
	}
	var gm genetlink.Message
	if err := gm.UnmarshalBinary(m.Data); err != nil {
		return p, fmt.Errorf("bad generic netlink header: %w", err)
	}
	if gm.Header.Version != ControlVersion {
		return p, fmt.Errorf("unsupported control protocol version %d (want %d)", gm.Header.Version, ControlVersion)
	}
	if len(gm.Data) < ctlDrbdHeaderLen {
		return p, errors.New("message too short for its drbd header")
	}
	p.cmd = Command(gm.Header.Command)
	p.flags = m.Header.Flags
	p.seq = m.Header.Sequence
	p.minor = binary.NativeEndian.Uint32(gm.Data[0:])
	p.word = binary.NativeEndian.Uint32(gm.Data[4:])
	p.attrs = gm.Data[ctlDrbdHeaderLen:]
	return p, nil
}

// UnmarshalRequest decodes a framed control message produced by
// Request.MarshalBinary. It rejects messages that are malformed, larger than
// MaxMessageSize, not requests, or that carry an unknown mandatory
// attribute. It accepts command numbers it does not know, so that a server
// can answer them with ErrUnknownCommand.
func UnmarshalRequest(b []byte) (*Request, error) {
	p, err := unframeControl(b)
	if err != nil {
		return nil, err
	}
	if p.flags&mnl.Request == 0 {
		return nil, errors.New("message is not a request (NLM_F_REQUEST missing)")
	}
	r := &Request{Command: p.cmd, Seq: p.seq, Minor: p.minor, Flags: p.word}
	ad, err := mnl.NewAttributeDecoder(p.attrs)
	if err != nil {
		return nil, fmt.Errorf("decode %s request: %w", r.Command, err)
	}
	var seen [tlaMax]bool
	for ad.Next() {
		t := ad.Type()
		if t < tlaMax {
			if seen[t] {
				return nil, fmt.Errorf("decode %s request: duplicate top-level attribute %d", r.Command, t)
			}
			seen[t] = true
		}
		switch t {
		case tlaCfgContext:
			decodeNested(ad, "cfg-context", r.Ctx.decode)
		case tlaDiskConf:
			r.Disk = new(DiskConf)
			decodeNested(ad, "disk-conf", r.Disk.decode)
		case tlaResourceOpts:
			r.ResOpts = new(ResOpts)
			decodeNested(ad, "resource-opts", r.ResOpts.decode)
		case tlaNetConf:
			r.Net = new(NetConf)
			decodeNested(ad, "net-conf", r.Net.decode)
		case tlaSetRoleParms:
			r.Role = new(SetRoleParms)
			decodeNested(ad, "set-role-parms", decodeFlagStruct(&r.Role.AssumeUptodate))
		case tlaResizeParms:
			r.Resize = new(ResizeParms)
			decodeNested(ad, "resize-parms", r.Resize.decode)
		case tlaStartOVParms:
			r.StartOV = new(StartOVParms)
			decodeNested(ad, "start-ov-parms", r.StartOV.decode)
		case tlaNewCUUIDParms:
			r.NewCUUID = new(NewCUUIDParms)
			decodeNested(ad, "new-c-uuid-parms", decodeFlagStruct(&r.NewCUUID.ClearBitmap))
		case tlaDisconnectParms:
			r.Disconnect = new(DisconnectParms)
			decodeNested(ad, "disconnect-parms", decodeFlagStruct(&r.Disconnect.Force))
		case tlaDetachParms:
			r.Detach = new(DetachParms)
			decodeNested(ad, "detach-parms", decodeFlagStruct(&r.Detach.Force))
		case tlaDeviceConf:
			r.Device = new(DeviceConf)
			decodeNested(ad, "device-conf", r.Device.decode)
		case tlaConnectParms:
			r.Connect = new(ConnectParms)
			decodeNested(ad, "connect-parms", decodeFlagStruct(&r.Connect.DiscardMyData))
		default:
			skipUnknown(ad, "request")
		}
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("decode %s request: %w", r.Command, err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return r, nil
}

// UnmarshalReply decodes a framed control message produced by
// Reply.MarshalBinary, with the same rules as UnmarshalRequest.
func UnmarshalReply(b []byte) (*Reply, error) {
	p, err := unframeControl(b)
	if err != nil {
		return nil, err
	}
	if p.flags&mnl.Request != 0 {
		return nil, errors.New("message is a request, not a reply")
	}
	r := &Reply{Command: p.cmd, Seq: p.seq, Minor: p.minor, RetCode: RetCode(int32(p.word))}
	ad, err := mnl.NewAttributeDecoder(p.attrs)
	if err != nil {
		return nil, fmt.Errorf("decode %s reply: %w", r.Command, err)
	}
	var seen [tlaMax]bool
	for ad.Next() {
		t := ad.Type()
		if t < tlaMax && t != tlaStateInfo {
			if seen[t] {
				return nil, fmt.Errorf("decode %s reply: duplicate top-level attribute %d", r.Command, t)
			}
			seen[t] = true
		}
		switch t {
		case tlaCfgReply:
			decodeNested(ad, "cfg-reply", func(d *ctlDecoder) {
				switch d.ad.Type() {
				case 1:
					r.Info = d.strMax(MaxInfoLen)
				case 64:
					r.Version = d.str()
				default:
					d.unknown()
				}
			})
		case tlaTimeoutParms:
			decodeNested(ad, "timeout-parms", func(d *ctlDecoder) {
				switch d.ad.Type() {
				case 1:
					r.TimeoutType = d.ad.Uint32()
				default:
					d.unknown()
				}
			})
		case tlaStateInfo:
			if len(r.States) >= MaxStates {
				return nil, fmt.Errorf("decode %s reply: more than %d states", r.Command, MaxStates)
			}
			r.States = append(r.States, StateInfo{})
			decodeNested(ad, "state-info", r.States[len(r.States)-1].decode)
		default:
			skipUnknown(ad, "reply")
		}
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("decode %s reply: %w", r.Command, err)
	}
	return r, nil
}

func (c *CfgContext) encode(e *ctlEncoder) {
	e.u32(1, c.Volume)
	e.str(2, c.ResourceName)
	e.str(3, c.MyAddr)
	e.str(4, c.PeerAddr)
}

func (c *CfgContext) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.Volume = d.ad.Uint32()
	case 2:
		c.ResourceName = d.str()
	case 3:
		c.MyAddr = d.str()
	case 4:
		c.PeerAddr = d.str()
	default:
		d.unknown()
	}
}

func (c *DiskConf) encode(e *ctlEncoder) {
	e.str(1, c.BackingDev)
	e.str(2, c.MetaDev)
	if c.MetaInternal {
		e.s32(3, metaIndexFlexInternal)
	}
	e.u64(4, c.DiskSize)
	e.str(6, c.OnIOError)
	e.str(7, c.Fencing)
	e.u64(8, c.ResyncRate)
	e.u32(10, c.ALExtents)
	e.dur(11, c.CPlanAhead)
	e.dur(12, c.CDelayTarget)
	e.u64(13, c.CFillTarget)
	e.u64(14, c.CMaxRate)
	e.u64(15, c.CMinRate)
	e.flag(18, c.DiskFlushes)
	e.str(64, c.DirectIO)
}

func (c *DiskConf) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.BackingDev = d.str()
	case 2:
		c.MetaDev = d.str()
	case 3:
		switch idx := d.ad.Int32(); idx {
		case metaIndexInternal, metaIndexFlexInternal:
			c.MetaInternal = true
		case metaIndexFlexExternal:
			c.MetaInternal = false
		default:
			d.fail(fmt.Errorf("unsupported meta-disk index %d", idx))
		}
	case 4:
		c.DiskSize = d.ad.Uint64()
	case 6:
		c.OnIOError = d.str()
	case 7:
		c.Fencing = d.str()
	case 8:
		c.ResyncRate = d.ad.Uint64()
	case 10:
		c.ALExtents = d.ad.Uint32()
	case 11:
		c.CPlanAhead = d.dur()
	case 12:
		c.CDelayTarget = d.dur()
	case 13:
		c.CFillTarget = d.ad.Uint64()
	case 14:
		c.CMaxRate = d.ad.Uint64()
	case 15:
		c.CMinRate = d.ad.Uint64()
	case 18:
		c.DiskFlushes = d.flag()
	case 64:
		c.DirectIO = d.str()
	default:
		d.unknown()
	}
}

func (c *ResOpts) encode(e *ctlEncoder) {
	e.str(1, c.CPUMask)
	e.str(2, c.OnNoDataAccessible)
}

func (c *ResOpts) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.CPUMask = d.str()
	case 2:
		c.OnNoDataAccessible = d.str()
	default:
		d.unknown()
	}
}

func (c *NetConf) encode(e *ctlEncoder) {
	e.str(1, c.SharedSecret)
	e.str(2, c.CramHMACAlg)
	e.str(3, c.IntegrityAlg)
	e.str(4, c.VerifyAlg)
	e.str(5, c.CsumsAlg)
	e.u32(6, c.Protocol)
	e.dur(7, c.ConnectInt)
	e.dur(8, c.Timeout)
	e.dur(9, c.PingInt)
	e.dur(10, c.PingTimeout)
	e.u32(11, c.SndBufSize)
	e.u32(12, c.RcvBufSize)
	e.u32(13, c.KoCount)
	e.u32(14, c.MaxBuffers)
	e.u32(15, c.MaxEpochSize)
	e.str(17, c.AfterSB0Pri)
	e.str(18, c.AfterSB1Pri)
	e.str(19, c.AfterSB2Pri)
	e.str(20, c.RRConflict)
	e.flag(24, c.AllowTwoPrimaries)
	e.flag(25, c.DiscardMyData)
	e.str(64, c.PeerName)
	e.str(65, c.MyAddr)
	e.str(66, c.PeerAddr)
}

func (c *NetConf) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.SharedSecret = d.str()
	case 2:
		c.CramHMACAlg = d.str()
	case 3:
		c.IntegrityAlg = d.str()
	case 4:
		c.VerifyAlg = d.str()
	case 5:
		c.CsumsAlg = d.str()
	case 6:
		c.Protocol = d.ad.Uint32()
	case 7:
		c.ConnectInt = d.dur()
	case 8:
		c.Timeout = d.dur()
	case 9:
		c.PingInt = d.dur()
	case 10:
		c.PingTimeout = d.dur()
	case 11:
		c.SndBufSize = d.ad.Uint32()
	case 12:
		c.RcvBufSize = d.ad.Uint32()
	case 13:
		c.KoCount = d.ad.Uint32()
	case 14:
		c.MaxBuffers = d.ad.Uint32()
	case 15:
		c.MaxEpochSize = d.ad.Uint32()
	case 17:
		c.AfterSB0Pri = d.str()
	case 18:
		c.AfterSB1Pri = d.str()
	case 19:
		c.AfterSB2Pri = d.str()
	case 20:
		c.RRConflict = d.str()
	case 24:
		c.AllowTwoPrimaries = d.flag()
	case 25:
		c.DiscardMyData = d.flag()
	case 64:
		c.PeerName = d.str()
	case 65:
		c.MyAddr = d.str()
	case 66:
		c.PeerAddr = d.str()
	default:
		d.unknown()
	}
}

func (c *ResizeParms) encode(e *ctlEncoder) {
	e.u64(1, c.Size)
	e.flag(2, c.Force)
	e.flag(3, c.NoResync)
}

func (c *ResizeParms) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.Size = d.ad.Uint64()
	case 2:
		c.Force = d.flag()
	case 3:
		c.NoResync = d.flag()
	default:
		d.unknown()
	}
}

func (c *StartOVParms) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.Start = d.ad.Uint64()
	case 2:
		c.Stop = d.ad.Uint64()
	default:
		d.unknown()
	}
}

func (c *DeviceConf) encode(e *ctlEncoder) {
	e.u32(1, c.Minor)
	e.str(2, c.KernelDevice)
	e.str(3, c.NBDListen)
}

func (c *DeviceConf) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 1:
		c.Minor = d.ad.Uint32()
	case 2:
		c.KernelDevice = d.str()
	case 3:
		c.NBDListen = d.str()
	default:
		d.unknown()
	}
}

// decodeFlagStruct returns the decoder of a parameter struct whose only field is
// the flag attribute 1.
func decodeFlagStruct(v *bool) func(*ctlDecoder) {
	return func(d *ctlDecoder) {
		switch d.ad.Type() {
		case 1:
			*v = d.flag()
		default:
			d.unknown()
		}
	}
}

func (s *StateInfo) encode(e *ctlEncoder) {
	e.u64(3, s.Size)
	if len(s.UUIDs) > 0 {
		if len(s.UUIDs) > MaxUUIDs {
			e.fail(fmt.Errorf("%d UUIDs exceed the limit of %d", len(s.UUIDs), MaxUUIDs))
			return
		}
		b := make([]byte, 8*len(s.UUIDs))
		for i, u := range s.UUIDs {
			binary.NativeEndian.PutUint64(b[8*i:], u)
		}
		e.ae.Bytes(7|e.mand, b)
	}
	e.u64(15, s.NetSend)
	e.u64(16, s.NetRecv)
	e.u64(17, s.DiskRead)
	e.u64(18, s.DiskWrite)
	e.u64(19, s.ALWrites)
	e.u64(20, s.BMWrites)
	e.str(64, s.ResourceName)
	e.str(65, s.PeerName)
	e.u32(66, s.Minor)
	e.u32(67, s.Volume)
	e.str(68, s.Role)
	e.str(69, s.PeerRole)
	e.str(70, s.ConnState)
	e.str(71, s.DiskState)
	e.str(72, s.PeerDiskState)
	e.str(73, s.Protocol)
	e.str(74, s.Flags)
	e.u64(75, s.LocalCount)
	e.u64(76, s.Pending)
	e.u64(77, s.Unacked)
	e.u64(78, s.AppPending)
	e.u64(79, s.Epochs)
	e.u64(80, s.OutOfSync)
	e.str(81, s.WriteOrdering)
	e.u64(82, s.RsTotal)
	e.u64(83, s.RsLeft)
	e.u64(84, s.RsSpeed)
	e.u64(85, s.RsWant)
	e.u64(86, s.RsETA)
	e.flag(87, s.Verify)
	e.u32(88, s.NBDClients)
	e.str(89, s.KernelDevice)
	e.str(90, s.EventKind)
	e.str(91, s.Message)
}

func (s *StateInfo) decode(d *ctlDecoder) {
	switch d.ad.Type() {
	case 3:
		s.Size = d.ad.Uint64()
	case 7:
		d.ad.Do(func(b []byte) error {
			if len(b)%8 != 0 || len(b) > 8*MaxUUIDs {
				return fmt.Errorf("UUID attribute of %d bytes: want a multiple of 8, at most %d", len(b), 8*MaxUUIDs)
			}
			s.UUIDs = nil
			for i := 0; i < len(b); i += 8 {
				s.UUIDs = append(s.UUIDs, binary.NativeEndian.Uint64(b[i:]))
			}
			return nil
		})
	case 15:
		s.NetSend = d.ad.Uint64()
	case 16:
		s.NetRecv = d.ad.Uint64()
	case 17:
		s.DiskRead = d.ad.Uint64()
	case 18:
		s.DiskWrite = d.ad.Uint64()
	case 19:
		s.ALWrites = d.ad.Uint64()
	case 20:
		s.BMWrites = d.ad.Uint64()
	case 64:
		s.ResourceName = d.str()
	case 65:
		s.PeerName = d.str()
	case 66:
		s.Minor = d.ad.Uint32()
	case 67:
		s.Volume = d.ad.Uint32()
	case 68:
		s.Role = d.str()
	case 69:
		s.PeerRole = d.str()
	case 70:
		s.ConnState = d.str()
	case 71:
		s.DiskState = d.str()
	case 72:
		s.PeerDiskState = d.str()
	case 73:
		s.Protocol = d.str()
	case 74:
		s.Flags = d.str()
	case 75:
		s.LocalCount = d.ad.Uint64()
	case 76:
		s.Pending = d.ad.Uint64()
	case 77:
		s.Unacked = d.ad.Uint64()
	case 78:
		s.AppPending = d.ad.Uint64()
	case 79:
		s.Epochs = d.ad.Uint64()
	case 80:
		s.OutOfSync = d.ad.Uint64()
	case 81:
		s.WriteOrdering = d.str()
	case 82:
		s.RsTotal = d.ad.Uint64()
	case 83:
		s.RsLeft = d.ad.Uint64()
	case 84:
		s.RsSpeed = d.ad.Uint64()
	case 85:
		s.RsWant = d.ad.Uint64()
	case 86:
		s.RsETA = d.ad.Uint64()
	case 87:
		s.Verify = d.flag()
	case 88:
		s.NBDClients = d.ad.Uint32()
	case 89:
		s.KernelDevice = d.str()
	case 90:
		s.EventKind = d.str()
	case 91:
		s.Message = d.str()
	default:
		d.unknown()
	}
}

// ctlEncoder wraps an AttributeEncoder: it leaves out zero values, ORs mand into
// every attribute type and checks string bounds.
type ctlEncoder struct {
	ae   *mnl.AttributeEncoder
	mand uint16 // AttrMandatory for requests, 0 for replies
	err  error  // first error of this encoder, reported by encode
}

func (e *ctlEncoder) fail(err error) {
	if e.err == nil {
		e.err = err
	}
}

func (e *ctlEncoder) encode() ([]byte, error) {
	if e.err != nil {
		return nil, e.err
	}
	return e.ae.Encode()
}

func (e *ctlEncoder) nested(t uint16, fn func(*ctlEncoder)) {
	e.ae.Nested(t|e.mand, func(nae *mnl.AttributeEncoder) error {
		ne := &ctlEncoder{ae: nae, mand: e.mand}
		fn(ne)
		return ne.err
	})
}

func (e *ctlEncoder) str(t uint16, s string) { e.strMax(t, s, MaxStringLen) }

func (e *ctlEncoder) strMax(t uint16, s string, max int) {
	if s == "" {
		return
	}
	if len(s) > max {
		e.fail(fmt.Errorf("attribute %d: string of %d bytes exceeds the limit of %d", t, len(s), max))
		return
	}
	if strings.IndexByte(s, 0) >= 0 {
		e.fail(fmt.Errorf("attribute %d: string contains a NUL byte", t))
		return
	}
	e.ae.String(t|e.mand, s)
}

func (e *ctlEncoder) u32(t uint16, v uint32) {
	if v != 0 {
		e.ae.Uint32(t|e.mand, v)
	}
}

func (e *ctlEncoder) u64(t uint16, v uint64) {
	if v != 0 {
		e.ae.Uint64(t|e.mand, v)
	}
}

func (e *ctlEncoder) s32(t uint16, v int32) {
	if v != 0 {
		e.ae.Int32(t|e.mand, v)
	}
}

func (e *ctlEncoder) dur(t uint16, v time.Duration) {
	if v != 0 {
		e.ae.Int64(t|e.mand, int64(v))
	}
}

// flag encodes a true bool as a zero-length NLA_FLAG attribute.
func (e *ctlEncoder) flag(t uint16, v bool) {
	if v {
		e.ae.Flag(t|e.mand, true)
	}
}

// ctlDecoder wraps the AttributeDecoder of one nested attribute.
type ctlDecoder struct {
	ad *mnl.AttributeDecoder
}

// nested decodes the current attribute of ad as a nested struct, calling fn
// once per field attribute.
func decodeNested(ad *mnl.AttributeDecoder, where string, fn func(*ctlDecoder)) {
	ad.Nested(func(nad *mnl.AttributeDecoder) error {
		d := &ctlDecoder{ad: nad}
		for nad.Next() {
			fn(d)
		}
		if err := nad.Err(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		return nil
	})
}

// unknown rejects the current attribute of ad if it is mandatory and
// otherwise skips it.
func skipUnknown(ad *mnl.AttributeDecoder, where string) {
	if ad.TypeFlags()&AttrMandatory != 0 {
		t := ad.Type()
		ad.Do(func([]byte) error {
			return fmt.Errorf("unknown mandatory attribute %d in %s", t, where)
		})
	}
}

func (d *ctlDecoder) unknown() {
	if d.ad.TypeFlags()&AttrMandatory != 0 {
		t := d.ad.Type()
		d.fail(fmt.Errorf("unknown mandatory attribute %d", t))
	}
}

// fail records err as the decoder's error unless it already has one.
func (d *ctlDecoder) fail(err error) {
	d.ad.Do(func([]byte) error { return err })
}

func (d *ctlDecoder) str() string { return d.strMax(MaxStringLen) }

// strMax decodes a NUL-terminated string of at most max bytes that contains
// no other NUL byte.
func (d *ctlDecoder) strMax(max int) string {
	var s string
	t := d.ad.Type()
	d.ad.Do(func(b []byte) error {
		if len(b) == 0 || b[len(b)-1] != 0 {
			return fmt.Errorf("attribute %d: string is not NUL-terminated", t)
		}
		b = b[:len(b)-1]
		if len(b) > max {
			return fmt.Errorf("attribute %d: string of %d bytes exceeds the limit of %d", t, len(b), max)
		}
		for _, c := range b {
			if c == 0 {
				return fmt.Errorf("attribute %d: string contains a NUL byte", t)
			}
		}
		s = string(b)
		return nil
	})
	return s
}

func (d *ctlDecoder) dur() time.Duration { return time.Duration(d.ad.Int64()) }

// flag decodes a bool sent as an NLA_FLAG (no payload) or, as DRBD's
// __flg_field does, as a u8 of 0 or 1.
func (d *ctlDecoder) flag() bool {
	var v bool
	t := d.ad.Type()
	d.ad.Do(func(b []byte) error {
		switch {
		case len(b) == 0:
			v = true
		case len(b) == 1 && b[0] <= 1:
			v = b[0] == 1
		default:
			return fmt.Errorf("attribute %d is not a flag", t)
		}
		return nil
	})
	return v
}
