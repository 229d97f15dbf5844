package netlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultControlPath is where drbdd listens and drbdadm connects by default.
const DefaultControlPath = "/run/drbdd/drbdd.sock"

// Defaults of the Server's limits.
const (
	DefaultMaxConns     = 64
	DefaultReadTimeout  = 10 * time.Second
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultWriteTimeout = 10 * time.Second
)

// ErrSubscriptionClosed is returned by EventSink.Send once the subscription
// has ended.
var ErrSubscriptionClosed = errors.New("subscription closed")

// An EventSink streams state changes to a subscribed client. Send is safe for
// concurrent use; it fails once the client has gone or the handler returned.
type EventSink interface {
	Send(StateInfo) error
}

// A Handler serves one command. stream is nil except for Subscribe, whose
// handler sends events until ctx ends (the client disconnected or the server
// stops) and then returns its final reply. For other commands ctx ends when
// the server stops. Handlers of one connection run one at a time; handlers
// of different connections run concurrently. The server fills in the reply's
// Command and Seq, and its Minor if zero. A nil reply is answered with
// ErrInternal.
type Handler func(ctx context.Context, req *Request, stream EventSink) *Reply

// A Server dispatches control requests to handlers, like the genl operations
// table of DRBD's kernel module (cnd_table in DRBD 8.3). The fields must not
// be changed while Serve runs; the zero value of each limit selects its
// default.
type Server struct {
	// Handlers is the dispatch table. A command without a handler is
	// answered with ErrUnknownCommand.
	Handlers map[Command]Handler

	// Logf logs connection-level problems. Nil means log.Printf.
	Logf func(format string, args ...any)

	// AllowUID decides whether a peer, identified by SO_PEERCRED, may send
	// commands. Nil allows root only.
	AllowUID func(uid uint32) bool

	// MaxConns bounds the number of connections served at once; further
	// connections are refused with ErrBusy. Default DefaultMaxConns.
	MaxConns int

	// ReadTimeout bounds the time a started message may take to arrive
	// whole. Default DefaultReadTimeout.
	ReadTimeout time.Duration

	// IdleTimeout bounds the time a connection may wait between requests.
	// Default DefaultIdleTimeout.
	IdleTimeout time.Duration

	// WriteTimeout bounds the time to write one reply or event. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
}

// serverLimits is a Server's configuration with defaults applied.
type serverLimits struct {
	logf     func(string, ...any)
	allow    func(uint32) bool
	maxConns int
	read     time.Duration
	idle     time.Duration
	write    time.Duration
}

func (s *Server) limits() serverLimits {
	l := serverLimits{
		logf:     s.Logf,
		allow:    s.AllowUID,
		maxConns: s.MaxConns,
		read:     s.ReadTimeout,
		idle:     s.IdleTimeout,
		write:    s.WriteTimeout,
	}
	if l.logf == nil {
		l.logf = log.Printf
	}
	if l.allow == nil {
		l.allow = func(uid uint32) bool { return uid == 0 }
	}
	if l.maxConns <= 0 {
		l.maxConns = DefaultMaxConns
	}
	if l.read <= 0 {
		l.read = DefaultReadTimeout
	}
	if l.idle <= 0 {
		l.idle = DefaultIdleTimeout
	}
	if l.write <= 0 {
		l.write = DefaultWriteTimeout
	}
	return l
}

