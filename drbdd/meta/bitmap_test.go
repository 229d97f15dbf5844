package meta

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// bitModel is the obviously-correct reference: a set of bit numbers.
type bitModel map[int64]bool

func (m bitModel) setRange(from, to, n int64) {
	for i := max(from, 0); i < min(to, n); i++ {
		m[i] = true
	}
}

func (m bitModel) clearRange(from, to int64) {
	for i := from; i < to; i++ {
		delete(m, i)
	}
}

func checkAgainstModel(t *testing.T, b *Bitmap, m bitModel) {
	t.Helper()
	if b.Count() != int64(len(m)) {
		t.Fatalf("Count %d, model %d", b.Count(), len(m))
	}
	for i := range b.Len() {
		if b.Test(i) != m[i] {
			t.Fatalf("bit %d: %v, model %v", i, b.Test(i), m[i])
		}
	}
	var want []int64
	for i := range m {
		want = append(want, i)
	}
	slices.Sort(want)
	var got []int64
	for s, e := range b.Runs(0, b.Len()) {
		if s >= e {
			t.Fatalf("empty run [%d, %d)", s, e)
		}
		if len(got) > 0 && got[len(got)-1] >= s-1 {
			t.Fatalf("runs not maximal/ordered at %d", s)
		}
		for i := s; i < e; i++ {
			got = append(got, i)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Runs: got %d bits, want %d", len(got), len(want))
	}
	// NextSet from every position agrees with the model.
	next := int64(-1)
	for i := b.Len() - 1; i >= 0; i-- {
		if m[i] {
			next = i
		}
		if b.NextSet(i) != next {
			t.Fatalf("NextSet(%d) = %d, want %d", i, b.NextSet(i), next)
		}
	}
}

func TestBitmapAgainstModel(t *testing.T) {
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			// Sizes around word and page boundaries, with odd tails.
			data := []int64{4096, 4096 * 63, 4096 * 64, 4096 * 65, 4096*BitsPerPage + 4096*3, 4096 * 1000}[seed%6]
			if seed%3 == 0 {
				data -= 1000 // partial last block
			}
			b := NewBitmap(data)
			n := b.Len()
			m := bitModel{}
			for range 300 {
				from := rng.Int64N(n + 10)
				to := from + rng.Int64N(200)
				switch rng.IntN(7) {
				case 0:
					got := b.SetBits(from, to)
					before := int64(len(m))
					m.setRange(from, to, n)
					if got != int64(len(m))-before {
						t.Fatalf("SetBits returned %d, want %d", got, int64(len(m))-before)
					}
				case 1:
					before := int64(len(m))
					got := b.ClearBits(from, to)
					m.clearRange(from, to)
					if got != before-int64(len(m)) {
						t.Fatalf("ClearBits returned %d", got)
					}
				case 2: // byte ranges, outward
					s := rng.Int64N(data)
					e := s + rng.Int64N(30000)
					b.Set(s, e)
					m.setRange(s/4096, (e+4095)/4096, n)
				case 3: // byte ranges, inward
					s := rng.Int64N(data)
					e := s + rng.Int64N(30000)
					b.Clear(s, e)
					to := e / 4096
					if e >= data {
						to = n
					}
					m.clearRange((s+4095)/4096, to)
				case 4:
					if got, want := b.CountRange(from, to), func() (c int64) {
						for i := from; i < to; i++ {
							if m[i] {
								c++
							}
						}
						return
					}(); got != want {
						t.Fatalf("CountRange(%d,%d)=%d want %d", from, to, got, want)
					}
				case 5: // merge a random peer bitmap
					o := NewBitmap(data)
					for range 5 {
						f := rng.Int64N(n)
						o.SetBits(f, f+rng.Int64N(100))
					}
					before := int64(len(m))
					got, err := b.Merge(o)
					if err != nil {
						t.Fatal(err)
					}
					for i := range n {
						if o.Test(i) {
							m[i] = true
						}
					}
					if got != int64(len(m))-before {
						t.Fatalf("Merge returned %d", got)
					}
				case 6: // encode/decode round trip
					d, err := DecodeBitmap(data, EncodeBitmap(b))
					if err != nil {
						t.Fatal(err)
					}
					if d.Count() != b.Count() || !bytes.Equal(EncodeBitmap(d), EncodeBitmap(b)) || len(d.DirtyPages()) != 0 {
						t.Fatal("decode differs")
					}
				}
			}
			checkAgainstModel(t, b, m)
		})
	}
}

