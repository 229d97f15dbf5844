package meta

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestALConstants(t *testing.T) {
	if ALContextPerTransaction != 918 || ALRingBlocks != 73 || alContext+4*ALContextPerTransaction != BlockSize {
		t.Fatalf("context %d, ring %d", ALContextPerTransaction, ALRingBlocks)
	}
	if minALBlocks(ALExtentsMax) > ALRingBlocks || minALBlocks(ALExtentsDefault) != 8 {
		t.Fatal("minALBlocks")
	}
}

func TestTransactionRoundTrip(t *testing.T) {
	tx := &Transaction{Number: 1 << 40, Type: TransactionUpdate, Slots: 1237, ContextStart: 918,
		Updates: []ALUpdate{{3, 77}, {1000, ALFree}}, Context: make([]uint32, 1237-918)}
	for i := range tx.Context {
		tx.Context[i] = uint32(i * 3)
	}
	b := EncodeTransaction(tx)
	got, err := DecodeTransaction(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Number != tx.Number || got.Type != tx.Type || got.Slots != tx.Slots || got.ContextStart != tx.ContextStart ||
		!slices.Equal(got.Updates, tx.Updates) || !slices.Equal(got.Context, tx.Context) {
		t.Fatalf("round trip: %+v", got)
	}
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 4
		if _, err := DecodeTransaction(c); err == nil {
			t.Fatalf("flip at %d accepted", i)
		}
	}
}

