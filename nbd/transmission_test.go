package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestCommands(t *testing.T) {
	prov, be := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")

	payload := make([]byte, 64<<10)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if errno, _ := cl.do(cmdWrite, 0, 4096, uint32(len(payload)), payload); errno != 0 {
		t.Fatalf("write: %v", errno)
	}
	if errno, _ := cl.do(cmdWrite, cmdFlagFUA, 0, 3, []byte{1, 2, 3}); errno != 0 {
		t.Fatalf("write FUA: %v", errno)
	}
	errno, data := cl.do(cmdRead, 0, 4096, uint32(len(payload)), nil)
	if errno != 0 || !bytes.Equal(data, payload) {
		t.Fatalf("read back: %v, equal %v", errno, bytes.Equal(data, payload))
	}
	if errno, _ := cl.do(cmdRead, cmdFlagFUA, 0, 3, nil); errno != 0 {
		t.Errorf("read with FUA (allowed for all commands): %v", errno)
	}
	if errno, _ := cl.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
		t.Fatalf("flush: %v", errno)
	}
	if errno, _ := cl.do(cmdTrim, cmdFlagFUA, 4096, 4096, nil); errno != 0 {
		t.Fatalf("trim: %v", errno)
	}
	if errno, _ := cl.do(cmdWriteZeroes, cmdFlagNoHole, 8192, 100, nil); errno != 0 {
		t.Fatalf("zeroes: %v", errno)
	}
	if errno, _ := cl.do(cmdWriteZeroes, cmdFlagFUA, 9000, 10, nil); errno != 0 {
		t.Fatalf("zeroes FUA: %v", errno)
	}
	// Zero-length requests succeed without reaching the backend.
	for _, typ := range []uint16{cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes} {
		if errno, _ := cl.do(typ, 0, 100, 0, nil); errno != 0 {
			t.Errorf("zero-length %s: %v", cmdName(typ), errno)
		}
	}
	// A zero-length request at the very end is in range.
	if errno, _ := cl.do(cmdRead, 0, 1<<20, 0, nil); errno != 0 {
		t.Errorf("zero-length read at the end: %v", errno)
	}
	cl.disconnect()

	want := []memOp{
		{op: "write", off: 4096, length: 64 << 10},
		{op: "write", off: 0, length: 3, fua: true},
		{op: "read", off: 4096, length: 64 << 10},
		{op: "read", off: 0, length: 3},
		{op: "flush"},
		{op: "trim", off: 4096, length: 4096, fua: true},
		{op: "zeroes", off: 8192, length: 100, noHole: true},
		{op: "zeroes", off: 9000, length: 10, fua: true},
	}
	got := be.takeOps()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("backend calls\n got %v\nwant %v", got, want)
	}
	if data := be.snapshot(); !bytes.Equal(data[:3], []byte{1, 2, 3}) || data[4096] != 0 || data[8192] != 0 || data[8192+100] == 0 {
		t.Errorf("backend contents wrong")
	}
}