// ListenControl opens the control socket at path: it creates the parent
// directory (mode 0755), removes a stale socket left by a dead daemon, and
// makes the socket mode 0600. It refuses if a live daemon answers on path or
// if path exists and is not a socket. The socket briefly has the umask's mode
// before the chmod; the server's SO_PEERCRED check covers that window.
func ListenControl(path string) (*net.UnixListener, error) {
	if path == "" {
		return nil, errors.New("empty control socket path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("another drbdd is already listening on %s", path)
		}
		if !errors.Is(derr, syscall.ECONNREFUSED) && !errors.Is(derr, fs.ErrNotExist) {
			return nil, fmt.Errorf("probe existing control socket %s: %w", path, derr)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale control socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod control socket: %w", err)
	}
	return l, nil
}

// Serve accepts connections on l and serves them until ctx ends or accepting
// fails for good. It takes ownership of l and closes it (which removes the
// socket file) before returning. On return every connection is closed and
// every handler has returned. Serve returns nil when ctx ended it.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	lim := s.limits()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	sem := make(chan struct{}, lim.maxConns)
	var backoff time.Duration
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !temporaryAcceptError(err) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			lim.logf("drbdd control: accept: %v; retrying in %v", err, backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case sem <- struct{}{}:
		default:
			lim.logf("drbdd control: refusing connection: %d connections open", lim.maxConns)
			refuseConn(conn, lim, ErrBusy, fmt.Sprintf("drbdd is busy: %d control connections are open", lim.maxConns))
			continue
		}
		// The connection goroutine is owned by Serve, which waits for it;
		// it stops when the client leaves or ctx ends (which closes conn).
		wg.Go(func() {
			defer func() { <-sem }()
			s.serveConn(ctx, lim, conn)
		})
	}
}

// temporaryAcceptError reports whether an accept error may go away by itself.
func temporaryAcceptError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// refuseConn sends conn a connection-level error reply (sequence 0) and closes it.
func refuseConn(conn *net.UnixConn, lim serverLimits, code RetCode, info string) {
	defer conn.Close()
	b, err := (&Reply{RetCode: code, Info: info}).MarshalBinary()
	if err != nil {
		return
	}
	conn.SetWriteDeadline(time.Now().Add(lim.write))
	conn.Write(b)
}

// controlPeerCred returns the credentials of the process at the other end of conn.
func controlPeerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// errControlFrameLength means a frameControl header announced a length that cannot be
// right; the stream cannot be resynchronised after it.
var errControlFrameLength = errors.New("bad frameControl length")

// readControlFrame reads one framed message from conn. The header must start within
// idle and the rest must follow within rest; a zero duration leaves conn's
// deadline as it is.
func readControlFrame(conn net.Conn, idle, rest time.Duration) ([]byte, error) {
	setControlReadDeadline(conn, idle)
	var hdr [ctlNlmsgHeaderLen]byte
	if _, err := io.ReadFull(conn, hdr[:1]); err != nil {
		return nil, err
	}
	setControlReadDeadline(conn, rest)
	if _, err := io.ReadFull(conn, hdr[1:]); err != nil {
		return hdr[:], noEOF(err)
	}
	n := binary.NativeEndian.Uint32(hdr[0:])
	if n < ctlMinMessageLen || n > MaxMessageSize || n%4 != 0 {
		return hdr[:], fmt.Errorf("%w %d (want %d..%d, a multiple of 4)", errControlFrameLength, n, ctlMinMessageLen, MaxMessageSize)
	}
	b := make([]byte, n)
	copy(b, hdr[:])
	if _, err := io.ReadFull(conn, b[ctlNlmsgHeaderLen:]); err != nil {
		return hdr[:], noEOF(err)
	}
	return b, nil
}

func setControlReadDeadline(conn net.Conn, d time.Duration) {
	if d > 0 {
		conn.SetReadDeadline(time.Now().Add(d))
	}
}

