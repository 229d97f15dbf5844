package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/protocol"
	"drbdd/workers"
	"drbdd/zerocopy"
)

// errPeerLost completes requests whose peer went away before acking them;
// their blocks are marked out of sync.
var errPeerLost = errors.New("peer lost")

// errNegAck completes requests the peer failed to write.
var errNegAck = errors.New("peer failed to write (P_NEG_ACK)")

// sessionEnd says why a session ended and which connection state follows.
type sessionEnd struct {
	state replication.ConnState
	err   error
}

// outPacket is a small packet queued for the worker (a resync or verify
// request, a state packet) with its payload already encoded. Application
// writes and barriers do not go through the worker.
type outPacket struct {
	cmd     protocol.Cmd
	payload []byte
	// sent, when not nil, is closed once the packet is on the socket.
	sent chan struct{}
}

// peerReq is an application write waiting for the peer.
type peerReq struct {
	id     uint64
	off, n int64
	sentAt time.Time
	done   chan struct{}
	err    error // valid once done is closed
	once   sync.Once
	// writeAck is set when only the peer's P_WRITE_ACK completes the
	// request, whatever the wire protocol: the write of a diskless
	// Primary, whose only copy is the peer's disk.
	writeAck bool
}

func (q *peerReq) resolve(err error) {
	q.once.Do(func() {
		q.err = err
		close(q.done)
	})
}

// tlEpoch is one epoch of the transfer log: the writes sent between two
// barriers, kept until the peer acknowledges the barrier (and so has them
// on stable storage). If the connection breaks first, they are marked out
// of sync.
type tlEpoch struct {
	nr     uint32
	ranges [][2]int64
	closed bool // its barrier was sent
}

// maxIdleAppliers bounds the workers that wait to apply the peer's
// writes, so that a burst of small writes does not leave thousands of
// goroutines behind for the rest of the session.
const maxIdleAppliers = 64

// session is one established connection: two sockets and the goroutines
// that serve them. It ends at the first error; the connection loop then
// builds a new one.
type session struct {
	c              *connection
	r              *Resource
	dataNC, metaNC net.Conn
	// data and meta read (and, during the handshake, write) the sockets;
	// after the handshake all writes go through dataW and metaW.
	data, meta   *protocol.Conn
	dataW, metaW *sockWriter
	dataRd       *bufio.Reader
	// rxLimit is the data socket under dataRd; the receiver caps its
	// reads to leave data blocks in the socket for splicing.
	rxLimit zerocopy.CappedReader
	// splice holds the raw data socket and pipes for moving data blocks
	// between it and the disk without copies.
	splice spliceState
	// rsAcks counts the resync acks of blocks written in parallel, to
	// flush every ackBatch of them.
	rsAcks atomic.Uint64
	// rsSendq queues resync requests for rsSender; serveParallel bounds
	// it.
	rsSendq chan rsJob

	version        int
	features       protocol.FeatureFlags
	wireProto      uint32
	writeTimeout   time.Duration
	maxEpochWrites int
	// peerBuffers bounds the peer's writes held in memory (max-buffers).
	peerBuffers *byteBudget
	// applies runs the peer's writes that the receiver does not apply
	// inline; the receiver dispatches to it and closes it.
	applies *workers.Pool[func()]
	ctx     context.Context
	cancel  context.CancelCauseFunc
	wg      sync.WaitGroup
	sendq   chan *outPacket

	// syncMu guards sync, the resync or verify run of this session.
	syncMu sync.Mutex
	sync   *syncState

	// sendMu orders application writes and barriers on the wire and
	// guards the epoch fields.
	sendMu          sync.Mutex
	epoch           uint32
	epochWrites     int
	epochCompletion bool
	seq             uint32

	// pmu guards pending, tl, closed and lastBarrierAck; barrierCond
	// (on pmu) is broadcast when a barrier ack arrives or the session ends.
	pmu            sync.Mutex
	barrierCond    *sync.Cond
	pending        map[uint64]*peerReq
	nextID         uint64
	tl             []*tlEpoch
	reads          map[uint64]*readReq
	closed         bool
	lastBarrierAck uint32

	// recvEpochs holds the peer's epochs in arrival order.
	recvEpochs recvEpochs

	// peerState is the peer's last P_STATE, converted to our view.
	peerState atomic.Uint32
	// peerCurrent is the current UUID from the peer's last P_UUIDS (0 if
	// it sent none: a diskless peer has no generations).
	peerCurrent atomic.Uint64
	// lastAckCheck is when asender last scanned for overdue requests; only
	// asender uses it.
	lastAckCheck time.Time
	// pingRTT is the last measured ping round trip in nanoseconds.
	pingRTT atomic.Int64
	// stateReply delivers P_STATE_CHG_REPLY to a waiting cluster-wide
	// state change.
	stateReply chan replication.Result
}

