package netlink

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	mnl "github.com/mdlayher/netlink"
)

func fullDiskConf() *DiskConf {
	return &DiskConf{
		BackingDev:   "/var/lib/drbdd/alice.img",
		MetaDev:      "/var/lib/drbdd/alice.md",
		MetaInternal: false,
		DiskSize:     1 << 30,
		OnIOError:    "detach",
		Fencing:      "resource-only",
		ResyncRate:   100 << 20,
		ALExtents:    1237,
		CPlanAhead:   2 * time.Second,
		CDelayTarget: time.Second,
		CFillTarget:  1 << 20,
		CMaxRate:     100 << 20,
		CMinRate:     250 << 10,
		DirectIO:     "auto",
	}
}

func fullNetConf() *NetConf {
	return &NetConf{
		SharedSecret:      "change-me",
		CramHMACAlg:       "sha256",
		IntegrityAlg:      "crc32c",
		VerifyAlg:         "sha1",
		CsumsAlg:          "md5",
		Protocol:          ProtocolC,
		ConnectInt:        10 * time.Second,
		Timeout:           6 * time.Second,
		PingInt:           10 * time.Second,
		PingTimeout:       500 * time.Millisecond,
		SndBufSize:        128 << 10,
		RcvBufSize:        256 << 10,
		KoCount:           7,
		MaxBuffers:        2048,
		MaxEpochSize:      2048,
		AfterSB0Pri:       "disconnect",
		AfterSB1Pri:       "consensus",
		AfterSB2Pri:       "disconnect",
		RRConflict:        "disconnect",
		AllowTwoPrimaries: true,
		DiscardMyData:     true,
		PeerName:          "bob",
		MyAddr:            "127.0.0.1:7789",
		PeerAddr:          "127.0.0.2:7789",
	}
}

func fullStateInfo(name string, minor uint32) StateInfo {
	return StateInfo{
		ResourceName:  name,
		PeerName:      "bob",
		Minor:         minor,
		Volume:        0,
		Role:          "Primary",
		PeerRole:      "Secondary",
		ConnState:     "SyncSource",
		DiskState:     "UpToDate",
		PeerDiskState: "Inconsistent",
		Protocol:      "C",
		Flags:         "r-----",
		Size:          1 << 30,
		NetSend:       1,
		NetRecv:       2,
		DiskRead:      3,
		DiskWrite:     4,
		ALWrites:      5,
		BMWrites:      6,
		LocalCount:    7,
		Pending:       8,
		Unacked:       9,
		AppPending:    10,
		Epochs:        11,
		OutOfSync:     12,
		WriteOrdering: "f",
		RsTotal:       13,
		RsLeft:        14,
		RsSpeed:       15,
		RsWant:        16,
		RsETA:         17,
		Verify:        true,
		UUIDs:         []uint64{0xdeadbeef00000004, 0x1, 0x2, 0x3},
		NBDClients:    2,
		KernelDevice:  "/dev/nbd0",
		EventKind:     "change",
		Message:       name + ": conn( WFConnection -> Connected )",
	}
}

