package engine

import (
	"bufio"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"drbdd/protocol"
	"drbdd/zerocopy"
)

// sockWriter is a socket's write side shared by several goroutines. It
// combines their packets: each writer appends its packet to one buffer,
// and one of them flushes the buffer for all. A writer that finds nobody
// else about to flush becomes the flusher: when other writers are about
// (company), it first yields, so that the goroutines ready to run (under
// load, mostly other writers) append their packets, and then writes
// everything with one system call, which wakes the peer once. A lone
// writer flushes at once.
type sockWriter struct {
	// corks counts the holders of a cork; while it is not zero, nobody
	// flushes except to bound the buffer, and the last uncork flushes.
	corks atomic.Int32

	// mu guards out, pc and flushPending, and serializes writes to nc.
	mu  sync.Mutex
	out *sockBuffer
	pc  *protocol.Conn
	// flushPending is set while a writer that appended a packet is
	// yielding before it flushes: later writers leave the flush to it.
	flushPending bool
	// company, if not nil, reports whether other writers are likely to
	// queue packets soon; only then does the flusher yield first.
	company func() bool
}

// flushAt bounds how much the writers buffer before one flushes anyway.
const flushAt = 192 << 10

// flushPackets bounds how many packets the writers buffer before one
// flushes anyway, even while the socket is corked or a flusher yields.
// Unbounded, a burst of requests moves as one convoy: the peer receives
// nothing until the Primary has written the whole burst locally, and the
// Primary hears no ack until the peer has written all of it, so each
// side idles while the other works. Flushing every few packets lets the
// two overlap; on two CPUs shared with the client, 4 KiB writes at queue
// depth 32 left a fifth of the CPU time idle unbounded, and an eighth
// with 8. Once the Go runtime's monitor thread no longer woke with every
// write (see drbdd's sysmon.go), fewer, larger flushes paid off again:
// interleaved runs of that job gave means of 52.3k IOPS with 8 (nine
// runs), 56.9k with 32 (six) and 56.3k unbounded (three). 32 keeps a
// deeper queue from moving as one convoy.
const flushPackets = 32

func newSockWriter(nc net.Conn, rd *bufio.Reader, version int, timeout time.Duration) (*sockWriter, *protocol.Conn) {
	w := &sockWriter{out: &sockBuffer{nc: nc, timeout: timeout, pending: make([]byte, 0, 256<<10)}}
	pc := protocol.NewConn(struct {
		*bufio.Reader
		*sockBuffer
	}{rd, w.out})
	pc.SetVersion(version)
	w.pc = pc
	return w, pc
}

// sockBuffer is a sockWriter's output buffer. Small packets are copied
// into it and written out together by flush; a large packet (a data
// block) goes out at once with what is pending, in one vectored write
// straight from the caller's buffers, so that data blocks are not
// copied. The sockWriter's mu guards it.
type sockBuffer struct {
	nc      net.Conn
	timeout time.Duration
	pending []byte
	packets int // packets in pending
}

// Write appends p to the pending bytes.
func (b *sockBuffer) Write(p []byte) (int, error) {
	b.pending = append(b.pending, p...)
	return len(p), nil
}

// WriteVectors writes the pending bytes and then bufs, with one system
// call where the connection allows (writev); protocol.Conn calls it for
// large packets.
func (b *sockBuffer) WriteVectors(bufs [][]byte) error {
	v := make(net.Buffers, 0, 1+len(bufs))
	if len(b.pending) > 0 {
		v = append(v, b.pending)
	}
	v = append(v, bufs...)
	b.nc.SetWriteDeadline(time.Now().Add(b.timeout))
	_, err := v.WriteTo(b.nc)
	b.sent()
	return err
}

// sent empties the buffer once its bytes went to the socket (or failed
// to).
func (b *sockBuffer) sent() {
	b.pending = b.pending[:0]
	b.packets = 0
}

// buffered returns how many bytes are pending.
func (b *sockBuffer) buffered() int { return len(b.pending) }

// flush writes the pending bytes.
func (b *sockBuffer) flush() error {
	if len(b.pending) == 0 {
		return nil
	}
	b.nc.SetWriteDeadline(time.Now().Add(b.timeout))
	_, err := b.nc.Write(b.pending)
	b.sent()
	return err
}