// defaultMaxBuffers is max-buffers when the net config has none: 4 KiB
// pages of peer data held in memory at once (32 MiB).
const defaultMaxBuffers = 8192

// sendQueue bounds the packets waiting for the worker.
const sendQueue = 1024

func newSession(c *connection, data, meta *protocol.Conn, dataNC, metaNC net.Conn) *session {
	s := &session{
		c:          c,
		r:          c.r,
		dataNC:     dataNC,
		metaNC:     metaNC,
		version:    data.Version(),
		wireProto:  c.conf.Protocol,
		pending:    map[uint64]*peerReq{},
		epoch:      1,
		stateReply: make(chan replication.Result, 1),
	}
	if s.wireProto == 0 {
		s.wireProto = protocol.ProtocolC
	}
	s.writeTimeout = c.conf.Timeout * time.Duration(max(c.conf.KoCount, 1))
	if s.writeTimeout <= 0 {
		s.writeTimeout = 42 * time.Second
	}
	s.maxEpochWrites = int(c.conf.MaxEpochSize)
	if s.maxEpochWrites <= 0 {
		s.maxEpochWrites = 2048
	}
	buffers := int64(c.conf.MaxBuffers)
	if buffers <= 0 {
		buffers = defaultMaxBuffers
	}
	s.peerBuffers = newByteBudget(buffers * 4096)
	s.sendq = make(chan *outPacket, sendQueue)
	s.barrierCond = sync.NewCond(&s.pmu)
	// Buffered reads take many packets per system call; the writers
	// combine concurrent packets into one.
	s.rxLimit.R = dataNC
	s.dataRd = bufio.NewReaderSize(&s.rxLimit, 256<<10)
	s.splice = newSpliceState(dataNC)
	s.rsSendq = make(chan rsJob, serveParallel)
	s.dataW, s.data = newSockWriter(dataNC, s.dataRd, s.version, s.writeTimeout)
	// Application writes in flight, or a resync or verify run, mean more
	// data packets are coming: their senders share flushes. A lone write
	// at queue depth one goes out at once.
	s.dataW.company = func() bool { return s.r.io.appPending.Load() > 1 || s.getSync() != nil }
	s.metaW, s.meta = newSockWriter(metaNC, bufio.NewReaderSize(metaNC, 64<<10), s.version, s.writeTimeout)
	// Acks of the peer's writes: while other peer writes are still being
	// applied, their acks are coming too (under AIO, completions arrive in
	// batches and wake their writers together), so the acks share a
	// flush. A lone write is acked at once. unacked is dropped before
	// the ack is sent, so it counts only the others.
	s.metaW.company = func() bool { return s.r.io.unacked.Load() > 0 }
	s.ctx, s.cancel = context.WithCancelCause(c.ctx)
	s.applies = workers.New(func(apply func()) { apply() }, 0, maxIdleAppliers, &s.wg)
	return s
}

// run performs the state handshake, serves the session until it fails,
// and tears it down. It returns why it ended.
func (s *session) run() sessionEnd {
	r := s.r
	if err := s.handshake(); err != nil {
		s.teardown(err)
		return classify(err)
	}
	s.goRun(s.receiver)
	s.goRun(s.worker)
	s.goRun(s.asender)
	s.goRun(s.rsSender)
	if y := s.getSync(); y != nil && y.target {
		s.goRun(s.resyncer)
	}
	<-s.ctx.Done()
	err := context.Cause(s.ctx)
	s.teardown(err)
	r.logf("%s: %s", s.c.peerName, describeEnd(err))
	return classify(err)
}

// goRun starts one of the session's goroutines; the first to fail ends
// the session.
func (s *session) goRun(fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil {
			s.cancel(err)
		}
	}()
}

