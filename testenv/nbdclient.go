package testenv

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// NBD protocol constants used by NBDClient (NetworkBlockDevice/nbd,
// doc/proto.md).
const (
	nbdcMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdcIHaveOpt     = 0x49484156454f5054 // "IHAVEOPT"
	nbdcOptReply     = 0x0003e889045565a9
	nbdcRequestMagic = 0x25609513
	nbdcSimpleReply  = 0x67446698

	nbdcFlagFixedNewstyle = 1 << 0
	nbdcFlagNoZeroes      = 1 << 1

	nbdcOptGo      = 7
	nbdcRepAck     = 1
	nbdcRepInfo    = 3
	nbdcInfoExport = 0

	nbdcCmdRead  = 0
	nbdcCmdWrite = 1
	nbdcCmdDisc  = 2
	nbdcCmdFlush = 3

	// NBDCmdFlagFUA is NBD_CMD_FLAG_FUA.
	nbdcCmdFlagFUA = 1 << 0

	// maxNBDReplyRead bounds the read payload the client accepts.
	maxNBDReplyRead = 32 << 20
)

// NBDError is a non-zero error number from an NBD simple reply.
type NBDError struct {
	Op    string
	Errno uint32
}

func (e *NBDError) Error() string {
	return fmt.Sprintf("nbd %s: server replied errno %d", e.Op, e.Errno)
}

// ErrNBDClosed is returned for requests on a client whose connection has
// failed or been closed; the wrapped cause says why.
var ErrNBDClosed = errors.New("nbd client: connection closed")

// nbdPending is one request waiting for its reply.
type nbdPending struct {
	op   string
	buf  []byte // READ destination
	done chan error
}

// NBDClient is a minimal NBD client for tests: fixed newstyle handshake
// with NBD_OPT_GO, simple replies only, and READ, WRITE (optionally FUA),
// FLUSH and DISC. Requests from concurrent goroutines are pipelined on the
// one connection and matched to their replies by handle, so a caller
// knows exactly which of its requests the server acknowledged.
type NBDClient struct {
	conn  net.Conn
	size  uint64
	flags uint16

	// wmu serializes writers of the socket (request header + payload).
	wmu sync.Mutex
	bw  *bufio.Writer

	// mu guards pending, next and err.
	mu      sync.Mutex
	pending map[uint64]*nbdPending
	next    uint64
	err     error

	readerDone chan struct{}
}

// DialNBDURI connects to an nbd://host:port/export URI.
func DialNBDURI(uri string) (*NBDClient, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "nbd" {
		return nil, fmt.Errorf("nbd client: unsupported URI scheme %q", u.Scheme)
	}
	return DialNBD(u.Host, strings.TrimPrefix(u.Path, "/"))
}

// DialNBD connects to addr (host:port) and negotiates export with
// NBD_OPT_GO.
func DialNBD(addr, export string) (*NBDClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := &NBDClient{conn: conn, pending: map[uint64]*nbdPending{}, readerDone: make(chan struct{})}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(conn, 256<<10)
	if err := c.handshake(br, export); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.bw = bufio.NewWriterSize(conn, 256<<10)
	go c.reader(br)
	return c, nil
}

func (c *NBDClient) handshake(br *bufio.Reader, export string) error {
	var greet [18]byte
	if _, err := io.ReadFull(br, greet[:]); err != nil {
		return fmt.Errorf("nbd handshake: reading greeting: %w", err)
	}
	if binary.BigEndian.Uint64(greet[0:]) != nbdcMagic || binary.BigEndian.Uint64(greet[8:]) != nbdcIHaveOpt {
		return fmt.Errorf("nbd handshake: not a newstyle NBD server (greeting %x)", greet)
	}
	hflags := binary.BigEndian.Uint16(greet[16:])
	if hflags&nbdcFlagFixedNewstyle == 0 {
		return fmt.Errorf("nbd handshake: server is not fixed newstyle (flags %#x)", hflags)
	}
	cflags := uint32(nbdcFlagFixedNewstyle)
	if hflags&nbdcFlagNoZeroes != 0 {
		cflags |= nbdcFlagNoZeroes
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, cflags)
	// NBD_OPT_GO: name length, name, zero information requests.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0)
	b = binary.BigEndian.AppendUint64(b, nbdcIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, nbdcOptGo)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("nbd handshake: sending NBD_OPT_GO: %w", err)
	}
	gotExport := false
	for range 64 {
		var h [20]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("nbd handshake: reading option reply: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:]); m != nbdcOptReply {
			return fmt.Errorf("nbd handshake: bad option reply magic %#x", m)
		}
		opt, typ, n := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if opt != nbdcOptGo {
			return fmt.Errorf("nbd handshake: reply for option %d, want %d", opt, nbdcOptGo)
		}
		if n > 64<<10 {
			return fmt.Errorf("nbd handshake: option reply of %d bytes", n)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(br, payload); err != nil {
			return fmt.Errorf("nbd handshake: reading option reply data: %w", err)
		}
		switch {
		case typ&(1<<31) != 0:
			return fmt.Errorf("nbd handshake: server refused export %q: error %#x: %s", export, typ, payload)
		case typ == nbdcRepInfo:
			if len(payload) >= 2 && binary.BigEndian.Uint16(payload) == nbdcInfoExport {
				if len(payload) != 12 {
					return fmt.Errorf("nbd handshake: NBD_INFO_EXPORT of %d bytes", len(payload))
				}
				c.size = binary.BigEndian.Uint64(payload[2:])
				c.flags = binary.BigEndian.Uint16(payload[10:])
				gotExport = true
			}
		case typ == nbdcRepAck:
			if !gotExport {
				return errors.New("nbd handshake: NBD_REP_ACK without NBD_INFO_EXPORT")
			}
			return nil
		default:
			return fmt.Errorf("nbd handshake: unexpected option reply type %d", typ)
		}
	}
	return errors.New("nbd handshake: too many option replies")
}