// noEOF turns an EOF inside a message into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// serveConn serves one connection until the client closes it, a read fails,
// or ctx ends.
func (s *Server) serveConn(ctx context.Context, lim serverLimits, conn *net.UnixConn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	cred, err := controlPeerCred(conn)
	if err != nil {
		lim.logf("drbdd control: SO_PEERCRED: %v", err)
		return
	}
	if !lim.allow(cred.Uid) {
		lim.logf("drbdd control: refusing uid %d (pid %d)", cred.Uid, cred.Pid)
		refuseConn(conn, lim, ErrPerm, fmt.Sprintf("permission denied: uid %d may not control drbdd", cred.Uid))
		return
	}

	w := &ctlReplyWriter{conn: conn, timeout: lim.write}
	for {
		b, err := readControlFrame(conn, lim.idle, lim.read)
		if err != nil {
			if len(b) >= ctlNlmsgHeaderLen && errors.Is(err, errControlFrameLength) {
				seq := binary.NativeEndian.Uint32(b[8:])
				lim.logf("drbdd control: pid %d: %v", cred.Pid, err)
				w.write(&Reply{Seq: seq, RetCode: ErrInvalidRequest, Info: "invalid control message: " + err.Error()})
			} else if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				lim.logf("drbdd control: pid %d: read: %v", cred.Pid, err)
			}
			return
		}
		req, err := UnmarshalRequest(b)
		if err != nil {
			var cmd Command
			if len(b) > ctlNlmsgHeaderLen {
				cmd = Command(b[ctlNlmsgHeaderLen])
			}
			lim.logf("drbdd control: pid %d: %v", cred.Pid, err)
			rep := &Reply{Command: cmd, Seq: binary.NativeEndian.Uint32(b[8:]), RetCode: ErrInvalidRequest, Info: "invalid control message: " + err.Error()}
			if !w.write(rep) {
				return
			}
			continue
		}
		h := s.Handlers[req.Command]
		if h == nil {
			info := fmt.Sprintf("unknown command %d", uint8(req.Command))
			if req.Command.Known() {
				info = fmt.Sprintf("command %s is not supported by this daemon", req.Command)
			}
			if !w.write(&Reply{Command: req.Command, Seq: req.Seq, Minor: req.Minor, RetCode: ErrUnknownCommand, Info: info}) {
				return
			}
			continue
		}
		if req.Command == Subscribe {
			s.subscribe(ctx, lim, conn, w, h, req)
			return
		}
		if !w.write(completeReply(s.call(ctx, lim, h, req, nil), req)) {
			return
		}
	}
}

// call runs a handler and turns a panic into an ErrInternal reply, so that
// a bug in one command cannot take down the daemon and the I/O it serves.
func (s *Server) call(ctx context.Context, lim serverLimits, h Handler, req *Request, sink EventSink) (rep *Reply) {
	defer func() {
		if v := recover(); v != nil {
			lim.logf("drbdd control: %s handler panicked: %v\n%s", req.Command, v, debug.Stack())
			rep = &Reply{RetCode: ErrInternal, Info: fmt.Sprintf("%s: internal error: %v", req.Command, v)}
		}
	}()
	return h(ctx, req, sink)
}

// subscribe runs a Subscribe handler. The subscription ends when the handler
// returns; the handler's context ends when the client sends anything or
// disconnects, or when ctx ends.
func (s *Server) subscribe(ctx context.Context, lim serverLimits, conn *net.UnixConn, w *ctlReplyWriter, h Handler, req *Request) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The watcher is owned by subscribe: it ends when the client closes or
	// writes, or when serveConn closes conn, and subscribe waits for it.
	conn.SetReadDeadline(time.Time{})
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		var b [1]byte
		conn.Read(b[:])
		cancel()
	}()

	sink := &ctlEventSink{w: w, seq: req.Seq}
	final := completeReply(s.call(hctx, lim, h, req, sink), req)
	w.finish(final)
	conn.Close()
	<-watcherDone
}

// complete fills in the parts of a handler's reply that come from req,
// without changing the handler's value.
func completeReply(rep *Reply, req *Request) *Reply {
	var r Reply
	if rep == nil {
		r = Reply{RetCode: ErrInternal, Info: fmt.Sprintf("%s: handler returned no reply", req.Command)}
	} else {
		r = *rep
	}
	r.Command = req.Command
	r.Seq = req.Seq
	if r.Minor == 0 {
		r.Minor = req.Minor
	}
	return &r
}

// ctlReplyWriter writes replies and events to one connection.
type ctlReplyWriter struct {
	conn    *net.UnixConn
	timeout time.Duration

	mu     sync.Mutex // guards closed and the writes to conn, so that messages never interleave
	closed bool       // no more messages may be written
}