// Errors that say which connection state follows a failure.
var (
	errPingTimeout = errors.New("PingAck did not arrive in time")
	errAckTimeout  = errors.New("peer did not answer a request within timeout * ko-count")
)

// protocolError marks a violation of the wire protocol by the peer.
type protocolError struct{ err error }

func (e *protocolError) Error() string { return "protocol error: " + e.err.Error() }
func (e *protocolError) Unwrap() error { return e.err }

func protoErr(format string, args ...any) error {
	return &protocolError{fmt.Errorf(format, args...)}
}

// classify maps a session's end to the connection state DRBD would show.
func classify(err error) sessionEnd {
	var pe *protocolError
	switch {
	case errors.Is(err, errStandAlone):
		return sessionEnd{replication.StandAlone, err}
	case errors.As(err, &pe), errors.Is(err, protocol.ErrBadMagic), errors.Is(err, protocol.ErrBadHeader),
		errors.Is(err, protocol.ErrTooLarge), errors.Is(err, protocol.ErrMalformed), errors.Is(err, protocol.ErrUnexpectedPacket),
		errors.Is(err, protocol.ErrShortPayload), errors.Is(err, protocol.ErrLongPayload):
		return sessionEnd{replication.ProtocolError, err}
	case errors.Is(err, errPingTimeout), errors.Is(err, errAckTimeout), errors.Is(err, os.ErrDeadlineExceeded):
		return sessionEnd{replication.Timeout, err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return sessionEnd{replication.BrokenPipe, err}
	}
	return sessionEnd{replication.NetworkFailure, err}
}

func describeEnd(err error) string {
	if err == nil {
		return "session ended"
	}
	return "session ended: " + err.Error()
}

// teardown closes the sockets, waits for the goroutines, fails every
// request still waiting for the peer and marks the transfer log out of
// sync, then moves the state to "peer unknown".
func (s *session) teardown(err error) {
	r := s.r
	s.cancel(err)
	s.dataNC.Close()
	s.metaNC.Close()
	s.wg.Wait()
	s.dropQueuedResync()
	s.splice.close()
	// Unpublish first so that new writes stop coming here.
	r.sess.CompareAndSwap(s, nil)

	s.pmu.Lock()
	s.closed = true
	pending := s.pending
	s.pending = map[uint64]*peerReq{}
	tl := s.tl
	s.tl = nil
	reads := s.reads
	s.reads = nil
	s.barrierCond.Broadcast()
	s.pmu.Unlock()
	for _, q := range reads {
		q.err = errPeerLost
		close(q.done)
	}
	ld := r.ldev.Load()
	marked := int64(0)
	for _, e := range tl {
		for _, rg := range e.ranges {
			if ld != nil {
				ld.markOutOfSync(rg[0], rg[1])
			}
			marked += rg[1]
		}
	}
	for _, q := range pending {
		if ld != nil {
			ld.markOutOfSync(q.off, q.n)
		}
		q.resolve(errPeerLost)
	}
	if marked > 0 {
		r.logf("%s: %d KiB of writes not yet confirmed on the peer's stable storage marked out of sync", s.c.peerName, marked>>10)
	}
	r.io.pending.Store(0)
	r.io.unacked.Store(0)
	r.io.epochs.Store(0)
	if y := s.getSync(); y != nil {
		y.stop()
	}
	s.lostPeer()
}

// lostPeer applies DRBD's reaction to losing the peer's copy: the peer's
// role and disk become unknown and, on a Primary whose data is UpToDate, a
// new current UUID starts a generation the peer does not have, so that the
// reconnect knows to resync exactly what the bitmap recorded.
func (s *session) lostPeer() {
	r := s.r
	_ = r.act(context.Background(), func() error {
		os := r.State()
		ns := os
		ns.Peer, ns.PDsk = replication.RoleUnknown, replication.DUnknown
		ns.PeerIsp = false
		if ns.Conn >= replication.Connected {
			ns.Conn = replication.NetworkFailure
		}
		if err := r.setState(ns, true); err != nil {
			return err
		}
		_, err := r.peerDataLost(os, ns)
		return err
	})
}

// peerDataLost applies DRBD's rule for losing the peer's copy of the data
// (after_state_ch, "lost contact to peer's copy of the data") to the
// change from os to ns: when the peer's disk held data and no longer
// does (the connection was lost, or the peer detached its disk), and this
// node or the peer is Primary with this node's data UpToDate, a new
// current UUID starts a generation the peer does not have. The blocks
// written from then on are in the bitmap, and the next sync handshake
// resyncs exactly those. It reports whether a new UUID was generated.
// Runs on the owner goroutine.
func (r *Resource) peerDataLost(os, ns replication.State) (bool, error) {
	ld := r.ldev.Load()
	if ld == nil {
		return false, nil
	}
	hadData := func(d replication.DiskState) bool {
		return d >= replication.Inconsistent && d != replication.DUnknown && d != replication.Outdated
	}
	if !hadData(os.PDsk) || hadData(ns.PDsk) {
		return false, nil
	}
	var generated bool
	err := ld.updateUUIDs(func(u *meta.UUIDs) {
		// DRBD applies this rule to the new state, in which the peer's
		// role is already unknown when the connection was lost: only a
		// Primary (or a node still connected to a Primary whose disk
		// failed) starts a new generation. A Secondary that lost its
		// Primary must not, or the reconnect would look like a split
		// brain.
		generated = u.LostPeerData(randomUUID(), ns.Role == replication.Primary, ns.Peer == replication.Primary, ns.Disk >= replication.UpToDate)
	})
	if generated {
		r.logf("new current UUID %s (lost the peer's copy of the data)", ld.uuids())
	}
	return generated, err
}

// sendMeta writes one packet on the meta socket.
func (s *session) sendMeta(cmd protocol.Cmd, p protocol.Payload) error {
	var buf [64]byte
	err := s.metaW.send(cmd, p.MarshalAppend(buf[:0]))
	if err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", cmd, err))
	}
	return err
}