func mustAL(t *testing.T, slots int) *AL {
	t.Helper()
	a, err := NewAL(slots, ALRingBlocks, 0)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// begin runs Begin and commits, returning the evicted extents.
func begin(t *testing.T, a *AL, ext ...uint32) []uint32 {
	t.Helper()
	tx, need, ev, err := a.Begin(ext)
	if err != nil {
		t.Fatalf("Begin(%v): %v", ext, err)
	}
	if need {
		if err := a.Commit(tx); err != nil {
			t.Fatal(err)
		}
	}
	return ev
}

func TestALRefcountAndLRU(t *testing.T) {
	a := mustAL(t, 7)
	for e := range uint32(7) {
		begin(t, a, e)
	}
	if _, _, _, err := a.Begin([]uint32{100}); !errors.Is(err, ErrALBusy) {
		t.Fatalf("full log with all extents referenced: %v", err)
	}
	// Complete 3, then 1, then 5: LRU order is 3, 1, 5.
	for _, e := range []uint32{3, 1, 5} {
		if err := a.Complete([]uint32{e}); err != nil {
			t.Fatal(err)
		}
	}
	if ev := begin(t, a, 100); !slices.Equal(ev, []uint32{3}) {
		t.Fatalf("evicted %v, want the least recently used 3", ev)
	}
	// Touching 1 again makes 5 the oldest.
	begin(t, a, 1)
	if err := a.Complete([]uint32{1}); err != nil {
		t.Fatal(err)
	}
	if ev := begin(t, a, 101); !slices.Equal(ev, []uint32{5}) {
		t.Fatalf("evicted %v, want 5", ev)
	}
	// Already active extents need no transaction; duplicates count once.
	tx, need, _, err := a.Begin([]uint32{0, 0, 2})
	if err != nil || need || tx != nil || a.Refs(0) != 2 || a.Refs(2) != 2 {
		t.Fatalf("re-begin: %v %v refs %d %d", need, err, a.Refs(0), a.Refs(2))
	}
	if err := a.Complete([]uint32{42}); err == nil {
		t.Fatal("Complete of an inactive extent accepted")
	}
	if !slices.Equal(a.Active(), []uint32{0, 1, 2, 4, 6, 100, 101}) {
		t.Fatalf("active %v", a.Active())
	}
}

func TestALBeginIsAtomic(t *testing.T) {
	a := mustAL(t, 7)
	for e := range uint32(6) {
		begin(t, a, e)
	}
	if err := a.Complete([]uint32{0}); err != nil {
		t.Fatal(err)
	}
	// Needs 2 new slots plus keeps 0 referenced: only 1 free slot, and 0
	// cannot be evicted because this very call references it.
	if _, _, _, err := a.Begin([]uint32{0, 50, 51}); !errors.Is(err, ErrALBusy) {
		t.Fatalf("got %v", err)
	}
	if a.Refs(0) != 0 || a.IsActive(50) || a.IsActive(51) {
		t.Fatal("failed Begin changed state")
	}
	// Too many extents at once.
	big := make([]uint32, ALUpdatesPerTransaction+1)
	for i := range big {
		big[i] = uint32(1000 + i)
	}
	if _, _, _, err := mustAL(t, 1000).Begin(big); !errors.Is(err, ErrALTooManyExtents) {
		t.Fatalf("got %v", err)
	}
	if _, _, _, err := a.Begin([]uint32{ALFree}); err == nil {
		t.Fatal("ALFree accepted as extent")
	}
}

func TestALPendingAndAbort(t *testing.T) {
	a := mustAL(t, 7)
	for e := range uint32(7) {
		begin(t, a, e)
	}
	if err := a.Complete([]uint32{2, 4}); err != nil {
		t.Fatal(err)
	}
	before := a.Active()
	tx, need, ev, err := a.Begin([]uint32{10, 11, 3})
	if err != nil || !need || len(ev) != 2 {
		t.Fatalf("Begin: %v %v %v", need, ev, err)
	}
	// While pending: new extents and pending extents are busy; others not.
	if _, _, _, err := a.Begin([]uint32{12}); !errors.Is(err, ErrALBusy) {
		t.Fatal("second transaction while one is pending")
	}
	if _, _, _, err := a.Begin([]uint32{10}); !errors.Is(err, ErrALBusy) {
		t.Fatal("pending extent usable before commit")
	}
	if _, need, _, err := a.Begin([]uint32{5}); err != nil || need {
		t.Fatalf("committed extent blocked: %v", err)
	}
	if err := a.Complete([]uint32{5}); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(&Transaction{}); err == nil {
		t.Fatal("commit of a foreign transaction")
	}
	if err := a.Abort(tx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Active(), before) || a.Refs(3) != 1 || a.Pending() != nil {
		t.Fatalf("after abort: active %v refs(3)=%d", a.Active(), a.Refs(3))
	}
	// The evicted extents are evictable again.
	if ev := begin(t, a, 20); len(ev) != 1 {
		t.Fatalf("evicted %v", ev)
	}
}

// writeRing encodes transactions into a ring the way Store does.
func writeRing(ring [][]byte, txs ...*Transaction) {
	for _, tx := range txs {
		ring[tx.RingPos(len(ring))] = EncodeTransaction(tx)
	}
}

func TestRecoverAL(t *testing.T) {
	const slots = 2000 // needs 3 transactions of context
	a, _ := NewAL(slots, ALRingBlocks, 0)
	ring := make([][]byte, ALRingBlocks)
	for i := range ring {
		ring[i] = make([]byte, BlockSize)
	}
	if _, _, err := RecoverAL(ring); !errors.Is(err, ErrALNoTransactions) {
		t.Fatalf("empty ring: %v", err)
	}
	init, _ := a.InitRing()
	writeRing(ring, init...)
	active, last, err := RecoverAL(ring)
	if err != nil || len(active) != 0 || last != ALRingBlocks-1 {
		t.Fatalf("initialized ring: %v %d %v", active, last, err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	var lastTx *Transaction
	for i := range 500 {
		e := uint32(rng.IntN(5000))
		tx, need, _, err := a.Begin([]uint32{e})
		if err != nil {
			t.Fatal(err)
		}
		if need {
			writeRing(ring, tx)
			if err := a.Commit(tx); err != nil {
				t.Fatal(err)
			}
			lastTx = tx
		}
		if err := a.Complete([]uint32{e}); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			got, last, err := RecoverAL(ring)
			if err != nil || !slices.Equal(got, a.Active()) || last != lastTx.Number {
				t.Fatalf("step %d: recovered %d extents (last %d), want %d (last %d): %v", i, len(got), last, len(a.Active()), lastTx.Number, err)
			}
		}
	}
	// Tear the newest block: the set before it comes back, which is what
	// was durable before that transaction.
	prev := a.Active()
	tx, _, _, _ := a.Begin([]uint32{99999})
	writeRing(ring, tx)
	ring[tx.RingPos(ALRingBlocks)][600] ^= 1
	got, last, err := RecoverAL(ring)
	if err != nil || !slices.Equal(got, prev) || last != tx.Number-1 {
		t.Fatalf("torn newest: %v %v", last, err)
	}
	// A block in the wrong place is ignored.
	moved := slices.Clone(ring)
	moved[(tx.RingPos(ALRingBlocks)+1)%ALRingBlocks] = EncodeTransaction(&Transaction{Number: tx.Number + 5, Slots: slots})
	if got, _, err := RecoverAL(moved); err != nil || !slices.Equal(got, prev) {
		t.Fatalf("misplaced block changed the result: %v", err)
	}
}

func TestRecoverALIncomplete(t *testing.T) {
	// Only one transaction with a partial context: the rest is unknown.
	ring := make([][]byte, ALRingBlocks)
	for i := range ring {
		ring[i] = make([]byte, BlockSize)
	}
	tx := &Transaction{Number: 10, Slots: 2000, Context: make([]uint32, ALContextPerTransaction)}
	writeRing(ring, tx)
	if _, last, err := RecoverAL(ring); !errors.Is(err, ErrALIncomplete) || last != 10 {
		t.Fatalf("got %d %v", last, err)
	}
}

func TestALReset(t *testing.T) {
	a := mustAL(t, 1237)
	begin(t, a, 1, 2, 3)
	if _, _, err := a.Reset(); !errors.Is(err, ErrALBusy) {
		t.Fatalf("reset in use: %v", err)
	}
	if err := a.Complete([]uint32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	txs, was, err := a.Reset()
	if err != nil || len(txs) != 2 || !slices.Equal(was, []uint32{1, 2, 3}) || len(a.Active()) != 0 {
		t.Fatalf("reset: %d %v %v", len(txs), was, err)
	}
	if txs[0].Number != 1 || txs[1].Number != 2 || a.NextTransaction() != 3 {
		t.Fatalf("numbers %d %d next %d", txs[0].Number, txs[1].Number, a.NextTransaction())
	}
}

func FuzzRecoverAL(f *testing.F) {
	a, _ := NewAL(ALExtentsMin, 8, 0)
	init, _ := a.InitRing()
	tx, _, _, _ := a.Begin([]uint32{1, 2, 3})
	var seed []byte
	for _, t := range append(init, tx) {
		seed = append(seed, EncodeTransaction(t)...)
	}
	f.Add(seed)
	f.Add(EncodeTransaction(tx))
	f.Add(make([]byte, 3*BlockSize))
	f.Add([]byte("ALTR"))
	f.Fuzz(func(t *testing.T, p []byte) {
		var ring [][]byte
		for len(p) >= BlockSize && len(ring) < ALRingBlocks {
			ring = append(ring, p[:BlockSize])
			p = p[BlockSize:]
		}
		if len(p) > 0 {
			ring = append(ring, p) // a short block is never valid
		}
		active, last, err := RecoverAL(ring)
		if err != nil {
			return
		}
		if !slices.IsSorted(active) || len(slices.Compact(slices.Clone(active))) != len(active) || slices.Contains(active, ALFree) {
			t.Fatalf("bad active set %v", active)
		}
		if len(active) > ALExtentsMax {
			t.Fatalf("%d active extents", len(active))
		}
		tx, err := DecodeTransaction(ring[int(last%uint64(len(ring)))])
		if err != nil || tx.Number != last {
			t.Fatalf("last %d is not the decoded newest block: %v", last, err)
		}
		for i, b := range ring {
			if tx, err := DecodeTransaction(b); err == nil {
				again, err := DecodeTransaction(EncodeTransaction(tx))
				if err != nil || fmt.Sprint(again) != fmt.Sprint(tx) {
					t.Fatalf("block %d: re-encode differs", i)
				}
			}
		}
	})
}
