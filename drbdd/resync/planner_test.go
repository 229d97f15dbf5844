package resync

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// blocks renders requests as "bit+n" for compact comparisons.
func blocks(rs []Request) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%d+%d", r.Bit(), r.Blocks()))
	}
	return strings.Join(s, " ")
}

func mustPlanner(t *testing.T, bm Bitmap, cfg PlannerConfig) *Planner {
	t.Helper()
	p, err := NewPlanner(bm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// completeAll answers every outstanding request with o.
func completeAll(t *testing.T, p *Planner, o Outcome) {
	t.Helper()
	for _, r := range p.Outstanding() {
		if err := p.Complete(r.Sector, r.Size, o); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPlannerCoalescing(t *testing.T) {
	tests := []struct {
		name    string
		bitmap  *memBitmap
		maxSize uint32
		budget  int
		want    string
	}{
		{"empty", bitmapOf("........"), 0, 100, ""},
		{"single", bitmapOf("...X...."), 0, 100, "3+1"},
		{"aligned run", bitmapOf("XXXXXXXXXX......"), 0, 100, "0+10"},
		// A request grows only while its start is aligned to the power
		// of two its size reached: 3 is odd, 4 is not a multiple of 8.
		{"unaligned run", bitmapOf("...XXXXXXXXXX..."), 0, 100, "3+1 4+4 8+5"},
		{"two runs", bitmapOf("XX..XXXX..X"), 0, 100, "0+2 4+4 10+1"},
		{"max size", func() *memBitmap { m := newMemBitmap(80); m.Set(0, 70); return m }(), 0, 100, "0+32 32+32 64+6"},
		{"max size 16K", bitmapOf("XXXXXXXXXX"), 16 << 10, 100, "0+4 4+4 8+2"},
		{"max size 4K", bitmapOf("XXX"), 4 << 10, 100, "0+1 1+1 2+1"},
		{"budget", bitmapOf("XXXXXXXXXX"), 0, 5, "0+5"},
		{"budget splits", bitmapOf("X.XXXXXXXX"), 0, 4, "0+1 2+2 4+1"},
		{"zero budget", bitmapOf("XXXX"), 0, 0, ""},
		{"extent boundary", func() *memBitmap { m := newMemBitmap(2 * ExtentBits); m.Set(ExtentBits-3, 6); return m }(), 0, 100, "4093+1 4094+2 4096+3"},
		{"last bit", bitmapOf(".......X"), 0, 100, "7+1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPlanner(t, tt.bitmap, PlannerConfig{MaxRequestSize: tt.maxSize})
			got := p.Next(tt.budget)
			if blocks(got) != tt.want {
				t.Errorf("Next(%d) = %q, want %q", tt.budget, blocks(got), tt.want)
			}
			for _, r := range got {
				if r.Sector%SectorsPerBit != 0 || r.Size%BlockSize != 0 {
					t.Errorf("request %+v not block aligned", r)
				}
				if r.Bit()/ExtentBits != (r.Bit()+r.Blocks()-1)/ExtentBits {
					t.Errorf("request %+v crosses a resync extent", r)
				}
			}
		})
	}
}

func TestPlannerWalksOnce(t *testing.T) {
	bm := newMemBitmap(1000)
	for i := uint64(0); i < 1000; i += 3 {
		bm.Set(i, 2)
	}
	total := bm.Weight()
	p := mustPlanner(t, bm, PlannerConfig{})
	seen := make(map[uint64]int)
	for i := 0; i < 1000 && !p.Finished(); i++ {
		rs := p.Next(7)
		for _, r := range rs {
			for b := r.Bit(); b < r.Bit()+r.Blocks(); b++ {
				if !bm.Test(b) {
					t.Fatalf("requested clean block %d", b)
				}
				seen[b]++
			}
		}
		completeAll(t, p, Synced)
	}
	if !p.Finished() {
		t.Fatal("not finished")
	}
	if uint64(len(seen)) != total {
		t.Errorf("requested %d blocks, want %d", len(seen), total)
	}
	for b, n := range seen {
		if n != 1 {
			t.Errorf("block %d requested %d times", b, n)
		}
	}
	pr := p.Progress()
	if pr.Total != total || pr.Left != 0 || pr.Done != total || pr.Passes != 1 || pr.Cursor != 1000 {
		t.Errorf("progress = %+v", pr)
	}
}

func TestPlannerInFlightBound(t *testing.T) {
	bm := bitmapOf("X.X.X.X.X.X.X.X.")
	p := mustPlanner(t, bm, PlannerConfig{MaxInFlight: 3})
	if got := blocks(p.Next(100)); got != "0+1 2+1 4+1" {
		t.Fatalf("first Next = %q", got)
	}
	if got := p.Next(100); got != nil {
		t.Fatalf("Next at the bound = %q", blocks(got))
	}
	if err := p.Complete(2*SectorsPerBit, BlockSize, Synced); err != nil {
		t.Fatal(err)
	}
	if got := blocks(p.Next(100)); got != "6+1" {
		t.Fatalf("Next after one reply = %q", got)
	}
	pr := p.Progress()
	if pr.InFlight != 3 || pr.InFlightBits != 3 || pr.Left != 7 || pr.Done != 1 {
		t.Errorf("progress = %+v", pr)
	}
}

func TestPlannerBusy(t *testing.T) {
	bm := bitmapOf("XXXXXX..")
	busy := map[uint64]bool{2: true}
	p := mustPlanner(t, bm, PlannerConfig{Busy: func(b, n uint64) bool {
		for i := b; i < b+n; i++ {
			if busy[i] {
				return true
			}
		}
		return false
	}})
	if got := blocks(p.Next(100)); got != "0+2 3+1 4+2" {
		t.Fatalf("Next with block 2 busy = %q", got)
	}
	completeAll(t, p, Synced)
	if p.Finished() {
		t.Fatal("finished with the busy block still dirty")
	}
	// Still busy: skipped again, nothing to send.
	if got := p.Next(100); got != nil {
		t.Fatalf("Next while still busy = %q", blocks(got))
	}
	delete(busy, 2)
	if got := blocks(p.Next(100)); got != "2+1" {
		t.Fatalf("Next after the write = %q", got)
	}
	completeAll(t, p, Synced)
	if !p.Finished() || bm.Weight() != 0 {
		t.Fatalf("finished=%v bitmap=%s", p.Finished(), bm)
	}
}

func TestPlannerBusyThenReplicated(t *testing.T) {
	bm := bitmapOf("XXXX")
	busy := true
	p := mustPlanner(t, bm, PlannerConfig{Busy: func(b, n uint64) bool { return busy && b <= 1 && 1 < b+n }})
	if got := blocks(p.Next(100)); got != "0+1 2+2" {
		t.Fatalf("Next = %q", got)
	}
	completeAll(t, p, Synced)
	// The application write that kept block 1 busy replicated it.
	busy = false
	if n := p.ApplicationWrote(4096, 4096); n != 1 {
		t.Fatalf("ApplicationWrote cleared %d bits, want 1", n)
	}
	if got := p.Next(100); got != nil {
		t.Fatalf("Next re-copies a replicated block: %q", blocks(got))
	}
	if !p.Finished() {
		t.Fatal("not finished")
	}
}

func TestPlannerApplicationWrote(t *testing.T) {
	tests := []struct {
		name        string
		start, len  uint64
		wantCleared uint64
		wantBitmap  string
	}{
		{"whole blocks", 2 * 4096, 3 * 4096, 3, "XX...XXXXX"},
		{"unaligned start", 2*4096 + 512, 3 * 4096, 2, "XXX..XXXXX"},
		{"unaligned both", 2*4096 + 1, 4096, 0, "XXXXXXXXXX"},
		{"covers one of two", 4096 - 512, 2 * 4096, 1, "X.XXXXXXXX"},
		{"zero length", 0, 0, 0, "XXXXXXXXXX"},
		{"past end", 10 * 4096, 4096, 0, "XXXXXXXXXX"},
		{"to the end", 8 * 4096, 1 << 40, 2, "XXXXXXXX.."},
		{"huge length", 4096, ^uint64(0), 9, "X........."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bm := bitmapOf("XXXXXXXXXX")
			p := mustPlanner(t, bm, PlannerConfig{})
			if n := p.ApplicationWrote(tt.start, tt.len); n != tt.wantCleared {
				t.Errorf("cleared %d, want %d", n, tt.wantCleared)
			}
			if bm.String() != tt.wantBitmap {
				t.Errorf("bitmap %s, want %s", bm, tt.wantBitmap)
			}
		})
	}
}

func TestPlannerApplicationWroteAheadOfCursor(t *testing.T) {
	bm := newMemBitmap(100)
	bm.Set(0, 100)
	p := mustPlanner(t, bm, PlannerConfig{})
	if got := blocks(p.Next(8)); got != "0+8" {
		t.Fatalf("Next = %q", got)
	}
	// On a connected resync the application's writes reach both disks;
	// blocks 50..59 need no resync any more.
	p.ApplicationWrote(50*4096, 10*4096)
	for !p.Finished() {
		for _, r := range p.Next(16) {
			if r.Bit() < 60 && r.Bit()+r.Blocks() > 50 {
				t.Fatalf("requested replicated blocks: %+v", r)
			}
		}
		completeAll(t, p, Synced)
	}
	pr := p.Progress()
	if pr.Total != 100 || pr.Left != 0 || pr.Done != 100 {
		t.Errorf("progress = %+v", pr)
	}
}

func TestPlannerOddlySizedDevice(t *testing.T) {
	bm := bitmapOf("........XX")
	p := mustPlanner(t, bm, PlannerConfig{DeviceSectors: 9*8 + 3})
	got := p.Next(100)
	want := []Request{{Sector: 64, Size: 4096 + 3*512}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Next = %v, want %v", got, want)
	}
	if err := p.Complete(64, 4096, Synced); !errors.Is(err, ErrUnknownRequest) {
		t.Fatalf("Complete with wrong size: %v", err)
	}
	completeAll(t, p, Synced)
	bm.Set(9, 1)
	// A write to the device's end covers its short last block.
	if n := p.ApplicationWrote(9*4096, 3*512); n != 1 {
		t.Fatalf("ApplicationWrote to the end cleared %d", n)
	}
	if _, err := NewPlanner(bm, PlannerConfig{DeviceSectors: 9 * 8}); err == nil {
		t.Error("device smaller than the bitmap accepted")
	}
	if _, err := NewPlanner(bm, PlannerConfig{DeviceSectors: 10*8 + 1}); err == nil {
		t.Error("device larger than the bitmap accepted")
	}
}

func TestPlannerRewriteBehindCursor(t *testing.T) {
	bm := newMemBitmap(64)
	bm.Set(0, 16)
	p := mustPlanner(t, bm, PlannerConfig{})
	if got := blocks(p.Next(100)); got != "0+16" {
		t.Fatalf("Next = %q", got)
	}
	completeAll(t, p, Synced)
	// A write failed to reach the peer: block 4 is out of sync again.
	bm.Set(4, 1)
	p.Dirtied(4*4096+100, 10)
	if p.Finished() {
		t.Fatal("finished with a dirty block")
	}
	if got := blocks(p.Next(100)); got != "4+1" {
		t.Fatalf("second pass = %q", got)
	}
	completeAll(t, p, Synced)
	if !p.Finished() || p.Progress().Passes != 2 {
		t.Fatalf("finished=%v progress=%+v", p.Finished(), p.Progress())
	}
}

func TestPlannerDirtiedWhileInFlight(t *testing.T) {
	bm := newMemBitmap(64)
	bm.Set(0, 16)
	p := mustPlanner(t, bm, PlannerConfig{})
	if got := blocks(p.Next(100)); got != "0+16" {
		t.Fatalf("Next = %q", got)
	}
	// Block 3 is written (and missed by the peer) while its resync
	// data is on the way: the reply must not clear it.
	p.Dirtied(3*4096, 4096)
	completeAll(t, p, Synced)
	if bm.String()[:16] != "...X............" {
		t.Fatalf("bitmap after reply = %s", bm)
	}
	if got := blocks(p.Next(100)); got != "3+1" {
		t.Fatalf("Next = %q", got)
	}
}

func TestPlannerSetWithoutNotice(t *testing.T) {
	bm := bitmapOf("XXXX....")
	p := mustPlanner(t, bm, PlannerConfig{})
	p.Next(100)
	completeAll(t, p, Synced)
	bm.Set(1, 1) // nobody called Dirtied
	if p.Finished() {
		t.Fatal("finished with a dirty block")
	}
	if got := blocks(p.Next(100)); got != "1+1" {
		t.Fatalf("Next = %q", got)
	}
}

func TestPlannerFailedAndCanceled(t *testing.T) {
	bm := bitmapOf("XXXX..XX")
	p := mustPlanner(t, bm, PlannerConfig{})
	if got := blocks(p.Next(100)); got != "0+4 6+2" {
		t.Fatalf("Next = %q", got)
	}
	if err := p.Complete(0, 4*4096, Failed); err != nil {
		t.Fatal(err)
	}
	if err := p.Complete(6*8, 2*4096, Canceled); err != nil {
		t.Fatal(err)
	}
	// Canceled blocks come back; failed ones do not.
	if got := blocks(p.Next(100)); got != "6+2" {
		t.Fatalf("Next after cancel = %q", got)
	}
	completeAll(t, p, Synced)
	if !p.Finished() {
		t.Fatal("not finished")
	}
	pr := p.Progress()
	if pr.Failed != 4 || pr.Left != 0 || pr.Done != 6 {
		t.Errorf("progress = %+v", pr)
	}
	// A replicated application write repairs a failed block.
	p.ApplicationWrote(4096, 4096)
	if pr := p.Progress(); pr.Failed != 3 || bm.String() != "X.XX...." {
		t.Errorf("after write: progress = %+v bitmap %s", pr, bm)
	}
}

func TestPlannerCompleteErrors(t *testing.T) {
	bm := bitmapOf("XX..XX")
	p := mustPlanner(t, bm, PlannerConfig{})
	p.Next(100)
	for _, c := range []struct {
		sector uint64
		size   uint32
	}{{1, 4096}, {8, 4096}, {0, 4096}, {16, 8192}, {1 << 40, 4096}} {
		if err := p.Complete(c.sector, c.size, Synced); !errors.Is(err, ErrUnknownRequest) {
			t.Errorf("Complete(%d, %d) = %v", c.sector, c.size, err)
		}
	}
	if err := p.Complete(0, 8192, Outcome(7)); err == nil {
		t.Error("invalid outcome accepted")
	}
	if err := p.Complete(0, 8192, Synced); err != nil {
		t.Fatal(err)
	}
	if err := p.Complete(0, 8192, Synced); !errors.Is(err, ErrUnknownRequest) {
		t.Errorf("duplicate reply = %v", err)
	}
	if bm.String() != "....XX" {
		t.Errorf("bitmap %s", bm)
	}
}

func TestPlannerOverlaps(t *testing.T) {
	bm := bitmapOf("..XX....XX")
	p := mustPlanner(t, bm, PlannerConfig{})
	p.Next(100)
	for _, c := range []struct {
		start, len uint64
		want       bool
	}{
		{0, 8192, false},
		{8191, 2, true},
		{4 * 4096, 4 * 4096, false},
		{4 * 4096, 4*4096 + 1, true},
		{9 * 4096, 1 << 30, true},
		{0, 0, false},
		{1 << 62, ^uint64(0), false},
	} {
		if got := p.Overlaps(c.start, c.len); got != c.want {
			t.Errorf("Overlaps(%d, %d) = %v, want %v", c.start, c.len, got, c.want)
		}
	}
}

func TestPlannerEmpty(t *testing.T) {
	p := mustPlanner(t, newMemBitmap(0), PlannerConfig{})
	if p.Next(10) != nil || !p.Finished() {
		t.Fatal("empty bitmap not finished")
	}
	p = mustPlanner(t, newMemBitmap(100), PlannerConfig{})
	if p.Next(10) != nil || !p.Finished() || p.Progress().Total != 0 {
		t.Fatal("clean bitmap not finished")
	}
}

func TestNewPlannerErrors(t *testing.T) {
	bm := newMemBitmap(8)
	for _, cfg := range []PlannerConfig{
		{MaxRequestSize: 1000},
		{MaxRequestSize: 2 << 20},
		{MaxInFlight: -1},
		{MaxInFlight: MaxInFlightLimit + 1},
		{DeviceSectors: 65},
	} {
		if _, err := NewPlanner(bm, cfg); err == nil {
			t.Errorf("NewPlanner(%+v) accepted", cfg)
		}
	}
	if _, err := NewPlanner(nil, PlannerConfig{}); err == nil {
		t.Error("nil bitmap accepted")
	}
}