// sendKeepalive writes a ping or ping ack on the meta socket at once,
// past the receiver's cork (see sockWriter.sendPastCork).
func (s *session) sendKeepalive(cmd protocol.Cmd) error {
	err := s.metaW.sendPastCork(cmd)
	if err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", cmd, err))
	}
	return err
}

// sendNow writes a packet on the data socket directly; only for the
// handshake, before the worker owns the socket.
func (s *session) sendNow(cmd protocol.Cmd, p protocol.Payload) error {
	return s.dataW.send(cmd, p.MarshalAppend(nil))
}

// queue hands a packet to the worker. It blocks while the queue is full,
// which is how a slow peer pushes back on the application.
func (s *session) queue(p *outPacket) bool {
	select {
	case s.sendq <- p:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// queuePayload queues an encoded payload.
func (s *session) queuePayload(cmd protocol.Cmd, p protocol.Payload) bool {
	return s.queue(&outPacket{cmd: cmd, payload: p.MarshalAppend(nil)})
}

// worker sends what other goroutines queue for it: barriers, resync and
// verify requests, state packets and replies. Application writes do not
// wait for it: their goroutines write through the combining writer
// directly, which saves a goroutine hand-off on every write.
func (s *session) worker() error {
	for {
		var p *outPacket
		select {
		case p = <-s.sendq:
		case <-s.ctx.Done():
			return nil
		}
		if err := s.dataW.send(p.cmd, p.payload); err != nil {
			return fmt.Errorf("sending %s: %w", p.cmd, err)
		}
		if p.sent != nil {
			close(p.sent)
		}
	}
}

// asender owns the meta socket's reading side: it answers pings, sends
// pings every ping-int and fails the session when a PingAck is late, and
// turns acks into request completions. It never does disk I/O, so
// keepalives never wait behind a slow disk.
func (s *session) asender() error {
	conf := s.c.conf
	pingInt, pingTimeout := conf.PingInt, conf.PingTimeout
	if pingInt <= 0 {
		pingInt = 10 * time.Second
	}
	if pingTimeout <= 0 {
		pingTimeout = 500 * time.Millisecond
	}
	var pingSent time.Time
	nextPing := time.Now().Add(pingInt)
	for {
		now := time.Now()
		if !pingSent.IsZero() && now.Sub(pingSent) > pingTimeout {
			return errPingTimeout
		}
		if pingSent.IsZero() && !now.Before(nextPing) {
			if err := s.sendKeepalive(protocol.PPing); err != nil {
				return err
			}
			pingSent = now
		}
		if err := s.checkAckTimeout(now); err != nil {
			return err
		}
		deadline := nextPing
		if !pingSent.IsZero() {
			deadline = pingSent.Add(pingTimeout)
		}
		s.metaNC.SetReadDeadline(deadline.Add(time.Millisecond))
		h, payload, err := s.meta.ReadPacket(protocol.MaxPayload)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && s.ctx.Err() == nil {
				continue
			}
			if s.ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch h.Cmd {
		case protocol.PPing:
			if err := s.sendKeepalive(protocol.PPingAck); err != nil {
				return err
			}
		case protocol.PPingAck:
			if !pingSent.IsZero() {
				s.pingRTT.Store(int64(time.Since(pingSent)))
			}
			pingSent = time.Time{}
			nextPing = time.Now().Add(pingInt)
		default:
			if err := s.gotMeta(h.Cmd, payload); err != nil {
				return err
			}
		}
	}
}

// checkAckTimeout fails the session when a request waits longer than
// timeout * ko-count: the peer answers pings but does not complete writes
// (DRBD's ko-count). It scans at most once a second.
func (s *session) checkAckTimeout(now time.Time) error {
	if now.Sub(s.lastAckCheck) < time.Second {
		return nil
	}
	s.lastAckCheck = now
	s.pmu.Lock()
	defer s.pmu.Unlock()
	for _, q := range s.pending {
		if now.Sub(q.sentAt) > s.writeTimeout {
			return fmt.Errorf("%w (block_id %#x, %v)", errAckTimeout, q.id, now.Sub(q.sentAt).Round(time.Millisecond))
		}
	}
	return nil
}

// gotMeta handles an ack-type packet from the meta socket.
func (s *session) gotMeta(cmd protocol.Cmd, payload []byte) error {
	switch cmd {
	case protocol.PWriteAck, protocol.PRecvAck, protocol.PNegAck:
		var a protocol.BlockAck
		if err := a.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		var err error
		if cmd == protocol.PNegAck {
			err = errNegAck
		}
		if cmd == protocol.PRecvAck && s.wireProto != protocol.ProtocolB {
			return nil // informational under protocol C
		}
		s.pmu.Lock()
		q := s.pending[a.BlockID]
		delete(s.pending, a.BlockID)
		s.pmu.Unlock()
		if q == nil && cmd == protocol.PNegAck && s.wireProto == protocol.ProtocolA {
			// Under protocol A the write completed when it was sent; the
			// peer failed it since (it may have no disk): only the
			// bitmap can record that, as DRBD's got_NegAck does.
			if ld := s.r.ldev.Load(); ld != nil {
				ld.markOutOfSync(int64(a.Sector)*512, int64(a.BlkSize))
			}
			return nil
		}
		if q == nil {
			return protoErr("%s for unknown block_id %#x", cmd, a.BlockID)
		}
		s.r.io.pending.Add(-1)
		q.resolve(err)
	case protocol.PBarrierAck:
		var b protocol.BarrierAck
		if err := b.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		s.pmu.Lock()
		i := 0
		for i < len(s.tl) && s.tl[i].closed && int32(b.Barrier-s.tl[i].nr) >= 0 {
			i++
		}
		s.tl = s.tl[i:]
		s.lastBarrierAck = b.Barrier
		s.barrierCond.Broadcast()
		s.pmu.Unlock()
		s.r.io.epochs.Add(-1)
	case protocol.PRSWriteAck, protocol.PRSIsInSync, protocol.PNegRSDReply:
		y := s.getSync()
		if y == nil {
			return protoErr("%s while not syncing", cmd)
		}
		return y.gotAck(cmd, payload)
	case protocol.POVResult:
		return s.syncFor().gotOVResult(payload)
	case protocol.PStateChgReply:
		var rep protocol.ReqStateReply
		if err := rep.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		select {
		case s.stateReply <- replication.Result(rep.Result):
		default:
		}
	case protocol.PNegDReply:
		var a protocol.BlockAck
		if err := a.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		s.gotNegDReply(a)
	case protocol.PDelayProbe, protocol.PRSCancel, protocol.PSuperseded, protocol.PRetryWrite, protocol.PConnStChgReply:
		// Not used with a single Primary and a local disk; tolerate.
	default:
		return protoErr("unexpected %s (0x%04x) on the meta socket", cmd, uint16(cmd))
	}
	return nil
}

// submitWrite sends an application write to the peer. It returns nil when
// the session is closing; the caller then marks the blocks out of sync.
// With onlyCopy (a diskless Primary's write) the request completes at the
// peer's P_WRITE_ACK whatever the wire protocol (see peerReq.writeAck).
func (s *session) submitWrite(kind writeKind, p []byte, off, n int64, fua, onlyCopy bool) *peerReq {
	s.sendMu.Lock()
	q, hdr, barrier := s.registerWriteLocked(off, n, fua, onlyCopy)
	if q == nil {
		s.sendMu.Unlock()
		return nil
	}
	var cmd protocol.Cmd
	var head, body []byte
	switch kind {
	case writeData:
		cmd, head, body = protocol.PData, hdr.MarshalAppend(nil), p
	case writeTrim, writeZeroes:
		cmd = protocol.PTrim
		if kind == writeZeroes && s.features&protocol.FeatureWZeroes != 0 {
			cmd = protocol.PZeroes
		}
		t := protocol.Trim{DataHeader: hdr, Size: uint32(n)}
		head = t.MarshalAppend(nil)
	}
	// Queued directly, under sendMu, so that data packets and barriers
	// keep their order on the wire; flushed after sendMu is released, so
	// that the writes of other clients can join the same system call.
	var flush bool
	var err error
	if barrier != nil {
		flush, err = s.dataW.queuePair(protocol.PBarrier, barrier, cmd, head, body)
	} else {
		flush, err = s.dataW.queue(cmd, head, body)
	}
	s.sendMu.Unlock()
	if err == nil && flush {
		err = s.dataW.flushQueued()
	}
	return s.submitted(q, cmd, len(body), err)
}

// submitWritePiped sends a data block held in pipes to the peer, like
// submitWrite: the P_DATA packet carries head and then the bytes in tc,
// spliced into the socket. tc's pipes go back to the pool.
func (s *session) submitWritePiped(head []byte, tc *zerocopy.Chain, off, n int64) *peerReq {
	defer tc.Release(s.splice.tx.Put)
	s.sendMu.Lock()
	q, hdr, barrier := s.registerWriteLocked(off, n, false, false)
	if q == nil {
		s.sendMu.Unlock()
		return nil
	}
	var flush bool
	var err error
	if barrier != nil {
		flush, err = s.dataW.queue(protocol.PBarrier, barrier)
	}
	if err == nil {
		// The barrier, and whatever else is queued, goes out first.
		err = s.dataW.sendSpliced(s.splice.raw, protocol.PData, append(hdr.MarshalAppend(nil), head...), tc.Len(), func() error {
			return tc.ToConn(s.splice.raw, false)
		})
	}
	s.sendMu.Unlock()
	if err == nil && flush {
		err = s.dataW.flushQueued()
	}
	return s.submitted(q, protocol.PData, int(n), err)
}

// registerWriteLocked opens a new epoch if the write needs one (returning
// the barrier to send first), records the write as pending in the
// transfer log and builds its p_data header. It returns a nil peerReq if
// the session is closed. Caller holds sendMu.
func (s *session) registerWriteLocked(off, n int64, fua, onlyCopy bool) (q *peerReq, hdr protocol.DataHeader, barrier []byte) {
	// Before protocol 100 the peer acks by the wire protocol alone.
	q = &peerReq{off: off, n: n, sentAt: time.Now(), done: make(chan struct{}), writeAck: onlyCopy && s.version >= 100}
	// A write that may depend on a completed one opens a new epoch; its
	// barrier goes out in the same flush as the data packet.
	if s.epochWrites > 0 && (s.epochCompletion || s.epochWrites >= s.maxEpochWrites) {
		barrier = s.closeEpochLocked()
	}
	s.pmu.Lock()
	if s.closed {
		s.pmu.Unlock()
		return nil, hdr, nil
	}
	s.nextID++
	q.id = s.nextID
	s.pending[q.id] = q
	if len(s.tl) == 0 || s.tl[len(s.tl)-1].closed {
		s.tl = append(s.tl, &tlEpoch{nr: s.epoch})
	}
	e := s.tl[len(s.tl)-1]
	e.ranges = append(e.ranges, [2]int64{off, n})
	s.pmu.Unlock()
	s.r.io.pending.Add(1)

	s.seq++
	hdr = protocol.DataHeader{Sector: uint64(off) / 512, BlockID: q.id, SeqNum: s.seq, DPFlags: protocol.DPMaySetInSync}
	if fua {
		hdr.DPFlags |= protocol.DPFUA
	}
	if s.version >= 100 {
		switch {
		case s.wireProto == protocol.ProtocolC || q.writeAck:
			hdr.DPFlags |= protocol.DPSendWriteAck
		case s.wireProto == protocol.ProtocolB:
			hdr.DPFlags |= protocol.DPSendReceiveAck
		}
	}
	s.epochWrites++
	return q, hdr, barrier
}

// submitted finishes the submission of q, whose packet of cmd with a
// block of sent bytes went out (or failed with err).
func (s *session) submitted(q *peerReq, cmd protocol.Cmd, sent int, err error) *peerReq {
	if err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", cmd, err))
		return q // teardown resolves it
	}
	s.r.io.netSend.Add(uint64(sent))
	if s.wireProto == protocol.ProtocolA && !q.writeAck {
		// Protocol A: done once the data is on the wire.
		s.pmu.Lock()
		_, ok := s.pending[q.id]
		delete(s.pending, q.id)
		s.pmu.Unlock()
		if ok {
			s.r.io.pending.Add(-1)
			q.resolve(nil)
		}
	}
	return q
}

// closeEpoch sends a barrier for the current epoch. Caller holds sendMu.
func (s *session) closeEpoch() bool {
	if err := s.dataW.send(protocol.PBarrier, s.closeEpochLocked()); err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", protocol.PBarrier, err))
		return false
	}
	return true
}

