package engine

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"drbdd/protocol"
)

// sockWriter is a socket's write side shared by several goroutines. It
// combines their packets: each writer appends its packet to one buffer,
// and whichever writer is last in the convoy flushes it. A lone writer
// therefore flushes at once (no added latency), while concurrent writers
// share one system call (throughput under queue depth).
type sockWriter struct {
	nc      net.Conn
	timeout time.Duration
	// waiting counts writers that have announced themselves and not yet
	// finished; the one that brings it to zero flushes.
	waiting atomic.Int32

	// mu guards bw and pc, and serializes writes to nc.
	mu sync.Mutex
	bw *bufio.Writer
	pc *protocol.Conn
}

// flushAt bounds how much a convoy buffers before someone flushes anyway.
const flushAt = 192 << 10

func newSockWriter(nc net.Conn, rd *bufio.Reader, version int, timeout time.Duration) (*sockWriter, *protocol.Conn) {
	w := &sockWriter{nc: nc, timeout: timeout, bw: bufio.NewWriterSize(nc, 256<<10)}
	pc := protocol.NewConn(struct {
		*bufio.Reader
		*bufio.Writer
	}{rd, w.bw})
	pc.SetVersion(version)
	w.pc = pc
	return w, pc
}

// send writes one packet; parts are concatenated into its payload.
func (w *sockWriter) send(cmd protocol.Cmd, parts ...[]byte) error {
	w.waiting.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.pc.WritePacket(cmd, parts...)
	last := w.waiting.Add(-1) == 0
	if err != nil {
		return err
	}
	if last || w.bw.Buffered() >= flushAt {
		w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
		err = w.bw.Flush()
	}
	return err
}

// sendPair writes two packets with at most one flush, for a barrier and
// the data packet that opens the next epoch.
func (w *sockWriter) sendPair(cmd1 protocol.Cmd, p1 []byte, cmd2 protocol.Cmd, parts ...[]byte) error {
	w.waiting.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.pc.WritePacket(cmd1, p1)
	if err == nil {
		err = w.pc.WritePacket(cmd2, parts...)
	}
	last := w.waiting.Add(-1) == 0
	if err != nil {
		return err
	}
	if last || w.bw.Buffered() >= flushAt {
		w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
		err = w.bw.Flush()
	}
	return err
}

// cork holds back flushes: packets sent while corked stay buffered until
// uncork. The receiver corks the ack socket while it works through input
// already buffered, so a burst of writes is answered with one flush.
func (w *sockWriter) cork() { w.waiting.Add(1) }

// uncork releases a cork and flushes if nobody else is about to.
func (w *sockWriter) uncork() error {
	if w.waiting.Add(-1) != 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.bw.Buffered() == 0 {
		return nil
	}
	w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.bw.Flush()
}
