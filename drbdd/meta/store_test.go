package meta

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
)

func newStore(t *testing.T, devBytes int64, alExtents int) (*memIO, Layout) {
	t.Helper()
	l, err := InternalLayout(devBytes, alExtents)
	if err != nil {
		t.Fatal(err)
	}
	m := newMemIO(l.MetaDevBytes)
	if err := Create(m, l, NewUUIDs(), 0xdead); err != nil {
		t.Fatal(err)
	}
	return m, l
}

func TestStoreCreateOpenClose(t *testing.T) {
	m, l := newStore(t, 1<<30, ALExtentsDefault)
	s, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	rec := s.Recovery()
	if !rec.Clean || rec.ALLost || rec.BitsSet != 0 || s.Bitmap().Count() != 0 {
		t.Fatalf("fresh open: %+v", rec)
	}
	sb := s.Superblock()
	if sb.UUIDs != NewUUIDs() || sb.DeviceUUID != 0xdead || sb.Flags&MDFConsistent != 0 || sb.Flags&MDFALClean != 0 {
		t.Fatalf("superblock %+v", sb)
	}
	u := sb.UUIDs
	u.Promote(0x1234000, false, true)
	if err := s.SetUUIDs(u); err != nil {
		t.Fatal(err)
	}
	if err := s.ALBegin([]uint32{0, 1}); err != nil {
		t.Fatal(err)
	}
	s.Bitmap().Set(0, 3*4096)
	if err := s.Close(); !errors.Is(err, ErrALBusy) {
		t.Fatalf("close while in use: %v", err)
	}
	if err := s.ALComplete([]uint32{0, 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	if s2.UUIDs() != u || s2.Bitmap().Count() != 3 || !s2.Recovery().Clean || len(s2.Recovery().ALExtents) != 0 {
		t.Fatalf("reopen: %v count %d %+v", s2.UUIDs(), s2.Bitmap().Count(), s2.Recovery())
	}
	// Unclean: extents in the log get applied.
	if err := s2.ALBegin([]uint32{5}); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	if rec := s3.Recovery(); rec.Clean || !slices.Equal(rec.ALExtents, []uint32{5}) || rec.BitsSet != BitsPerALExtent {
		t.Fatalf("unclean open: %+v", rec)
	}
	if s3.Bitmap().Count() != 3+BitsPerALExtent {
		t.Fatalf("count %d", s3.Bitmap().Count())
	}
	// A different layout is refused.
	other, _ := InternalLayout(1<<30, ALExtentsMin)
	if _, err := Open(m, other); err == nil {
		t.Fatal("layout mismatch accepted")
	}
}

func TestStoreFullSyncFlag(t *testing.T) {
	m, l := newStore(t, 256<<20, ALExtentsMin)
	s, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAllAndWrite(); err != nil {
		t.Fatal(err)
	}
	if s.Bitmap().Count() != l.BitmapBits() || s.Superblock().Flags&MDFFullSync != 0 {
		t.Fatal("SetAllAndWrite")
	}
	if err := s.ClearAllAndWrite(); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of set-and-write leaves MDF_FULL_SYNC set:
	// Open finishes the job.
	if err := s.Update(func(sb *Superblock) { sb.Flags |= MDFFullSync }); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	if !s2.Recovery().FullSync || s2.Bitmap().Count() != l.BitmapBits() || s2.Superblock().Flags&MDFFullSync != 0 {
		t.Fatalf("full sync flag: %+v", s2.Recovery())
	}
}

func TestStoreWrongLaSize(t *testing.T) {
	m, l := newStore(t, 64<<20, ALExtentsMin)
	s, err := Open(m, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(sb *Superblock) { sb.LaSizeSectors = l.DataSectors() + 1 }); err == nil {
		t.Fatal("la_size beyond the data area accepted")
	}
	if err := s.Update(func(sb *Superblock) { sb.Layout.ALExtents++ }); err == nil {
		t.Fatal("layout change accepted")
	}
}

// crashWorld is the model of one seeded crash test: what the workload did,
// and so what recovery owes it.
type crashWorld struct {
	t   *testing.T
	rng *rand.Rand
	m   *memIO
	l   Layout
	s   *Store
	// mustCover holds blocks written while the peer was unreachable and not
	// resynced since: they may differ and their bits must survive.
	mustCover map[int64]bool
	// inflight are writes that passed ALBegin and have not completed:
	// their data may or may not have reached either disk.
	inflight []inflightWrite
	// connected says whether writes also reach the peer.
	connected bool
	// sb is the last superblock WriteSuperblock returned for, and
	// attempted the one being written when the power failed.
	sb, attempted *Superblock
	hot           []uint32 // a working set of extents
}

type inflightWrite struct {
	start, end int64
	extents    []uint32
	connected  bool
}

func (w *crashWorld) blocks(start, end int64) (int64, int64) {
	return start / BMBlockSize, (end + BMBlockSize - 1) / BMBlockSize
}

// step performs one random operation; it returns false once the device
// lost power.
func (w *crashWorld) step() bool {
	s, rng := w.s, w.rng
	dead := func(err error) bool {
		if err == nil {
			return false
		}
		if !errors.Is(err, errPowerLoss) {
			w.t.Fatalf("unexpected error: %v", err)
		}
		return true
	}
	switch op := rng.IntN(100); {
	case op < 45: // start a write
		if len(w.inflight) >= 12 {
			return w.complete()
		}
		e := w.hot[rng.IntN(len(w.hot))]
		if rng.IntN(5) == 0 {
			e = uint32(rng.Int64N(w.l.DataBytes / ALExtentSize))
		}
		start := int64(e)*ALExtentSize + rng.Int64N(ALExtentSize)
		end := min(start+1+rng.Int64N(64<<10), w.l.DataBytes)
		if start >= end {
			return true
		}
		ext := ExtentsFor(start, end)
		err := s.ALBegin(ext)
		if errors.Is(err, ErrALBusy) {
			return w.complete()
		}
		if dead(err) {
			return false
		}
		w.inflight = append(w.inflight, inflightWrite{start, end, ext, w.connected})
		if !w.connected {
			// The peer will not get it: out of sync from the start.
			s.Bitmap().Set(start, end)
			a, b := w.blocks(start, end)
			for i := a; i < b; i++ {
				w.mustCover[i] = true
			}
		}
	case op < 75:
		return w.complete()
	case op < 82: // the connection drops or comes back
		if w.connected {
			// In-flight replicated writes may not have reached the peer.
			for i := range w.inflight {
				iw := &w.inflight[i]
				if iw.connected {
					s.Bitmap().Set(iw.start, iw.end)
					a, b := w.blocks(iw.start, iw.end)
					for j := a; j < b; j++ {
						w.mustCover[j] = true
					}
					iw.connected = false
				}
			}
		}
		w.connected = !w.connected
	case op < 90: // resync one out-of-sync block not under an in-flight write
		if !w.connected {
			return true
		}
		bit := s.Bitmap().NextSet(rng.Int64N(s.Bitmap().Len()))
		if bit < 0 {
			return true
		}
		for _, iw := range w.inflight {
			if a, b := w.blocks(iw.start, iw.end); bit >= a && bit < b {
				return true
			}
		}
		s.Bitmap().ClearBits(bit, bit+1)
		delete(w.mustCover, bit)
	case op < 95:
		if dead(s.FlushBitmap()) {
			return false
		}
	case op < 98: // a superblock update
		sb := s.Superblock()
		sb.UUIDs.NewCurrent(rng.Uint64(), rng.IntN(2) == 0)
		sb.Flags ^= MDFConsistent
		next := sb
		next.Seq = s.Superblock().Seq + 1
		w.attempted = &next
		if dead(s.WriteSuperblock(sb)) {
			return false
		}
		cur := s.Superblock()
		w.sb, w.attempted = &cur, nil
	default: // a clean close and reopen, when idle
		if len(w.inflight) > 0 {
			return w.complete()
		}
		if dead(s.Close()) {
			return false
		}
		if !w.reopen(w.m) {
			return false
		}
	}
	return true
}

func (w *crashWorld) complete() bool {
	if len(w.inflight) == 0 {
		return true
	}
	i := w.rng.IntN(len(w.inflight))
	iw := w.inflight[i]
	w.inflight = slices.Delete(w.inflight, i, i+1)
	if err := w.s.ALComplete(iw.extents); err != nil {
		w.t.Fatal(err)
	}
	return true
}

// reopen opens the store on m; false if the power failed during Open.
func (w *crashWorld) reopen(m *memIO) bool {
	s, err := Open(m, w.l)
	if err != nil {
		if errors.Is(err, errPowerLoss) {
			return false
		}
		w.t.Fatalf("open: %v", err)
	}
	w.s, w.m = s, m
	cur := s.Superblock()
	w.sb, w.attempted = &cur, nil
	return true
}

// verify checks the invariants on the metadata that survived a crash.
func (w *crashWorld) verify(m *memIO) {
	t := w.t
	sb, _, err := ReadSuperblock(m, w.l.SuperblockOffsets)
	if err != nil {
		t.Fatalf("superblock unreadable after crash: %v", err)
	}
	switch {
	case w.sb != nil && sb.UUIDs == w.sb.UUIDs && sb.Flags&^(MDFALClean|MDFFullSync) == w.sb.Flags&^(MDFALClean|MDFFullSync):
	case w.attempted != nil && sb.UUIDs == w.attempted.UUIDs:
	default:
		t.Fatalf("superblock after crash %v, want %v or the attempted %v", sb.UUIDs, w.sb, w.attempted)
	}
	m.failAfter = -1
	if !w.reopen(m) {
		t.Fatal("power loss without a crash point")
	}
	bm := w.s.Bitmap()
	for bit := range w.mustCover {
		if !bm.Test(bit) {
			t.Fatalf("block %d was written while disconnected but is in sync after recovery (%+v)", bit, w.s.Recovery())
		}
	}
	for _, iw := range w.inflight {
		a, b := w.blocks(iw.start, iw.end)
		for bit := a; bit < b; bit++ {
			if !bm.Test(bit) {
				t.Fatalf("block %d had a write in flight but is in sync after recovery (%+v)", bit, w.s.Recovery())
			}
		}
	}
	// The recovered bits stay the obligation of the next round.
	for bit, e := range bm.Runs(0, bm.Len()) {
		for ; bit < e; bit++ {
			w.mustCover[bit] = true
		}
	}
	w.inflight = nil
	w.connected = false
}

func runCrashSeed(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	dev := int64(256<<20) + rng.Int64N(1<<30)
	al := ALExtentsMin + rng.IntN(12)
	if rng.IntN(4) == 0 {
		al = ALExtentsDefault
	}
	m, l := newStore(t, dev, al)
	w := &crashWorld{t: t, rng: rng, l: l, mustCover: map[int64]bool{}}
	for range 3 + rng.IntN(20) {
		w.hot = append(w.hot, uint32(rng.Int64N(l.DataBytes/ALExtentSize)))
	}
	if !w.reopen(m) {
		t.Fatal("first open failed")
	}
	for round := range 4 {
		// Power fails after a random number of I/O operations.
		w.m.failAfter = rng.IntN(400)
		for steps := 0; steps < 5000; steps++ {
			if !w.step() {
				break
			}
		}
		crashed := w.m.crashImage(rng)
		w.verify(crashed)
		_ = round
	}
}

// TestCrashRecovery runs seeded crash simulations: random writes with the
// peer connected or not, resync clears, bitmap flushes, superblock
// updates and clean restarts, with power lost at a random I/O and unsynced
// writes dropped or torn at 512-byte granularity. After each crash the
// superblock must be readable and the recovered bitmap must cover every
// block that might differ. Set META_CRASH_SEEDS=n for more seeds, or
// META_CRASH_SEED=s to replay one.
func TestCrashRecovery(t *testing.T) {
	if s := os.Getenv("META_CRASH_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		runCrashSeed(t, seed)
		return
	}
	n := 150
	if testing.Short() {
		n = 20
	}
	if s := os.Getenv("META_CRASH_SEEDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for seed := range uint64(n) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { runCrashSeed(t, seed) })
	}
}

// A superblock write torn at every possible sector mix leaves a readable
// superblock: either the old or the new one.
func TestSuperblockWriteTornEverywhere(t *testing.T) {
	for mask := range 256 {
		m, l := newStore(t, 64<<20, ALExtentsMin)
		s, err := Open(m, l)
		if err != nil {
			t.Fatal(err)
		}
		old := s.Superblock()
		sb := old
		sb.UUIDs.Current = 0x7777_0000
		m.failAfter = 1 // the write happens, the sync does not
		if err := s.WriteSuperblock(sb); !errors.Is(err, errPowerLoss) {
			t.Fatalf("got %v", err)
		}
		// Tear the pending write by the mask.
		img := newMemIO(m.size)
		for k, v := range m.durable {
			img.durable[k], img.cur[k] = v, v
		}
		w := m.pending[0]
		for i := range 8 {
			if mask&(1<<i) != 0 {
				k := w.off/SectorSize + int64(i)
				img.cur[k] = w.data[i*SectorSize : (i+1)*SectorSize]
			}
		}
		got, _, err := ReadSuperblock(img, l.SuperblockOffsets)
		if err != nil {
			t.Fatalf("mask %08b: %v", mask, err)
		}
		if got.UUIDs != old.UUIDs && got.UUIDs != sb.UUIDs {
			t.Fatalf("mask %08b: got %v", mask, got.UUIDs)
		}
	}
}
