package netlink

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeNBDFamily is the family the fake kernel announces.
var fakeNBDFamily = genetlink.Family{
	ID:      0x1d,
	Version: 1,
	Name:    NBDFamilyName,
	Groups:  []genetlink.MulticastGroup{{ID: 9, Name: "other"}, {ID: 7, Name: NBDMulticastGroup}},
}

// groupConn adds the JoinGroup that genltest does not emulate.
type groupConn struct {
	*genetlink.Conn
	mu     sync.Mutex
	joined []uint32
}

func (c *groupConn) JoinGroup(g uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.joined = append(c.joined, g)
	return nil
}

// fakeKernel answers nbd family requests in place of the kernel. Each
// connection dialed through it serves the family and passes requests to fn.
type fakeKernel struct {
	t  *testing.T
	fn genltest.Func

	mu    sync.Mutex
	conns []*groupConn
}

func (f *fakeKernel) dial() (genlConn, error) {
	c := &groupConn{Conn: genltest.Dial(genltest.ServeFamily(fakeNBDFamily, f.fn))}
	f.mu.Lock()
	f.conns = append(f.conns, c)
	f.mu.Unlock()
	return c, nil
}

// openFake returns a KernelNBD whose requests go to fn.
func openFake(t *testing.T, fn genltest.Func) (*KernelNBD, *fakeKernel) {
	t.Helper()
	f := &fakeKernel{t: t, fn: fn}
	k, err := openKernelNBD(f.dial, func() error {
		t.Fatal("module load attempted although the family exists")
		return nil
	})
	if err != nil {
		t.Fatalf("openKernelNBD: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k, f
}

// attrMap decodes one level of attributes into type -> raw data, failing
// the test on duplicates.
func attrMap(t *testing.T, b []byte) map[uint16][]byte {
	t.Helper()
	attrs, err := mnl.UnmarshalAttributes(b)
	if err != nil {
		t.Fatalf("UnmarshalAttributes: %v", err)
	}
	m := make(map[uint16][]byte)
	for _, a := range attrs {
		typ := a.Type &^ (mnl.Nested | mnl.NetByteOrder)
		if _, dup := m[typ]; dup {
			t.Fatalf("attribute %d sent twice", typ)
		}
		m[typ] = a.Data
	}
	return m
}

func u32(b []byte) uint32 { return mnl.NewAttributeEncoder().ByteOrder.Uint32(b) }
func u64(b []byte) uint64 { return mnl.NewAttributeEncoder().ByteOrder.Uint64(b) }

// socketFDs decodes NBD_ATTR_SOCKETS.
func socketFDs(t *testing.T, b []byte) []uint32 {
	t.Helper()
	items, err := mnl.UnmarshalAttributes(b)
	if err != nil {
		t.Fatal(err)
	}
	var fds []uint32
	for _, it := range items {
		if it.Type&^mnl.Nested != nbdSockItem {
			t.Fatalf("socket list holds attribute %d, want NBD_SOCK_ITEM", it.Type)
		}
		inner := attrMap(t, it.Data)
		if len(inner) != 1 || inner[nbdSockFD] == nil {
			t.Fatalf("socket item %v, want exactly NBD_SOCK_FD", inner)
		}
		fds = append(fds, u32(inner[nbdSockFD]))
	}
	return fds
}

// reply builds a reply message for cmd with the given attributes.
func reply(t *testing.T, cmd uint8, attrs []mnl.Attribute) []genetlink.Message {
	t.Helper()
	b, err := mnl.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return []genetlink.Message{{Header: genetlink.Header{Command: cmd, Version: nbdGenlVersion}, Data: b}}
}

func indexAttr(i uint32) mnl.Attribute {
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, i)
	b, _ := ae.Encode()
	a, _ := mnl.UnmarshalAttributes(b)
	return a[0]
}

func TestKernelOpenLoadsModule(t *testing.T) {
	loaded := false
	fn := func(greq genetlink.Message, nreq mnl.Message) ([]genetlink.Message, error) {
		return nil, errors.New("unexpected request")
	}
	dial := func() (genlConn, error) {
		inner := genltest.ServeFamily(fakeNBDFamily, fn)
		return &groupConn{Conn: genltest.Dial(func(greq genetlink.Message, nreq mnl.Message) ([]genetlink.Message, error) {
			if !loaded {
				return nil, genltest.Error(int(unix.ENOENT))
			}
			return inner(greq, nreq)
		})}, nil
	}
	k, err := openKernelNBD(dial, func() error { loaded = true; return nil })
	if err != nil {
		t.Fatalf("openKernelNBD: %v", err)
	}
	defer k.Close()
	if !loaded {
		t.Fatal("the module was not loaded although the family was missing")
	}
	if diff := cmp.Diff(fakeNBDFamily, k.Family()); diff != "" {
		t.Fatalf("family (-want +got):\n%s", diff)
	}
}

func TestKernelOpenFamilyMissing(t *testing.T) {
	dial := func() (genlConn, error) {
		return &groupConn{Conn: genltest.Dial(func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) {
			return nil, genltest.Error(int(unix.ENOENT))
		})}, nil
	}
	_, err := openKernelNBD(dial, func() error { return errors.New("modules.dep: no such file") })
	if !errors.Is(err, ErrNBDFamilyMissing) || !strings.Contains(err.Error(), "modules.dep") {
		t.Fatalf("load failure: got %v, want ErrNBDFamilyMissing naming the cause", err)
	}
	_, err = openKernelNBD(dial, func() error { return nil })
	if !errors.Is(err, ErrNBDFamilyMissing) {
		t.Fatalf("family still missing after load: got %v, want ErrNBDFamilyMissing", err)
	}
	_, err = openKernelNBD(func() (genlConn, error) { return nil, unix.EPROTONOSUPPORT }, nil)
	if !errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Fatalf("dial failure: got %v", err)
	}
}