func TestRequestErrors(t *testing.T) {
	prov, be := defaultProvider()
	prov.add(Export{Name: "ro", Backend: newMemBackend(1 << 20), ReadOnly: true, CanTrim: true, CanZeroes: true})
	prov.add(Export{Name: "plain", Backend: newMemBackend(1 << 20)})
	ts := startServer(t, prov, nil)
	const size = 1 << 20

	type req struct {
		export  string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload bool
		want    Errno
	}
	for _, r := range []req{
		{"r0", cmdRead, 0, size - 511, 512, false, EINVAL},
		{"r0", cmdRead, 0, size + 1, 0, false, EINVAL},
		{"r0", cmdRead, 0, 1 << 63, 512, false, EINVAL},
		{"r0", cmdRead, 0, ^uint64(0) - 10, 512, false, EINVAL}, // offset+length wraps
		{"r0", cmdWrite, 0, size - 511, 512, true, ENOSPC},
		{"r0", cmdWrite, 0, ^uint64(0), 512, true, ENOSPC},
		{"r0", cmdTrim, 0, size, 1, false, EINVAL},
		{"r0", cmdWriteZeroes, 0, size - 1, 2, false, ENOSPC},
		{"r0", 9, 0, 0, 0, false, EINVAL},                     // unknown command
		{"r0", cmdCache, 0, 0, 512, false, EINVAL},            // not advertised
		{"r0", cmdBlockStatus, 0, 0, 512, false, EINVAL},      // not negotiated
		{"r0", cmdRead, cmdFlagDF, 0, 512, false, EINVAL},     // DF without structured replies
		{"r0", cmdRead, cmdFlagNoHole, 0, 512, false, EINVAL}, // flag for another command
		{"r0", cmdWrite, 1 << 15, 0, 512, true, EINVAL},       // unknown flag, payload skipped
		{"r0", cmdWriteZeroes, cmdFlagFastZero, 0, 512, false, EINVAL},
		{"r0", cmdTrim, cmdFlagNoHole, 0, 512, false, EINVAL},
		{"r0", cmdFlush, 0, 512, 0, false, EINVAL}, // reserved fields must be zero
		{"r0", cmdRead, 0, 0, MaxBlockSize + 1, false, EINVAL},
		{"ro", cmdWrite, 0, 0, 512, true, EPERM},
		{"ro", cmdTrim, 0, 0, 512, false, EPERM},
		{"ro", cmdWriteZeroes, 0, 0, 512, false, EPERM},
		{"ro", cmdRead, 0, 0, 512, false, 0},
		{"ro", cmdFlush, 0, 0, 0, false, 0},
		{"plain", cmdTrim, 0, 0, 512, false, EINVAL},        // not advertised
		{"plain", cmdWriteZeroes, 0, 0, 512, false, EINVAL}, // not advertised
	} {
		t.Run(fmt.Sprintf("%s/%s/%#x/%d+%d", r.export, cmdName(r.typ), r.flags, r.off, r.length), func(t *testing.T) {
			cl := connect(t, ts.addr, r.export)
			var payload []byte
			if r.payload {
				payload = bytes.Repeat([]byte{0xee}, int(r.length))
			}
			if errno, _ := cl.do(r.typ, r.flags, r.off, r.length, payload); errno != r.want {
				t.Errorf("errno %v (%d), want %v (%d)", errno, errno, r.want, r.want)
			}
			// The connection is still in sync and serving.
			if errno, data := cl.do(cmdRead, 0, 0, 16, nil); errno != 0 || len(data) != 16 {
				t.Errorf("read after error: %v", errno)
			}
			cl.disconnect()
		})
	}
	for i, b := range be.snapshot() {
		if b != 0 {
			t.Fatalf("refused request changed byte %d", i)
		}
	}
}

func TestOversizedWrite(t *testing.T) {
	prov, be := defaultProvider()
	ts := startServer(t, prov, nil)

	// Above MaxBlockSize but within MaxWritePayload: refused, payload
	// skipped, connection kept.
	cl := connect(t, ts.addr, "r0")
	const n = MaxBlockSize + 4096
	cl.send(cmdWrite, 0, 1, 0, n, nil)
	go func() { _, _ = cl.c.Write(make([]byte, n)) }()
	if errno, h := cl.readReply(); errno != EINVAL || h != 1 {
		t.Fatalf("oversized write: %v handle %d", errno, h)
	}
	if errno, _ := cl.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
		t.Fatal(errno)
	}
	cl.disconnect()

	// Above MaxWritePayload: the connection is dropped.
	cl = connect(t, ts.addr, "r0")
	cl.send(cmdWrite, 0, 1, 0, MaxWritePayload+1, nil)
	cl.expectEOF()
	if !strings.Contains(ts.logs.String(), "hard limit") {
		t.Errorf("drop not logged: %s", ts.logs)
	}
	if ops := be.takeOps(); len(ops) != 1 || ops[0].op != "flush" {
		t.Errorf("backend saw %v", ops)
	}
}

func TestBadRequestMagicDrops(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")
	cl.write(bytes.Repeat([]byte{1}, requestHeaderSize))
	cl.expectEOF()
	cl = connect(t, ts.addr, "r0")
	cl.disconnect()
}

