package resync

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// Bitmap is the out-of-sync bitmap a Planner walks. Bit i covers bytes
// [i*BlockSize, (i+1)*BlockSize) of the device; a set bit means the block
// differs from the peer's copy. The Planner is its only writer while a
// resync runs, apart from the writes the engine reports through
// Planner.Dirtied and Planner.ApplicationWrote.
type Bitmap interface {
	// Bits returns the number of bits: the device size in blocks,
	// rounded up.
	Bits() uint64
	// Test reports whether bit is set.
	Test(bit uint64) bool
	// NextSet returns the first set bit at or after from, and false
	// when there is none.
	NextSet(from uint64) (uint64, bool)
	// Weight returns the number of set bits.
	Weight() uint64
	// Clear clears the n bits starting at bit.
	Clear(bit, n uint64)
}

// BusyFunc reports whether any block in [startBit, startBit+n) has
// application I/O in flight. The planners skip such blocks instead of
// copying them twice: the application write will bring them in sync, or
// a later pass will pick them up.
type BusyFunc func(startBit, n uint64) bool

// Request is one resync or verify read the SyncTarget (or VerifySource)
// asks its peer for, in wire units: P_RS_DATA_REQUEST and P_OV_REQUEST
// carry exactly this sector and size.
type Request struct {
	// Sector is the first 512-byte sector; it is always block aligned.
	Sector uint64
	// Size is the length in bytes: a multiple of BlockSize, except for
	// the last block of a device whose size is not.
	Size uint32
}

// Bit returns the first bitmap bit the request covers.
func (r Request) Bit() uint64 { return r.Sector / SectorsPerBit }

// Blocks returns the number of bitmap bits the request covers.
func (r Request) Blocks() uint64 { return (uint64(r.Size) + BlockSize - 1) / BlockSize }

// Outcome is how the peer answered a resync request.
type Outcome int

const (
	// Synced means the data arrived and was written locally
	// (P_RS_DATA_REPLY), or the peer found the checksums equal
	// (P_RS_IS_IN_SYNC): the blocks are in sync now.
	Synced Outcome = iota
	// Failed means the peer could not read the blocks
	// (P_NEG_RS_DREPLY). They stay out of sync and are not asked for
	// again during this resync, as in DRBD's rs_failed accounting.
	Failed
	// Canceled means the peer declined the request (P_RS_CANCEL). The
	// blocks stay out of sync and a later pass asks for them again.
	Canceled
)

