package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"drbdd/drbdd/bdev"
	"drbdd/drbdd/replication"
	"drbdd/nbd"
	"drbdd/protocol"
	"drbdd/zerocopy"
)

// Counters are the /proc/drbd counters. Byte counters are in bytes here and
// shown in KiB; the rest count requests or transactions.
type Counters struct {
	NetSend, NetRecv, DiskWrite, DiskRead uint64
	ALWrites, BMWrites                    uint64
	LocalCount, Pending, Unacked          int64
	AppPending, Epochs                    int64
}

// ioState holds a resource's I/O counters and the locks of its request path.
type ioState struct {
	netSend, netRecv, diskWrite, diskRead atomic.Uint64
	alWrites, bmWrites                    atomic.Uint64
	local, pending, unacked, appPending   atomic.Int64
	epochs                                atomic.Int64

	// gate is held shared by every request while it uses the local disk
	// and exclusively by detach, which therefore waits for requests in
	// flight before it closes the disk.
	gate sync.RWMutex
	// writeGate is held shared by application writes and exclusively by
	// the connection handshake, from sampling the UUIDs and bitmap to
	// publishing the session, so that no write falls between what the
	// peer was told and what is replicated. Reads never wait for it.
	writeGate sync.RWMutex

	// writes serializes overlapping writes, so both replicas apply them in
	// the same order (DRBD's conflict detection for local requests).
	writes rangeLock
}

func (s *ioState) snapshot() Counters {
	return Counters{
		NetSend: s.netSend.Load(), NetRecv: s.netRecv.Load(),
		DiskWrite: s.diskWrite.Load(), DiskRead: s.diskRead.Load(),
		ALWrites: s.alWrites.Load(), BMWrites: s.bmWrites.Load(),
		LocalCount: s.local.Load(), Pending: s.pending.Load(), Unacked: s.unacked.Load(),
		AppPending: s.appPending.Load(), Epochs: s.epochs.Load(),
	}
}

// drain waits until no request uses the local disk.
func (s *ioState) drain() {
	s.gate.Lock()
	//lint:ignore SA2001 an empty critical section is the point: it waits for readers.
	s.gate.Unlock()
}

// rangeLock lets at most one writer own any byte range at a time. The
// owned ranges are few (the requests in flight), so a slice scanned in
// full beats any index. The zero value is ready for use.
type rangeLock struct {
	// mu guards active and the done channel of every range in it.
	mu     sync.Mutex
	active []*lockedRange
}

// lockedRange is an owned range [off, end).
type lockedRange struct {
	off, end int64
	idx      int // position in active
	// done is made by the first writer that waits for the range, and
	// closed when it is released.
	done chan struct{}
}

// acquire blocks until [off, off+n) overlaps no active range, then owns it.
func (l *rangeLock) acquire(off, n int64) *lockedRange {
	me, _ := l.acquireCtx(context.Background(), off, n)
	return me
}

// acquireCtx is acquire for a session's goroutines: it gives up with the
// context's error when ctx ends first. An application write can hold a
// range until the peer acks it, and only the session's teardown fails
// such a write, after it has waited for the session's goroutines: one of
// those waiting for the range without a way out would hang the teardown.
func (l *rangeLock) acquireCtx(ctx context.Context, off, n int64) (*lockedRange, error) {
	me := &lockedRange{off: off, end: off + n}
	l.mu.Lock()
	for {
		a := l.overlapLocked(off, me.end)
		if a == nil {
			break
		}
		if a.done == nil {
			a.done = make(chan struct{})
		}
		wait := a.done
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		l.mu.Lock()
	}
	me.idx = len(l.active)
	l.active = append(l.active, me)
	l.mu.Unlock()
	return me, nil
}

// overlapLocked returns an active range overlapping [off, end), or nil.
// Caller holds mu.
func (l *rangeLock) overlapLocked(off, end int64) *lockedRange {
	for _, a := range l.active {
		if a.off < end && off < a.end {
			return a
		}
	}
	return nil
}