func TestReadErrorSendsNoData(t *testing.T) {
	prov, be := defaultProvider()
	be.beforeRead = func(off int64) error {
		switch off {
		case 4096:
			return errors.New("disk on fire")
		case 8192:
			return fmt.Errorf("wrapped: %w", ErrShutdown)
		}
		return nil
	}
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")
	// Pipeline: a failing read between two good ones. If the failing read
	// sent any data, the next reply header would not parse.
	cl.send(cmdRead, 0, 1, 0, 512, nil)
	cl.send(cmdRead, 0, 2, 4096, 4096, nil)
	cl.send(cmdRead, 0, 3, 8192, 4096, nil)
	cl.send(cmdRead, 0, 4, 512, 512, nil)
	got := map[uint64]Errno{}
	for range 4 {
		errno, h := cl.readReply()
		got[h] = errno
		if errno == 0 {
			cl.readFull(make([]byte, 512))
		}
	}
	if want := map[uint64]Errno{1: 0, 2: EIO, 3: ESHUTDOWN, 4: 0}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("replies %v, want %v", got, want)
	}
	cl.disconnect()
	if !strings.Contains(ts.logs.String(), "disk on fire") {
		t.Errorf("backend error not logged: %s", ts.logs)
	}
}

func TestBackendErrorsMapped(t *testing.T) {
	prov, be := defaultProvider()
	errs := map[int64]error{
		0:     fmt.Errorf("quota: %w", ErrNoSpace),
		4096:  &os.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT},
		8192:  fmt.Errorf("x: %w", ErrReadOnly),
		12288: ErrInvalid,
		16384: errors.New("plain"),
	}
	be.beforeWrite = func(off int64) error { return errs[off] }
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")
	for off, want := range map[uint64]Errno{0: ENOSPC, 4096: ENOSPC, 8192: EPERM, 12288: EINVAL, 16384: EIO, 20480: 0} {
		if errno, _ := cl.do(cmdWrite, 0, off, 4, []byte{1, 2, 3, 4}); errno != want {
			t.Errorf("write at %d: %v, want %v", off, errno, want)
		}
	}
	cl.disconnect()
}

