package protocol

import (
	"encoding/binary"
	"testing"
)

// Bit layout of union drbd_state on a little-endian host: role bits 0-1,
// peer 2-3, conn 4-8, disk 9-12, pdsk 13-16, then susp, aftr_isp,
// peer_isp, user_isp, susp_nod, susp_fen in bits 17-22.
func TestStateVectors(t *testing.T) {
	tests := []struct {
		s    State
		want uint32
	}{
		// drbd_set_defaults(): Secondary/Unknown StandAlone Diskless/DUnknown.
		{State{Role: RoleSecondary, Peer: RoleUnknown, Conn: ConnStandAlone, Disk: DiskDiskless, PDsk: DiskUnknown}, 0x0000c002},
		{State{Role: RolePrimary, Peer: RoleSecondary, Conn: ConnConnected, Disk: DiskUpToDate, PDsk: DiskUpToDate}, 0x000110a9},
		{State{Role: RoleSecondary, Peer: RolePrimary, Conn: ConnSyncTarget, Disk: DiskInconsistent, PDsk: DiskUpToDate}, 0x00010916},
		{State{Susp: true}, 1 << 17},
		{State{AftrISP: true}, 1 << 18},
		{State{PeerISP: true}, 1 << 19},
		{State{UserISP: true}, 1 << 20},
		{State{SuspNod: true}, 1 << 21},
		{State{SuspFen: true}, 1 << 22},
		{State{Role: RoleMask}, 0x3},
		{State{Peer: RoleMask}, 0xc},
		{State{Conn: ConnMask}, 0x1f0},
		{State{Disk: DiskMask}, 0x1e00},
		{State{PDsk: DiskMask}, 0x1e000},
	}
	for _, tt := range tests {
		if got := tt.s.Pack(); got != tt.want {
			t.Errorf("%v.Pack() = %#x, want %#x", tt.s, got, tt.want)
		}
		if got := UnpackState(tt.want); got != tt.s {
			t.Errorf("UnpackState(%#x) = %v, want %v", tt.want, got, tt.s)
		}
		// On the wire: cpu_to_be32(state.i).
		s := tt.s
		b := s.MarshalAppend(nil)
		if binary.BigEndian.Uint32(b) != tt.want || len(b) != StateSize {
			t.Errorf("P_STATE payload %x", b)
		}
	}
}

// Every valid combination of roles, states and flags survives pack and
// unpack, and no two combinations share a value.
func TestStatePackExhaustive(t *testing.T) {
	seen := make(map[uint32]bool)
	for r := RoleUnknown; r <= RoleSecondary; r++ {
		for p := RoleUnknown; p <= RoleSecondary; p++ {
			for c := ConnStandAlone; c <= ConnBehind; c++ {
				for d := DiskDiskless; d <= DiskUpToDate; d++ {
					for pd := DiskDiskless; pd <= DiskUpToDate; pd++ {
						for f := 0; f < 64; f++ {
							s := State{Role: r, Peer: p, Conn: c, Disk: d, PDsk: pd,
								Susp: f&1 != 0, AftrISP: f&2 != 0, PeerISP: f&4 != 0,
								UserISP: f&8 != 0, SuspNod: f&16 != 0, SuspFen: f&32 != 0}
							v := s.Pack()
							if v>>23 != 0 {
								t.Fatalf("%v uses padding bits: %#x", s, v)
							}
							if UnpackState(v) != s {
								t.Fatalf("round trip of %v via %#x gives %v", s, v, UnpackState(v))
							}
							if seen[v] {
								t.Fatalf("%#x produced twice", v)
							}
							seen[v] = true
							if err := s.Validate(); err != nil {
								t.Fatal(err)
							}
						}
					}
				}
			}
		}
	}
}

func TestStateIgnoresPadding(t *testing.T) {
	if UnpackState(0xff800000) != (State{}) {
		t.Fatal("padding bits leak into fields")
	}
	if err := UnpackState(uint32(ConnMask) << 4).Validate(); err == nil {
		t.Fatal("mask value validated as a state")
	}
}

