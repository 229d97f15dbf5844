package resync

import (
	"testing"
)

// fuzzInput hands out bytes of a fuzz input, then zeros.
type fuzzInput struct {
	data []byte
	pos  int
}

func (in *fuzzInput) more() bool { return in.pos < len(in.data) }

func (in *fuzzInput) byte() byte {
	if in.pos >= len(in.data) {
		return 0
	}
	b := in.data[in.pos]
	in.pos++
	return b
}

func (in *fuzzInput) uint16() uint16 { return uint16(in.byte()) | uint16(in.byte())<<8 }

// plannerModel runs a Planner against a bitmap and checks its invariants
// after every step.
type plannerModel struct {
	t         *testing.T
	p         *Planner
	bm        *memBitmap
	maxBlocks uint64
	maxIn     int
	sectors   uint64
	busy      map[uint64]bool
	inflight  map[uint64]Request // by first bit
	owner     map[uint64]uint64  // block -> first bit of its request in flight
	initial   map[uint64]bool
	requested map[uint64]int
	exempt    map[uint64]bool // rewritten, replicated or canceled: may be requested again, or never
}

func (m *plannerModel) isBusy(b, n uint64) bool {
	for i := b; i < b+n; i++ {
		if m.busy[i] {
			return true
		}
	}
	return false
}

func (m *plannerModel) next(budget int) {
	rs := m.p.Next(budget)
	var total uint64
	for _, r := range rs {
		b, n := r.Bit(), r.Blocks()
		total += n
		if r.Sector%SectorsPerBit != 0 || n == 0 || n > m.maxBlocks {
			m.t.Fatalf("bad request %+v", r)
		}
		if b/ExtentBits != (b+n-1)/ExtentBits {
			m.t.Fatalf("request %+v crosses a resync extent", r)
		}
		wantSize := n * BlockSize
		if end := (b + n) * SectorsPerBit; end > m.sectors {
			wantSize -= (end - m.sectors) * SectorSize
		}
		if uint64(r.Size) != wantSize || b+n > m.bm.Bits() {
			m.t.Fatalf("request %+v beyond the device of %d sectors", r, m.sectors)
		}
		for i := b; i < b+n; i++ {
			if !m.bm.Test(i) {
				m.t.Fatalf("request %+v covers clean block %d", r, i)
			}
			if m.busy[i] {
				m.t.Fatalf("request %+v covers busy block %d", r, i)
			}
			if o, ok := m.owner[i]; ok {
				m.t.Fatalf("request %+v covers block %d already in flight in request at bit %d", r, i, o)
			}
			m.owner[i] = b
			m.requested[i]++
			if m.requested[i] > 1 && !m.exempt[i] {
				m.t.Fatalf("block %d requested twice", i)
			}
		}
		m.inflight[b] = r
	}
	if total > uint64(max(budget, 0)) {
		m.t.Fatalf("Next(%d) requested %d blocks", budget, total)
	}
	m.check()
}

func (m *plannerModel) complete(k int, o Outcome) {
	if len(m.inflight) == 0 {
		return
	}
	outs := m.p.Outstanding()
	r := outs[k%len(outs)]
	if err := m.p.Complete(r.Sector, r.Size, o); err != nil {
		m.t.Fatal(err)
	}
	if err := m.p.Complete(r.Sector, r.Size, o); err == nil {
		m.t.Fatal("duplicate reply accepted")
	}
	b := r.Bit()
	delete(m.inflight, b)
	for i := b; i < b+r.Blocks(); i++ {
		delete(m.owner, i)
		if o == Canceled {
			m.exempt[i] = true
		}
	}
	m.check()
}

func (m *plannerModel) check() {
	pr := m.p.Progress()
	if pr.InFlight != len(m.inflight) || pr.InFlight > m.maxIn {
		m.t.Fatalf("%d requests in flight, model %d, bound %d", pr.InFlight, len(m.inflight), m.maxIn)
	}
	if pr.InFlightBits != uint64(len(m.owner)) {
		m.t.Fatalf("%d bits in flight, model %d", pr.InFlightBits, len(m.owner))
	}
	if pr.Failed > m.bm.Weight() {
		m.t.Fatalf("%d failed bits but only %d set", pr.Failed, m.bm.Weight())
	}
}

// FuzzPlanner drives a Planner with a random bitmap and random events
// (requests, replies, application writes, re-dirtied blocks, busy
// blocks) and checks that it never requests a clean, busy or already
// requested block, never exceeds its budget or in-flight bound, and in
// the end requests every dirty block exactly once unless the block was
// rewritten, leaving only failed blocks set.
func FuzzPlanner(f *testing.F) {
	f.Add([]byte{64, 0, 3, 4, 0, 0, 20, 5, 8, 1, 1, 3, 0, 0, 200, 3, 1})
	f.Add([]byte{0, 16, 31, 2, 3, 250, 40, 7, 100, 0, 30, 2, 3, 2, 5, 1, 2, 6, 9, 0, 64, 3, 3, 4, 1, 0, 7})
	f.Fuzz(runPlannerFuzz)
}