func TestErrnoOf(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Errno
	}{
		{nil, 0},
		{ErrNoSpace, ENOSPC},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{ErrInvalid, EINVAL},
		{syscall.EINVAL, EINVAL},
		{ErrNotPermitted, EPERM},
		{ErrReadOnly, EPERM},
		{syscall.EROFS, EPERM},
		{ErrShutdown, ESHUTDOWN},
		{fmt.Errorf("x: %w", EOVERFLOW), EOVERFLOW},
		{io.ErrUnexpectedEOF, EIO},
		{syscall.EIO, EIO},
	} {
		if got := ErrnoOf(c.err); got != c.want {
			t.Errorf("ErrnoOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// gateBackend blocks reads at chosen offsets until released.
func gateBackend(be *memBackend, gates map[int64]chan struct{}) {
	be.beforeRead = func(off int64) error {
		if g, ok := gates[off]; ok {
			<-g
		}
		return nil
	}
}

func TestOutOfOrderCompletion(t *testing.T) {
	prov, be := defaultProvider()
	gate := make(chan struct{})
	gateBackend(be, map[int64]chan struct{}{0: gate})
	for i := range be.data {
		be.data[i] = byte(i / 4096)
	}
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")
	cl.send(cmdRead, 0, 100, 0, 4096, nil)    // blocks
	cl.send(cmdRead, 0, 101, 4096, 4096, nil) // completes first
	errno, h := cl.readReply()
	if errno != 0 || h != 101 {
		t.Fatalf("first reply: handle %d errno %v, want 101", h, errno)
	}
	data := make([]byte, 4096)
	cl.readFull(data)
	if data[0] != 1 || data[4095] != 1 {
		t.Errorf("wrong data for handle 101")
	}
	close(gate)
	if errno, h := cl.readReply(); errno != 0 || h != 100 {
		t.Fatalf("second reply: handle %d errno %v", h, errno)
	}
	cl.readFull(data)
	if data[0] != 0 {
		t.Errorf("wrong data for handle 100")
	}
	cl.disconnect()
}

func TestConcurrentRequests(t *testing.T) {
	prov, be := defaultProvider()
	be.beforeWrite = func(off int64) error {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		return nil
	}
	ts := startServer(t, prov, func(s *Server) { s.MaxInFlight = 8 })
	cl := connect(t, ts.addr, "r0")
	const n = 500
	want := map[uint64][]byte{}
	go func() {
		for i := range uint64(n) {
			p := bytes.Repeat([]byte{byte(i)}, 1024)
			cl.send(cmdWrite, cmdFlagFUA, i, i*1024, 1024, p)
		}
	}()
	seen := map[uint64]bool{}
	for range n {
		errno, h := cl.readReply()
		if errno != 0 || seen[h] || h >= n {
			t.Fatalf("reply handle %d errno %v (seen %v)", h, errno, seen[h])
		}
		seen[h] = true
	}
	for i := range uint64(n) {
		want[i] = bytes.Repeat([]byte{byte(i)}, 1024)
		cl.send(cmdRead, 0, i, i*1024, 1024, nil)
	}
	for range n {
		errno, h := cl.readReply()
		if errno != 0 {
			t.Fatal(errno)
		}
		data := make([]byte, 1024)
		cl.readFull(data)
		if !bytes.Equal(data, want[h]) {
			t.Fatalf("handle %d: wrong data", h)
		}
	}
	cl.disconnect()
	if m := be.maxInFlight.Load(); m > 8 || m < 2 {
		t.Errorf("at most %d backend calls at once, want 2..8", m)
	}
}

func TestDiscWaitsForInFlight(t *testing.T) {
	prov, be := defaultProvider()
	gate := make(chan struct{})
	gateBackend(be, map[int64]chan struct{}{4096: gate})
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")
	cl.send(cmdRead, 0, 7, 4096, 512, nil)
	cl.send(cmdDisc, 0, 0, 0, 0, nil)
	time.AfterFunc(50*time.Millisecond, func() { close(gate) })
	if errno, h := cl.readReply(); errno != 0 || h != 7 {
		t.Fatalf("reply %v handle %d", errno, h)
	}
	cl.readFull(make([]byte, 512))
	cl.expectEOF()
}

func TestContextCancelClosesConnections(t *testing.T) {
	prov, _ := defaultProvider()
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Provider: prov}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	cl := connect(t, l.Addr().String(), "r0")
	hs := dial(t, l.Addr().String(), clientFlagFixedNewstyle) // still in the handshake
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	cl.expectEOF()
	hs.expectEOF()
	prov.waitReleased(t)
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Errorf("listener still open")
	}
}

func TestServeReturnsWhenListenerClosed(t *testing.T) {
	prov, _ := defaultProvider()
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Provider: prov}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	cl := connect(t, l.Addr().String(), "r0")
	l.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	cl.expectEOF()
	prov.waitReleased(t)
}

func TestMaxConns(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, func(s *Server) { s.MaxConns = 1 })
	cl := connect(t, ts.addr, "r0")
	extra := dialRaw(t, ts.addr)
	extra.expectEOF()
	cl.disconnect()
}

func TestMaxInFlightBytes(t *testing.T) {
	prov, be := defaultProvider()
	gate := make(chan struct{})
	var mu sync.Mutex // guards calls
	calls := 0
	be.beforeRead = func(off int64) error {
		mu.Lock()
		calls++
		mu.Unlock()
		<-gate
		return nil
	}
	ts := startServer(t, prov, func(s *Server) { s.MaxInFlightBytes = 100 << 10 })
	cl := connect(t, ts.addr, "r0")
	for i := range uint64(5) {
		cl.send(cmdRead, 0, i, i*64<<10, 64<<10, nil)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	n := calls
	mu.Unlock()
	if n != 1 {
		t.Errorf("%d reads of 64 KiB in flight with a 100 KiB bound, want 1", n)
	}
	close(gate)
	for range 5 {
		if errno, _ := cl.readReply(); errno != 0 {
			t.Fatal(errno)
		}
		cl.readFull(make([]byte, 64<<10))
	}
	cl.disconnect()
}

func TestServeTransmissionSocketpair(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	be := newMemBackend(64 << 10)
	released := 0
	e := &Export{Name: "k", Backend: be, CanTrim: true, Release: func() { released++ }}
	done := make(chan error, 1)
	go func() { done <- ServeTransmission(context.Background(), conns[0], e, TransmissionOptions{}) }()
	cl := &client{t: t, c: conns[1], br: newReader(conns[1])}
	defer conns[1].Close()
	if errno, _ := cl.do(cmdWrite, cmdFlagFUA, 0, 4, []byte("abcd")); errno != 0 {
		t.Fatal(errno)
	}
	if _, data := cl.do(cmdRead, 0, 0, 4, nil); string(data) != "abcd" {
		t.Fatalf("read %q", data)
	}
	if errno, _ := cl.do(cmdWriteZeroes, 0, 0, 4, nil); errno != EINVAL {
		t.Errorf("write zeroes not advertised: %v", errno)
	}
	cl.disconnect()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if released != 1 {
		t.Errorf("released %d times", released)
	}
}

func TestServeTransmissionCancel(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	be := newMemBackend(4096)
	released := 0
	e := &Export{Backend: be, Release: func() { released++ }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeTransmission(ctx, a, e, TransmissionOptions{}) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not return")
	}
	if released != 1 {
		t.Errorf("released %d times", released)
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nbd.sock")
	// A stale socket file, left by a listener that did not unlink it.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("Listen over stale socket: %v", err)
	}
	// A live one is not replaced.
	if _, err := Listen("unix:" + path); err == nil {
		t.Errorf("Listen over a live socket succeeded")
	}
	prov, _ := defaultProvider()
	ts := serveOn(t, l, prov, nil)
	cl := connect(t, ts.addr, "r0")
	cl.disconnect()

	// A regular file is not removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:" + file); err == nil {
		t.Errorf("Listen over a regular file succeeded")
	}
}