// String returns the outcome's name.
func (o Outcome) String() string {
	switch o {
	case Synced:
		return "synced"
	case Failed:
		return "failed"
	case Canceled:
		return "canceled"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Defaults and limits of PlannerConfig.
const (
	// DefaultMaxRequestSize is the largest resync request the Planner
	// builds when the configuration leaves it zero.
	DefaultMaxRequestSize = 128 << 10
	// DefaultMaxInFlight is the number of outstanding requests allowed
	// when the configuration leaves it zero.
	DefaultMaxInFlight = 1024
	// MaxInFlightLimit is the largest accepted MaxInFlight.
	MaxInFlightLimit = 1 << 16
)

// ErrUnknownRequest is returned when a reply names a request that is not
// outstanding: a duplicate, a reply to a request never sent, or a size
// that does not match. The connection should be dropped.
var ErrUnknownRequest = errors.New("resync: reply does not match an outstanding request")

// PlannerConfig configures a Planner.
type PlannerConfig struct {
	// MaxRequestSize is the largest request in bytes: a multiple of
	// BlockSize, at most MaxBioSize. Zero means DefaultMaxRequestSize.
	MaxRequestSize uint32
	// MaxInFlight bounds the number of outstanding requests. Zero means
	// DefaultMaxInFlight.
	MaxInFlight int
	// DeviceSectors is the device size in sectors; the last request is
	// cut to it when the size is not a multiple of BlockSize. Zero means
	// Bits()*SectorsPerBit.
	DeviceSectors uint64
	// Busy reports application I/O in flight; nil means never busy.
	Busy BusyFunc
}

// Progress is a snapshot of a resync's or a verify's progress, in bits
// (4 KiB blocks).
type Progress struct {
	// Total is the number of bits to handle, fixed when the run began
	// (DRBD's rs_total).
	Total uint64
	// Left is the number of bits still to handle, not counting failed
	// ones (DRBD's bitmap weight minus rs_failed, or ov_left).
	Left uint64
	// Done is Total minus Left, or zero when bits set again during the
	// run make Left larger than Total.
	Done uint64
	// Failed is the number of bits the peer could not provide.
	Failed uint64
	// InFlight is the number of outstanding requests and InFlightBits
	// the bits they cover.
	InFlight     int
	InFlightBits uint64
	// Cursor is the next bit the walk looks at (DRBD's bm_resync_fo).
	Cursor uint64
	// Passes counts walks over the bitmap; a pass after the first
	// handles bits set again behind the cursor.
	Passes int
}

const noPending = math.MaxUint64

// extent is the half-open bit range [start, end).
type extent struct{ start, end uint64 }

// outstanding is one request in flight.
type outstanding struct {
	start, n uint64
	size     uint32
	// touched has bit i set when block start+i was marked out of sync
	// again while the request was in flight: its reply must not clear it.
	touched []uint64
}

func (o *outstanding) end() uint64 { return o.start + o.n }

func (o *outstanding) touch(bit uint64) {
	i := bit - o.start
	if o.touched == nil {
		o.touched = make([]uint64, (o.n+63)/64)
	}
	o.touched[i/64] |= 1 << (i % 64)
}

func (o *outstanding) isTouched(bit uint64) bool {
	if o.touched == nil {
		return false
	}
	i := bit - o.start
	return o.touched[i/64]&(1<<(i%64)) != 0
}

// Planner decides the next resync requests of a SyncTarget, the way
// DRBD's make_resync_request does: it walks the out-of-sync bitmap once
// from bit 0, turns runs of dirty blocks into aligned requests of up to
// MaxRequestSize that never cross a 16 MiB resync extent, keeps at most
// MaxInFlight requests outstanding, and clears bits as replies arrive.
//
// Blocks the application is writing are skipped (see BusyFunc). Blocks an
// application write replicated to both sides are forgotten (see
// ApplicationWrote): on a connected resync those writes already reach the
// peer, so copying them again would only cost bandwidth. Blocks marked out
// of sync again behind the cursor (see Dirtied) are picked up by a further
// pass, which starts at the lowest such block.
//
// A Planner is not safe for concurrent use; the goroutine that owns the
// resource's state owns it.
type Planner struct {
	bm        Bitmap
	busyFn    BusyFunc
	bits      uint64
	sectors   uint64
	maxBlocks uint64
	maxIn     int

	total   uint64
	cursor  uint64
	pending uint64 // lowest block a further pass must revisit, or noPending
	idle    bool   // a scan found nothing to request since the last change
	passes  int

	inflight     []*outstanding // sorted by start, non-overlapping
	inflightBits uint64
	failed       []extent // sorted, merged
	failedBits   uint64
}

// NewPlanner returns a Planner for a resync of bm that begins now: the
// bits set at this moment are its Total.
func NewPlanner(bm Bitmap, cfg PlannerConfig) (*Planner, error) {
	if bm == nil {
		return nil, errors.New("resync: nil bitmap")
	}
	if cfg.MaxRequestSize == 0 {
		cfg.MaxRequestSize = DefaultMaxRequestSize
	}
	if cfg.MaxRequestSize%BlockSize != 0 || cfg.MaxRequestSize > MaxBioSize {
		return nil, fmt.Errorf("resync: max request size %d is not a multiple of %d up to %d", cfg.MaxRequestSize, BlockSize, MaxBioSize)
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlight < 0 || cfg.MaxInFlight > MaxInFlightLimit {
		return nil, fmt.Errorf("resync: max in flight %d out of range 1..%d", cfg.MaxInFlight, MaxInFlightLimit)
	}
	bits := bm.Bits()
	sectors, err := deviceSectors(bits, cfg.DeviceSectors)
	if err != nil {
		return nil, err
	}
	return &Planner{
		bm:        bm,
		busyFn:    cfg.Busy,
		bits:      bits,
		sectors:   sectors,
		maxBlocks: uint64(cfg.MaxRequestSize / BlockSize),
		maxIn:     cfg.MaxInFlight,
		total:     bm.Weight(),
		pending:   noPending,
		passes:    1,
	}, nil
}

// deviceSectors checks that a device of the given size matches a bitmap
// of the given number of bits.
func deviceSectors(bits, sectors uint64) (uint64, error) {
	if bits > math.MaxUint64/SectorsPerBit {
		return 0, fmt.Errorf("resync: bitmap of %d bits is too large", bits)
	}
	if sectors == 0 {
		return bits * SectorsPerBit, nil
	}
	if sectors > bits*SectorsPerBit || (bits > 0 && sectors <= (bits-1)*SectorsPerBit) {
		return 0, fmt.Errorf("resync: device of %d sectors does not match a bitmap of %d bits", sectors, bits)
	}
	return sectors, nil
}

// Next returns the requests to send now, covering at most budget blocks
// in total (the Controller's answer for this tick) and keeping at most
// MaxInFlight requests outstanding. It returns nil when the budget, the
// in-flight bound or the work is exhausted; the walk resumes where it
// stopped on the next call. Each call wraps around to a further pass at
// most once.
func (p *Planner) Next(budget int) []Request {
	var out []Request
	wrapped := false
	for budget > 0 && len(p.inflight) < p.maxIn {
		if p.cursor >= p.bits {
			if wrapped || !p.startPass() {
				break
			}
			wrapped = true
		}
		b, ok := p.bm.NextSet(p.cursor)
		if !ok || b >= p.bits {
			p.cursor = p.bits
			continue
		}
		if o := p.inflightAt(b); o != nil {
			p.cursor = o.end()
			continue
		}
		if e, ok := p.failedAt(b); ok {
			p.cursor = e.end
			continue
		}
		if p.busy(b, 1) {
			p.notePending(b)
			p.cursor = b + 1
			continue
		}
		n := p.coalesce(b, uint64(budget))
		size := n * BlockSize
		sector := b * SectorsPerBit
		if sector+size/SectorSize > p.sectors {
			size = (p.sectors - sector) * SectorSize
		}
		p.insertInflight(&outstanding{start: b, n: n, size: uint32(size)})
		p.cursor = b + n
		budget -= int(n)
		out = append(out, Request{Sector: sector, Size: uint32(size)})
	}
	return out
}

// coalesce returns how many blocks a request starting at dirty block b
// covers. Like DRBD it grows the request block by block while the next
// block is dirty and requestable, the request stays within maxBlocks and
// the budget, does not cross a resync extent, and its start stays aligned
// to the power of two its size has reached (so that large requests suit
// every stripe size of a software RAID below).
func (p *Planner) coalesce(b, budget uint64) uint64 {
	limit := min(p.maxBlocks, budget)
	stop := p.bits
	if i := p.inflightAfter(b); i < len(p.inflight) {
		stop = min(stop, p.inflight[i].start)
	}
	if i := p.failedAfter(b); i < len(p.failed) {
		stop = min(stop, p.failed[i].start)
	}
	n, align := uint64(1), uint(1)
	for n < limit {
		if b&(1<<align-1) != 0 {
			break
		}
		next := b + n
		if next%ExtentBits == 0 || next >= stop {
			break
		}
		if !p.bm.Test(next) || p.busy(next, 1) {
			break
		}
		n++
		if uint64(1)<<align <= n {
			align++
		}
	}
	return n
}

// startPass moves the cursor back for a further pass over the bitmap and
// reports whether there is anything to do.
func (p *Planner) startPass() bool {
	if p.pending != noPending {
		p.cursor = p.pending
		p.pending = noPending
		p.passes++
		return true
	}
	if p.idle {
		return false
	}
	b, found := p.findRequestable()
	if !found {
		p.idle = true
		return false
	}
	p.cursor = b
	p.passes++
	return true
}

// findRequestable returns the lowest set bit that is neither in flight
// nor failed. It is the safety net for bits set without a Dirtied call.
func (p *Planner) findRequestable() (uint64, bool) {
	from := uint64(0)
	for from < p.bits {
		b, ok := p.bm.NextSet(from)
		if !ok || b >= p.bits {
			return 0, false
		}
		if o := p.inflightAt(b); o != nil {
			from = o.end()
			continue
		}
		if e, ok := p.failedAt(b); ok {
			from = e.end
			continue
		}
		return b, true
	}
	return 0, false
}

func (p *Planner) notePending(b uint64) {
	if b < p.pending {
		p.pending = b
	}
	p.idle = false
}

func (p *Planner) busy(b, n uint64) bool {
	return p.busyFn != nil && p.busyFn(b, n)
}

// Complete records the peer's answer to the outstanding request at sector
// with the given size. On Synced it clears the request's bits, except
// those marked out of sync again while it was in flight. It returns
// ErrUnknownRequest, and changes nothing, when no such request is
// outstanding.
func (p *Planner) Complete(sector uint64, size uint32, o Outcome) error {
	if sector%SectorsPerBit != 0 {
		return fmt.Errorf("%w: sector %d is not block aligned", ErrUnknownRequest, sector)
	}
	i, ok := p.inflightIndex(sector / SectorsPerBit)
	if !ok || p.inflight[i].size != size {
		return fmt.Errorf("%w: sector %d size %d", ErrUnknownRequest, sector, size)
	}
	if o != Synced && o != Failed && o != Canceled {
		return fmt.Errorf("resync: invalid outcome %d", int(o))
	}
	r := p.inflight[i]
	p.inflight = append(p.inflight[:i], p.inflight[i+1:]...)
	p.inflightBits -= r.n
	// Look at the whole bitmap once more before declaring the resync
	// finished, in case bits were set without a Dirtied call.
	p.idle = false

	// Handle runs of untouched blocks; touched blocks stay as they are.
	for b := r.start; b < r.end(); {
		if r.isTouched(b) {
			if p.bm.Test(b) {
				p.notePending(b)
			}
			b++
			continue
		}
		e := b + 1
		for e < r.end() && !r.isTouched(e) {
			e++
		}
		switch o {
		case Synced:
			p.bm.Clear(b, e-b)
		case Failed:
			for x, ok := p.bm.NextSet(b); ok && x < e; x, ok = p.bm.NextSet(x + 1) {
				p.addFailed(x, x+1)
			}
		case Canceled:
			if x, ok := p.bm.NextSet(b); ok && x < e {
				p.notePending(x)
			}
		}
		b = e
	}
	return nil
}

// ApplicationWrote tells the planner that an application write of length
// bytes at startByte completed on both nodes. The blocks it fully covers
// are in sync now, so their bits are cleared and they will not be resynced;
// a partly covered block is not. It returns the number of bits it cleared.
func (p *Planner) ApplicationWrote(startByte, length uint64) uint64 {
	first, end := p.coveredBlocks(startByte, length)
	if first >= end {
		return 0
	}
	var cleared uint64
	for x, ok := p.bm.NextSet(first); ok && x < end; x, ok = p.bm.NextSet(x + 1) {
		cleared++
	}
	if cleared > 0 {
		p.bm.Clear(first, end-first)
	}
	p.removeFailed(first, end)
	return cleared
}

// coveredBlocks returns the blocks [first, end) that a write of length
// bytes at startByte covers completely. A write reaching the end of the
// device covers a short last block.
func (p *Planner) coveredBlocks(startByte, length uint64) (first, end uint64) {
	devBytes := p.sectors * SectorSize
	if length == 0 || startByte >= devBytes {
		return 0, 0
	}
	endByte := devBytes
	if length < devBytes-startByte {
		endByte = startByte + length
	}
	first = (startByte + BlockSize - 1) / BlockSize
	if endByte == devBytes {
		end = p.bits
	} else {
		end = endByte / BlockSize
	}
	return first, end
}

// Dirtied tells the planner that the blocks touched by length bytes at
// startByte were marked out of sync (again) during the resync, for
// example because a write did not reach the peer. The caller has already
// set their bits. Blocks behind the cursor are picked up by a further
// pass, and replies to requests in flight for them will not clear them.
func (p *Planner) Dirtied(startByte, length uint64) {
	if length == 0 {
		return
	}
	first := startByte / BlockSize
	if first >= p.bits {
		return
	}
	end := p.bits
	if length <= math.MaxUint64-startByte {
		end = min(p.bits, (startByte+length+BlockSize-1)/BlockSize)
	}
	for i := p.inflightAfterEnd(first); i < len(p.inflight) && p.inflight[i].start < end; i++ {
		o := p.inflight[i]
		for b := max(first, o.start); b < min(end, o.end()); b++ {
			o.touch(b)
		}
	}
	if first < p.cursor {
		p.notePending(first)
	}
	p.idle = false
}

// Finished reports whether the resync has nothing left to do: no request
// is outstanding and every set bit is a failed one.
func (p *Planner) Finished() bool {
	if len(p.inflight) > 0 || p.pending != noPending || p.cursor < p.bits {
		return false
	}
	if p.idle {
		return true
	}
	if _, found := p.findRequestable(); found {
		return false
	}
	p.idle = true
	return true
}

// Progress returns the planner's progress.
func (p *Planner) Progress() Progress {
	left := p.bm.Weight()
	if left > p.failedBits {
		left -= p.failedBits
	} else {
		left = 0
	}
	done := uint64(0)
	if p.total > left {
		done = p.total - left
	}
	return Progress{
		Total:        p.total,
		Left:         left,
		Done:         done,
		Failed:       p.failedBits,
		InFlight:     len(p.inflight),
		InFlightBits: p.inflightBits,
		Cursor:       p.cursor,
		Passes:       p.passes,
	}
}

// Outstanding returns the requests in flight, in sector order.
func (p *Planner) Outstanding() []Request {
	out := make([]Request, len(p.inflight))
	for i, o := range p.inflight {
		out[i] = Request{Sector: o.start * SectorsPerBit, Size: o.size}
	}
	return out
}

// Overlaps reports whether a request in flight covers any part of the
// length bytes at startByte. The engine uses it to hold back an
// application write until the resync data for the same blocks is written,
// as DRBD does, so that old resync data never lands on newer data.
func (p *Planner) Overlaps(startByte, length uint64) bool {
	if length == 0 {
		return false
	}
	first := startByte / BlockSize
	end := uint64(math.MaxUint64)
	if length <= math.MaxUint64-startByte {
		end = (startByte + length + BlockSize - 1) / BlockSize
	}
	i := p.inflightAfterEnd(first)
	return i < len(p.inflight) && p.inflight[i].start < end
}

// inflightIndex returns the index of the request starting at bit b.
func (p *Planner) inflightIndex(b uint64) (int, bool) {
	i := sort.Search(len(p.inflight), func(i int) bool { return p.inflight[i].start >= b })
	return i, i < len(p.inflight) && p.inflight[i].start == b
}

// inflightAfter returns the index of the first request starting after b.
func (p *Planner) inflightAfter(b uint64) int {
	return sort.Search(len(p.inflight), func(i int) bool { return p.inflight[i].start > b })
}

// inflightAfterEnd returns the index of the first request ending after b.
func (p *Planner) inflightAfterEnd(b uint64) int {
	return sort.Search(len(p.inflight), func(i int) bool { return p.inflight[i].end() > b })
}

// inflightAt returns the request covering bit b, or nil.
func (p *Planner) inflightAt(b uint64) *outstanding {
	i := p.inflightAfterEnd(b)
	if i < len(p.inflight) && p.inflight[i].start <= b {
		return p.inflight[i]
	}
	return nil
}

func (p *Planner) insertInflight(o *outstanding) {
	i := p.inflightAfter(o.start)
	p.inflight = append(p.inflight, nil)
	copy(p.inflight[i+1:], p.inflight[i:])
	p.inflight[i] = o
	p.inflightBits += o.n
}

// failedAfter returns the index of the first failed extent starting after b.
func (p *Planner) failedAfter(b uint64) int {
	return sort.Search(len(p.failed), func(i int) bool { return p.failed[i].start > b })
}

// failedAt returns the failed extent covering bit b.
func (p *Planner) failedAt(b uint64) (extent, bool) {
	i := sort.Search(len(p.failed), func(i int) bool { return p.failed[i].end > b })
	if i < len(p.failed) && p.failed[i].start <= b {
		return p.failed[i], true
	}
	return extent{}, false
}

// addFailed adds [s, e) to the failed extents, which it keeps merged.
func (p *Planner) addFailed(s, e uint64) {
	// First extent that ends at or after s and last that starts at or
	// before e touch the new one; they all merge into one.
	i := sort.Search(len(p.failed), func(i int) bool { return p.failed[i].end >= s })
	j := i
	ns, ne := s, e
	var covered uint64
	for j < len(p.failed) && p.failed[j].start <= e {
		ns = min(ns, p.failed[j].start)
		ne = max(ne, p.failed[j].end)
		covered += p.failed[j].end - p.failed[j].start
		j++
	}
	p.failedBits += (ne - ns) - covered
	merged := extent{ns, ne}
	p.failed = append(p.failed[:i], append([]extent{merged}, p.failed[j:]...)...)
}

// removeFailed removes [s, e) from the failed extents.
func (p *Planner) removeFailed(s, e uint64) {
	if len(p.failed) == 0 {
		return
	}
	i := sort.Search(len(p.failed), func(i int) bool { return p.failed[i].end > s })
	var keep []extent
	j := i
	for j < len(p.failed) && p.failed[j].start < e {
		f := p.failed[j]
		p.failedBits -= f.end - f.start
		if f.start < s {
			keep = append(keep, extent{f.start, s})
			p.failedBits += s - f.start
		}
		if f.end > e {
			keep = append(keep, extent{e, f.end})
			p.failedBits += f.end - e
		}
		j++
	}
	if j == i {
		return
	}
	p.failed = append(p.failed[:i], append(keep, p.failed[j:]...)...)
}