// runPlannerFuzz is FuzzPlanner's body.
func runPlannerFuzz(t *testing.T, data []byte) {
	in := &fuzzInput{data: data}
	bits := 1 + uint64(in.uint16())%9000
	maxSize := (1 + uint32(in.byte())%64) * BlockSize
	maxIn := 1 + int(in.byte())%16
	sectors := bits*SectorsPerBit - uint64(in.byte())%SectorsPerBit
	bm := newMemBitmap(bits)
	// Runs of set bits: (gap, length) pairs until a zero pair.
	for pos := uint64(0); pos < bits; {
		gap, n := uint64(in.byte()), uint64(in.byte())
		if gap == 0 && n == 0 {
			break
		}
		pos += gap
		bm.Set(pos, n)
		pos += n
	}
	m := &plannerModel{
		t: t, bm: bm, maxBlocks: uint64(maxSize / BlockSize), maxIn: maxIn, sectors: sectors,
		busy: map[uint64]bool{}, inflight: map[uint64]Request{}, owner: map[uint64]uint64{},
		initial: map[uint64]bool{}, requested: map[uint64]int{}, exempt: map[uint64]bool{},
	}
	for b, ok := bm.NextSet(0); ok; b, ok = bm.NextSet(b + 1) {
		m.initial[b] = true
	}
	p, err := NewPlanner(bm, PlannerConfig{MaxRequestSize: maxSize, MaxInFlight: maxIn, DeviceSectors: sectors, Busy: m.isBusy})
	if err != nil {
		t.Fatal(err)
	}
	m.p = p
	if p.Progress().Total != bm.Weight() {
		t.Fatalf("total %d, weight %d", p.Progress().Total, bm.Weight())
	}

	for steps := 0; in.more() && steps < 2000; steps++ {
		switch op := in.byte(); op % 8 {
		case 0, 1, 2:
			m.next(int(in.byte()) % 80)
		case 3:
			k, o := int(in.byte()), Outcome(in.byte()%8)
			if o > Canceled {
				o = Synced
			}
			m.complete(k, o)
		case 4:
			// A replicated application write. The engine holds
			// writes back while resync data for the same blocks
			// is in flight.
			start := uint64(in.uint16()) * 512 % (sectors * SectorSize)
			length := uint64(in.uint16()) * 64
			if p.Overlaps(start, length) {
				break
			}
			first, end := p.coveredBlocks(start, length)
			for b := first; b < end; b++ {
				if bm.Test(b) {
					m.exempt[b] = true
				}
			}
			p.ApplicationWrote(start, length)
			for b := first; b < end; b++ {
				if bm.Test(b) {
					t.Fatalf("block %d still set after a write covering it", b)
				}
			}
		case 5:
			// A write the peer missed: its blocks are dirty again.
			start := uint64(in.uint16()) * 512 % (sectors * SectorSize)
			length := 1 + uint64(in.byte())*512
			first := start / BlockSize
			end := min(bits, (start+length+BlockSize-1)/BlockSize)
			for b := first; b < end; b++ {
				m.exempt[b] = true
			}
			bm.Set(first, end-first)
			p.Dirtied(start, length)
		case 6:
			b := uint64(in.uint16()) % bits
			m.busy[b] = !m.busy[b]
		case 7:
			for len(m.inflight) > 0 {
				m.complete(0, Synced)
			}
		}
		m.check()
	}

	// Drain: the application goes quiet and every reply succeeds.
	clear(m.busy)
	for rounds := 0; !p.Finished(); rounds++ {
		if rounds > int(bits)+100 {
			t.Fatalf("not finished after %d rounds: %+v bitmap %s", rounds, p.Progress(), bm)
		}
		m.next(1 << 20)
		for len(m.inflight) > 0 {
			m.complete(0, Synced)
		}
	}
	pr := p.Progress()
	if pr.Left != 0 || pr.Failed != bm.Weight() || pr.InFlight != 0 {
		t.Fatalf("finished with %+v, weight %d", pr, bm.Weight())
	}
	for b := range m.initial {
		if !m.exempt[b] && m.requested[b] != 1 {
			t.Fatalf("dirty block %d requested %d times", b, m.requested[b])
		}
	}
	if p.Next(1<<20) != nil {
		t.Fatal("requests after finishing")
	}
}
