package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"drbdd/workers"
	"drbdd/zerocopy"
)

// Defaults for the per-connection bounds.
const (
	// DefaultMaxInFlight is the default bound on requests in flight on one
	// connection.
	DefaultMaxInFlight = 64
	// DefaultMaxInFlightBytes is the default bound on the payload bytes
	// (read and write buffers) held by the requests in flight on one
	// connection. A single request of up to MaxBlockSize is always
	// admitted, even if it alone exceeds the bound.
	DefaultMaxInFlightBytes = 64 << 20
	// readBufferSize is the size of the buffered reader in front of each
	// connection: large enough to take in a queue of small requests with
	// one system call.
	readBufferSize = 128 << 10
)

// TransmissionOptions configures ServeTransmission.
type TransmissionOptions struct {
	// MaxInFlight bounds the requests in flight; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxInFlightBytes bounds the payload bytes held by requests in
	// flight; 0 means DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// Logf, if not nil, receives a line for each backend error and for
	// the reason a connection was dropped.
	Logf func(format string, args ...any)
	// WholePages says that the client sends each page of a write's
	// payload with a send of its own, as the kernel's nbd driver does.
	// Spliced out of a Unix socket, such a payload comes in whole,
	// aligned pages, which a disk opened with O_DIRECT can take
	// straight from the pipe (see PipeWriter).
	WholePages bool
}

// ServeTransmission serves the transmission phase only, with no handshake:
// the Linux kernel's nbd driver (attached over netlink with a socketpair)
// speaks transmission directly. The client must have been told the size
// e.Backend.Size() and the flags e.TransmissionFlags() some other way.
//
// ServeTransmission returns when the client sends NBD_CMD_DISC or closes
// the connection (nil), when ctx is done (ctx.Err()), or when the
// connection fails or the client breaks the protocol (that error). Before
// it returns, every request in flight has finished, c is closed and
// e.Release has been called.
func ServeTransmission(ctx context.Context, c net.Conn, e *Export, opts TransmissionOptions) error {
	cr := &zerocopy.CappedReader{R: c}
	return serveTransmission(ctx, c, cr, bufio.NewReaderSize(cr, readBufferSize), e, opts)
}

// serveTransmission is ServeTransmission reading from br, which reads c
// through cr and may hold bytes already read during the handshake.
func serveTransmission(ctx context.Context, c net.Conn, cr *zerocopy.CappedReader, br *bufio.Reader, e *Export, opts TransmissionOptions) error {
	defer e.release()
	if e.Backend == nil {
		c.Close()
		return errors.New("nbd: export has no backend")
	}
	size := e.Backend.Size()
	if size < 0 {
		c.Close()
		return errors.New("nbd: export has negative size")
	}
	t := &transmission{
		c:      c,
		cr:     cr,
		br:     br,
		done:   ctx.Done(),
		be:     e.Backend,
		name:   e.Name,
		size:   uint64(size),
		tflags: e.TransmissionFlags(),
		logf:   opts.Logf,

		wholePages: opts.WholePages,
	}
	if t.logf == nil {
		t.logf = func(string, ...any) {}
	}
	maxN := opts.MaxInFlight
	if maxN <= 0 {
		maxN = DefaultMaxInFlight
	}
	maxBytes := opts.MaxInFlightBytes
	if maxBytes <= 0 {
		maxBytes = DefaultMaxInFlightBytes
	}
	t.lim.init(maxN, maxBytes)
	t.out.c = c
	t.out.company = func() bool { return t.lim.inFlight.Load() > 1 }
	t.out.done = func(r *request) {
		t.lim.release(r.weight)
		r.free()
	}

	// Closing the connection is how a cancelled context stops the reader
	// (blocked in Read) and the workers (blocked in Write).
	stop := context.AfterFunc(ctx, func() { c.Close() })
	// The limiter keeps at most maxN requests in flight, so handing one
	// to a worker never blocks, and there are never more workers than
	// that.
	t.workers = workers.New(t.serve, maxN, 0, &t.wg)
	err := t.readLoop()
	// The reader is done; let the workers finish, then close.
	t.workers.Close()
	t.wg.Wait()
	t.closePipes()
	stop()
	c.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		err = t.out.error()
	}
	return err
}

