package engine

import (
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"hash/crc32"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"drbdd/drbdd/bdev"
	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/drbdd/resync"
	"drbdd/protocol"
)

// syncState is one resync or online verify run within a session.
type syncState struct {
	s         *session
	target    bool // SyncTarget (pulls) rather than SyncSource (serves)
	peerUUIDs meta.UUIDs
	// sem bounds the disk reads served to the peer at once.
	sem chan struct{}
	// wake tells the SyncTarget's request loop that a reply freed room.
	wake chan struct{}

	// mu guards everything below.
	mu       sync.Mutex
	planner  *resync.Planner
	ctrl     *resync.Controller
	marks    *resync.Marks
	total    uint64
	started  time.Time
	finished bool
	equal    uint64 // blocks found equal by checksum
	// requested maps each outstanding resync request's sector to whether
	// an application write replaced its blocks meanwhile (then the reply
	// is older than our data and must not be written).
	requested map[uint64]*rsRequest
	verify    *verifyRun
	stopped   bool
	bytesSent uint64

	// resyncIO counts the bytes resync wrote to this node's disk, so that
	// the rest of its disk I/O can be told apart as application I/O.
	resyncIO atomic.Uint64

	// wbMu guards wbLo, wbHi, wbBytes and wbRunning: the span and amount
	// of resync writes since writeback was last started, and whether a
	// writeback is being started (see noteResyncWrite).
	wbMu       sync.Mutex
	wbLo, wbHi int64
	wbBytes    int64
	wbRunning  bool
}

// writebackEvery is how many bytes of resync writes a SyncTarget with a
// page-cache backed disk lets accumulate before it starts their
// writeback. DRBD's resync writes go to the disk as they arrive; without
// this, a file-backed SyncTarget would write the whole resync out in its
// final flush, after the data had all arrived.
const writebackEvery = 8 << 20

// noteResyncWrite records a resync write of [off, off+n) and starts the
// writeback of what accumulated once there is enough of it.
func (y *syncState) noteResyncWrite(ld *localDisk, off, n int64) {
	y.wbMu.Lock()
	if y.wbBytes == 0 {
		y.wbLo, y.wbHi = off, off+n
	} else {
		y.wbLo, y.wbHi = min(y.wbLo, off), max(y.wbHi, off+n)
	}
	y.wbBytes += n
	if y.wbBytes < writebackEvery {
		y.wbMu.Unlock()
		return
	}
	if y.wbRunning {
		// The previous writeback is still being submitted; this span
		// joins the next one.
		y.wbMu.Unlock()
		return
	}
	lo, hi := y.wbLo, y.wbHi
	y.wbBytes = 0
	y.wbRunning = true
	y.wbMu.Unlock()
	// Submitting writeback is kernel work (finding the dirty pages,
	// building the I/O) done by the calling thread: off the receiver, it
	// runs on another CPU while the receiver takes in more data.
	s := y.s
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := bdev.StartWriteback(ld.dev, lo, hi-lo); err != nil {
			s.r.logf("resync: starting writeback: %v", err)
		}
		y.wbMu.Lock()
		y.wbRunning = false
		y.wbMu.Unlock()
	}()
}

// rsRequest is an outstanding resync request on the SyncTarget.
type rsRequest struct {
	size uint32
	// touched has a bit per 4 KiB block of the request that this node's
	// own application wrote while the request was outstanding (only a
	// promoted SyncTarget writes itself); full marks those it covered
	// completely. Requests are at most 128 KiB, 32 blocks.
	touched, full uint64
}

// verifyRun is an online verify this node started (VerifyS).
type verifyRun struct {
	v   *resync.Verifier
	alg string
	// mine holds our digest of each outstanding request, by sector.
	mine  map[uint64][]byte
	marks *resync.Marks
	start time.Time
}

// serveParallel bounds concurrent resync/verify reads served to the peer.
const serveParallel = 64

func newSyncState(s *session, target bool, peerUUIDs meta.UUIDs) *syncState {
	return &syncState{s: s, target: target, peerUUIDs: peerUUIDs, sem: make(chan struct{}, serveParallel), wake: make(chan struct{}, 1)}
}

// syncFor returns the session's sync state, creating a serving-only one
// for requests that arrive without a local resync (verify target).
func (s *session) syncFor() *syncState {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.sync == nil {
		s.sync = newSyncState(s, false, meta.UUIDs{})
	}
	return s.sync
}

// bitmapAdapter lets the planner work on the local disk's bitmap.
type bitmapAdapter struct{ ld *localDisk }