func TestKernelConnect(t *testing.T) {
	var got map[uint16][]byte
	var raw []byte
	k, _ := openFake(t, genltest.CheckRequest(fakeNBDFamily.ID, nbdCmdConnect, mnl.Request,
		func(greq genetlink.Message, nreq mnl.Message) ([]genetlink.Message, error) {
			if greq.Header.Version != nbdGenlVersion {
				t.Errorf("genl version %d, want %d", greq.Header.Version, nbdGenlVersion)
			}
			raw = greq.Data
			got = attrMap(t, greq.Data)
			return reply(t, nbdCmdConnect, []mnl.Attribute{indexAttr(2)}), nil
		}))
	idx, err := k.Connect(context.Background(), NBDConnectParams{
		Index:       2,
		Size:        64 << 20,
		Timeouts:    NBDTimeouts{Request: 0, DeadConn: 1500 * time.Millisecond},
		ServerFlags: 0x16d,
		Sockets:     []int{5, 7},
		Backend:     "drbdd:r0",
	})
	if err != nil || idx != 2 {
		t.Fatalf("Connect = %d, %v; want 2, nil", idx, err)
	}
	checks := []struct {
		name string
		attr uint16
		want uint64
		size int
	}{
		{"index", nbdAttrIndex, 2, 4},
		{"size", nbdAttrSizeBytes, 64 << 20, 8},
		{"block size", nbdAttrBlockSizeBytes, 4096, 8},
		{"timeout", nbdAttrTimeout, 0, 8},
		{"dead conn timeout (rounded up)", nbdAttrDeadConnTimeout, 2, 8},
		{"server flags", nbdAttrServerFlags, 0x16d, 8},
		{"client flags", nbdAttrClientFlags, 0, 8},
	}
	for _, c := range checks {
		b, ok := got[c.attr]
		if !ok {
			t.Errorf("%s (attribute %d) missing", c.name, c.attr)
			continue
		}
		if len(b) != c.size {
			t.Errorf("%s: %d bytes, want %d", c.name, len(b), c.size)
			continue
		}
		v := uint64(0)
		if c.size == 4 {
			v = uint64(u32(b))
		} else {
			v = u64(b)
		}
		if v != c.want {
			t.Errorf("%s = %d, want %d", c.name, v, c.want)
		}
	}
	if diff := cmp.Diff([]uint32{5, 7}, socketFDs(t, got[nbdAttrSockets])); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	if s := string(got[nbdAttrBackendIdentifier]); s != "drbdd:r0\x00" {
		t.Errorf("backend %q, want NUL-terminated drbdd:r0", s)
	}
	if len(got) != 9 {
		t.Errorf("%d attributes sent, want 9: %v", len(got), got)
	}

	// The exact bytes, built independently from the UAPI layout.
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(1, 2)
	ae.Uint64(2, 64<<20)
	ae.Uint64(3, 4096)
	ae.Uint64(4, 0)
	ae.Uint64(8, 2)
	ae.Uint64(5, 0x16d)
	ae.Uint64(6, 0)
	ae.Nested(7, func(nae *mnl.AttributeEncoder) error {
		for _, fd := range []uint32{5, 7} {
			nae.Nested(1, func(sae *mnl.AttributeEncoder) error {
				sae.Uint32(1, fd)
				return nil
			})
		}
		return nil
	})
	ae.String(10, "drbdd:r0")
	want, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, want) {
		t.Errorf("CONNECT attributes\n got %x\nwant %x", raw, want)
	}
}