// closeEpochLocked closes the current epoch in the transfer log and
// returns the barrier payload to send. Caller holds sendMu.
func (s *session) closeEpochLocked() []byte {
	nr := s.epoch
	s.pmu.Lock()
	if n := len(s.tl); n > 0 && !s.tl[n-1].closed && s.tl[n-1].nr == nr {
		s.tl[n-1].closed = true
	}
	s.pmu.Unlock()
	s.epoch++
	s.epochWrites = 0
	s.epochCompletion = false
	s.r.io.epochs.Add(1)
	return (&protocol.Barrier{Barrier: nr}).MarshalAppend(nil)
}

// writeCompleted notes that an application write finished: the next write
// may depend on it, so it must go into a new epoch.
func (s *session) writeCompleted() {
	s.sendMu.Lock()
	s.epochCompletion = true
	s.sendMu.Unlock()
}

// flush makes every write sent so far durable on the peer: it closes the
// current epoch and waits for the barrier acks, which the peer sends only
// after flushing its disk.
func (s *session) flush() error {
	s.sendMu.Lock()
	// An empty write with DP_FLUSH marks the epoch as flushed by the
	// client: the peer flushes its disk before acking the barrier.
	hdr := protocol.DataHeader{DPFlags: protocol.DPFlush}
	if err := s.dataW.send(protocol.PData, hdr.MarshalAppend(nil)); err != nil {
		s.sendMu.Unlock()
		s.cancel(fmt.Errorf("sending flush: %w", err))
		return errPeerLost
	}
	s.epochWrites++
	// The flushed epoch must be in the transfer log even without writes,
	// so that we wait for its barrier ack below.
	s.pmu.Lock()
	if n := len(s.tl); n == 0 || s.tl[n-1].closed || s.tl[n-1].nr != s.epoch {
		s.tl = append(s.tl, &tlEpoch{nr: s.epoch})
	}
	s.pmu.Unlock()
	if !s.closeEpoch() {
		s.sendMu.Unlock()
		return errPeerLost
	}
	// Every epoch up to this one is closed now; wait for their acks only,
	// so that a flush under continuous load does not wait for later writes.
	target := s.epoch - 1
	s.sendMu.Unlock()
	s.pmu.Lock()
	defer s.pmu.Unlock()
	for len(s.tl) > 0 && int32(target-s.tl[0].nr) >= 0 && !s.closed {
		s.barrierCond.Wait()
	}
	if s.closed {
		return errPeerLost
	}
	return nil
}

// getSync returns the session's resync or verify run, if any.
func (s *session) getSync() *syncState {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	return s.sync
}