func TestBitmapSetClearRounding(t *testing.T) {
	b := NewBitmap(10 * 4096)
	if n := b.Set(4095, 4097); n != 2 || !b.Test(0) || !b.Test(1) {
		t.Fatalf("Set rounds outward: %d", n)
	}
	if n := b.Clear(1, 8191); n != 0 {
		t.Fatalf("Clear of partial blocks cleared %d", n)
	}
	if n := b.Clear(0, 8192); n != 2 {
		t.Fatalf("Clear of whole blocks cleared %d", n)
	}
	// The last block counts as covered when the range reaches the end.
	b = NewBitmap(10*4096 - 100)
	b.SetAll()
	if n := b.Clear(9*4096, 10*4096-100); n != 1 || b.Test(9) {
		t.Fatalf("Clear of the short last block: %d", n)
	}
	if b.Set(5, 5) != 0 || b.Clear(5, 5) != 0 {
		t.Fatal("empty ranges changed bits")
	}
	if !b.TestByte(0) || b.TestByte(9*4096+1) || b.Test(-1) || b.Test(1<<40) {
		t.Fatal("TestByte/Test bounds")
	}
	if b.NextClear(0) != 9 || b.NextClear(10) != -1 {
		t.Fatalf("NextClear %d %d", b.NextClear(0), b.NextClear(10))
	}
}

func TestBitmapDirtyPages(t *testing.T) {
	b := NewBitmap(4096 * BitsPerPage * 3) // 3 pages
	if len(b.DirtyPages()) != 0 || b.Pages() != 3 {
		t.Fatal("new bitmap dirty")
	}
	b.SetBits(BitsPerPage*2+5, BitsPerPage*2+6)
	b.SetBits(10, 11)
	if !slices.Equal(b.DirtyPages(), []int{0, 2}) {
		t.Fatalf("dirty %v", b.DirtyPages())
	}
	p, v := b.PageBytes(2)
	if binary.LittleEndian.Uint64(p[0:]) != 1<<5 {
		t.Fatalf("page bytes %x", p[:8])
	}
	// Changed after the copy: stays dirty.
	b.SetBits(BitsPerPage*2+7, BitsPerPage*2+8)
	b.MarkPageClean(2, v)
	if !b.IsPageDirty(2) {
		t.Fatal("page changed after PageBytes was marked clean")
	}
	_, v = b.PageBytes(2)
	b.MarkPageClean(2, v)
	_, v0 := b.PageBytes(0)
	b.MarkPageClean(0, v0)
	if len(b.DirtyPages()) != 0 {
		t.Fatalf("dirty %v", b.DirtyPages())
	}
	// No-op changes do not dirty pages.
	b.SetBits(10, 11)
	if len(b.DirtyPages()) != 0 {
		t.Fatal("setting a set bit dirtied a page")
	}
	b.MarkAllDirty()
	if len(b.DirtyPages()) != 3 {
		t.Fatal("MarkAllDirty")
	}
}

func TestBitmapWords(t *testing.T) {
	b := NewBitmap(4096 * 100) // 100 bits, 2 words
	if b.Words() != 2 {
		t.Fatalf("words %d", b.Words())
	}
	w := binary.LittleEndian.AppendUint64(nil, 0x8000_0000_0000_0001)
	w = binary.LittleEndian.AppendUint64(w, 1<<35)
	n, err := b.MergeWords(0, w)
	if err != nil || n != 3 || !b.Test(0) || !b.Test(63) || !b.Test(64+35) {
		t.Fatalf("MergeWords: %d %v", n, err)
	}
	if got := b.AppendWords(nil, 0, 5); !bytes.Equal(got, w) {
		t.Fatalf("AppendWords %x", got)
	}
	if _, err := b.MergeWords(1, binary.LittleEndian.AppendUint64(nil, 1<<40)); err == nil {
		t.Error("bit beyond the end accepted")
	}
	if _, err := b.MergeWords(2, w[:8]); err == nil {
		t.Error("word beyond the end accepted")
	}
	if _, err := b.MergeWords(0, w[:5]); err == nil {
		t.Error("partial word accepted")
	}
	if _, err := b.Merge(NewBitmap(4096)); err == nil {
		t.Error("size mismatch accepted")
	}
}