func TestKernelConnectAnyIndex(t *testing.T) {
	k, _ := openFake(t, func(greq genetlink.Message, _ mnl.Message) ([]genetlink.Message, error) {
		m := attrMap(t, greq.Data)
		if _, ok := m[nbdAttrIndex]; ok {
			t.Error("NBD_ATTR_INDEX sent for NBDAnyIndex")
		}
		if _, ok := m[nbdAttrBackendIdentifier]; ok {
			t.Error("empty backend identifier sent")
		}
		return reply(t, nbdCmdConnect, []mnl.Attribute{indexAttr(11)}), nil
	})
	idx, err := k.Connect(context.Background(), NBDConnectParams{Index: NBDAnyIndex, Size: 1 << 20, BlockSize: 512, Sockets: []int{3}})
	if err != nil || idx != 11 {
		t.Fatalf("Connect = %d, %v; want 11, nil", idx, err)
	}
}

func TestKernelConnectErrors(t *testing.T) {
	var answer func() ([]genetlink.Message, error)
	k, _ := openFake(t, func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) {
		return answer()
	})
	ok := NBDConnectParams{Index: 0, Size: 1 << 20, Sockets: []int{3}}
	tests := []struct {
		name   string
		p      func(NBDConnectParams) NBDConnectParams
		answer func() ([]genetlink.Message, error)
		check  func(error) bool
	}{
		{"kernel EBUSY", nil, func() ([]genetlink.Message, error) { return nil, genltest.Error(int(unix.EBUSY)) },
			func(err error) bool { return errors.Is(err, unix.EBUSY) && strings.Contains(err.Error(), "nbd0") }},
		{"kernel EPERM", nil, func() ([]genetlink.Message, error) { return nil, genltest.Error(int(unix.EPERM)) },
			func(err error) bool { return errors.Is(err, unix.EPERM) }},
		{"reply without index", nil, func() ([]genetlink.Message, error) { return reply(t, nbdCmdConnect, nil), nil },
			func(err error) bool { return strings.Contains(err.Error(), "no valid device index") }},
		{"reply for another device", nil, func() ([]genetlink.Message, error) {
			return reply(t, nbdCmdConnect, []mnl.Attribute{indexAttr(4)}), nil
		}, func(err error) bool { return strings.Contains(err.Error(), "kernel attached nbd4") }},
		{"truncated reply attribute", nil, func() ([]genetlink.Message, error) {
			return []genetlink.Message{{Header: genetlink.Header{Command: nbdCmdConnect}, Data: []byte{8, 0, 1, 0, 1}}}, nil
		}, func(err error) bool { return err != nil }},
		{"no reply", nil, func() ([]genetlink.Message, error) { return nil, io.EOF },
			func(err error) bool { return strings.Contains(err.Error(), "0 reply messages") }},
		{"no sockets", func(p NBDConnectParams) NBDConnectParams { p.Sockets = nil; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "at least one socket") }},
		{"too many sockets", func(p NBDConnectParams) NBDConnectParams { p.Sockets = make([]int, NBDMaxSockets+1); return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "exceed") }},
		{"negative fd", func(p NBDConnectParams) NBDConnectParams { p.Sockets = []int{-1}; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "invalid socket") }},
		{"size not a block multiple", func(p NBDConnectParams) NBDConnectParams { p.Size = 4097; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "multiple of the block size") }},
		{"zero size", func(p NBDConnectParams) NBDConnectParams { p.Size = 0; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "positive multiple") }},
		{"odd block size", func(p NBDConnectParams) NBDConnectParams { p.BlockSize = 3000; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "power of two") }},
		{"negative index", func(p NBDConnectParams) NBDConnectParams { p.Index = -2; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "out of range") }},
		{"negative timeout", func(p NBDConnectParams) NBDConnectParams { p.Timeouts.Request = -time.Second; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "negative") }},
		{"backend with newline", func(p NBDConnectParams) NBDConnectParams { p.Backend = "a\nb"; return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "newline") }},
		{"backend too long", func(p NBDConnectParams) NBDConnectParams { p.Backend = strings.Repeat("x", 300); return p }, nil,
			func(err error) bool { return strings.Contains(err.Error(), "exceeds") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok
			if tt.p != nil {
				p = tt.p(p)
			}
			answer = tt.answer
			if answer == nil {
				answer = func() ([]genetlink.Message, error) {
					t.Error("invalid parameters reached the kernel")
					return nil, genltest.Error(int(unix.EINVAL))
				}
			}
			idx, err := k.Connect(context.Background(), p)
			if err == nil || idx != -1 || !tt.check(err) {
				t.Fatalf("Connect = %d, %v", idx, err)
			}
		})
	}
}