func (l *rangeLock) release(r *lockedRange) {
	l.mu.Lock()
	last := len(l.active) - 1
	moved := l.active[last]
	l.active[r.idx] = moved
	moved.idx = r.idx
	l.active[last] = nil
	l.active = l.active[:last]
	done := r.done
	l.mu.Unlock()
	if done != nil {
		close(done)
	}
}

// writeKind says what a write request does to its range.
type writeKind uint8

const (
	writeData writeKind = iota
	writeTrim
	writeZeroes
)

// backend is the nbd.Backend of one NBD connection to a Primary.
type backend struct {
	r    *Resource
	size int64
}

func (b *backend) Size() int64 { return b.size }

// ioError turns a local disk error into what the NBD client sees, after the
// resource applied its on-io-error policy.
func (r *Resource) ioError(op string, off int64, err error) error {
	r.localIOError(op, off, err)
	return fmt.Errorf("%s: local %s at %d: %w", r.name, op, off, err)
}

func (b *backend) ReadAt(p []byte, off int64) error {
	r := b.r
	return r.retryAcrossRehandshake(func() error { return r.read(p, off) })
}

// read serves an application read: from the local disk, or from the peer
// for the blocks the local disk lacks (a SyncTarget) and for all of them
// while diskless.
func (r *Resource) read(p []byte, off int64) error {
	r.io.gate.RLock()
	defer r.io.gate.RUnlock()
	ld := r.ioDisk()
	if ld == nil {
		if len(p) == 0 {
			return nil
		}
		return r.readFromPeer(p, off)
	}
	if len(p) > 0 && r.needsPeer(ld, off, int64(len(p))) {
		return r.readFromPeer(p, off)
	}
	r.io.local.Add(1)
	_, err := ld.dev.ReadAt(p, off)
	r.io.local.Add(-1)
	if err != nil {
		err = r.ioError("read", off, err)
		if r.peerServes() && !ld.anyOutOfSync(off, int64(len(p))) {
			// As DRBD does, a failed local read is retried on the
			// peer's UpToDate data (on-io-error detaches the disk),
			// unless this disk holds newer blocks of the range.
			return r.readFromPeer(p, off)
		}
		return err
	}
	r.io.diskRead.Add(uint64(len(p)))
	return nil
}

// ioDisk returns the local disk that requests may use: nil while diskless,
// and while a disk attaches, for its data is not known to be current
// before the sync handshake has compared generations. A disk being
// detached (Diskless or Failed but still in ldev) is used until ldev
// lets go of it, so that no write skips it before the peer was told.
func (r *Resource) ioDisk() *localDisk {
	ld := r.ldev.Load()
	if ld == nil {
		return nil
	}
	if d := r.State().Disk; d == replication.Attaching || d == replication.Negotiating {
		return nil
	}
	return ld
}

