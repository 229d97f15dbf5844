package replication

import (
	"fmt"

	"drbdd/protocol"
)

// Result is a state change result code, DRBD's enum drbd_state_rv as the
// wire protocol defines it (P_STATE_CHG_REPLY carries it): positive means
// success, negative names the rule that refused the change. Its String
// is DRBD's text.
type Result = protocol.StateChangeResult

// State change results.
const (
	SSCWNoNeed          = protocol.SSCWNoNeed
	SSCWSuccess         = protocol.SSCWSuccess
	SSNothingToDo       = protocol.SSNothingToDo
	SSSuccess           = protocol.SSSuccess
	SSUnknownError      = protocol.SSUnknownError
	SSTwoPrimaries      = protocol.SSTwoPrimaries
	SSNoUpToDateDisk    = protocol.SSNoUpToDateDisk
	SSNoLocalDisk       = protocol.SSNoLocalDisk
	SSNoRemoteDisk      = protocol.SSNoRemoteDisk
	SSConnectedOutdates = protocol.SSConnectedOutdates
	SSPrimaryNOP        = protocol.SSPrimaryNOP
	SSResyncRunning     = protocol.SSResyncRunning
	SSAlreadyStandAlone = protocol.SSAlreadyStandAlone
	SSCWFailedByPeer    = protocol.SSCWFailedByPeer
	SSIsDiskless        = protocol.SSIsDiskless
	SSDeviceInUse       = protocol.SSDeviceInUse
	SSNoNetConfig       = protocol.SSNoNetConfig
	SSNoVerifyAlg       = protocol.SSNoVerifyAlg
	SSNeedConnection    = protocol.SSNeedConnection
	SSLowerThanOutdated = protocol.SSLowerThanOutdated
	SSNotSupported      = protocol.SSNotSupported
	SSInTransientState  = protocol.SSInTransientState
	SSConcurrentStChg   = protocol.SSConcurrentStChg
	SSOVolPeerPri       = protocol.SSOtherVolPeerPrimary
	SSOutdateWOConn     = protocol.SSOutdateWithoutConn
)

// StateError is a refused state change. Its text is what drbdsetup prints:
// "State change failed: (-2) Need access to UpToDate data".
type StateError struct {
	Result Result
}

func (e *StateError) Error() string {
	return fmt.Sprintf("State change failed: (%d) %s", int(e.Result), e.Result)
}

// Fencing is the resource's fencing policy.
type Fencing uint8

// Fencing policies.
const (
	FenceDontCare Fencing = iota
	FenceResourceOnly
	FenceResourceAndSTONITH
)

// Context is what Check needs to know beyond the two states: facts that
// live in the configuration or in the engine but decide validity.
type Context struct {
	// TwoPrimaries is net.allow-two-primaries.
	TwoPrimaries bool
	// Fencing is the fencing policy.
	Fencing Fencing
	// InUse is true while the device is open: NBD clients connected or the
	// kernel device held open. DRBD refuses to become Secondary then.
	InUse bool
	// HaveVerifyAlg is true when net.verify-alg is set.
	HaveVerifyAlg bool
	// AgreedProtocol is the protocol version agreed with the peer (0 when
	// never connected).
	AgreedProtocol int
	// Hard marks changes forced by events (a disk failure, a lost
	// connection): those skip the soft-transition rules, exactly like
	// DRBD's CS_HARD.
	Hard bool
}

// validState checks ns on its own, as DRBD's is_valid_state does.
func validState(ns State, c Context) Result {
	if !c.TwoPrimaries && ns.Role == Primary && ns.Peer == Primary {
		return SSTwoPrimaries
	}
	switch {
	case ns.Role == Secondary && c.InUse:
		return SSDeviceInUse
	case ns.Role == Primary && ns.Conn < Connected && ns.Disk < UpToDate:
		return SSNoUpToDateDisk
	case c.Fencing >= FenceResourceOnly && ns.Role == Primary && ns.Conn < Connected && ns.PDsk >= DUnknown:
		return SSPrimaryNOP
	case ns.Role == Primary && ns.Disk <= Inconsistent && ns.PDsk <= Inconsistent:
		return SSNoUpToDateDisk
	case ns.Conn > Connected && ns.Disk < Inconsistent:
		return SSNoLocalDisk
	case ns.Conn > Connected && ns.PDsk < Inconsistent:
		return SSNoRemoteDisk
	case ns.Conn > Connected && ns.Disk < UpToDate && ns.PDsk < UpToDate:
		return SSNoUpToDateDisk
	case (ns.Conn == Connected || ns.Conn == WFBitMapS || ns.Conn == SyncSource || ns.Conn == PausedSyncS) && ns.Disk == Outdated:
		return SSConnectedOutdates
	case (ns.Conn == VerifyS || ns.Conn == VerifyT) && !c.HaveVerifyAlg:
		return SSNoVerifyAlg
	case (ns.Conn == VerifyS || ns.Conn == VerifyT) && c.AgreedProtocol < 88:
		return SSNotSupported
	}
	return SSSuccess
}

// softTransition checks the step from os to ns, as DRBD's
// is_valid_soft_transition does for changes the user asked for.
func softTransition(os, ns State) Result {
	switch {
	case (ns.Conn == StartingSyncT || ns.Conn == StartingSyncS) && os.Conn > Connected:
		return SSResyncRunning
	case ns.Conn == Disconnecting && os.Conn == StandAlone:
		return SSAlreadyStandAlone
	case ns.Disk > Attaching && os.Disk == Diskless:
		return SSIsDiskless
	case ns.Conn == WFConnection && os.Conn < Unconnected:
		return SSNoNetConfig
	case ns.Disk == Outdated && os.Disk < Outdated && os.Disk != Attaching:
		return SSLowerThanOutdated
	case ns.Conn == Disconnecting && os.Conn == Unconnected:
		return SSInTransientState
	case (ns.Conn == VerifyS || ns.Conn == VerifyT) && os.Conn < Connected:
		return SSNeedConnection
	case (ns.Conn == VerifyS || ns.Conn == VerifyT) && ns.Conn != os.Conn && os.Conn > Connected:
		return SSResyncRunning
	case (ns.Conn == StartingSyncS || ns.Conn == StartingSyncT) && os.Conn < Connected:
		return SSNeedConnection
	case (ns.Conn == SyncTarget || ns.Conn == SyncSource) && os.Conn < WFReportParams:
		return SSNeedConnection
	}
	return SSSuccess
}

// Check decides whether the change from os to ns may happen. It returns nil
// or a *StateError with DRBD's reason.
//
// Hard changes (forced by events such as a disk failure or a lost
// connection) are always accepted, as with DRBD's CS_HARD: the world has
// already changed. For requested changes, a new state that is invalid is
// still accepted when the old state was invalid for the very same reason,
// which lets a degraded device make progress without first repairing an
// unrelated problem; every requested change must also pass the transition
// rules.
func Check(os, ns State, c Context) error {
	if ns == os || c.Hard {
		return nil
	}
	rv := validState(ns, c)
	if rv >= SSSuccess || validState(os, c) == rv {
		rv = softTransition(os, ns)
	}
	if rv < SSSuccess {
		return &StateError{Result: rv}
	}
	return nil
}