// transmission is the state of one connection in the transmission phase.
// The reader goroutine (readLoop) owns it; the worker goroutines it starts
// share the fields documented as shared.
type transmission struct {
	c      net.Conn
	cr     *zerocopy.CappedReader // under br
	br     *bufio.Reader          // read only by the reader goroutine
	be     Backend
	name   string
	size   uint64
	tflags uint16
	logf   func(format string, args ...any)

	lim limiter     // bounds the requests in flight; shared
	out replyWriter // sends replies; shared
	// workers serve the requests the reader hands out; the reader closes
	// the pool when it ends.
	workers *workers.Pool[*request]
	wg      sync.WaitGroup // counts the workers

	// pipes holds the pipes that large writes are read into when the
	// backend is a PipeWriter; made on the first such write, closed when
	// the workers are done. A request in flight owns its pipes.
	pipes *zerocopy.Pool
	raw   syscall.RawConn // c's raw connection, with pipes
	pw    PipeWriter      // be, with pipes
	// wholePages is TransmissionOptions.WholePages.
	wholePages bool
	done       <-chan struct{} // closed when the connection is to end
}

// readLoop decodes requests until DISC, EOF or an error, answers invalid
// ones itself and hands valid ones to the workers. It returns nil for a
// clean end.
func (t *transmission) readLoop() error {
	var hb [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(t.br, hb[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				// EOF between requests: the client went away, which it
				// may do after receiving all replies.
				return nil
			}
			return fmt.Errorf("nbd: reading request: %w", err)
		}
		h, err := parseRequestHeader(hb[:])
		if err != nil {
			t.logf("nbd: %s: dropping connection: %v", t.name, err)
			t.c.Close()
			return err
		}
		if h.Type == cmdDisc {
			return nil
		}
		errno := checkRequest(h, t.size, t.tflags)
		if h.Type == cmdWrite && h.Length > MaxWritePayload {
			err := fmt.Errorf("nbd: WRITE of %d bytes exceeds the hard limit of %d bytes; the stream cannot be trusted", h.Length, MaxWritePayload)
			t.logf("nbd: %s: dropping connection: %v", t.name, err)
			t.c.Close()
			return err
		}
		if errno != 0 {
			if h.Type == cmdWrite {
				// Skip the payload of a refused write to stay in sync.
				if _, err := t.br.Discard(int(h.Length)); err != nil {
					return fmt.Errorf("nbd: skipping WRITE payload: %w", err)
				}
			}
			// Error replies also count against the limiter, so that a
			// client that does not read its replies cannot queue an
			// unbounded number of them.
			t.lim.acquire(0)
			r := getRequest()
			r.h = h
			t.out.send(r, errno, false)
			continue
		}

		var payload uint32 // bytes of buffer the request needs
		if h.Type == cmdRead || h.Type == cmdWrite {
			payload = h.Length
		}
		t.lim.acquire(int64(payload))
		r := getRequest()
		r.h = h
		r.weight = int64(payload)
		if h.Type == cmdWrite && t.splices(h.Offset, payload) {
			if err := t.readIntoPipe(r); err != nil {
				t.lim.release(r.weight)
				r.free()
				return fmt.Errorf("nbd: reading WRITE payload: %w", err)
			}
		} else if payload > 0 {
			r.buf, r.bufp = getBuffer(int(payload))
			if h.Type == cmdWrite {
				if err := t.readPayload(r.buf); err != nil {
					t.lim.release(r.weight)
					r.free()
					return fmt.Errorf("nbd: reading WRITE payload: %w", err)
				}
			}
		}
		t.workers.Run(r)
	}
}

// readPayload reads a WRITE's payload into p. A large one is read from
// the socket straight into p, past the read buffer, which would copy it
// once more; the next fill of the read buffer then takes just the next
// request's header, so that a large payload behind it arrives the same
// way. Called by the reader only.
func (t *transmission) readPayload(p []byte) error {
	if len(p) < spliceMinWrite || t.br.Buffered() >= len(p) {
		_, err := io.ReadFull(t.br, p)
		return err
	}
	if err := t.cr.ReadFullPast(t.br, p); err != nil {
		return err
	}
	t.cr.Next = requestHeaderSize
	return nil
}