// write encodes and writes rep and reports whether the connection is still
// usable. A reply that cannot be encoded is replaced by an ErrInternal reply.
func (w *ctlReplyWriter) write(rep *Reply) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeLocked(rep) == nil
}

// finish writes the final reply of a subscription and refuses further
// messages.
func (w *ctlReplyWriter) finish(rep *Reply) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writeLocked(rep)
	w.closed = true
}

func (w *ctlReplyWriter) writeLocked(rep *Reply) error {
	if w.closed {
		return ErrSubscriptionClosed
	}
	b, err := rep.MarshalBinary()
	if err != nil {
		info := fmt.Sprintf("%s: cannot encode reply: %v", rep.Command, err)
		if len(info) > MaxInfoLen {
			info = info[:MaxInfoLen]
		}
		b, err = (&Reply{Command: rep.Command, Seq: rep.Seq, Minor: rep.Minor, RetCode: ErrInternal, Info: info}).MarshalBinary()
		if err != nil {
			w.closed = true
			return err
		}
	}
	w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	if _, err := w.conn.Write(b); err != nil {
		w.closed = true
		return err
	}
	return nil
}

// ctlEventSink is the EventSink of one subscription.
type ctlEventSink struct {
	w   *ctlReplyWriter
	seq uint32 // the sequence number of the Subscribe request
}

// Send writes one Event message carrying st.
func (s *ctlEventSink) Send(st StateInfo) error {
	b, err := (&Reply{Command: Event, Seq: s.seq, Minor: st.Minor, RetCode: NoError, States: []StateInfo{st}}).MarshalBinary()
	if err != nil {
		return err
	}
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if s.w.closed {
		return ErrSubscriptionClosed
	}
	s.w.conn.SetWriteDeadline(time.Now().Add(s.w.timeout))
	if _, err := s.w.conn.Write(b); err != nil {
		s.w.closed = true
		return err
	}
	return nil
}

// A Client sends control requests to drbdd over one connection. Its methods
// are safe for concurrent use; requests are sent one at a time.
type Client struct {
	path   string
	conn   *net.UnixConn
	closed atomic.Bool // Close was called

	mu     sync.Mutex // guards seq and broken, and serialises exchanges on conn
	seq    uint32     // sequence number of the last request
	broken error      // why conn can no longer carry requests, or nil
}

// Dial connects to the drbdd control socket at path.
func Dial(path string) (*Client, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		cause := err
		var errno syscall.Errno
		if errors.As(err, &errno) {
			cause = errno
		}
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("cannot connect to drbdd at %s: permission denied (are you root?): %w", path, cause)
		}
		return nil, fmt.Errorf("cannot connect to drbdd at %s: is the daemon running? (%w)", path, cause)
	}
	return &Client{path: path, conn: conn}, nil
}

// Close closes the connection. It interrupts a running Do or Subscribe.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.conn.Close()
}

// begin locks c for one exchange and returns the next sequence number.
func (c *Client) begin() (uint32, error) {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return 0, errors.New("drbdd control client is closed")
	}
	if c.broken != nil {
		err := c.broken
		c.mu.Unlock()
		return 0, err
	}
	c.seq++
	if c.seq == 0 { // 0 marks connection-level replies
		c.seq = 1
	}
	return c.seq, nil
}

// watch makes conn's I/O follow ctx until the returned function is called.
func (c *Client) watch(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	} else {
		c.conn.SetDeadline(time.Time{})
	}
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		if !stop() {
			<-done // the deadline change must not leak into the next exchange
		}
	}
}

// exchangeErr explains a failed read or write of an exchange.
func (c *Client) exchangeErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Only watch sets deadlines, from ctx; the poller may fire a
		// moment before ctx's own timer.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if c.closed.Load() {
		return errors.New("drbdd control client is closed")
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("drbdd at %s closed the connection", c.path)
	}
	return fmt.Errorf("drbdd at %s: %w", c.path, err)
}