func (b bitmapAdapter) Bits() uint64 {
	b.ld.mu.Lock()
	defer b.ld.mu.Unlock()
	return uint64(b.ld.md.Bitmap().Len())
}
func (b bitmapAdapter) Test(bit uint64) bool {
	b.ld.mu.Lock()
	defer b.ld.mu.Unlock()
	return b.ld.md.Bitmap().Test(int64(bit))
}
func (b bitmapAdapter) NextSet(from uint64) (uint64, bool) {
	b.ld.mu.Lock()
	defer b.ld.mu.Unlock()
	n := b.ld.md.Bitmap().NextSet(int64(from))
	return uint64(n), n >= 0
}
func (b bitmapAdapter) Weight() uint64 {
	b.ld.mu.Lock()
	defer b.ld.mu.Unlock()
	return uint64(b.ld.md.Bitmap().Count())
}
func (b bitmapAdapter) Clear(bit, n uint64) {
	b.ld.mu.Lock()
	defer b.ld.mu.Unlock()
	b.ld.md.Bitmap().ClearBits(int64(bit), int64(bit+n))
}

// begin starts the run's bookkeeping; it runs on the owner goroutine.
func (y *syncState) begin(bits int64) {
	r := y.s.r
	now := time.Now()
	y.mu.Lock()
	defer y.mu.Unlock()
	y.total = uint64(bits)
	y.started = now
	y.marks = resync.NewMarks(now, uint64(bits))
	if !y.target {
		return
	}
	ld := r.ldev.Load()
	dc := r.diskConfCopy()
	var err error
	y.planner, err = resync.NewPlanner(bitmapAdapter{ld}, resync.PlannerConfig{
		DeviceSectors: uint64(ld.size) / 512,
		Busy: func(startBit, n uint64) bool {
			return r.io.writes.busy(int64(startBit)*meta.BMBlockSize, int64(n)*meta.BMBlockSize)
		},
	})
	if err != nil {
		r.logf("resync planner: %v", err)
		return
	}
	cfg := resync.ControllerConfig{
		ResyncRate: uint32(min(dc.ResyncRate>>10, 1<<31)),
		PlanAhead:  uint32(dc.CPlanAhead / (100 * time.Millisecond)),
		FillTarget: uint32(min(dc.CFillTarget>>9, 1<<31)),
		// DRBD's default c-delay-target (1 s); it decides only when no
		// fill target is set.
		DelayTarget: 10,
		MaxRate:     uint32(min(dc.CMaxRate>>10, 1<<31)),
		MinRate:     uint32(min(dc.CMinRate>>10, 1<<31)),
		// max-buffers/2 bounds what is in flight, and the resyncer
		// enforces it against the replies still outstanding, refilling as
		// they arrive. The controller's own bound counts replies only
		// once per tick, as DRBD does, which would cap resync at
		// max-buffers/2 pages per tick (160 MiB/s with the default)
		// however fast the disks and the link are.
		MaxBuffers: 0,
	}
	if cfg.ResyncRate == 0 {
		cfg = resync.DefaultControllerConfig()
	}
	if cfg.PlanAhead > 0 && cfg.MaxRate == 0 {
		cfg.MaxRate = cfg.ResyncRate
	}
	if y.ctrl, err = resync.NewController(cfg); err != nil {
		r.logf("resync controller: %v; using defaults", err)
		y.ctrl, _ = resync.NewController(resync.DefaultControllerConfig())
	}
}

func (y *syncState) stop() {
	y.mu.Lock()
	y.stopped = true
	y.mu.Unlock()
}