func TestKernelDisconnect(t *testing.T) {
	var errno int
	k, _ := openFake(t, genltest.CheckRequest(fakeNBDFamily.ID, nbdCmdDisconnect, mnl.Request|mnl.Acknowledge,
		func(greq genetlink.Message, _ mnl.Message) ([]genetlink.Message, error) {
			m := attrMap(t, greq.Data)
			if len(m) != 1 || u32(m[nbdAttrIndex]) != 3 {
				t.Errorf("DISCONNECT attributes %v, want index 3 only", m)
			}
			if errno != 0 {
				return nil, genltest.Error(errno)
			}
			return nil, io.EOF // an acknowledgement carries no message
		}))
	if err := k.Disconnect(context.Background(), 3); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	errno = int(unix.EINVAL)
	if err := k.Disconnect(context.Background(), 3); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "disconnect nbd3") {
		t.Fatalf("Disconnect error: %v", err)
	}
	if err := k.Disconnect(context.Background(), -1); err == nil {
		t.Fatal("Disconnect(-1) succeeded")
	}
}

func TestKernelReconfigure(t *testing.T) {
	var got map[uint16][]byte
	var errno int
	k, _ := openFake(t, genltest.CheckRequest(fakeNBDFamily.ID, nbdCmdReconfigure, mnl.Request|mnl.Acknowledge,
		func(greq genetlink.Message, _ mnl.Message) ([]genetlink.Message, error) {
			got = attrMap(t, greq.Data)
			if errno != 0 {
				return nil, genltest.Error(errno)
			}
			return nil, io.EOF
		}))
	err := k.Reconfigure(context.Background(), NBDReconfigureParams{
		Index: 1, Backend: "drbdd:r0", Sockets: []int{9},
		Timeouts: &NBDTimeouts{Request: 30 * time.Second, DeadConn: 120 * time.Second},
	})
	if err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	if u32(got[nbdAttrIndex]) != 1 || string(got[nbdAttrBackendIdentifier]) != "drbdd:r0\x00" ||
		u64(got[nbdAttrTimeout]) != 30 || u64(got[nbdAttrDeadConnTimeout]) != 120 || len(got) != 5 {
		t.Errorf("RECONFIGURE attributes %v", got)
	}
	if diff := cmp.Diff([]uint32{9}, socketFDs(t, got[nbdAttrSockets])); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}

	// Without timeouts, none are sent: the device keeps its own.
	if err := k.Reconfigure(context.Background(), NBDReconfigureParams{Index: 1, Sockets: []int{9, 10}}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []uint16{nbdAttrTimeout, nbdAttrDeadConnTimeout, nbdAttrBackendIdentifier, nbdAttrSizeBytes} {
		if _, ok := got[a]; ok {
			t.Errorf("attribute %d sent although not asked for", a)
		}
	}
	if diff := cmp.Diff([]uint32{9, 10}, socketFDs(t, got[nbdAttrSockets])); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}

	errno = int(unix.EINVAL) // e.g. backend mismatch
	if err := k.Reconfigure(context.Background(), NBDReconfigureParams{Index: 1, Sockets: []int{9}}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Reconfigure error: %v", err)
	}
	if err := k.Reconfigure(context.Background(), NBDReconfigureParams{Index: 1}); err == nil {
		t.Fatal("empty Reconfigure succeeded")
	}
}