// rehandshaking reports whether this node is re-running the sync
// handshake it started (see Resource.rehandshakeUntil).
func (r *Resource) rehandshaking() bool {
	until := r.rehandshakeUntil.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// retryAcrossRehandshake runs an application request and, when it failed
// for want of the peer while this node re-runs the sync handshake it
// started itself, runs it again once the new session is up (or the
// handshake's time is over). Only requests that need the peer fail that
// way: those of a diskless Primary. Writing a block again is harmless:
// the request was not acknowledged, and it owns its range again.
func (r *Resource) retryAcrossRehandshake(req func() error) error {
	for {
		err := req()
		if err == nil || !(errors.Is(err, errPeerLost) || errors.Is(err, errNoUpToDateData)) || !r.rehandshaking() {
			return err
		}
		for r.rehandshaking() && !r.peerServes() {
			time.Sleep(rehandshakePoll)
		}
	}
}

// rehandshakePoll is how often a request held by retryAcrossRehandshake
// looks for the new session: a few polls per reconnect, which takes a
// few round trips.
const rehandshakePoll = 2 * time.Millisecond

// peerServes reports whether a live session reaches UpToDate data on the
// peer.
func (r *Resource) peerServes() bool { return r.peerSession() != nil }

// peerSession returns the live session that reaches UpToDate data on the
// peer, or nil.
func (r *Resource) peerSession() *session {
	s := r.sess.Load()
	if s == nil || s.ctx.Err() != nil || r.State().PDsk != replication.UpToDate {
		return nil
	}
	return s
}

func (b *backend) WriteAt(p []byte, off int64, fua bool) error {
	return b.r.appWrite(writeData, p, off, int64(len(p)), fua)
}

func (b *backend) Trim(off, length int64, fua bool) error {
	return b.r.appWrite(writeTrim, nil, off, length, fua)
}

func (b *backend) WriteZeroes(off, length int64, noHole, fua bool) error {
	kind := writeTrim
	if noHole {
		kind = writeZeroes
	}
	return b.r.appWrite(kind, nil, off, length, fua)
}

func (b *backend) Flush() error {
	return b.r.retryAcrossRehandshake(b.r.flush)
}

// appWrite is an application write, held across a rehandshake this node
// started (see retryAcrossRehandshake).
func (r *Resource) appWrite(kind writeKind, p []byte, off, length int64, fua bool) error {
	return r.retryAcrossRehandshake(func() error { return r.write(kind, p, off, length, fua) })
}

// write is the application write path of a Primary. DRBD replicates whole
// 512-byte sectors, so an unaligned request is split into an aligned
// middle and read-modify-write of its partial head and tail sectors.
func (r *Resource) write(kind writeKind, p []byte, off, length int64, fua bool) error {
	ld, err := r.beginAppWrite()
	if err != nil {
		return err
	}
	defer r.endAppWrite()
	const sect = bdev.SectorSize
	if off%sect == 0 && length%sect == 0 {
		return r.writeRange(ld, kind, p, off, length, fua)
	}
	end := off + length
	headEnd := min((off+sect-1)/sect*sect, end)
	tailStart := max(end/sect*sect, headEnd)
	if headEnd > off {
		if err := r.writePartialSector(ld, kind, p, off, headEnd-off, fua); err != nil {
			return err
		}
	}
	if tailStart > headEnd {
		var mid []byte
		if kind == writeData {
			mid = p[headEnd-off : tailStart-off]
		}
		if err := r.writeRange(ld, kind, mid, headEnd, tailStart-headEnd, fua); err != nil {
			return err
		}
	}
	if end > tailStart {
		var tail []byte
		if kind == writeData {
			tail = p[tailStart-off:]
		}
		return r.writePartialSector(ld, kind, tail, tailStart, end-tailStart, fua)
	}
	return nil
}

// beginAppWrite admits an application write: it holds the gates that
// role changes and detaching wait on, checks that this node is Primary
// with UpToDate data in reach, and counts the write as pending. The disk
// it returns is nil when the write goes to the peer only (a diskless
// Primary). endAppWrite undoes it.
func (r *Resource) beginAppWrite() (*localDisk, error) {
	r.io.writeGate.RLock()
	r.io.gate.RLock()
	if st := r.State(); st.Role != replication.Primary {
		r.io.gate.RUnlock()
		r.io.writeGate.RUnlock()
		return nil, fmt.Errorf("%s: %w: not Primary", r.name, nbd.ErrNotPermitted)
	}
	ld := r.ioDisk()
	if st := r.State(); !r.upToDateReachable(st) || (ld == nil && !r.peerServes()) {
		r.io.gate.RUnlock()
		r.io.writeGate.RUnlock()
		return nil, r.noUpToDateData("")
	}
	r.io.appPending.Add(1)
	return ld, nil
}

// upToDateReachable reports whether a write in state st reaches UpToDate
// data: the local disk's, or a connected peer's. A Primary whose disk is
// Inconsistent (a promoted SyncTarget) that has lost its SyncSource
// must fail writes, as DRBD does: acknowledged on its disk alone, a
// write would be overwritten by the peer's older copy at the next
// resync, since the resync direction comes from the generations.
func (r *Resource) upToDateReachable(st replication.State) bool {
	return st.Disk >= replication.UpToDate || (st.PDsk == replication.UpToDate && r.sess.Load() != nil)
}

// endAppWrite ends what beginAppWrite admitted.
func (r *Resource) endAppWrite() {
	r.io.appPending.Add(-1)
	r.io.gate.RUnlock()
	r.io.writeGate.RUnlock()
}

// writePartialSector updates part of one sector by read-modify-write; the
// sector is owned while it is read, so no other write interleaves.
func (r *Resource) writePartialSector(ld *localDisk, kind writeKind, p []byte, off, n int64, fua bool) error {
	const sect = bdev.SectorSize
	start := off / sect * sect
	lr := r.io.writes.acquire(start, sect)
	defer r.io.writes.release(lr)
	buf := make([]byte, sect)
	if ld == nil || r.needsPeer(ld, start, sect) {
		if err := r.readFromPeer(buf, start); err != nil {
			return err
		}
	} else if _, err := ld.dev.ReadAt(buf, start); err != nil {
		return r.ioError("read-modify-write", start, err)
	}
	if kind == writeData {
		copy(buf[off-start:], p[:n])
	} else {
		clear(buf[off-start : off-start+n])
	}
	return r.writeLocked(ld, writeData, buf, start, sect, fua)
}

// maxWriteChunk is the largest write replicated as one packet: DRBD's
// maximum bio size, beyond which a peer refuses P_DATA.
const maxWriteChunk = protocol.MaxBioSize

// writeRange writes a sector-aligned range, in chunks of at most one
// packet each (a client may write up to 32 MiB at once).
func (r *Resource) writeRange(ld *localDisk, kind writeKind, p []byte, off, length int64, fua bool) error {
	one := func(p []byte, off, n int64) error {
		lr := r.io.writes.acquire(off, n)
		defer r.io.writes.release(lr)
		return r.writeLocked(ld, kind, p, off, n, fua)
	}
	if length <= maxWriteChunk {
		return one(p, off, length)
	}
	// The chunks are disjoint, so they may proceed in parallel: a large
	// discard or zeroing then costs a few round trips, not one per MiB.
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, writeChunksInFlight)
		mu    sync.Mutex // guards first
		first error
	)
	for length > 0 {
		n := min(length, maxWriteChunk)
		var chunk []byte
		if kind == writeData {
			chunk = p[:n]
			p = p[n:]
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(chunk []byte, off, n int64) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := one(chunk, off, n); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}(chunk, off, n)
		off += n
		length -= n
	}
	wg.Wait()
	return first
}