// resyncer is the SyncTarget's request loop: every 100 ms the controller
// says how much to ask for and the planner which blocks.
func (s *session) resyncer() error {
	y := s.getSync()
	r := s.r
	tick := time.NewTicker(resync.SleepTime)
	defer tick.Stop()
	csums := s.c.conf.CsumsAlg
	ticks := 0
	budget := 0
	// c-min-rate: the application I/O seen at the previous tick, and
	// whether a slow-down was logged in this run.
	lastAppIO := y.appIO()
	slowedLogged := false
	// The requests in flight never exceed half of max-buffers (DRBD's
	// bound), so the peer's receive buffers cannot run out.
	maxInFlightBlocks := cmp.Or(int64(s.c.conf.MaxBuffers), defaultMaxBuffers) / 2
	// The first tick is taken at once, as DRBD arms its resync timer to
	// fire immediately: waiting 100 ms for it would idle the link for
	// longer than a whole small resync takes.
	for started := false; ; started = true {
		refill := false
		if started {
			select {
			case <-s.ctx.Done():
				return nil
			case <-tick.C:
			case <-y.wake:
				refill = true
				if budget <= 0 {
					continue
				}
			}
		}
		if !refill {
			if ticks++; ticks%10 == 0 {
				y.persistProgress()
			}
		}
		switch st := r.State(); st.Conn {
		case replication.PausedSyncT:
			continue
		case replication.SyncTarget:
		default:
			return nil
		}
		y.mu.Lock()
		if y.finished || y.planner == nil {
			y.mu.Unlock()
			return nil
		}
		if refill {
			budget = max(budget, 0)
		} else {
			app := y.appIO()
			appKiB := (app - lastAppIO) >> 10
			lastAppIO = app
			now := time.Now()
			left := y.planner.Progress().Left
			minRate := uint64(y.ctrl.Config().MinRate)
			if resync.ShouldSlowDown(appKiB, y.marks.ShortTermRate(now, left), minRate) {
				// Application I/O came in and resync runs faster than
				// c-min-rate: leave this tick to the application.
				if !slowedLogged {
					slowedLogged = true
					r.logf("%s: resync slows down for application I/O (c-min-rate %d KiB/s)", s.c.peerName, minRate)
				}
				budget = 0
				y.marks.Advance(now, left)
				y.mu.Unlock()
				continue
			}
			budget = y.ctrl.Tick()
		}
		// The controller grants a budget per 100 ms tick; it is spent as
		// in-flight room frees up, so a fast link is not held to one
		// burst per tick.
		room := int(maxInFlightBlocks) - int(y.planner.Progress().InFlightBits)
		if refill && room < int(maxInFlightBlocks/8) {
			// Refill in batches: requests for an eighth of the window
			// share a packet flush, rather than one flush each.
			y.mu.Unlock()
			continue
		}
		reqs := y.planner.Next(min(budget, max(room, 0)))
		var blocks uint64
		if y.requested == nil {
			y.requested = map[uint64]*rsRequest{}
		}
		for _, q := range reqs {
			blocks += q.Blocks()
			y.requested[q.Sector] = &rsRequest{size: q.Size}
		}
		budget -= int(blocks)
		y.ctrl.Issued(blocks)
		y.marks.Advance(time.Now(), y.planner.Progress().Left)
		done := y.planner.Finished()
		y.mu.Unlock()
		for _, q := range reqs {
			br := protocol.BlockReq{Sector: q.Sector, BlockID: protocol.BlockIDSyncer, BlkSize: q.Size}
			cmd := protocol.PRSDataRequest
			if csums != "" {
				if d, err := y.localDigest(csums, int64(q.Sector)*512, int64(q.Size)); err == nil {
					br.Digest, cmd = d, protocol.PCsumRSRequest
				}
			}
			if !s.queuePayload(cmd, &br) {
				return nil
			}
		}
		if done {
			return r.act(s.ctx, func() error { return y.finishLocked() })
		}
	}
}

// appIO returns the bytes of this node's disk I/O that resync did not do:
// the application's, through the peer's writes or its own.
func (y *syncState) appIO() uint64 {
	io := &y.s.r.io
	return io.diskWrite.Load() + io.diskRead.Load() - y.resyncIO.Load()
}

// persistProgress writes the SyncTarget's bitmap, about once a second, so
// that a restarted resync resumes instead of starting over. Data first: a
// bit must not be cleared on disk before its block is.
func (y *syncState) persistProgress() {
	r := y.s.r
	ld := r.ldev.Load()
	if ld == nil {
		return
	}
	if err := ld.syncDataAndBitmap(); err != nil {
		r.logf("resync: persisting progress: %v", err)
	}
}

// localDigest reads a block range and hashes it with alg.
func (y *syncState) localDigest(alg string, off, n int64) ([]byte, error) {
	ld := y.s.r.ldev.Load()
	if ld == nil {
		return nil, fmt.Errorf("no local disk")
	}
	buf := getBuf(int(n))
	defer putBuf(buf)
	if _, err := ld.dev.ReadAt(buf, off); err != nil {
		return nil, err
	}
	return digest(alg, buf)
}

// digest hashes p with a verify-alg / csums-alg name.
func digest(alg string, p []byte) ([]byte, error) {
	var h hash.Hash
	switch strings.TrimSuffix(strings.TrimPrefix(strings.ToLower(alg), "hmac("), ")") {
	case "crc32c":
		h = crc32.New(crc32.MakeTable(crc32.Castagnoli))
	case "md5":
		h = md5.New()
	case "sha1":
		h = sha1.New()
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return nil, fmt.Errorf("unknown digest algorithm %q", alg)
	}
	h.Write(p)
	return h.Sum(nil), nil
}

