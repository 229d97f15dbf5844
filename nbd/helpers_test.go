package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memOp records one backend call, for checking what the server passed on.
type memOp struct {
	op     string
	off    int64
	length int64
	fua    bool
	noHole bool
}

// memBackend is an in-memory Backend with hooks for injecting errors and
// delays.
type memBackend struct {
	// Hooks, set before serving and not changed after. Each is called
	// before the operation with its offset; a non-nil error fails it.
	beforeRead  func(off int64) error
	beforeWrite func(off int64) error
	beforeFlush func() error

	mu   sync.Mutex // guards data and ops
	data []byte
	ops  []memOp

	inFlight    atomic.Int64 // calls running now
	maxInFlight atomic.Int64 // most calls seen running at once
}

func newMemBackend(size int) *memBackend {
	return &memBackend{data: make([]byte, size)}
}

func (m *memBackend) enter() {
	n := m.inFlight.Add(1)
	for {
		old := m.maxInFlight.Load()
		if n <= old || m.maxInFlight.CompareAndSwap(old, n) {
			return
		}
	}
}

func (m *memBackend) leave() { m.inFlight.Add(-1) }

func (m *memBackend) record(op memOp) {
	m.mu.Lock()
	m.ops = append(m.ops, op)
	m.mu.Unlock()
}

// takeOps returns the recorded calls and forgets them.
func (m *memBackend) takeOps() []memOp {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := m.ops
	m.ops = nil
	return ops
}

func (m *memBackend) Size() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.data))
}

func (m *memBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return fmt.Errorf("memBackend: range %d+%d outside %d bytes: %w", off, n, len(m.data), ErrInvalid)
	}
	return nil
}

func (m *memBackend) ReadAt(p []byte, off int64) error {
	m.enter()
	defer m.leave()
	if m.beforeRead != nil {
		if err := m.beforeRead(off); err != nil {
			return err
		}
	}
	m.record(memOp{op: "read", off: off, length: int64(len(p))})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(p []byte, off int64, fua bool) error {
	m.enter()
	defer m.leave()
	if m.beforeWrite != nil {
		if err := m.beforeWrite(off); err != nil {
			return err
		}
	}
	m.record(memOp{op: "write", off: off, length: int64(len(p)), fua: fua})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(m.data[off:], p)
	return nil
}

func (m *memBackend) Flush() error {
	if m.beforeFlush != nil {
		if err := m.beforeFlush(); err != nil {
			return err
		}
	}
	m.record(memOp{op: "flush"})
	return nil
}

func (m *memBackend) Trim(off, length int64, fua bool) error {
	m.record(memOp{op: "trim", off: off, length: length, fua: fua})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, length); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	return nil
}

func (m *memBackend) WriteZeroes(off, length int64, noHole, fua bool) error {
	m.record(memOp{op: "zeroes", off: off, length: length, fua: fua, noHole: noHole})
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, length); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	return nil
}

// testProvider serves a fixed set of exports and counts Open and Release.
type testProvider struct {
	mu      sync.Mutex // guards exports and refuse
	exports map[string]*Export
	refuse  map[string]error // names whose Open fails with this error

	opens    atomic.Int64
	releases atomic.Int64
}

func newTestProvider() *testProvider {
	return &testProvider{exports: map[string]*Export{}, refuse: map[string]error{}}
}

// add registers an export template; Open hands out copies.
func (p *testProvider) add(e Export) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.exports[e.Name] = &e
}

func (p *testProvider) Open(name string) (*Export, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err, ok := p.refuse[name]; ok {
		return nil, err
	}
	tmpl, ok := p.exports[name]
	if !ok {
		return nil, fmt.Errorf("%q: %w", name, ErrUnknownExport)
	}
	e := *tmpl
	p.opens.Add(1)
	var once atomic.Bool
	e.Release = func() {
		if !once.CompareAndSwap(false, true) {
			panic("Release called twice")
		}
		p.releases.Add(1)
	}
	return &e, nil
}

func (p *testProvider) List() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for n := range p.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// waitReleased waits until every opened export was released.
func (p *testProvider) waitReleased(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.releases.Load() != p.opens.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("opened %d exports, released %d", p.opens.Load(), p.releases.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// testServer runs a Server on a loopback TCP listener for one test.
type testServer struct {
	srv  *Server
	prov *testProvider
	addr string
	logs *logBuffer
}

// logBuffer collects log lines.
type logBuffer struct {
	mu    sync.Mutex // guards lines
	lines []string
}

func (l *logBuffer) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.lines)
}

// startServer serves prov on 127.0.0.1 until the test ends. configure, if
// not nil, adjusts the Server first.
func startServer(t testing.TB, prov *testProvider, configure func(*Server)) *testServer {
	t.Helper()
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, l, prov, configure)
}

func serveOn(t testing.TB, l net.Listener, prov *testProvider, configure func(*Server)) *testServer {
	t.Helper()
	logs := &logBuffer{}
	srv := &Server{Provider: prov, Logf: logs.logf}
	if configure != nil {
		configure(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
		prov.waitReleased(t)
	})
	return &testServer{srv: srv, prov: prov, addr: l.Addr().String(), logs: logs}
}

// defaultProvider has one 1 MiB export "r0" with every feature on.
func defaultProvider() (*testProvider, *memBackend) {
	be := newMemBackend(1 << 20)
	p := newTestProvider()
	p.add(Export{Name: "r0", Description: "test export", Backend: be, CanTrim: true, CanZeroes: true, MultiConn: true})
	return p, be
}