// writeChunksInFlight bounds the chunks of one large request replicated
// at once.
const writeChunksInFlight = 8

// writeLocked writes an owned, aligned range locally and to the peer in
// parallel, and returns when both are done (protocol C), when the peer
// received it (B) or when it was sent (A). A peer that fails or goes away
// does not fail the write: its blocks are marked out of sync instead, to
// be resynced, as DRBD does.
func (r *Resource) writeLocked(ld *localDisk, kind writeKind, p []byte, off, length int64, fua bool) error {
	if ld == nil {
		return r.writePeerOnly(kind, p, off, length, fua)
	}
	if err := ld.beginWrite(off, length); err != nil {
		return r.ioError("activity log update", off, err)
	}
	defer ld.endWrite(off, length)

	var q *peerReq
	s := r.sess.Load()
	if s != nil && r.State().PDsk >= replication.Inconsistent {
		q = s.submitWrite(kind, p, off, length, fua, false)
	}
	r.io.local.Add(1)
	err := localWrite(ld.dev, kind, p, off, length, fua)
	r.io.local.Add(-1)
	return r.writeDone(ld, s, q, off, length, err)
}

// writePeerOnly is the write of a diskless Primary: the peer's disk is
// the only one, so the write succeeds only as the peer acknowledges it,
// and fails if the peer fails it or goes away. The peer records the
// blocks in its bitmap, for this node's next attach.
func (r *Resource) writePeerOnly(kind writeKind, p []byte, off, length int64, fua bool) error {
	s := r.sess.Load()
	if s == nil || r.State().PDsk != replication.UpToDate {
		return r.noUpToDateData("")
	}
	// Whatever the protocol, the write is done only once it is on the
	// peer's disk: with A or B a network failure would lose a write that
	// no other copy holds.
	q := s.submitWrite(kind, p, off, length, fua, true)
	if q == nil {
		return fmt.Errorf("%s: write at %d: %w", r.name, off, errPeerLost)
	}
	<-q.done
	s.writeCompleted()
	if q.err == nil && !q.writeAck && s.wireProto != protocol.ProtocolC {
		// A peer older than protocol 100 acks by the wire protocol
		// only: its barrier ack says the write is on its disk.
		q.err = s.flush()
	}
	if q.err != nil {
		return fmt.Errorf("%s: write at %d on the peer (the only disk): %w", r.name, off, q.err)
	}
	r.disklessAcked.Store(true)
	return nil
}