// gotData writes a resync reply (SyncTarget). The range is owned in
// arrival order, like application writes from the peer. A block still in
// the socket is written here, in the receiver goroutine.
func (y *syncState) gotData(d protocol.DataHeader, blk *rxBlock) error {
	s := y.s
	r := s.r
	defer func() { blk.release() }() // until apply owns it
	ld := r.ldev.Load()
	off, n := int64(d.Sector)*512, blk.n
	if ld == nil {
		return fmt.Errorf("local disk gone during resync")
	}
	if off < 0 || n <= 0 || off+n > ld.size {
		return protoErr("resync data of %d bytes at sector %d beyond the device", n, d.Sector)
	}
	// On a page-cache backed disk a write is a memory copy, and parallel
	// buffered writes to one file only contend for its lock: write in
	// arrival order, here, straight from the receive buffer. Direct I/O
	// devices get their writes in parallel.
	// A block held in a pipe is copied into the page cache by its own
	// goroutine, while the receiver goes on.
	inline := !ld.direct() && !blk.held()
	if !inline {
		blk = blk.ownCopy()
	}
	lr, err := r.io.writes.acquireCtx(s.ctx, off, n)
	if err != nil {
		return nil // the session ends
	}
	if err := s.peerBuffers.acquire(s.ctx, n); err != nil {
		r.io.writes.release(lr)
		return nil
	}
	s.wg.Add(1)
	mine := blk
	blk = nil
	if !inline {
		// The acks of blocks written in parallel leave together: the ack
		// socket stays corked while any of them is being written, and is
		// flushed at least every ackBatch acks.
		s.metaW.cork()
	}
	apply := func() {
		defer s.wg.Done()
		if !inline {
			defer func() {
				if s.rsAcks.Add(1)%ackBatch == 0 {
					s.metaW.flush()
				}
				s.metaW.uncork()
			}()
		}
		// Blocks our own application wrote since the request went out hold
		// newer data than the reply: those are skipped. A block written
		// only in part stays out of sync and is requested again.
		touched, full := y.takeRequest(d.Sector)
		var err error
		r.io.local.Add(1)
		for b := int64(0); b*4096 < n && err == nil; {
			if touched&(1<<b) != 0 {
				b++
				continue
			}
			end := b + 1
			for end*4096 < n && touched&(1<<end) == 0 {
				end++
			}
			lo, hi := b*4096, min(end*4096, n)
			mine.skip(lo - mine.pos)
			err = mine.write(ld.dev, off+lo, hi-lo, false, false)
			b = end
		}
		r.io.local.Add(-1)
		// The range stays locked until the ack is queued: an application
		// write to the same blocks waits for it, so its own ack (with
		// on-io-error pass_on, a P_NEG_ACK) cannot reach the SyncSource
		// before this one, which would mark the blocks in sync after
		// the failure had marked them out of sync.
		defer r.io.writes.release(lr)
		mine.release()
		s.peerBuffers.release(n)
		ack := protocol.BlockAck{Sector: d.Sector, BlockID: d.BlockID, BlkSize: uint32(n)}
		outcome := resync.Synced
		if err != nil {
			r.localIOError("resync write", off, err)
			outcome = resync.Failed
		} else {
			r.io.diskWrite.Add(uint64(n))
			y.resyncIO.Add(uint64(n))
			if !ld.direct() {
				y.noteResyncWrite(ld, off, n)
			}
		}
		y.complete(d.Sector, uint32(n), outcome)
		if partial := touched &^ full; partial != 0 && err == nil {
			for blk := int64(0); blk*4096 < n; blk++ {
				if partial&(1<<blk) != 0 {
					ld.markOutOfSync(off+blk*4096, min(4096, n-blk*4096))
					y.redirty(off+blk*4096, min(4096, n-blk*4096))
				}
			}
		}
		if err == nil {
			s.sendMeta(protocol.PRSWriteAck, &ack)
		} else {
			s.sendMeta(protocol.PNegAck, &ack)
		}
	}
	if inline {
		apply()
	} else {
		s.applies.Run(apply)
	}
	return nil
}

// complete records the outcome of one resync request on the SyncTarget.
func (y *syncState) complete(sector uint64, size uint32, o resync.Outcome) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.planner == nil {
		return
	}
	if err := y.planner.Complete(sector, size, o); err != nil {
		y.s.r.logf("resync: %v", err)
	}
	y.ctrl.Received(uint64(size) / 512)
	select {
	case y.wake <- struct{}{}:
	default:
	}
}

// gotAck handles resync acks arriving on the meta socket.
func (y *syncState) gotAck(cmd protocol.Cmd, payload []byte) error {
	var a protocol.BlockAck
	if err := a.Unmarshal(payload); err != nil {
		return protoErr("%s: %v", cmd, err)
	}
	r := y.s.r
	switch cmd {
	case protocol.PRSWriteAck:
		// SyncSource: the target has the block now.
		if ld := r.ldev.Load(); ld != nil {
			ld.clearRange(int64(a.Sector)*512, int64(a.BlkSize))
		}
		y.mu.Lock()
		y.bytesSent += uint64(a.BlkSize)
		y.mu.Unlock()
	case protocol.PRSIsInSync:
		// SyncTarget: the checksums matched, nothing was sent.
		y.mu.Lock()
		y.equal += uint64(a.BlkSize) / meta.BMBlockSize
		y.mu.Unlock()
		y.complete(a.Sector, a.BlkSize, resync.Synced)
	case protocol.PNegRSDReply:
		r.logf("resync: the peer could not read sector %d (%d bytes)", a.Sector, a.BlkSize)
		y.complete(a.Sector, a.BlkSize, resync.Failed)
	}
	return nil
}