// serve carries out one request and sends its reply. It runs on a worker.
func (t *transmission) serve(r *request) {
	h := r.h
	fua := h.Flags&cmdFlagFUA != 0
	var err error
	switch h.Type {
	case cmdRead:
		if h.Length > 0 {
			err = t.be.ReadAt(r.buf, int64(h.Offset))
		}
	case cmdWrite:
		if r.chain != nil {
			err = t.pw.WriteFromPipe(r.buf, r.chain, int(h.Length), int64(h.Offset), fua)
			r.chain.Release(t.pipes.Put)
			r.chain = nil
		} else if h.Length > 0 {
			err = t.be.WriteAt(r.buf, int64(h.Offset), fua)
		}
	case cmdFlush:
		err = t.be.Flush()
	case cmdTrim:
		if h.Length > 0 {
			err = t.be.Trim(int64(h.Offset), int64(h.Length), fua)
		}
	case cmdWriteZeroes:
		if h.Length > 0 {
			err = t.be.WriteZeroes(int64(h.Offset), int64(h.Length), h.Flags&cmdFlagNoHole != 0, fua)
		}
	}
	errno := ErrnoOf(err)
	if err != nil {
		t.logf("nbd: %s: %s of %d bytes at %d failed (%s): %v", t.name, cmdName(h.Type), h.Length, h.Offset, errnoName(errno), err)
	}
	t.out.send(r, errno, h.Type == cmdRead && errno == 0)
}