// writeDone finishes a write whose local part ended with err and whose
// peer part is q (nil if not sent): it waits for the peer and records
// which blocks both sides hold.
func (r *Resource) writeDone(ld *localDisk, s *session, q *peerReq, off, length int64, err error) error {
	if err != nil {
		if q != nil {
			<-q.done // the peer still reads the data until then
		}
		// The peer may hold the new data and the local disk not: the
		// bitmap records that for the resync after the next attach
		// (on-io-error detaches the disk). The write fails all the same:
		// if the bitmap cannot reach the failing disk either, nothing
		// would tell the next attach that its disk lacks the block.
		ld.markOutOfSync(off, length)
		return r.ioError("write", off, err)
	}
	r.io.diskWrite.Add(uint64(length))
	if q == nil {
		ld.markOutOfSync(off, length)
		return r.localOnlyWrite(off)
	}
	<-q.done
	var outcome error
	if q.err != nil {
		ld.markOutOfSync(off, length)
		outcome = r.localOnlyWrite(off)
	} else {
		// Both sides hold these bytes now.
		ld.clearFullBlocks(off, length)
		if y := s.getSync(); y != nil && y.target {
			y.localApplicationWrote(off, length)
		}
	}
	s.writeCompleted()
	return outcome
}

// localOnlyWrite is the outcome of a write that reached the local disk
// but not the peer's: success while the local disk is UpToDate (the
// block is resynced to the peer later), and an error when it is not, for
// then the next resync overwrites the block with the peer's copy (see
// upToDateReachable).
func (r *Resource) localOnlyWrite(off int64) error {
	if st := r.State(); st.Disk < replication.UpToDate {
		return fmt.Errorf("%s: write at %d reached only the local %s disk: %w", r.name, off, st.Disk, errNoUpToDateData)
	}
	return nil
}

// localWrite applies one write request to a disk.
func localWrite(dev bdev.Device, kind writeKind, p []byte, off, length int64, fua bool) error {
	var err error
	switch kind {
	case writeData:
		if fua {
			_, err = bdev.WriteFUA(dev, p, off)
		} else {
			_, err = dev.WriteAt(p, off)
		}
		return err
	case writeTrim:
		err = bdev.Trim(dev, off, length)
	case writeZeroes:
		err = bdev.WriteZeroes(dev, off, length)
	}
	if err == nil && fua {
		err = dev.Sync()
	}
	return err
}

// flush makes every completed write durable, locally and, when
// connected, on the peer (by closing the epoch and waiting for its barrier
// ack, which the peer sends after flushing its disk).
func (r *Resource) flush() error {
	r.io.gate.RLock()
	defer r.io.gate.RUnlock()
	ld := r.ioDisk()
	if ld == nil {
		// Diskless: the peer's disk is the only one.
		s := r.peerSession()
		if s == nil {
			return r.noUpToDateData("flush")
		}
		if err := s.flush(); err != nil {
			return fmt.Errorf("%s: flush on the peer (the only disk): %w", r.name, err)
		}
		return nil
	}
	peer := make(chan error, 1)
	if s := r.sess.Load(); s != nil {
		go func() { peer <- s.flush() }()
	} else {
		peer <- nil
	}
	if err := ld.dev.Sync(); err != nil {
		<-peer
		return r.ioError("flush", 0, err)
	}
	// A peer lost meanwhile is not an error: what it missed is marked out
	// of sync and will be resynced.
	if err := <-peer; err != nil && !errors.Is(err, errPeerLost) {
		return err
	}
	return nil
}