// sampleRequests returns one request per command, each with the parts that
// command uses, plus one that sets every optional part.
func sampleRequests() []*Request {
	ctx := CfgContext{ResourceName: "r0"}
	var reqs []*Request
	for c := range Command(255) {
		if !c.Known() {
			continue
		}
		r := &Request{Command: c, Seq: uint32(c) + 1, Minor: uint32(c) % 3, Ctx: ctx}
		switch c {
		case Connect:
			r.Net = fullNetConf()
			r.Connect = &ConnectParms{DiscardMyData: true}
		case ChgNetOpts:
			r.Net = &NetConf{Protocol: ProtocolA}
			r.Flags = FlagSetDefaults
		case Attach:
			r.Disk = fullDiskConf()
		case ChgDiskOpts:
			r.Disk = &DiskConf{MetaInternal: true, ResyncRate: 1}
		case ResourceOpts:
			r.ResOpts = &ResOpts{CPUMask: "ff", OnNoDataAccessible: "suspend-io"}
		case Primary:
			r.Role = &SetRoleParms{AssumeUptodate: true}
		case Secondary:
			r.Role = &SetRoleParms{}
		case Resize:
			r.Resize = &ResizeParms{Size: 1 << 40, Force: true, NoResync: true}
		case StartOV:
			r.StartOV = &StartOVParms{Start: 8, Stop: 1 << 20}
		case NewCurrentUUID:
			r.NewCUUID = &NewCUUIDParms{ClearBitmap: true}
		case Disconnect:
			r.Disconnect = &DisconnectParms{Force: true}
		case Detach:
			r.Detach = &DetachParms{Force: true}
		case NewMinor:
			r.Ctx.Volume = 1
			r.Device = &DeviceConf{Minor: 3, KernelDevice: "/dev/nbd3", NBDListen: "unix:/run/drbdd/r0.nbd"}
		case GetStatus:
			r.Ctx = CfgContext{}
		}
		reqs = append(reqs, r)
	}
	reqs = append(reqs, &Request{
		Command: Connect, Seq: 1 << 31, Minor: 1<<32 - 1, Flags: 1<<32 - 1,
		Ctx:     CfgContext{Volume: 7, ResourceName: "all-parts", MyAddr: "[::1]:7789", PeerAddr: "[::2]:7789"},
		ResOpts: &ResOpts{}, Disk: &DiskConf{}, Net: &NetConf{}, Role: &SetRoleParms{},
		Resize: &ResizeParms{}, StartOV: &StartOVParms{}, NewCUUID: &NewCUUIDParms{},
		Disconnect: &DisconnectParms{}, Detach: &DetachParms{}, Device: &DeviceConf{}, Connect: &ConnectParms{},
	})
	return reqs
}