// serveRequest answers a resync, checksum or verify request from the peer
// (SyncSource or VerifyT). The read happens under the range lock and the
// reply is queued before the lock is released, so it cannot overtake an
// application write to the same blocks on the wire.
func (y *syncState) serveRequest(cmd protocol.Cmd, rq protocol.BlockReq) error {
	s := y.s
	r := s.r
	ld := r.ldev.Load()
	off, n := int64(rq.Sector)*512, int64(rq.BlkSize)
	if ld == nil {
		return fmt.Errorf("no local disk")
	}
	if n <= 0 || n > protocol.MaxBioSize || off < 0 || off+n > ld.size {
		return protoErr("%s for %d bytes at sector %d outside the device", cmd, n, rq.Sector)
	}
	select {
	case y.sem <- struct{}{}:
	case <-s.ctx.Done():
		return nil
	}
	// Owned here, in arrival order: the read then sees exactly the writes
	// that came before the request on the wire.
	lr, err := r.io.writes.acquireCtx(s.ctx, off, n)
	if err != nil {
		<-y.sem
		return nil // the session ends
	}
	if cmd == protocol.PRSDataRequest && s.splice.raw != nil && n >= spliceMin && pageCacheFile(ld.dev) != nil {
		// Served from the page cache by the splice sender, in order; the
		// semaphore bounds its queue, so this does not block.
		s.rsSendq <- rsJob{y: y, ld: ld, rq: rq, lr: lr}
		return nil
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-y.sem }()
		y.serveRead(cmd, ld, rq, lr)
	}()
	return nil
}

// serveRead reads the block of a request and answers it; it releases lr.
func (y *syncState) serveRead(cmd protocol.Cmd, ld *localDisk, rq protocol.BlockReq, lr *lockedRange) {
	s := y.s
	r := s.r
	off, n := int64(rq.Sector)*512, int64(rq.BlkSize)
	buf := getBuf(int(n))
	r.io.local.Add(1)
	_, err := ld.dev.ReadAt(buf, off)
	r.io.local.Add(-1)
	ack := protocol.BlockAck{Sector: rq.Sector, BlockID: rq.BlockID, BlkSize: rq.BlkSize}
	if err != nil {
		r.io.writes.release(lr)
		putBuf(buf)
		r.localIOError("resync read", off, err)
		s.sendMeta(protocol.PNegRSDReply, &ack)
		return
	}
	r.io.diskRead.Add(uint64(n))
	switch cmd {
	case protocol.PCsumRSRequest:
		if d, derr := digest(s.c.conf.CsumsAlg, buf); derr == nil && bytes.Equal(d, rq.Digest) {
			r.io.writes.release(lr)
			putBuf(buf)
			s.sendMeta(protocol.PRSIsInSync, &ack)
			if ld := r.ldev.Load(); ld != nil {
				ld.clearRange(off, n)
			}
			return
		}
		fallthrough
	case protocol.PRSDataRequest:
		hdr := protocol.DataHeader{Sector: rq.Sector, BlockID: rq.BlockID}
		err := s.dataW.send(protocol.PRSDataReply, hdr.MarshalAppend(nil), buf)
		r.io.writes.release(lr)
		putBuf(buf)
		if err != nil {
			s.cancel(fmt.Errorf("sending %s: %w", protocol.PRSDataReply, err))
			return
		}
		r.io.netSend.Add(uint64(n))
	case protocol.POVRequest:
		r.io.writes.release(lr)
		d, derr := digest(s.c.conf.VerifyAlg, buf)
		putBuf(buf)
		if derr != nil {
			s.cancel(fmt.Errorf("verify: %w", derr))
			return
		}
		s.queuePayload(protocol.POVReply, &protocol.BlockReq{Sector: rq.Sector, BlockID: rq.BlockID, BlkSize: rq.BlkSize, Digest: d})
	}
}

// rsJob is a resync request queued for the splice sender.
type rsJob struct {
	y  *syncState
	ld *localDisk
	rq protocol.BlockReq
	lr *lockedRange // owned since arrival; released once answered
}

// rsSender answers the resync requests served from the page cache, one
// after the other: splicing a cached block costs little, so one goroutine
// keeps the socket busy without the hand-offs of many.
func (s *session) rsSender() error {
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case j := <-s.rsSendq:
			if !j.y.sendSpliced(j.ld, j.rq, j.lr) {
				j.y.serveRead(protocol.PRSDataRequest, j.ld, j.rq, j.lr)
			}
			<-j.y.sem
		}
	}
}

// dropQueuedResync releases the ranges of resync requests that were never
// answered. The session's goroutines have stopped.
func (s *session) dropQueuedResync() {
	for {
		select {
		case j := <-s.rsSendq:
			s.r.io.writes.release(j.lr)
		default:
			return
		}
	}
}