// localIOError applies on-io-error: with "detach" (the default) the disk
// is detached asynchronously, so the node keeps running diskless.
func (r *Resource) localIOError(op string, off int64, err error) {
	r.logf("local I/O error on %s at offset %d: %v", op, off, err)
	if r.onIOErrorPolicy() != "detach" {
		return
	}
	go func() {
		// Off the request path: detach waits for requests in flight,
		// including the one that reported this error.
		_ = r.act(r.d.ctx, func() error {
			ns := r.State()
			if ns.Disk == replication.Diskless || ns.Disk == replication.Failed {
				return nil
			}
			ns.Disk = replication.Failed
			if err := r.setState(ns, true); err != nil {
				return err
			}
			return r.detach(true)
		})
	}()
}

// busy reports whether any write owns a byte overlapping [off, off+n).
func (l *rangeLock) busy(off, n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.overlapLocked(off, off+n) != nil
}

// bufPool recycles request-sized buffers for peer writes and resync.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 128<<10); return &b }}

// getBuf returns a buffer of n bytes.
func getBuf(n int) []byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		bufPool.Put(bp)
		return make([]byte, n)
	}
	return (*bp)[:n]
}

// putBuf recycles a buffer from getBuf.
func putBuf(b []byte) {
	if b == nil || cap(b) < 128<<10 || cap(b) > 4<<20 {
		return
	}
	b = b[:0]
	bufPool.Put(&b)
}

// WriteFromPipe is the Primary's write of a large block that the NBD
// server read into pipes (see nbd.PipeWriter). The block goes to the
// local disk (its page cache, or with O_DIRECT straight from the pipes'
// pages) and to the peer by splice, duplicated with tee, without
// entering memory. A write that cannot take that path (unaligned, too
// large, FUA, a disk or peer socket that cannot be spliced) reads the
// block into memory and takes the ordinary one.
func (b *backend) WriteFromPipe(head []byte, c *zerocopy.Chain, n int, off int64, fua bool) error {
	r := b.r
	// The chain was taken for this write, so its pages are whole if the
	// disk is a direct one; and if they are not, the direct write says
	// so and the rest goes through memory.
	if fua || !b.TakesPipe(off, n, true) {
		return r.appWriteChain(head, c, n, off, fua)
	}
	ld, err := r.beginAppWrite()
	if err != nil {
		return err
	}
	if ld == nil {
		// The disk went away since TakesPipe. A diskless write needs the
		// peer and may have to wait out a re-handshake, which appWrite
		// does; it takes the gate again itself.
		r.endAppWrite()
		return r.appWriteChain(head, c, n, off, false)
	}
	defer r.endAppWrite()
	length := int64(n)
	lr := r.io.writes.acquire(off, length)
	defer r.io.writes.release(lr)
	if !spliceTarget(ld.dev, len(head)) {
		return r.writeChainInMemory(ld, head, c, off, length)
	}

	// The peer's copy is a tee of the pipes, taken before the local write
	// consumes them.
	s := r.sess.Load()
	var tc *zerocopy.Chain
	if s != nil && r.State().PDsk >= replication.Inconsistent {
		if s.splice.raw == nil {
			return r.writeChainInMemory(ld, head, c, off, length)
		}
		tc, err = c.TeeTo(s.splice.tx.ChainTaker(s.ctx.Done()))
		if err != nil {
			tc.Release(s.splice.tx.Put)
			if s.ctx.Err() != nil {
				tc = nil // the session ends: the block stays out of sync
			} else {
				return r.writeChainInMemory(ld, head, c, off, length)
			}
		}
	}
	if err := ld.beginWrite(off, length); err != nil {
		if tc != nil {
			tc.Release(s.splice.tx.Put)
		}
		return r.ioError("activity log update", off, err)
	}
	defer ld.endWrite(off, length)
	var q *peerReq
	if tc != nil {
		q = s.submitWritePiped(head, tc, off, length)
	}
	r.io.local.Add(1)
	err = writeHeadAndChain(ld.dev, head, c, off, length)
	r.io.local.Add(-1)
	return r.writeDone(ld, s, q, off, length, err)
}

