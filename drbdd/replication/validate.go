package replication

import "fmt"

// Result is a state change result code, numbered as DRBD's enum
// drbd_state_rv: positive means success, negative names the rule that
// refused the change.
type Result int

// State change results.
const (
	SSCWNoNeed          Result = 4
	SSCWSuccess         Result = 3
	SSNothingToDo       Result = 2
	SSSuccess           Result = 1
	SSUnknownError      Result = 0
	SSTwoPrimaries      Result = -1
	SSNoUpToDateDisk    Result = -2
	SSNoLocalDisk       Result = -4
	SSNoRemoteDisk      Result = -5
	SSConnectedOutdates Result = -6
	SSPrimaryNOP        Result = -7
	SSResyncRunning     Result = -8
	SSAlreadyStandAlone Result = -9
	SSCWFailedByPeer    Result = -10
	SSIsDiskless        Result = -11
	SSDeviceInUse       Result = -12
	SSNoNetConfig       Result = -13
	SSNoVerifyAlg       Result = -14
	SSNeedConnection    Result = -15
	SSLowerThanOutdated Result = -16
	SSNotSupported      Result = -17
	SSInTransientState  Result = -18
	SSConcurrentStChg   Result = -19
	SSOVolPeerPri       Result = -20
	SSOutdateWOConn     Result = -21
)

var resultText = map[Result]string{
	SSCWNoNeed:          "Cluster wide state change not necessary",
	SSCWSuccess:         "Cluster wide state change successful",
	SSNothingToDo:       "State change not necessary",
	SSSuccess:           "Success",
	SSUnknownError:      "Unknown error",
	SSTwoPrimaries:      "Multiple primaries not allowed by config",
	SSNoUpToDateDisk:    "Need access to UpToDate data",
	SSNoLocalDisk:       "Can not resync without local disk",
	SSNoRemoteDisk:      "Can not resync without remote disk",
	SSConnectedOutdates: "Refusing to be Outdated while Connected",
	SSPrimaryNOP:        "Refusing to be Primary while peer is not outdated",
	SSResyncRunning:     "Can not start OV/resync since it is already active",
	SSAlreadyStandAlone: "Can not disconnect a StandAlone device",
	SSCWFailedByPeer:    "State change was refused by peer node",
	SSIsDiskless:        "Device is diskless, the requested operation requires a disk",
	SSDeviceInUse:       "Device is held open by someone",
	SSNoNetConfig:       "Have no net/connection configuration",
	SSNoVerifyAlg:       "Need a verify algorithm to start online verify",
	SSNeedConnection:    "Need a connection to start verify or resync",
	SSLowerThanOutdated: "Disk state is lower than outdated",
	SSNotSupported:      "Peer does not support protocol",
	SSInTransientState:  "In transient state, retry after next state change",
	SSConcurrentStChg:   "Concurrent state changes detected and aborted",
	SSOVolPeerPri:       "Other vol primary on peer not allowed by config",
	SSOutdateWOConn:     "Need a connection for a graceful disconnect/outdate peer",
}

func (r Result) String() string {
	if s, ok := resultText[r]; ok {
		return s
	}
	return fmt.Sprintf("state change result %d", int(r))
}

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