func sampleReplies() []*Reply {
	return []*Reply{
		{Command: Primary, Seq: 1, Minor: 0, RetCode: NoError},
		{Command: Primary, Seq: 2, RetCode: SSNoUpToDateDisk, Info: "State change failed: (-2) Need access to UpToDate data"},
		{Command: GetStatus, Seq: 3, RetCode: NoError, Version: "drbdd 0.1 (api:1/proto:86-101)",
			States: []StateInfo{fullStateInfo("r0", 0), fullStateInfo("r1", 1), {ResourceName: "r2"}}},
		{Command: Event, Seq: 4, Minor: 1, RetCode: NoError, States: []StateInfo{fullStateInfo("r1", 1)}},
		{Command: GetTimeoutType, Seq: 5, RetCode: NoError, TimeoutType: TimeoutPeerOutdated},
		{Command: Command(99), Seq: 6, RetCode: ErrUnknownCommand, Info: "unknown command 99"},
		{Command: Subscribe, Seq: 7, RetCode: NoError, Info: strings.Repeat("x", MaxInfoLen)},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, want := range sampleRequests() {
		b, err := want.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: marshal: %v", want.Command, err)
		}
		got, err := UnmarshalRequest(b)
		if err != nil {
			t.Fatalf("%s: unmarshal: %v", want.Command, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: round trip mismatch:\n got %+v\nwant %+v", want.Command, got, want)
		}
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for _, want := range sampleReplies() {
		b, err := want.MarshalBinary()
		if err != nil {
			t.Fatalf("%s: marshal: %v", want.Command, err)
		}
		got, err := UnmarshalReply(b)
		if err != nil {
			t.Fatalf("%s: unmarshal: %v", want.Command, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: round trip mismatch:\n got %+v\nwant %+v", want.Command, got, want)
		}
	}
}

func TestMessageLayout(t *testing.T) {
	req := &Request{Command: Primary, Seq: 42, Minor: 7, Flags: FlagSetDefaults,
		Ctx: CfgContext{ResourceName: "r0"}, Role: &SetRoleParms{AssumeUptodate: true}}
	b, err := req.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	if got := ne.Uint32(b[0:]); int(got) != len(b) {
		t.Errorf("nlmsg_len = %d, want %d", got, len(b))
	}
	if got := mnl.HeaderType(ne.Uint16(b[4:])); got != ControlFamilyID {
		t.Errorf("nlmsg_type = %#x, want %#x", got, ControlFamilyID)
	}
	if got := mnl.HeaderFlags(ne.Uint16(b[6:])); got != mnl.Request|mnl.Acknowledge {
		t.Errorf("nlmsg_flags = %v", got)
	}
	if got := ne.Uint32(b[8:]); got != 42 {
		t.Errorf("nlmsg_seq = %d", got)
	}
	if b[16] != uint8(Primary) || b[17] != ControlVersion {
		t.Errorf("genlmsghdr = % x", b[16:20])
	}
	if got := ne.Uint32(b[20:]); got != 7 {
		t.Errorf("minor = %d", got)
	}
	if got := ne.Uint32(b[24:]); got != FlagSetDefaults {
		t.Errorf("flags = %d", got)
	}
	// First top-level attribute: CfgContext, nested and mandatory.
	if got := ne.Uint16(b[30:]); got != tlaCfgContext|mnl.Nested|AttrMandatory {
		t.Errorf("first attribute type = %#x", got)
	}
	// Replies carry ret_code where requests carry flags, and no mandatory bits.
	rb, err := (&Reply{Command: Primary, RetCode: SSTwoPrimaries, Info: "no"}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if got := int32(ne.Uint32(rb[24:])); got != int32(SSTwoPrimaries) {
		t.Errorf("ret_code = %d", got)
	}
	if got := ne.Uint16(rb[30:]); got != tlaCfgReply|mnl.Nested {
		t.Errorf("reply attribute type = %#x", got)
	}
}

// rawRequest frames attrs as a request for cmd.
func rawRequest(t *testing.T, cmd Command, attrs func(ae *mnl.AttributeEncoder)) []byte {
	t.Helper()
	ae := mnl.NewAttributeEncoder()
	if attrs != nil {
		attrs(ae)
	}
	ab, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := frameControl(cmd, mnl.Request, 1, 0, 0, ab)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUnmarshalRequestRejects(t *testing.T) {
	good := rawRequest(t, Primary, nil)
	ctxAttr := func(fn func(nae *mnl.AttributeEncoder)) func(ae *mnl.AttributeEncoder) {
		return func(ae *mnl.AttributeEncoder) {
			ae.Nested(tlaCfgContext, func(nae *mnl.AttributeEncoder) error { fn(nae); return nil })
		}
	}
	patch := func(b []byte, off int, v uint16) []byte {
		c := append([]byte(nil), b...)
		binary.NativeEndian.PutUint16(c[off:], v)
		return c
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "shorter than its headers"},
		{"short", good[:20], "shorter than its headers"},
		{"oversized", make([]byte, MaxMessageSize+4), "exceeds the limit"},
		{"length mismatch", append(append([]byte(nil), good...), 0, 0, 0, 0), "does not match"},
		{"wrong family", patch(good, 4, 0x10), "wrong message type 0x10"},
		{"not a request", patch(good, 6, 0), "not a request"},
		{"bad version", func() []byte { c := append([]byte(nil), good...); c[17] = 9; return c }(), "unsupported control protocol version 9"},
		{"unknown mandatory top-level", rawRequest(t, Primary, func(ae *mnl.AttributeEncoder) {
			ae.Nested(30|AttrMandatory, func(*mnl.AttributeEncoder) error { return nil })
		}), "unknown mandatory attribute 30 in request"},
		{"unknown mandatory field", rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) {
			nae.Uint32(9|AttrMandatory, 1)
		})), "cfg-context: unknown mandatory attribute 9"},
		{"unterminated string", rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) {
			nae.Bytes(2, []byte("r0"))
		})), "not NUL-terminated"},
		{"embedded NUL", rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) {
			nae.Bytes(2, []byte("r\x000\x00"))
		})), "contains a NUL byte"},
		{"long string", rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) {
			nae.String(2, strings.Repeat("a", MaxStringLen+1))
		})), "exceeds the limit"},
		{"short u32", rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) {
			nae.Uint16(1, 1)
		})), "not a uint32"},
		{"duplicate", rawRequest(t, Primary, func(ae *mnl.AttributeEncoder) {
			ae.Nested(tlaCfgContext, func(*mnl.AttributeEncoder) error { return nil })
			ae.Nested(tlaCfgContext, func(*mnl.AttributeEncoder) error { return nil })
		}), "duplicate top-level attribute 2"},
		{"bad flag", rawRequest(t, Primary, func(ae *mnl.AttributeEncoder) {
			ae.Nested(tlaSetRoleParms, func(nae *mnl.AttributeEncoder) error { nae.Uint32(1, 1); return nil })
		}), "not a flag"},
		{"bad meta index", rawRequest(t, Attach, func(ae *mnl.AttributeEncoder) {
			ae.Nested(tlaDiskConf, func(nae *mnl.AttributeEncoder) error { nae.Int32(3, 5); return nil })
		}), "unsupported meta-disk index 5"},
		{"connect without net", rawRequest(t, Connect, nil), "connect needs a net configuration"},
		{"attach without disk", rawRequest(t, Attach, nil), "attach needs a disk configuration"},
		{"bad protocol", rawRequest(t, ChgNetOpts, func(ae *mnl.AttributeEncoder) {
			ae.Nested(tlaNetConf, func(nae *mnl.AttributeEncoder) error { nae.Uint32(6, 4); return nil })
		}), "invalid protocol 4"},
		{"truncated attribute", func() []byte {
			b := rawRequest(t, Primary, ctxAttr(func(nae *mnl.AttributeEncoder) { nae.String(2, "r0") }))
			binary.NativeEndian.PutUint16(b[28:], 200) // attribute longer than the message
			return b
		}(), "invalid attribute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := UnmarshalRequest(tt.b)
			if err == nil {
				t.Fatalf("UnmarshalRequest succeeded: %+v", r)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestUnmarshalSkipsOptionalUnknown(t *testing.T) {
	b := rawRequest(t, Primary, func(ae *mnl.AttributeEncoder) {
		ae.Nested(30, func(*mnl.AttributeEncoder) error { return nil })
		ae.Nested(tlaCfgContext, func(nae *mnl.AttributeEncoder) error {
			nae.Uint64(50, 1)
			nae.String(2, "r0")
			return nil
		})
		ae.Nested(tlaSetRoleParms, func(nae *mnl.AttributeEncoder) error {
			nae.Uint8(1, 1) // DRBD's __flg_field is a u8
			return nil
		})
	})
	r, err := UnmarshalRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &Request{Command: Primary, Seq: 1, Ctx: CfgContext{ResourceName: "r0"}, Role: &SetRoleParms{AssumeUptodate: true}}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v, want %+v", r, want)
	}
}

func TestUnmarshalReplyRejects(t *testing.T) {
	req, err := (&Request{Command: Primary}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalReply(req); err == nil || !strings.Contains(err.Error(), "is a request") {
		t.Errorf("UnmarshalReply(request) = %v", err)
	}
	uuids := func(n int) []byte {
		ae := mnl.NewAttributeEncoder()
		ae.Nested(tlaStateInfo, func(nae *mnl.AttributeEncoder) error { nae.Bytes(7, make([]byte, n)); return nil })
		ab, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		b, err := frameControl(Event, 0, 1, 0, uint32(NoError), ab)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := UnmarshalReply(uuids(12)); err == nil {
		t.Error("UUID attribute of 12 bytes accepted")
	}
	if _, err := UnmarshalReply(uuids(8 * (MaxUUIDs + 1))); err == nil {
		t.Error("too many UUIDs accepted")
	}
	if _, err := UnmarshalReply(uuids(8 * MaxUUIDs)); err != nil {
		t.Errorf("%d UUIDs rejected: %v", MaxUUIDs, err)
	}
	// More than MaxStates state attributes.
	ae := mnl.NewAttributeEncoder()
	for range MaxStates + 1 {
		ae.Nested(tlaStateInfo, func(*mnl.AttributeEncoder) error { return nil })
	}
	ab, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := frameControl(GetStatus, 0, 1, 0, uint32(NoError), ab)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalReply(b); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("too many states: %v", err)
	}
}

func TestMarshalRejects(t *testing.T) {
	tests := []struct {
		name string
		fn   func() error
		want string
	}{
		{"long string", func() error {
			_, err := (&Request{Command: Primary, Ctx: CfgContext{ResourceName: strings.Repeat("a", MaxStringLen+1)}}).MarshalBinary()
			return err
		}, "exceeds the limit"},
		{"NUL in string", func() error {
			_, err := (&Request{Command: Primary, Ctx: CfgContext{ResourceName: "r\x000"}}).MarshalBinary()
			return err
		}, "NUL"},
		{"connect without net", func() error {
			_, err := (&Request{Command: Connect}).MarshalBinary()
			return err
		}, "needs a net configuration"},
		{"long info", func() error {
			_, err := (&Reply{Info: strings.Repeat("a", MaxInfoLen+1)}).MarshalBinary()
			return err
		}, "exceeds the limit"},
		{"too many UUIDs", func() error {
			_, err := (&Reply{States: []StateInfo{{UUIDs: make([]uint64, MaxUUIDs+1)}}}).MarshalBinary()
			return err
		}, "UUIDs exceed"},
		{"too many states", func() error {
			_, err := (&Reply{States: make([]StateInfo, MaxStates+1)}).MarshalBinary()
			return err
		}, "states exceed"},
		{"message too large", func() error {
			st := StateInfo{Message: strings.Repeat("m", MaxStringLen)}
			states := make([]StateInfo, 300)
			for i := range states {
				states[i] = st
			}
			_, err := (&Reply{States: states}).MarshalBinary()
			return err
		}, "exceeds the limit of 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.fn()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestCommandNames(t *testing.T) {
	want := map[Command]string{
		Event: "event", GetStatus: "get-status", Primary: "primary", Secondary: "secondary",
		Connect: "connect", Disconnect: "disconnect", Attach: "attach", Detach: "detach",
		Down: "down", Subscribe: "subscribe", Command(99): "Command(99)",
	}
	for c, s := range want {
		if got := c.String(); got != s {
			t.Errorf("Command(%d).String() = %q, want %q", uint8(c), got, s)
		}
	}
	// The DRBD_ADM_* numbers are part of the contract.
	nums := map[Command]uint8{Event: 1, GetStatus: 2, NewMinor: 5, Connect: 10, Attach: 12,
		Primary: 14, Secondary: 15, Detach: 18, Down: 27, GetPeerDevices: 33, Subscribe: 64}
	for c, n := range nums {
		if uint8(c) != n {
			t.Errorf("%s = %d, want %d", c, uint8(c), n)
		}
	}
	if len(commandNames) != 32 {
		t.Errorf("%d named commands, want 32", len(commandNames))
	}
}

func TestRetCode(t *testing.T) {
	for _, c := range []RetCode{NoError, SSSuccess, SSNothingToDo, SSCWSuccess, SSCWNoNeed} {
		if !c.Success() {
			t.Errorf("%d (%v) is not a success", c, c)
		}
	}
	for _, c := range []RetCode{SSUnknownError, SSTwoPrimaries, ErrInvalidRequest, ErrUnknownCommand, ErrPerm, 5, 100, 102} {
		if c.Success() {
			t.Errorf("%d (%v) is a success", c, c)
		}
	}
	if got := (&Reply{Command: Primary, RetCode: ErrResNotKnown}).Err().Error(); got != "primary: unknown resource" {
		t.Errorf("error without info = %q", got)
	}
	if got := (&Reply{Command: Primary, RetCode: SSTwoPrimaries, Info: "State change failed"}).Err().Error(); got != "State change failed" {
		t.Errorf("error with info = %q", got)
	}
	if (&Reply{RetCode: NoError}).Err() != nil {
		t.Error("NoError reply has an error")
	}
	if ErrNoResource != 158 || ErrPermission != 152 || ErrInvalidRequest != 162 || NoError != 101 {
		t.Error("DRBD return code values changed")
	}
}

func BenchmarkUnmarshalReplyLarge(b *testing.B) {
	states := make([]StateInfo, 200)
	for i := range states {
		states[i] = fullStateInfo(fmt.Sprintf("r%d", i), uint32(i))
		states[i].Message = strings.Repeat("m", 4000)
	}
	msg, err := (&Reply{Command: GetStatus, RetCode: NoError, States: states}).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := UnmarshalReply(msg); err != nil {
			b.Fatal(err)
		}
	}
}