// deviceList builds NBD_ATTR_DEVICE_LIST.
func deviceList(t *testing.T, devs ...NBDDeviceStatus) mnl.Attribute {
	t.Helper()
	ae := mnl.NewAttributeEncoder()
	ae.Nested(nbdAttrDeviceList, func(lae *mnl.AttributeEncoder) error {
		for _, d := range devs {
			lae.Nested(nbdDeviceItem, func(dae *mnl.AttributeEncoder) error {
				dae.Uint32(nbdDeviceIndex, uint32(d.Index))
				c := uint8(0)
				if d.Connected {
					c = 1
				}
				dae.Uint8(nbdDeviceConnected, c)
				return nil
			})
		}
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	a, err := mnl.UnmarshalAttributes(b)
	if err != nil {
		t.Fatal(err)
	}
	return a[0]
}

func TestKernelStatus(t *testing.T) {
	all := []NBDDeviceStatus{{0, true}, {1, false}, {7, true}}
	k, _ := openFake(t, genltest.CheckRequest(fakeNBDFamily.ID, nbdCmdStatus, mnl.Request,
		func(greq genetlink.Message, _ mnl.Message) ([]genetlink.Message, error) {
			m := attrMap(t, greq.Data)
			if b, ok := m[nbdAttrIndex]; ok {
				i := int(u32(b))
				for _, d := range all {
					if d.Index == i {
						return reply(t, nbdCmdStatus, []mnl.Attribute{deviceList(t, d)}), nil
					}
				}
				return reply(t, nbdCmdStatus, []mnl.Attribute{deviceList(t)}), nil
			}
			return reply(t, nbdCmdStatus, []mnl.Attribute{deviceList(t, all...)}), nil
		}))
	got, err := k.Status(context.Background(), NBDAnyIndex)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all, got); diff != "" {
		t.Errorf("Status(all) (-want +got):\n%s", diff)
	}
	got, err = k.Status(context.Background(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(all[2:], got); diff != "" {
		t.Errorf("Status(7) (-want +got):\n%s", diff)
	}
	got, err = k.Status(context.Background(), 5)
	if err != nil || len(got) != 0 {
		t.Errorf("Status(5) = %v, %v; want empty", got, err)
	}
}

func TestKernelStatusErrors(t *testing.T) {
	var answer func() ([]genetlink.Message, error)
	k, _ := openFake(t, func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) { return answer() })
	badItem := func(attrs ...mnl.Attribute) []genetlink.Message {
		inner, _ := mnl.MarshalAttributes(attrs)
		item, _ := mnl.MarshalAttributes([]mnl.Attribute{{Type: mnl.Nested | nbdDeviceItem, Data: inner}})
		return reply(t, nbdCmdStatus, []mnl.Attribute{{Type: mnl.Nested | nbdAttrDeviceList, Data: item}})
	}
	tests := []struct {
		name   string
		answer func() ([]genetlink.Message, error)
		want   string
	}{
		{"errno", func() ([]genetlink.Message, error) { return nil, genltest.Error(int(unix.ENOMEM)) }, "cannot allocate memory"},
		{"two replies", func() ([]genetlink.Message, error) {
			r := reply(t, nbdCmdStatus, nil)
			return append(r, r...), nil
		}, "2 reply messages"},
		{"item without index", func() ([]genetlink.Message, error) {
			return badItem(mnl.Attribute{Type: nbdDeviceConnected, Data: []byte{1}}), nil
		}, "without a valid index"},
		{"short index", func() ([]genetlink.Message, error) {
			return badItem(mnl.Attribute{Type: nbdDeviceIndex, Data: []byte{1, 0}}), nil
		}, "status reply"},
		{"stray list attribute", func() ([]genetlink.Message, error) {
			list, _ := mnl.MarshalAttributes([]mnl.Attribute{{Type: 5, Data: []byte{0, 0, 0, 0}}})
			return reply(t, nbdCmdStatus, []mnl.Attribute{{Type: mnl.Nested | nbdAttrDeviceList, Data: list}}), nil
		}, "unexpected attribute 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer = tt.answer
			got, err := k.Status(context.Background(), NBDAnyIndex)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Status = %v, %v; want error containing %q", got, err, tt.want)
			}
		})
	}
	// A reply without a device list is an empty list.
	answer = func() ([]genetlink.Message, error) { return reply(t, nbdCmdStatus, nil), nil }
	if got, err := k.Status(context.Background(), NBDAnyIndex); err != nil || len(got) != 0 {
		t.Fatalf("Status on an empty reply = %v, %v", got, err)
	}
}