// client is a minimal NBD client for tests.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// dialRaw connects without reading anything.
func dialRaw(t testing.TB, addr string) *client {
	t.Helper()
	network := "tcp"
	if len(addr) > 0 && addr[0] == '/' {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// dial connects and completes the greeting with the given client flags.
func dial(t testing.TB, addr string, clientFlags uint32) *client {
	t.Helper()
	cl := dialRaw(t, addr)
	var g [18]byte
	cl.readFull(g[:])
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		t.Fatalf("bad greeting %x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != handshakeFlagFixedNewstyle|handshakeFlagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	cl.write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return cl
}

func (cl *client) readFull(b []byte) {
	cl.t.Helper()
	if _, err := io.ReadFull(cl.br, b); err != nil {
		cl.t.Fatalf("read: %v", err)
	}
}

func (cl *client) write(b []byte) {
	cl.t.Helper()
	if _, err := cl.c.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

// expectEOF checks that the server closed the connection.
func (cl *client) expectEOF() {
	cl.t.Helper()
	var b [1]byte
	_ = cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := cl.br.Read(b[:])
	if err == nil {
		cl.t.Fatalf("read %d bytes (%x), want the connection closed", n, b[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		cl.t.Fatalf("connection still open: %v", err)
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func (cl *client) sendOpt(opt uint32, data []byte) {
	cl.t.Helper()
	cl.write(optBytes(opt, data))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (cl *client) readOptReply() optReply {
	cl.t.Helper()
	var h [optReplyHdrSize]byte
	cl.readFull(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		cl.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	cl.readFull(r.data)
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// infoResult is what NBD_OPT_INFO or NBD_OPT_GO told the client.
type infoResult struct {
	final             optReply // the last reply (ACK or an error)
	size              uint64
	flags             uint16
	name, desc        string
	hasName, hasDesc  bool
	minB, prefB, maxB uint32
}

// info sends NBD_OPT_INFO or NBD_OPT_GO and collects the replies.
func (cl *client) info(opt uint32, name string, infos ...uint16) infoResult {
	cl.t.Helper()
	cl.sendOpt(opt, infoData(name, infos...))
	var res infoResult
	for {
		r := cl.readOptReply()
		if r.opt != opt {
			cl.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			res.final = r
			return res
		}
		switch binary.BigEndian.Uint16(r.data) {
		case infoExport:
			if len(r.data) != 12 {
				cl.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			res.size = binary.BigEndian.Uint64(r.data[2:])
			res.flags = binary.BigEndian.Uint16(r.data[10:])
		case infoName:
			res.name, res.hasName = string(r.data[2:]), true
		case infoDescription:
			res.desc, res.hasDesc = string(r.data[2:]), true
		case infoBlockSize:
			res.minB = binary.BigEndian.Uint32(r.data[2:])
			res.prefB = binary.BigEndian.Uint32(r.data[6:])
			res.maxB = binary.BigEndian.Uint32(r.data[10:])
		}
	}
}

// goExport sends NBD_OPT_GO and fails the test unless it succeeds.
func (cl *client) goExport(name string) infoResult {
	cl.t.Helper()
	res := cl.info(optGo, name)
	if res.final.typ != repAck {
		cl.t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, res.final.typ, res.final.data)
	}
	return res
}

// connect dials and enters transmission on export name.
func connect(t testing.TB, addr, name string) *client {
	t.Helper()
	cl := dial(t, addr, clientFlagFixedNewstyle|clientFlagNoZeroes)
	cl.goExport(name)
	return cl
}

func (cl *client) send(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	cl.t.Helper()
	h := requestHeader{Flags: flags, Type: typ, Handle: handle, Offset: off, Length: length}
	cl.write(append(h.appendTo(nil), payload...))
}

// readReply reads a simple reply header.
func (cl *client) readReply() (Errno, uint64) {
	cl.t.Helper()
	var h [replyHeaderSize]byte
	cl.readFull(h[:])
	if m := binary.BigEndian.Uint32(h[0:]); m != magicSimpleReply {
		cl.t.Fatalf("reply magic %#x", m)
	}
	return Errno(binary.BigEndian.Uint32(h[4:])), binary.BigEndian.Uint64(h[8:])
}

// do sends one request and waits for its reply, reading length bytes of
// data after a successful READ.
func (cl *client) do(typ, flags uint16, off uint64, length uint32, payload []byte) (Errno, []byte) {
	cl.t.Helper()
	const handle = 0xfeedface
	cl.send(typ, flags, handle, off, length, payload)
	errno, h := cl.readReply()
	if h != handle {
		cl.t.Fatalf("reply handle %#x, want %#x", h, handle)
	}
	if typ == cmdRead && errno == 0 {
		data := make([]byte, length)
		cl.readFull(data)
		return 0, data
	}
	return errno, nil
}

// disconnect sends NBD_CMD_DISC and waits for the server to close.
func (cl *client) disconnect() {
	cl.t.Helper()
	cl.send(cmdDisc, 0, 0, 0, 0, nil)
	cl.expectEOF()
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// at returns the byte at off, under the lock.
func (m *memBackend) at(off int) byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.data[off]
}

// snapshot returns a copy of the contents.
func (m *memBackend) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data)
}
