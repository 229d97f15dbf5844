package engine

import (
	"errors"
	"fmt"

	"drbdd/drbdd/replication"
	"drbdd/protocol"
)

// A Primary whose local disk is not UpToDate (a SyncTarget that was
// promoted) reads the blocks it does not have yet from its UpToDate peer,
// and a diskless Primary reads everything from it, as DRBD does:
// P_DATA_REQUEST out, P_DATA_REPLY (or P_NEG_DREPLY) back.

// errNoUpToDateData fails requests that neither disk can serve.
var errNoUpToDateData = errors.New("no access to UpToDate data")

// noUpToDateData is errNoUpToDateData for this resource, with the disk
// states that explain it; op, when not empty, names the request.
func (r *Resource) noUpToDateData(op string) error {
	st := r.State()
	if op != "" {
		return fmt.Errorf("%s: %s: %w (local disk %s, peer %s)", r.name, op, errNoUpToDateData, st.Disk, st.PDsk)
	}
	return fmt.Errorf("%s: %w (local disk %s, peer %s)", r.name, errNoUpToDateData, st.Disk, st.PDsk)
}

// readReq is a read waiting for the peer.
type readReq struct {
	buf  []byte
	done chan struct{}
	err  error
}

// remoteReadChunk bounds one P_DATA_REQUEST (DRBD's max bio size).
const remoteReadChunk = protocol.MaxBioSize

// needsPeer reports whether [off, off+n) must be read from the peer.
func (r *Resource) needsPeer(ld *localDisk, off, n int64) bool {
	if r.State().Disk == replication.UpToDate {
		return false
	}
	return ld.anyOutOfSync(off, n)
}

// anyOutOfSync reports whether a block of [off, off+n) is out of sync.
func (ld *localDisk) anyOutOfSync(off, n int64) bool {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	bm := ld.md.Bitmap()
	first, last := off/4096, (off+n-1)/4096
	next := bm.NextSet(first)
	return next >= 0 && next <= last
}

// readFromPeer reads [off, off+len(p)) from the peer.
func (r *Resource) readFromPeer(p []byte, off int64) error {
	s := r.sess.Load()
	if s == nil || r.State().PDsk != replication.UpToDate {
		return r.noUpToDateData("")
	}
	for done := 0; done < len(p); {
		n := min(len(p)-done, remoteReadChunk)
		if err := s.remoteRead(p[done:done+n], off+int64(done)); err != nil {
			return fmt.Errorf("%s: read from peer at %d: %w", r.name, off+int64(done), err)
		}
		done += n
	}
	return nil
}

// remoteRead sends one P_DATA_REQUEST and waits for its reply.
func (s *session) remoteRead(p []byte, off int64) error {
	q := &readReq{buf: p, done: make(chan struct{})}
	s.pmu.Lock()
	if s.closed {
		s.pmu.Unlock()
		return errPeerLost
	}
	s.nextID++
	id := s.nextID
	if s.reads == nil {
		s.reads = map[uint64]*readReq{}
	}
	s.reads[id] = q
	s.pmu.Unlock()
	s.r.io.pending.Add(1)
	defer s.r.io.pending.Add(-1)
	req := protocol.BlockReq{Sector: uint64(off) / 512, BlockID: id, BlkSize: uint32(len(p))}
	if err := s.dataW.send(protocol.PDataRequest, req.MarshalAppend(nil)); err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", protocol.PDataRequest, err))
	}
	select {
	case <-q.done:
		return q.err
	case <-s.ctx.Done():
		s.pmu.Lock()
		delete(s.reads, id)
		s.pmu.Unlock()
		return errPeerLost
	}
}

// gotDataReply completes a remote read (receiver goroutine).
func (s *session) gotDataReply(d protocol.Data) error {
	s.pmu.Lock()
	q := s.reads[d.BlockID]
	delete(s.reads, d.BlockID)
	s.pmu.Unlock()
	if q == nil {
		return protoErr("P_DATA_REPLY for unknown block_id %#x", d.BlockID)
	}
	if len(d.Payload) != len(q.buf) {
		q.err = fmt.Errorf("peer replied with %d bytes, asked for %d", len(d.Payload), len(q.buf))
	} else {
		copy(q.buf, d.Payload)
	}
	close(q.done)
	return nil
}

// gotNegDReply fails a remote read the peer could not serve.
func (s *session) gotNegDReply(a protocol.BlockAck) {
	s.pmu.Lock()
	q := s.reads[a.BlockID]
	delete(s.reads, a.BlockID)
	s.pmu.Unlock()
	if q != nil {
		q.err = errors.New("the peer could not read it (P_NEG_DREPLY)")
		close(q.done)
	}
}

// serveDataRequest answers the Primary's read (we hold UpToDate data).
func (s *session) serveDataRequest(rq protocol.BlockReq) error {
	r := s.r
	ld := r.ldev.Load()
	off, n := int64(rq.Sector)*512, int64(rq.BlkSize)
	if ld == nil || n <= 0 || n > remoteReadChunk || off < 0 || off+n > ld.size {
		if ld != nil && (n <= 0 || n > remoteReadChunk || off < 0 || off+n > ld.size) {
			return protoErr("P_DATA_REQUEST for %d bytes at sector %d outside the device", n, rq.Sector)
		}
		return s.sendMeta(protocol.PNegDReply, &protocol.BlockAck{Sector: rq.Sector, BlockID: rq.BlockID, BlkSize: rq.BlkSize})
	}
	// Owned in arrival order, like the peer's writes: a read sent after
	// a write to the same blocks sees that write, even when protocol A
	// or B acknowledged the write before it reached this disk.
	lr, err := r.io.writes.acquireCtx(s.ctx, off, n)
	if err != nil {
		return nil // the session ends
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer r.io.writes.release(lr)
		buf := getBuf(int(n))
		defer putBuf(buf)
		if st := r.State(); st.Disk != replication.UpToDate {
			s.sendMeta(protocol.PNegDReply, &protocol.BlockAck{Sector: rq.Sector, BlockID: rq.BlockID, BlkSize: rq.BlkSize})
			return
		}
		if _, err := ld.dev.ReadAt(buf, off); err != nil {
			r.localIOError("read for peer", off, err)
			s.sendMeta(protocol.PNegDReply, &protocol.BlockAck{Sector: rq.Sector, BlockID: rq.BlockID, BlkSize: rq.BlkSize})
			return
		}
		r.io.diskRead.Add(uint64(n))
		hdr := protocol.DataHeader{Sector: rq.Sector, BlockID: rq.BlockID}
		if err := s.dataW.send(protocol.PDataReply, hdr.MarshalAppend(nil), buf); err != nil {
			s.cancel(fmt.Errorf("sending %s: %w", protocol.PDataReply, err))
			return
		}
		r.io.netSend.Add(uint64(n))
	}()
	return nil
}