// sendSpliced answers a resync request from the page cache with splice,
// without copying the block (SyncSource). It reports false, having done
// nothing, when the block is to be read and sent the ordinary way: the
// disk or socket cannot be spliced, the block is small, or reading the
// file failed (the ordinary read then reports the error). It releases lr
// when it reports true.
//
// The reply shares its pages with the page cache until the peer has read
// it, so a write to the block after the request can reach the peer inside
// the reply. That is harmless: the write goes to the peer after the reply
// on the same socket and overwrites the block again; if the connection
// breaks first, the write is not acknowledged and its block stays out of
// sync here.
func (y *syncState) sendSpliced(ld *localDisk, rq protocol.BlockReq, lr *lockedRange) bool {
	s := y.s
	r := s.r
	off, n := int64(rq.Sector)*512, int(rq.BlkSize)
	f := pageCacheFile(ld.dev)
	if s.splice.raw == nil || f == nil || n < spliceMin {
		return false
	}
	p := s.splice.tx.Take(s.ctx.Done())
	if p == nil {
		return false
	}
	r.io.local.Add(1)
	held, err := p.FillFromFile(f, off, n)
	r.io.local.Add(-1)
	if err != nil {
		s.splice.tx.Put(p, false)
		return false
	}
	hdr := protocol.DataHeader{Sector: rq.Sector, BlockID: rq.BlockID}
	err = s.dataW.sendSpliced(s.splice.raw, protocol.PRSDataReply, hdr.MarshalAppend(nil), n, func() error {
		if err := p.ToConn(s.splice.raw, held, held < n); err != nil {
			return err
		}
		if held < n {
			return p.FileToConn(f, off+int64(held), n-held, s.splice.raw, false)
		}
		return nil
	})
	r.io.writes.release(lr)
	s.splice.tx.Put(p, err == nil)
	if err != nil {
		s.cancel(fmt.Errorf("sending %s: %w", protocol.PRSDataReply, err))
		return true
	}
	r.io.diskRead.Add(uint64(n))
	r.io.netSend.Add(uint64(n))
	return true
}

// applicationWrote tells the SyncTarget's planner that replicated writes
// made these blocks identical on both sides. Writes from the peer need
// nothing more: they arrive on the same socket as resync replies, in the
// order the peer produced them.
func (y *syncState) applicationWrote(off, n int64) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.planner != nil {
		y.planner.ApplicationWrote(uint64(off), uint64(n))
	}
}

// localApplicationWrote records a write by this node's own application (a
// promoted SyncTarget) against the resync requests still outstanding, so
// that their replies do not overwrite it with older data.
func (y *syncState) localApplicationWrote(off, n int64) {
	y.applicationWrote(off, n)
	y.mu.Lock()
	defer y.mu.Unlock()
	for sector, q := range y.requested {
		so := int64(sector) * 512
		for blk := int64(0); blk*4096 < int64(q.size); blk++ {
			bs, be := so+blk*4096, so+min((blk+1)*4096, int64(q.size))
			if bs < off+n && off < be {
				q.touched |= 1 << blk
				if off <= bs && be <= off+n {
					q.full |= 1 << blk
				}
			}
		}
	}
}

// takeRequest forgets an outstanding request and returns the blocks our
// own application touched (and fully covered) while it was outstanding.
func (y *syncState) takeRequest(sector uint64) (touched, full uint64) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if q, ok := y.requested[sector]; ok {
		delete(y.requested, sector)
		return q.touched, q.full
	}
	return 0, 0
}

// redirty puts a block back on the planner's list.
func (y *syncState) redirty(off, n int64) {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.planner != nil {
		y.planner.Dirtied(uint64(off), uint64(n))
	}
}

// peerStateChanged adjusts our state to the peer's new state during a
// resync: pause flags, and the end of the run on the SyncSource, which
// learns it from the target's P_STATE.
func (y *syncState) peerStateChanged(ns *replication.State, peer protocol.State) error {
	switch {
	case (ns.Conn == replication.SyncSource || ns.Conn == replication.PausedSyncS) &&
		peer.Conn == replication.Connected && peer.PDsk == replication.UpToDate:
		ns.Conn = replication.Connected
		// Both disks hold the same data now: both are UpToDate, as
		// DRBD's drbd_resync_finished sets them. A SyncSource that
		// started Consistent or Outdated would otherwise stay so,
		// connected to an UpToDate peer, for good.
		ns.PDsk = replication.UpToDate
		if ns.Disk == replication.Consistent || ns.Disk == replication.Outdated {
			ns.Disk = replication.UpToDate
		}
		return y.finishSource(ns)
	case ns.Conn == replication.Connected && peer.Conn == replication.VerifyT:
		ns.Conn = replication.VerifyT
	case ns.Conn == replication.VerifyT && peer.Conn == replication.Connected:
		ns.Conn = replication.Connected
	}
	applyPause(ns)
	return nil
}

// applyPause maps the sync-inhibit flags to the Paused connection states.
func applyPause(ns *replication.State) {
	paused := ns.UserIsp || ns.PeerIsp || ns.AftrIsp
	switch {
	case paused && ns.Conn == replication.SyncSource:
		ns.Conn = replication.PausedSyncS
	case paused && ns.Conn == replication.SyncTarget:
		ns.Conn = replication.PausedSyncT
	case !paused && ns.Conn == replication.PausedSyncS:
		ns.Conn = replication.SyncSource
	case !paused && ns.Conn == replication.PausedSyncT:
		ns.Conn = replication.SyncTarget
	}
}