// errnoName names an error number for log messages.
func errnoName(e Errno) string {
	switch e {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return fmt.Sprintf("errno %d", uint32(e))
}

// request is one request in flight. Requests are pooled.
type request struct {
	h        requestHeader
	weight   int64                 // payload bytes charged to the limiter
	buf      []byte                // payload, from getBuffer; nil if none
	chain    *zerocopy.Chain       // the rest of a WRITE's payload after buf, if in pipes
	bufp     *[]byte               // pool handle of buf
	hdr      [replyHeaderSize]byte // reply header
	withData bool                  // the reply carries buf after hdr
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	*r = request{}
	requestPool.Put(r)
}

// free returns r's buffer and r itself to their pools.
func (r *request) free() {
	if r.bufp != nil {
		putBuffer(r.bufp)
	}
	putRequest(r)
}

// Payload buffers are pooled by power-of-two size class, from 512 bytes
// (class 0) up to MaxBlockSize.
const (
	minBufferShift = 9
	maxBufferShift = 25 // log2(MaxBlockSize)
)

var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

// bufferClass returns the pool index for a buffer of n bytes.
func bufferClass(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

// getBuffer returns a buffer of n bytes, 0 < n <= MaxBlockSize, whose
// contents are arbitrary, and the handle to give back to putBuffer.
func getBuffer(n int) ([]byte, *[]byte) {
	c := bufferClass(n)
	p, ok := bufferPools[c].Get().(*[]byte)
	if !ok {
		b := make([]byte, 1<<(c+minBufferShift))
		p = &b
	}
	return (*p)[:n], p
}

// putBuffer returns a buffer obtained from getBuffer, by its handle.
func putBuffer(p *[]byte) {
	c := bufferClass(cap(*p))
	if cap(*p) != 1<<(c+minBufferShift) {
		return // not one of ours
	}
	bufferPools[c].Put(p)
}

// limiter is a counting semaphore over requests and payload bytes. Only the
// reader acquires; workers release.
type limiter struct {
	mu       sync.Mutex // guards n and bytes
	cond     sync.Cond  // signalled when n or bytes fall
	n        int        // requests in flight
	bytes    int64      // payload bytes in flight
	maxN     int
	maxBytes int64
	// inFlight mirrors n for readers that do not take mu.
	inFlight atomic.Int32
}

func (l *limiter) init(maxN int, maxBytes int64) {
	l.cond.L = &l.mu
	l.maxN, l.maxBytes = maxN, maxBytes
}

// acquire waits until one more request holding w payload bytes fits. A
// request always fits when nothing else is in flight.
func (l *limiter) acquire(w int64) {
	l.mu.Lock()
	for l.n > 0 && (l.n >= l.maxN || l.bytes+w > l.maxBytes) {
		l.cond.Wait()
	}
	l.n++
	l.bytes += w
	l.inFlight.Store(int32(l.n))
	l.mu.Unlock()
}

// release returns what acquire(w) took.
func (l *limiter) release(w int64) {
	l.mu.Lock()
	l.n--
	l.bytes -= w
	l.inFlight.Store(int32(l.n))
	l.mu.Unlock()
	l.cond.Signal()
}

// PipeWriter is implemented by a Backend that can take a large write's
// data from a pipe, without the data being copied into memory first (see
// package zerocopy).
type PipeWriter interface {
	// TakesPipe reports whether a write of n bytes at off would use a
	// pipe; if not, the server reads the data into memory as usual.
	// wholePages says the payload comes in whole pages (see
	// TransmissionOptions.WholePages).
	TakesPipe(off int64, n int, wholePages bool) bool
	// WriteFromPipe writes n bytes at off, like WriteAt: head, then the
	// n-len(head) bytes in c, which it consumes.
	WriteFromPipe(head []byte, c *zerocopy.Chain, n int, off int64, fua bool) error
}

// Writes of spliceMinWrite to spliceMaxWrite bytes are spliced into
// pipes when the backend is a PipeWriter; pipesPerConn bounds the pipes
// of one connection, and so the writes it holds in them.
const (
	spliceMinWrite = 64 << 10
	spliceMaxWrite = 1 << 20
	pipesPerConn   = 16
)

// pipeSize is the size asked for each of a connection's pipes. Tests
// shrink it, so that a write needs more pipes than a connection has.
var pipeSize = zerocopy.DefaultPipeSize

// splices reports whether a WRITE of n bytes is read into a pipe. Called
// by the reader only.
func (t *transmission) splices(off uint64, n uint32) bool {
	if n < spliceMinWrite || n > spliceMaxWrite || t.br.Buffered() >= int(n) {
		return false
	}
	if t.pipes != nil {
		return t.pw.TakesPipe(int64(off), int(n), t.wholePages)
	}
	pw, ok := t.be.(PipeWriter)
	raw, rok := zerocopy.RawConn(t.c)
	if !ok || !rok {
		return false
	}
	if t.pipes = zerocopy.NewPool(pipesPerConn, pipeSize); t.pipes == nil {
		return false
	}
	t.raw, t.pw = raw, pw
	return pw.TakesPipe(int64(off), int(n), t.wholePages)
}

// readIntoPipe reads a WRITE's payload: what the read buffer holds into
// r.buf, the rest into pipes for r.chain.
func (t *transmission) readIntoPipe(r *request) error {
	n := int(r.h.Length)
	if head := min(t.br.Buffered(), n); head > 0 {
		r.buf, r.bufp = getBuffer(head)
		if _, err := io.ReadFull(t.br, r.buf); err != nil {
			return err
		}
	}
	// Only the reader takes these pipes, and the workers give theirs
	// back, so waiting for one is safe, unless this write holds all the
	// pool has (a write in small fragments, in pipes smaller than asked
	// for): then the rest goes into memory.
	c := &zerocopy.Chain{}
	err := c.FillFromConn(t.raw, n-len(r.buf), t.pipes.LoneTaker(t.done))
	if errors.Is(err, zerocopy.ErrNoPipe) && !t.closing() {
		return t.payloadIntoMemory(r, c)
	}
	if err != nil {
		c.Release(t.pipes.Put)
		return err
	}
	r.chain = c
	// The next fill of the read buffer takes just the next request's
	// header, so that the data of a write behind it stays in the socket.
	t.cr.Next = requestHeaderSize
	return nil
}

// payloadIntoMemory reads a WRITE's payload whose pipes ran out into one
// buffer: the head read already, what the pipes hold, and the rest from
// the socket, past the read buffer.
func (t *transmission) payloadIntoMemory(r *request, c *zerocopy.Chain) error {
	buf, bufp := getBuffer(int(r.h.Length))
	k := copy(buf, r.buf)
	err := t.cr.ReadChainThenPast(t.br, c, buf[k:])
	c.Release(t.pipes.Put)
	if err != nil {
		putBuffer(bufp)
		return err
	}
	if r.bufp != nil {
		putBuffer(r.bufp)
	}
	r.buf, r.bufp = buf, bufp
	t.cr.Next = requestHeaderSize
	return nil
}

// closing reports whether the connection is shutting down.
func (t *transmission) closing() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// closePipes releases the pipes once the workers are done.
func (t *transmission) closePipes() {
	if t.pipes != nil {
		t.pipes.Close()
	}
}