func TestCheckRequest(t *testing.T) {
	all := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes
	for _, c := range []struct {
		h    requestHeader
		want Errno
	}{
		{requestHeader{Type: cmdRead, Offset: 0, Length: 1000}, 0},
		{requestHeader{Type: cmdRead, Offset: 1000, Length: 0}, 0},
		{requestHeader{Type: cmdRead, Offset: 1001, Length: 0}, EINVAL},
		{requestHeader{Type: cmdWrite, Offset: 999, Length: 2}, ENOSPC},
		{requestHeader{Type: cmdWriteZeroes, Flags: cmdFlagNoHole | cmdFlagFUA, Length: 1000}, 0},
		{requestHeader{Type: cmdTrim, Flags: cmdFlagFUA, Offset: 500, Length: 500}, 0},
		{requestHeader{Type: cmdFlush, Flags: cmdFlagFUA}, 0},
		{requestHeader{Type: cmdFlush, Length: 1}, EINVAL},
		{requestHeader{Type: 1000}, EINVAL},
	} {
		if got := checkRequest(c.h, 1000, all); got != c.want {
			t.Errorf("%+v: %v, want %v", c.h, got, c.want)
		}
	}
}

func TestBufferPool(t *testing.T) {
	for _, n := range []int{1, 511, 512, 513, 4096, 4097, 1 << 20, MaxBlockSize} {
		b, p := getBuffer(n)
		if len(b) != n || cap(b) < n || cap(b)&(cap(b)-1) != 0 || &(*p)[0] != &b[0] {
			t.Errorf("getBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		putBuffer(p)
	}
	odd := make([]byte, 1000)
	putBuffer(&odd) // not from the pool: ignored
}

func TestRefusedRequestsHoldNoBudget(t *testing.T) {
	prov, be := defaultProvider()
	gate := make(chan struct{})
	var mu sync.Mutex // guards calls
	calls := 0
	be.beforeRead = func(off int64) error {
		mu.Lock()
		calls++
		mu.Unlock()
		<-gate
		return nil
	}
	ts := startServer(t, prov, func(s *Server) { s.MaxInFlight = 2; s.MaxInFlightBytes = 64 << 10 })
	cl := connect(t, ts.addr, "r0")
	for i := range uint64(20) {
		cl.send(cmdRead, 0, i, 1<<20, 1<<20, nil) // out of range
	}
	for range 20 {
		if errno, _ := cl.readReply(); errno != EINVAL {
			t.Fatal(errno)
		}
	}
	cl.send(cmdRead, 0, 1, 0, 32<<10, nil)
	cl.send(cmdRead, 0, 2, 32<<10, 32<<10, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := calls
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads in flight, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	close(gate)
	for range 2 {
		if errno, _ := cl.readReply(); errno != 0 {
			t.Fatal(errno)
		}
		cl.readFull(make([]byte, 32<<10))
	}
	cl.disconnect()
}
