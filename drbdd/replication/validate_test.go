package replication

import (
	"errors"
	"testing"
)

func st(role, peer Role, conn ConnState, disk, pdsk DiskState) State {
	return State{Role: role, Peer: peer, Conn: conn, Disk: disk, PDsk: pdsk}
}

func TestCheckRules(t *testing.T) {
	cases := []struct {
		name   string
		os, ns State
		ctx    Context
		want   Result
	}{
		{"promote UpToDate standalone",
			st(Secondary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Primary, RoleUnknown, StandAlone, UpToDate, DUnknown), Context{}, SSSuccess},
		{"promote Inconsistent standalone",
			st(Secondary, RoleUnknown, StandAlone, Inconsistent, DUnknown),
			st(Primary, RoleUnknown, StandAlone, Inconsistent, DUnknown), Context{}, SSNoUpToDateDisk},
		{"promote diskless standalone",
			st(Secondary, RoleUnknown, StandAlone, Diskless, DUnknown),
			st(Primary, RoleUnknown, StandAlone, Diskless, DUnknown), Context{}, SSNoUpToDateDisk},
		{"promote Inconsistent with UpToDate peer",
			st(Secondary, Secondary, Connected, Inconsistent, UpToDate),
			st(Primary, Secondary, Connected, Inconsistent, UpToDate), Context{}, SSSuccess},
		{"two primaries refused",
			st(Secondary, Primary, Connected, UpToDate, UpToDate),
			st(Primary, Primary, Connected, UpToDate, UpToDate), Context{}, SSTwoPrimaries},
		{"two primaries allowed",
			st(Secondary, Primary, Connected, UpToDate, UpToDate),
			st(Primary, Primary, Connected, UpToDate, UpToDate), Context{TwoPrimaries: true}, SSSuccess},
		{"demote while in use",
			st(Primary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Secondary, RoleUnknown, StandAlone, UpToDate, DUnknown), Context{InUse: true}, SSDeviceInUse},
		{"fencing refuses primary with unknown peer",
			st(Secondary, RoleUnknown, WFConnection, UpToDate, DUnknown),
			st(Primary, RoleUnknown, WFConnection, UpToDate, DUnknown), Context{Fencing: FenceResourceOnly}, SSPrimaryNOP},
		{"fencing allows primary with outdated peer",
			st(Secondary, RoleUnknown, WFConnection, UpToDate, Outdated),
			st(Primary, RoleUnknown, WFConnection, UpToDate, Outdated), Context{Fencing: FenceResourceOnly}, SSSuccess},
		{"sync without local disk",
			st(Secondary, Primary, Connected, Diskless, UpToDate),
			st(Secondary, Primary, SyncTarget, Diskless, UpToDate), Context{}, SSNoLocalDisk},
		{"sync without remote disk",
			st(Primary, Secondary, Connected, UpToDate, Diskless),
			st(Primary, Secondary, SyncSource, UpToDate, Diskless), Context{}, SSNoRemoteDisk},
		{"sync between two inconsistent",
			st(Secondary, Secondary, Connected, Inconsistent, Inconsistent),
			st(Secondary, Secondary, SyncSource, Inconsistent, Inconsistent), Context{}, SSNoUpToDateDisk},
		{"outdated while connected",
			st(Secondary, Primary, Connected, UpToDate, UpToDate),
			st(Secondary, Primary, Connected, Outdated, UpToDate), Context{}, SSConnectedOutdates},
		{"verify without alg",
			st(Primary, Secondary, Connected, UpToDate, UpToDate),
			st(Primary, Secondary, VerifyS, UpToDate, UpToDate), Context{AgreedProtocol: 101}, SSNoVerifyAlg},
		{"verify old peer",
			st(Primary, Secondary, Connected, UpToDate, UpToDate),
			st(Primary, Secondary, VerifyS, UpToDate, UpToDate), Context{HaveVerifyAlg: true, AgreedProtocol: 87}, SSNotSupported},
		{"verify ok",
			st(Primary, Secondary, Connected, UpToDate, UpToDate),
			st(Primary, Secondary, VerifyS, UpToDate, UpToDate), Context{HaveVerifyAlg: true, AgreedProtocol: 101}, SSSuccess},
		{"verify while syncing",
			st(Primary, Secondary, SyncSource, UpToDate, Inconsistent),
			st(Primary, Secondary, VerifyS, UpToDate, Inconsistent), Context{HaveVerifyAlg: true, AgreedProtocol: 101}, SSResyncRunning},
		{"verify needs connection",
			st(Primary, RoleUnknown, WFConnection, UpToDate, DUnknown),
			st(Primary, RoleUnknown, VerifyS, UpToDate, DUnknown), Context{HaveVerifyAlg: true, AgreedProtocol: 101}, SSNeedConnection},
		{"disconnect standalone",
			st(Secondary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Secondary, RoleUnknown, Disconnecting, UpToDate, DUnknown), Context{}, SSAlreadyStandAlone},
		{"disconnect unconnected is transient",
			st(Secondary, RoleUnknown, Unconnected, UpToDate, DUnknown),
			st(Secondary, RoleUnknown, Disconnecting, UpToDate, DUnknown), Context{}, SSInTransientState},
		{"diskless to uptodate skips attach",
			st(Secondary, RoleUnknown, StandAlone, Diskless, DUnknown),
			st(Secondary, RoleUnknown, StandAlone, UpToDate, DUnknown), Context{}, SSIsDiskless},
		{"attach path",
			st(Secondary, RoleUnknown, StandAlone, Diskless, DUnknown),
			st(Secondary, RoleUnknown, StandAlone, Attaching, DUnknown), Context{}, SSSuccess},
		{"outdate an inconsistent disk",
			st(Secondary, RoleUnknown, StandAlone, Inconsistent, DUnknown),
			st(Secondary, RoleUnknown, StandAlone, Outdated, DUnknown), Context{}, SSLowerThanOutdated},
		{"connect without net config",
			st(Secondary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Secondary, RoleUnknown, WFConnection, UpToDate, DUnknown), Context{}, SSNoNetConfig},
		{"start sync while syncing",
			st(Secondary, Primary, SyncTarget, Inconsistent, UpToDate),
			st(Secondary, Primary, StartingSyncT, Inconsistent, UpToDate), Context{}, SSResyncRunning},
		{"start sync unconnected",
			st(Secondary, RoleUnknown, WFConnection, UpToDate, DUnknown),
			st(Secondary, RoleUnknown, StartingSyncS, UpToDate, Inconsistent), Context{}, SSNeedConnection},
		{"network failure to sync target",
			st(Secondary, RoleUnknown, NetworkFailure, Inconsistent, DUnknown),
			st(Secondary, Primary, SyncTarget, Inconsistent, UpToDate), Context{}, SSNeedConnection},
		{"hard change skips soft rules",
			st(Secondary, RoleUnknown, NetworkFailure, Inconsistent, DUnknown),
			st(Secondary, Primary, SyncTarget, Inconsistent, UpToDate), Context{Hard: true}, SSSuccess},
		{"already invalid for the same reason",
			st(Primary, RoleUnknown, StandAlone, Inconsistent, DUnknown),
			st(Primary, RoleUnknown, StandAlone, Inconsistent, Outdated), Context{}, SSSuccess},
		{"hard detach of a lone primary",
			st(Primary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Primary, RoleUnknown, StandAlone, Diskless, DUnknown), Context{Hard: true}, SSSuccess},
		{"requested detach of a lone primary",
			st(Primary, RoleUnknown, StandAlone, UpToDate, DUnknown),
			st(Primary, RoleUnknown, StandAlone, Diskless, DUnknown), Context{}, SSNoUpToDateDisk},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(c.os, c.ns, c.ctx)
			got := SSSuccess
			var se *StateError
			if errors.As(err, &se) {
				got = se.Result
			} else if err != nil {
				t.Fatalf("unexpected error type %T", err)
			}
			if got != c.want {
				t.Fatalf("Check(%v -> %v) = %v (%d), want %v (%d)", c.os, c.ns, got, got, c.want, c.want)
			}
		})
	}
}

func TestStateErrorText(t *testing.T) {
	err := Check(st(Secondary, RoleUnknown, StandAlone, Inconsistent, DUnknown),
		st(Primary, RoleUnknown, StandAlone, Inconsistent, DUnknown), Context{})
	if err == nil || err.Error() != "State change failed: (-2) Need access to UpToDate data" {
		t.Fatalf("got %v", err)
	}
}

func TestDiff(t *testing.T) {
	a := Initial()
	b := a
	b.Conn, b.PDsk = Connected, UpToDate
	if got := b.Diff(a); got != "conn( StandAlone -> Connected ) pdsk( DUnknown -> UpToDate )" {
		t.Fatalf("got %q", got)
	}
	if a.Diff(a) != "" {
		t.Fatal("no change must render empty")
	}
	if !a.Unconfigured() {
		t.Fatal("initial state is unconfigured")
	}
}