// send writes the encoded request b and reads the first message that
// answers req. A write error is reported only if no reply explains it: the
// daemon may have refused the connection and closed it before reading.
func (c *Client) send(ctx context.Context, b []byte, req *Request) (*Reply, error) {
	_, werr := c.conn.Write(b)
	rep, rerr := c.receive(ctx, req)
	if rerr != nil && werr != nil && rep == nil {
		return nil, c.exchangeErr(ctx, werr)
	}
	return rep, rerr
}

// receive reads one message answering req.
func (c *Client) receive(ctx context.Context, req *Request) (*Reply, error) {
	b, err := readControlFrame(c.conn, 0, 0)
	if err != nil {
		return nil, c.exchangeErr(ctx, err)
	}
	rep, err := UnmarshalReply(b)
	if err != nil {
		return nil, fmt.Errorf("drbdd at %s sent a bad reply: %w", c.path, err)
	}
	if rep.Seq == 0 && req.Seq != 0 {
		// A connection-level refusal (permission, busy): the daemon closes.
		if err := rep.Err(); err != nil {
			return rep, err
		}
		return nil, fmt.Errorf("drbdd at %s sent an unexpected message", c.path)
	}
	if rep.Seq != req.Seq {
		return nil, fmt.Errorf("drbdd at %s answered request %d, want %d", c.path, rep.Seq, req.Seq)
	}
	return rep, nil
}

// Do sends req and waits for its reply. If the reply's RetCode is a failure
// Do returns the reply together with an *Error whose message is the reply's
// Info text. If ctx ends first Do returns ctx.Err() and the Client can no
// longer be used. Do does not modify req; it sends a copy with Seq set.
func (c *Client) Do(ctx context.Context, req *Request) (*Reply, error) {
	if req == nil {
		return nil, errors.New("nil request")
	}
	if req.Command == Subscribe {
		return nil, errors.New("use Client.Subscribe for the subscribe command")
	}
	seq, err := c.begin()
	if err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	stop := c.watch(ctx)
	defer stop()

	r := *req
	r.Seq = seq
	b, err := r.MarshalBinary()
	if err != nil {
		return nil, err
	}
	rep, err := c.send(ctx, b, &r)
	if err != nil {
		// Every failed exchange leaves the stream out of step or closed.
		c.broken = err
		return rep, err
	}
	if rep.Command != r.Command {
		c.broken = fmt.Errorf("drbdd at %s answered %s with %s", c.path, r.Command, rep.Command)
		return nil, c.broken
	}
	return rep, rep.Err()
}

// Subscribe sends a Subscribe request (req may be nil; a zero Command means
// Subscribe) and calls fn for every state the daemon streams, until fn
// returns an error (which Subscribe returns), ctx ends (ctx.Err()), or the
// daemon ends the subscription (nil, or an *Error if its final reply is a
// failure). A subscription uses up the connection: afterwards the Client is
// closed.
func (c *Client) Subscribe(ctx context.Context, req *Request, fn func(StateInfo) error) error {
	var r Request
	if req != nil {
		r = *req
	}
	if r.Command == 0 {
		r.Command = Subscribe
	}
	if r.Command != Subscribe {
		return fmt.Errorf("subscribe needs the subscribe command, not %s", r.Command)
	}
	seq, err := c.begin()
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	defer c.Close()
	c.broken = errors.New("drbdd control client was used for a subscription")
	stop := c.watch(ctx)
	defer stop()

	r.Seq = seq
	b, err := r.MarshalBinary()
	if err != nil {
		return err
	}
	rep, err := c.send(ctx, b, &r)
	for {
		if err != nil {
			return err
		}
		switch rep.Command {
		case Event:
			for _, st := range rep.States {
				if err := fn(st); err != nil {
					return err
				}
			}
		case Subscribe:
			return rep.Err()
		default:
			return fmt.Errorf("drbdd at %s sent %s during a subscription", c.path, rep.Command)
		}
		rep, err = c.receive(ctx, &r)
	}
}
