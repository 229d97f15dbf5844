package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"drbdd/zerocopy"
)

// Defaults for Server fields left zero.
const (
	// DefaultHandshakeTimeout bounds the whole handshake of a connection.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultMaxConns bounds the connections one Server serves at once.
	DefaultMaxConns = 256
)

// Server serves NBD exports over accepted connections. Its fields must not
// change once it is serving. A Server may serve several listeners.
type Server struct {
	// Provider resolves export names. It must be set.
	Provider ExportProvider
	// Logf, if not nil, receives a line for each refused export, backend
	// error and dropped connection.
	Logf func(format string, args ...any)
	// MaxInFlight bounds the requests in flight per connection; 0 means
	// DefaultMaxInFlight (64).
	MaxInFlight int
	// MaxInFlightBytes bounds the payload bytes of the requests in flight
	// per connection; 0 means DefaultMaxInFlightBytes (64 MiB).
	MaxInFlightBytes int64
	// HandshakeTimeout bounds the handshake; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxConns bounds the connections served at once by Serve; more are
	// closed as soon as they are accepted. 0 means DefaultMaxConns.
	MaxConns int

	conns atomic.Int64 // connections being served by Serve
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Serve accepts connections on l and serves each on its own goroutine
// until ctx is done or l is closed (by the caller or by Serve). It closes l
// before returning, and when it returns every connection it accepted has
// been closed and its goroutine has ended: connections still open are
// closed when Serve stops accepting, whatever the reason.
//
// Serve returns nil if ctx is done or l was closed, and the accept error
// otherwise.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup // counts connection goroutines
	defer func() {
		cancel()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	maxConns := int64(s.MaxConns)
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if isTemporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logf("nbd: accept: %v; retrying in %v", err, backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = 0
		if s.conns.Add(1) > maxConns {
			s.conns.Add(-1)
			s.logf("nbd: %v: refusing connection: %d connections already", c.RemoteAddr(), maxConns)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.conns.Add(-1)
			if err := s.ServeConn(ctx, c); err != nil && ctx.Err() == nil {
				s.logf("nbd: %v: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// isTemporaryAcceptError reports whether an accept error is worth retrying.
func isTemporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ServeConn runs the handshake on c and then, if the client chose an
// export, the transmission phase, until the client disconnects, ctx is
// done or the connection fails. It closes c before returning and releases
// the export it opened. It returns nil for a clean end (NBD_OPT_ABORT,
// NBD_CMD_DISC or EOF between requests), ctx.Err() if ctx was done, and
// otherwise the reason the connection ended.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	if s.Provider == nil {
		c.Close()
		return errors.New("nbd: Server has no Provider")
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	cr := &zerocopy.CappedReader{R: c}
	br := bufio.NewReaderSize(cr, readBufferSize)
	n := &negotiator{provider: s.Provider, logf: s.logf, br: br, w: c}
	exp, err := n.run()
	if !stop() || ctx.Err() != nil {
		// ctx was done during the handshake and closed c.
		if exp != nil {
			exp.release()
		}
		c.Close()
		return ctx.Err()
	}
	if err != nil {
		c.Close()
		if errors.Is(err, errAborted) {
			return nil
		}
		return fmt.Errorf("nbd: handshake: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return serveTransmission(ctx, c, cr, br, exp, TransmissionOptions{
		MaxInFlight:      s.MaxInFlight,
		MaxInFlightBytes: s.MaxInFlightBytes,
		Logf:             s.Logf,
	})
}

// Listen opens a listener for Server.Serve. An address of the form
// "unix:/path" listens on a Unix socket at /path, first removing a stale
// socket file left by a server that is gone (a live one makes Listen
// fail); any other address is a TCP "host:port", and accepted TCP
// connections have TCP_NODELAY set.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return nil, errors.New("nbd: empty unix socket path")
		}
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen: %w", err)
		}
		return l, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen: %w", err)
	}
	return tcpListener{l.(*net.TCPListener)}, nil
}

// removeStaleSocket removes the socket file at path if no server answers
// on it. It leaves other kinds of file alone.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nbd: listen: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("nbd: listen: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("nbd: listen: %s: another server is listening", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("nbd: listen: removing stale socket: %w", err)
	}
	return nil
}

// tcpListener sets TCP_NODELAY on every accepted connection, so that small
// replies are not held back by Nagle's algorithm.
type tcpListener struct {
	*net.TCPListener
}

// Accept waits for the next connection.
func (l tcpListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	_ = c.SetNoDelay(true)
	return c, nil
}