// send writes one packet; parts are concatenated into its payload.
func (w *sockWriter) send(cmd protocol.Cmd, parts ...[]byte) error {
	flush, err := w.queue(cmd, parts...)
	if err != nil || !flush {
		return err
	}
	return w.flushQueued()
}

// sendPastCork writes one packet at once with whatever is buffered, even
// while the socket is corked. Pings and ping acks go this way: the
// receiver corks the ack socket while it works through a burst, and that
// work can wait on the disk (a flush for a barrier, a full write budget),
// but a keepalive that waited with it would let the peer's ping-timeout
// end a healthy connection. DRBD's asender likewise answers pings
// whatever the disk does.
func (w *sockWriter) sendPastCork(cmd protocol.Cmd) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.pc.WritePacket(cmd); err != nil {
		return err
	}
	return w.flushLocked()
}

// queue appends one packet to the buffer. When it reports flush, the
// caller has become the flusher and must call flushQueued, best after
// releasing any lock that other writers wait for; otherwise someone else
// flushes the packet. Packets queued by one goroutine, or under one lock,
// reach the socket in the order they were queued.
func (w *sockWriter) queue(cmd protocol.Cmd, parts ...[]byte) (flush bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.pc.WritePacket(cmd, parts...); err != nil {
		return false, err
	}
	return w.afterAppendLocked()
}

// queuePair appends two packets, for a barrier and the data packet that
// opens the next epoch; see queue.
func (w *sockWriter) queuePair(cmd1 protocol.Cmd, p1 []byte, cmd2 protocol.Cmd, parts ...[]byte) (flush bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.pc.WritePacket(cmd1, p1); err != nil {
		return false, err
	}
	if err := w.pc.WritePacket(cmd2, parts...); err != nil {
		return false, err
	}
	return w.afterAppendLocked()
}

// afterAppendLocked decides who flushes what was just appended. Caller
// holds mu.
func (w *sockWriter) afterAppendLocked() (flush bool, err error) {
	n := w.out.buffered()
	if n == 0 {
		return false, nil // written already (a large packet)
	}
	w.out.packets++
	if n >= flushAt || w.out.packets >= flushPackets {
		return false, w.flushLocked()
	}
	if w.flushPending || w.corks.Load() > 0 {
		return false, nil
	}
	w.flushPending = true
	return true, nil
}

// flushQueued is the flusher's part after queue reported flush: when
// other writers are about, it lets the runnable goroutines queue their
// packets first; then it writes the buffer.
func (w *sockWriter) flushQueued() error {
	if w.company != nil && w.company() {
		runtime.Gosched()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushPending = false
	return w.flushLocked()
}

// sendSpliced writes one packet whose payload is head followed by n bytes
// that body moves into the socket itself, by splice. What is queued goes
// out first, held back with MSG_MORE so that it leaves with the block.
// The writer's lock is held throughout: no other packet interleaves.
func (w *sockWriter) sendSpliced(raw syscall.RawConn, cmd protocol.Cmd, head []byte, n int, body func() error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.out
	var err error
	if b.pending, err = w.pc.AppendPacketHeader(b.pending, cmd, len(head)+n); err != nil {
		return err
	}
	b.pending = append(b.pending, head...)
	b.nc.SetWriteDeadline(time.Now().Add(b.timeout))
	err = zerocopy.SendMore(raw, b.pending)
	b.sent()
	if err != nil {
		return err
	}
	return body()
}

// flushLocked writes the buffer out. Caller holds mu.
func (w *sockWriter) flushLocked() error { return w.out.flush() }

// flush writes what is buffered now, unless a writer is about to.
func (w *sockWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.flushPending {
		return nil
	}
	return w.flushLocked()
}

// cork holds back flushes: packets sent while corked stay buffered until
// uncork, or until flushAt bytes or flushPackets packets are buffered.
// The receiver corks the ack socket while it works through input already
// buffered, so a burst of writes is answered with one flush.
func (w *sockWriter) cork() { w.corks.Add(1) }

// uncork releases a cork and flushes if nobody else is about to.
func (w *sockWriter) uncork() error {
	if w.corks.Add(-1) != 0 {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.flushPending {
		return nil // a writer is about to flush
	}
	return w.flushLocked()
}