// finishSource completes the run on the SyncSource. It runs on the owner
// goroutine; ns is the state being built.
func (y *syncState) finishSource(ns *replication.State) error {
	y.mu.Lock()
	if y.finished {
		y.mu.Unlock()
		return nil
	}
	y.finished = true
	y.mu.Unlock()
	r := y.s.r
	ld := r.ldev.Load()
	if ld == nil {
		return nil
	}
	if err := ld.updateUUIDs(func(u *meta.UUIDs) { u.FinishResync(false, y.peerUUIDs, ns.Role == replication.Primary) }); err != nil {
		return err
	}
	// The SyncTarget now carries our current UUID.
	y.s.peerCurrent.Store(ld.uuids().Current)
	if err := ld.flushBitmap(); err != nil {
		return err
	}
	y.logDone()
	if left := ld.bitsSet(); left > 0 {
		r.logf("%s: %d bits still out of sync after resync", y.s.c.peerName, left)
	}
	return nil
}

// finishLocked completes the run on the SyncTarget (or a run with nothing
// to do). It runs on the owner goroutine.
func (y *syncState) finishLocked() error {
	r := y.s.r
	y.mu.Lock()
	if y.finished {
		y.mu.Unlock()
		return nil
	}
	y.finished = true
	y.mu.Unlock()
	ld := r.ldev.Load()
	if ld == nil {
		return nil
	}
	// The resynced blocks reach stable storage before the bitmap says
	// they are in sync (with external metadata the metadata syncs do not
	// cover the data device), and the bitmap before the UUIDs say the
	// resync is over.
	if err := ld.syncDataAndBitmap(); err != nil {
		return r.ioError("flush at the end of resync", 0, err)
	}
	ns := r.State()
	primary := ns.Role == replication.Primary
	if err := ld.updateUUIDs(func(u *meta.UUIDs) { u.FinishResync(y.target, y.peerUUIDs, primary) }); err != nil {
		return err
	}
	if !y.target {
		y.s.peerCurrent.Store(ld.uuids().Current)
	}
	ns.Conn = replication.Connected
	if y.target {
		ns.Disk = replication.UpToDate
	} else {
		ns.PDsk = replication.UpToDate
	}
	r.crashedPrimary = false
	y.logDone()
	return r.setState(ns, true)
}

func (y *syncState) logDone() {
	y.mu.Lock()
	total, equal := y.total, y.equal
	msg := resync.DoneMessage(false, y.marks, time.Now(), total, 0)
	y.mu.Unlock()
	y.s.r.logf("%s: %s", y.s.c.peerName, msg)
	if equal > 0 {
		y.s.r.logf("%s: %d %% had equal checksums, eliminated: %dK; transferred %dK total %dK", y.s.c.peerName,
			equal*100/max(total, 1), equal*4, (total-equal)*4, total*4)
	}
}

// progress renders the /proc/drbd progress lines and reports the numbers
// for drbdadm status; ok is false when no run is active.
func (y *syncState) progress(conn replication.ConnState) (lines string, total, left, want uint64, ok bool) {
	y.mu.Lock()
	defer y.mu.Unlock()
	now := time.Now()
	if v := y.verify; v != nil && conn == replication.VerifyS {
		p := v.v.Progress()
		lines = resync.FormatSyncerProgress(resync.SyncerProgress{Kind: resync.VerifySource, Total: p.Total, Left: p.Left, Marks: v.marks}, now)
		return lines, p.Total * 4, p.Left * 4, 0, true
	}
	if y.finished || y.marks == nil {
		return "", 0, 0, 0, false
	}
	ld := y.s.r.ldev.Load()
	if ld == nil {
		return "", 0, 0, 0, false
	}
	left = uint64(ld.bitsSet())
	kind := resync.SyncSource
	if y.target {
		kind = resync.SyncTarget
		if y.ctrl != nil {
			want = y.ctrl.Want()
		}
	}
	y.marks.Advance(now, left)
	lines = resync.FormatSyncerProgress(resync.SyncerProgress{Kind: kind, Total: y.total, Left: left, Marks: y.marks, Want: want}, now)
	return lines, y.total * 4, left * 4, want, true
}