func TestKernelWatchLinkDead(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Each Receive on the multicast connection calls fn with an empty
	// request; the fake hands out one batch of notifications per call.
	batches := [][]genetlink.Message{
		append(reply(t, nbdCmdLinkDead, []mnl.Attribute{indexAttr(3)}),
			reply(t, nbdCmdStatus, []mnl.Attribute{indexAttr(8)})...), // not LINK_DEAD: ignored
		reply(t, nbdCmdLinkDead, nil), // no index: ignored
		reply(t, nbdCmdLinkDead, []mnl.Attribute{indexAttr(0)}),
	}
	var mu sync.Mutex
	k, f := openFake(t, func(greq genetlink.Message, nreq mnl.Message) ([]genetlink.Message, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(nreq.Data) != 0 {
			t.Errorf("unexpected request %+v on the multicast connection", greq)
		}
		if len(batches) == 0 {
			cancel()
			return nil, io.EOF
		}
		b := batches[0]
		batches = batches[1:]
		return b, nil
	})
	var got []int
	err := k.WatchLinkDead(ctx, func(i int) { got = append(got, i) })
	if err != nil {
		t.Fatalf("WatchLinkDead: %v", err)
	}
	if diff := cmp.Diff([]int{3, 0}, got); diff != "" {
		t.Errorf("LINK_DEAD indexes (-want +got):\n%s", diff)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.conns) != 2 {
		t.Fatalf("%d connections, want a separate one for multicast", len(f.conns))
	}
	if diff := cmp.Diff([]uint32{7}, f.conns[1].joined); diff != "" {
		t.Errorf("joined groups (-want +got):\n%s", diff)
	}
}

func TestKernelWatchLinkDeadErrors(t *testing.T) {
	// A multicast socket that overflowed fails its next receive with
	// ENOBUFS; the fake returns the error as the system call would.
	k, _ := openFake(t, func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) {
		return nil, unix.ENOBUFS
	})
	err := k.WatchLinkDead(context.Background(), func(int) { t.Error("callback without notification") })
	if !errors.Is(err, unix.ENOBUFS) {
		t.Fatalf("WatchLinkDead = %v, want ENOBUFS", err)
	}
	noGroup := &KernelNBD{family: genetlink.Family{Name: NBDFamilyName}}
	if err := noGroup.WatchLinkDead(context.Background(), func(int) {}); err == nil || !strings.Contains(err.Error(), NBDMulticastGroup) {
		t.Fatalf("WatchLinkDead without group = %v", err)
	}
}

func TestKernelContextAndClose(t *testing.T) {
	k, _ := openFake(t, func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) {
		return nil, io.EOF
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := k.Disconnect(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Disconnect with a cancelled context = %v", err)
	}
	if err := k.Disconnect(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := k.Disconnect(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Disconnect after Close = %v", err)
	}
}