// appWriteChain reads a block held in pipes into memory and writes it
// the ordinary way (appWrite).
func (r *Resource) appWriteChain(head []byte, c *zerocopy.Chain, n int, off int64, fua bool) error {
	buf, err := readChain(head, c, n)
	if err != nil {
		return fmt.Errorf("%s: reading write data: %w", r.name, err)
	}
	defer putBuf(buf)
	return r.appWrite(writeData, buf, off, int64(n), fua)
}

// TakesPipe reports whether a write of n bytes at off can be spliced: it
// is whole sectors, fits one P_DATA packet, and the local disk goes
// through the page cache, or is opened with O_DIRECT and the data comes
// in whole pages (wholePages: from the kernel's nbd driver), which
// direct I/O takes from the pipes as they are.
func (b *backend) TakesPipe(off int64, n int, wholePages bool) bool {
	ld := b.r.ioDisk()
	if spliceOff || ld == nil || off%bdev.SectorSize != 0 || n%bdev.SectorSize != 0 || n > maxWriteChunk {
		return false
	}
	return pageCacheFile(ld.dev) != nil || wholePages && directFile(ld.dev) != nil
}

// spliceTarget reports whether a block whose first headLen bytes are in
// memory, and the rest in pipes, can be written to dev from the pipes:
// dev goes through the page cache, or is opened with O_DIRECT and the
// part in pipes starts on a sector boundary.
func spliceTarget(dev bdev.Device, headLen int) bool {
	return pageCacheFile(dev) != nil || directFile(dev) != nil && headLen%bdev.SectorSize == 0
}

// readChain reads a block of n bytes, head and then the bytes in c, into
// a buffer from getBuf.
func readChain(head []byte, c *zerocopy.Chain, n int) ([]byte, error) {
	buf := getBuf(n)
	k := copy(buf, head)
	if err := c.ReadFull(buf[k:n]); err != nil {
		putBuf(buf)
		return nil, err
	}
	return buf, nil
}

// writeChainInMemory reads a block from its pipes into memory and writes
// it the ordinary way; the caller owns the range.
func (r *Resource) writeChainInMemory(ld *localDisk, head []byte, c *zerocopy.Chain, off, length int64) error {
	buf, err := readChain(head, c, int(length))
	if err != nil {
		return fmt.Errorf("%s: reading write data: %w", r.name, err)
	}
	defer putBuf(buf)
	return r.writeLocked(ld, writeData, buf, off, length, false)
}

// writeHeadAndChain writes a block of length bytes at off to dev: head
// from memory, then the rest from c, consuming it, into dev's page cache
// or, with O_DIRECT, straight from the pipes' pages. Pages that direct
// I/O refuses as unaligned are read into memory and written from there.
// After an error the rest is dropped from c all the same, so that c
// stays in step with the blocks it holds.
func writeHeadAndChain(dev bdev.Device, head []byte, c *zerocopy.Chain, off, length int64) error {
	var err error
	if len(head) > 0 {
		_, err = dev.WriteAt(head, off)
	}
	rest := int(length) - len(head)
	if rest == 0 {
		return err
	}
	pc, direct := pageCacheFile(dev), directFile(dev)
	if err == nil && pc == nil && direct == nil {
		err = fmt.Errorf("disk cannot be spliced into")
	}
	if err != nil {
		c.Discard(rest)
		return err
	}
	at := off + int64(len(head))
	if pc != nil {
		return c.DrainToFile(pc, at, rest)
	}
	moved, err := c.DrainToDirectFile(direct, at, rest)
	if !errors.Is(err, zerocopy.ErrUnaligned) {
		return err
	}
	buf := getBuf(rest - moved)
	defer putBuf(buf)
	if err := c.ReadFull(buf); err != nil {
		return err
	}
	_, err = dev.WriteAt(buf, at+int64(moved))
	return err
}