// StartVerify begins an online verify as VerifyS (DRBD_ADM_START_OV).
func (r *Resource) StartVerify(ctx context.Context, startSector uint64) error {
	return r.act(ctx, func() error {
		s := r.sess.Load()
		if s == nil {
			return &replication.StateError{Result: replication.SSNeedConnection}
		}
		ns := r.State()
		ns.Conn = replication.VerifyS
		c := r.checkContext(false)
		c.AgreedProtocol = s.version
		if err := replication.Check(r.State(), ns, c); err != nil {
			return err
		}
		ld := r.ldev.Load()
		v, err := resync.NewVerifier(resync.VerifyConfig{DeviceSectors: uint64(ld.size) / 512, StartSector: startSector,
			Busy: func(startBit, n uint64) bool {
				return r.io.writes.busy(int64(startBit)*meta.BMBlockSize, int64(n)*meta.BMBlockSize)
			}})
		if err != nil {
			return err
		}
		y := s.syncFor()
		y.mu.Lock()
		y.verify = &verifyRun{v: v, alg: s.c.conf.VerifyAlg, mine: map[uint64][]byte{}, marks: resync.NewMarks(time.Now(), v.Progress().Left), start: time.Now()}
		y.mu.Unlock()
		if err := r.setState(ns, true); err != nil {
			return err
		}
		r.logf("%s: Starting Online Verify from sector %d", s.c.peerName, startSector)
		s.goRun(s.verifier)
		return nil
	})
}

// verifier issues online verify requests (VerifyS).
func (s *session) verifier() error {
	y := s.getSync()
	r := s.r
	tick := time.NewTicker(resync.SleepTime)
	defer tick.Stop()
	dc := r.diskConfCopy()
	perTick := int(max(dc.ResyncRate/10/meta.BMBlockSize, 16))
	for started := false; ; started = true {
		if started {
			select {
			case <-s.ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		if r.State().Conn != replication.VerifyS {
			return nil
		}
		y.mu.Lock()
		v := y.verify
		reqs := v.v.Next(perTick)
		y.mu.Unlock()
		for _, q := range reqs {
			// Our digest is taken under the range lock and the request
			// sent before it is released: a write to these blocks then
			// reaches the peer either before the request (both digests
			// include it) or after it (neither does).
			off, n := int64(q.Sector)*512, int64(q.Size)
			lr, err := r.io.writes.acquireCtx(s.ctx, off, n)
			if err != nil {
				return nil // the session ends
			}
			d, err := y.localDigest(v.alg, off, n)
			if err == nil {
				y.mu.Lock()
				v.mine[q.Sector] = d
				y.mu.Unlock()
				br := protocol.BlockReq{Sector: q.Sector, BlockID: protocol.BlockIDSyncer, BlkSize: q.Size}
				err = s.dataW.send(protocol.POVRequest, br.MarshalAppend(nil))
			}
			r.io.writes.release(lr)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
		}
	}
}

// gotOVReply compares the peer's digest with ours (VerifyS).
func (y *syncState) gotOVReply(rq protocol.BlockReq) error {
	s := y.s
	r := s.r
	y.mu.Lock()
	v := y.verify
	y.mu.Unlock()
	if v == nil {
		return protoErr("P_OV_REPLY without a verify run")
	}
	off, n := int64(rq.Sector)*512, int64(rq.BlkSize)
	y.mu.Lock()
	mine, ok := v.mine[rq.Sector]
	delete(v.mine, rq.Sector)
	y.mu.Unlock()
	if !ok {
		return protoErr("P_OV_REPLY for sector %d that was not requested", rq.Sector)
	}
	inSync := bytes.Equal(mine, rq.Digest)
	id := protocol.BlockIDInSync
	if !inSync {
		id = protocol.BlockIDOutOfSync
		if ld := r.ldev.Load(); ld != nil {
			ld.markOutOfSync(off, n)
		}
		r.logf("%s: Out of sync: start=%d, size=%d (sectors)", s.c.peerName, rq.Sector, n/512)
	}
	s.sendMeta(protocol.POVResult, &protocol.BlockAck{Sector: rq.Sector, BlockID: id, BlkSize: rq.BlkSize})
	y.mu.Lock()
	finished, err := v.v.OVResult(rq.Sector, rq.BlkSize, inSync)
	v.marks.Advance(time.Now(), v.v.Progress().Left)
	y.mu.Unlock()
	if err != nil {
		return protoErr("verify: %v", err)
	}
	if finished {
		go r.act(s.ctx, func() error {
			r.logf("%s: Online verify done (total %d sec; %s)", s.c.peerName, int(time.Since(v.start).Seconds()), v.v.Summary())
			y.mu.Lock()
			y.verify = nil
			y.mu.Unlock()
			ns := r.State()
			if ns.Conn == replication.VerifyS {
				ns.Conn = replication.Connected
			}
			return r.setState(ns, true)
		})
	}
	return nil
}

// gotOVResult records the VerifyS's verdict on our side (VerifyT).
func (y *syncState) gotOVResult(payload []byte) error {
	var a protocol.BlockAck
	if err := a.Unmarshal(payload); err != nil {
		return protoErr("P_OV_RESULT: %v", err)
	}
	if a.BlockID == protocol.BlockIDOutOfSync {
		if ld := y.s.r.ldev.Load(); ld != nil {
			ld.markOutOfSync(int64(a.Sector)*512, int64(a.BlkSize))
		}
	}
	return nil
}