func TestDecodeBitmapRejects(t *testing.T) {
	b := NewBitmap(4096 * 70) // 70 bits
	b.SetAll()
	enc := EncodeBitmap(b)
	if _, err := DecodeBitmap(4096*70, enc[:100]); err == nil {
		t.Error("short input accepted")
	}
	bad := append([]byte(nil), enc...)
	bad[9] |= 0x80 // bit 79
	if _, err := DecodeBitmap(4096*70, bad); err == nil {
		t.Error("surplus bit accepted")
	}
	bad = append(append([]byte(nil), enc...), make([]byte, BlockSize)...)
	if _, err := DecodeBitmap(4096*70, bad); err != nil {
		t.Errorf("zero trailing page rejected: %v", err)
	}
	bad[len(bad)-1] = 1
	if _, err := DecodeBitmap(4096*70, bad); err == nil {
		t.Error("garbage trailing page accepted")
	}
}

func TestExtents(t *testing.T) {
	if got := ExtentsFor(ALExtentSize-1, ALExtentSize+1); !slices.Equal(got, []uint32{0, 1}) {
		t.Errorf("ExtentsFor %v", got)
	}
	if got := ExtentsFor(5, 5); got != nil {
		t.Errorf("empty range %v", got)
	}
	if PageOfExtent(31) != 0 || PageOfExtent(32) != 1 {
		t.Error("PageOfExtent")
	}
	b := NewBitmap(3 * ALExtentSize)
	if n := b.SetExtent(1); n != BitsPerALExtent || b.Test(BitsPerALExtent-1) || !b.Test(BitsPerALExtent) {
		t.Errorf("SetExtent %d", n)
	}
	if n := b.SetExtent(7); n != 0 {
		t.Errorf("extent beyond the end set %d bits", n)
	}
}

// A 1 TiB device's bitmap costs 32 MiB plus small change.
func TestBitmapMemoryOneTiB(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 32 MiB")
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b := NewBitmap(1 << 40)
	runtime.ReadMemStats(&after)
	if b.Len() != 1<<28 {
		t.Fatalf("bits %d", b.Len())
	}
	used := after.TotalAlloc - before.TotalAlloc
	if used > 32<<20+256<<10 {
		t.Errorf("1 TiB bitmap allocated %d bytes", used)
	}
	b.SetAll()
	if b.Count() != 1<<28 {
		t.Fatal("count")
	}
	runtime.KeepAlive(b)
}

func FuzzDecodeBitmap(f *testing.F) {
	b := NewBitmap(4096 * 100)
	b.SetBits(3, 40)
	f.Add(int64(4096*100), EncodeBitmap(b))
	f.Add(int64(4096), make([]byte, BlockSize))
	f.Add(int64(4096*BitsPerPage+1), make([]byte, 2*BlockSize))
	f.Add(int64(-1), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, dataBytes int64, p []byte) {
		if dataBytes > 1<<32 { // keep allocations bounded
			return
		}
		b, err := DecodeBitmap(dataBytes, p)
		if err != nil {
			return
		}
		enc := EncodeBitmap(b)
		if !bytes.Equal(enc, p[:len(enc)]) {
			t.Fatal("re-encode differs")
		}
		var c int64
		for s, e := range b.Runs(0, b.Len()) {
			c += e - s
		}
		if c != b.Count() {
			t.Fatalf("runs cover %d bits, count %d", c, b.Count())
		}
	})
}