func TestStateNames(t *testing.T) {
	conns := []string{"StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe",
		"NetworkFailure", "ProtocolError", "TearDown", "WFConnection", "WFReportParams",
		"Connected", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID",
		"SyncSource", "SyncTarget", "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT",
		"Ahead", "Behind"}
	for i, n := range conns {
		if got := ConnState(i).String(); got != n {
			t.Errorf("ConnState(%d) = %q, want %q", i, got, n)
		}
	}
	disks := []string{"Diskless", "Attaching", "Failed", "Negotiating", "Inconsistent",
		"Outdated", "DUnknown", "Consistent", "UpToDate"}
	for i, n := range disks {
		if got := DiskState(i).String(); got != n {
			t.Errorf("DiskState(%d) = %q, want %q", i, got, n)
		}
	}
	for i, n := range []string{"Unknown", "Primary", "Secondary"} {
		if got := Role(i).String(); got != n {
			t.Errorf("Role(%d) = %q, want %q", i, got, n)
		}
	}
	if ConnState(24).String() != "ConnState(24)" || DiskState(9).String() != "DiskState(9)" || Role(3).String() != "Role(3)" {
		t.Error("out of range names")
	}
	if SSTwoPrimaries.Error() != "Multiple primaries not allowed by config" ||
		SSPrimaryNOP.String() != "Refusing to be Primary while peer is not outdated" ||
		SSOutdateWithoutConn.String() != "Need a connection for a graceful disconnect/outdate peer" {
		t.Error("state change texts differ from drbd_strings.c")
	}
	for r := SSAfterLastError + 1; r <= SSCWNoNeed; r++ {
		if r == -3 {
			continue // not defined by DRBD
		}
		if _, ok := stateChangeTexts[r]; !ok {
			t.Errorf("no text for %d", r)
		}
	}
	if !SSSuccess.IsSuccess() || !SSCWNoNeed.IsSuccess() || SSUnknownError.IsSuccess() || SSTwoPrimaries.IsSuccess() {
		t.Error("IsSuccess")
	}
	s := State{Role: RolePrimary, Peer: RoleSecondary, Conn: ConnConnected, Disk: DiskUpToDate, PDsk: DiskUpToDate, Susp: true}
	if got := s.String(); got != "{ cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate susp }" {
		t.Errorf("State.String() = %q", got)
	}
}

// convert_state(): the peer's view becomes ours.
func TestStateFromPeer(t *testing.T) {
	peer := State{Role: RolePrimary, Peer: RoleSecondary, Conn: ConnStartingSyncS,
		Disk: DiskUpToDate, PDsk: DiskInconsistent, UserISP: true, Susp: true}
	got := peer.FromPeer()
	want := State{Role: RoleSecondary, Peer: RolePrimary, Conn: ConnStartingSyncT,
		Disk: DiskInconsistent, PDsk: DiskUpToDate, UserISP: true, PeerISP: true, Susp: true}
	if got != want {
		t.Fatalf("FromPeer = %v, want %v", got, want)
	}
	conv := map[ConnState]ConnState{
		ConnWFReportParams: ConnWFReportParams, ConnConnected: ConnConnected,
		ConnStartingSyncS: ConnStartingSyncT, ConnStartingSyncT: ConnStartingSyncS,
		ConnDisconnecting: ConnTearDown, ConnVerifyS: ConnVerifyT, ConnMask: ConnMask,
		ConnSyncSource: ConnStandAlone, ConnVerifyT: ConnStandAlone,
	}
	for from, to := range conv {
		if got := (State{Conn: from}).FromPeer().Conn; got != to {
			t.Errorf("FromPeer conn %s = %s, want %s", from, got, to)
		}
	}
	mask := State{Role: RoleMask}.FromPeer()
	if mask.Peer != RoleMask || mask.Role != 0 {
		t.Errorf("mask conversion: %+v", mask)
	}
}