// Size returns the export size in bytes.
func (c *NBDClient) Size() uint64 { return c.size }

// Flags returns the transmission flags.
func (c *NBDClient) Flags() uint16 { return c.flags }

// reader matches replies to requests until the connection fails.
func (c *NBDClient) reader(br *bufio.Reader) {
	defer close(c.readerDone)
	var h [16]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			c.fail(fmt.Errorf("%w: reading reply: %v", ErrNBDClosed, err))
			return
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != nbdcSimpleReply {
			c.fail(fmt.Errorf("%w: bad reply magic %#x", ErrNBDClosed, m))
			return
		}
		errno := binary.BigEndian.Uint32(h[4:])
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		p := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if p == nil {
			c.fail(fmt.Errorf("%w: reply for unknown handle %#x", ErrNBDClosed, handle))
			return
		}
		if errno != 0 {
			p.done <- &NBDError{Op: p.op, Errno: errno}
			continue
		}
		if p.buf != nil {
			if _, err := io.ReadFull(br, p.buf); err != nil {
				err = fmt.Errorf("%w: reading READ payload: %v", ErrNBDClosed, err)
				p.done <- err
				c.fail(err)
				return
			}
		}
		p.done <- nil
	}
}

// fail ends the connection and every pending request with err.
func (c *NBDClient) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	pending := c.pending
	c.pending = map[uint64]*nbdPending{}
	c.mu.Unlock()
	c.conn.Close()
	for _, p := range pending {
		p.done <- err
	}
}

// do sends one request and waits for its reply.
func (c *NBDClient) do(op string, typ, flags uint16, off uint64, length uint32, payload, readBuf []byte) error {
	p := &nbdPending{op: op, buf: readBuf, done: make(chan error, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.next++
	handle := c.next
	c.pending[handle] = p
	c.mu.Unlock()

	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], nbdcRequestMagic)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], typ)
	binary.BigEndian.PutUint64(hdr[8:], handle)
	binary.BigEndian.PutUint64(hdr[16:], off)
	binary.BigEndian.PutUint32(hdr[24:], length)
	c.wmu.Lock()
	_, err := c.bw.Write(hdr[:])
	if err == nil && len(payload) > 0 {
		_, err = c.bw.Write(payload)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("%w: sending %s: %v", ErrNBDClosed, op, err))
	}
	return <-p.done
}

// WriteAt writes p at off; with fua the server must make it durable
// before replying. A nil error means the server acknowledged the write.
func (c *NBDClient) WriteAt(p []byte, off int64, fua bool) error {
	if len(p) > maxNBDReplyRead {
		return fmt.Errorf("nbd client: write of %d bytes too large", len(p))
	}
	var flags uint16
	if fua {
		flags = nbdcCmdFlagFUA
	}
	return c.do("WRITE", nbdcCmdWrite, flags, uint64(off), uint32(len(p)), p, nil)
}

// ReadAt reads len(p) bytes at off.
func (c *NBDClient) ReadAt(p []byte, off int64) error {
	if len(p) > maxNBDReplyRead {
		return fmt.Errorf("nbd client: read of %d bytes too large", len(p))
	}
	return c.do("READ", nbdcCmdRead, 0, uint64(off), uint32(len(p)), nil, p)
}

// Flush asks the server to make every acknowledged write durable.
func (c *NBDClient) Flush() error {
	return c.do("FLUSH", nbdcCmdFlush, 0, 0, 0, nil, nil)
}

// Close sends NBD_CMD_DISC (the server sends no reply) and closes the
// connection. Requests still pending fail.
func (c *NBDClient) Close() error {
	c.mu.Lock()
	broken := c.err != nil
	c.mu.Unlock()
	if !broken {
		var hdr [28]byte
		binary.BigEndian.PutUint32(hdr[0:], nbdcRequestMagic)
		binary.BigEndian.PutUint16(hdr[6:], nbdcCmdDisc)
		c.wmu.Lock()
		c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.bw.Write(hdr[:])
		c.bw.Flush()
		c.wmu.Unlock()
	}
	c.fail(fmt.Errorf("%w: closed by the client", ErrNBDClosed))
	<-c.readerDone
	return nil
}
