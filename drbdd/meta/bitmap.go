package meta

import (
	"encoding/binary"
	"fmt"
	"iter"
	"math/bits"
)

// wordsPerPage is the number of 64-bit words in one 4 KiB bitmap page.
const wordsPerPage = BlockSize / 8

// Bitmap is the out-of-sync bitmap: one bit per BMBlockSize bytes of data,
// set when the block may differ from the peer's copy. It counts set bits
// incrementally and remembers which 4 KiB pages changed since they were
// last written, so that the caller writes only those.
//
// Memory: one bit per 4 KiB of data (32 MiB for 1 TiB) plus 16 bytes per
// 128 MiB of data for page bookkeeping. A Bitmap is not safe for
// concurrent use; its owner serializes access.
type Bitmap struct {
	words     []uint64
	nbits     int64
	dataBytes int64
	count     int64
	// dirty has one bit per page that changed since MarkPageClean.
	dirty []uint64
	// modified is, per page, the value of clock at its last change.
	modified []uint64
	clock    uint64
}

// PageVersion identifies the state of a bitmap page when PageBytes copied
// it; MarkPageClean uses it to keep pages that changed since dirty.
type PageVersion uint64

// NewBitmap returns an all-clear bitmap covering dataBytes of data.
func NewBitmap(dataBytes int64) *Bitmap {
	if dataBytes < 0 {
		dataBytes = 0
	}
	nbits := bitsFor(dataBytes)
	pages := pagesFor(nbits)
	return &Bitmap{
		words:     make([]uint64, pages*wordsPerPage),
		nbits:     nbits,
		dataBytes: dataBytes,
		dirty:     make([]uint64, (pages+63)/64),
		modified:  make([]uint64, pages),
	}
}

// Len is the number of bits.
func (b *Bitmap) Len() int64 { return b.nbits }

// DataBytes is the amount of data the bitmap covers.
func (b *Bitmap) DataBytes() int64 { return b.dataBytes }

// Count is the number of set bits, in O(1).
func (b *Bitmap) Count() int64 { return b.count }

// Pages is the number of 4 KiB pages of the on-disk bitmap.
func (b *Bitmap) Pages() int { return len(b.modified) }

// Test reports whether bit is set. Bits outside the bitmap read as clear.
func (b *Bitmap) Test(bit int64) bool {
	if bit < 0 || bit >= b.nbits {
		return false
	}
	return b.words[bit>>6]&(1<<(bit&63)) != 0
}

// TestByte reports whether the block holding data byte off is out of sync.
func (b *Bitmap) TestByte(off int64) bool { return b.Test(off / BMBlockSize) }

func (b *Bitmap) touch(word int64) {
	page := word / wordsPerPage
	b.clock++
	b.modified[page] = b.clock
	b.dirty[page>>6] |= 1 << (page & 63)
}

// change sets or clears bits [from, to), clamped to the bitmap, and
// returns how many bits changed.
func (b *Bitmap) change(from, to int64, set bool) int64 {
	from, to = max(from, 0), min(to, b.nbits)
	var n int64
	for from < to {
		w := from >> 6
		lo := uint(from & 63)
		hi := uint(64)
		if (w+1)<<6 > to {
			hi = uint(to - w<<6)
		}
		mask := ^uint64(0) >> (64 - (hi - lo)) << lo
		old := b.words[w]
		var nw uint64
		if set {
			nw = old | mask
		} else {
			nw = old &^ mask
		}
		if nw != old {
			d := int64(bits.OnesCount64(old ^ nw))
			if set {
				b.count += d
			} else {
				b.count -= d
			}
			n += d
			b.words[w] = nw
			b.touch(w)
		}
		from = w<<6 + int64(hi)
	}
	return n
}

// SetBits sets bits [from, to) and returns how many were newly set.
func (b *Bitmap) SetBits(from, to int64) int64 { return b.change(from, to, true) }

// ClearBits clears bits [from, to) and returns how many were cleared.
func (b *Bitmap) ClearBits(from, to int64) int64 { return b.change(from, to, false) }

// Set marks every block touched by the data range [start, end) out of
// sync (rounding outward, as drbd_set_out_of_sync does) and returns how
// many bits were newly set.
func (b *Bitmap) Set(start, end int64) int64 {
	if end <= start {
		return 0
	}
	return b.SetBits(start/BMBlockSize, (end+BMBlockSize-1)/BMBlockSize)
}

// Clear marks the blocks of [start, end) in sync and returns how many bits
// were cleared. Like drbd_set_in_sync it rounds inward: a block only
// partly covered stays out of sync, except the last block of the device,
// which is covered when end reaches the end of the data.
func (b *Bitmap) Clear(start, end int64) int64 {
	if end <= start {
		return 0
	}
	from := (start + BMBlockSize - 1) / BMBlockSize
	to := end / BMBlockSize
	if end >= b.dataBytes {
		to = b.nbits
	}
	return b.ClearBits(from, to)
}

// SetAll marks the whole device out of sync.
func (b *Bitmap) SetAll() int64 { return b.SetBits(0, b.nbits) }

// ClearAll marks the whole device in sync.
func (b *Bitmap) ClearAll() int64 { return b.ClearBits(0, b.nbits) }

// SetExtent marks every block of activity-log extent e out of sync (what
// applying the activity log to the bitmap does) and returns how many bits
// were newly set.
func (b *Bitmap) SetExtent(e uint32) int64 {
	from := int64(e) * BitsPerALExtent
	return b.SetBits(from, from+BitsPerALExtent)
}

// next finds the first bit >= from that is set (want true) or clear.
func (b *Bitmap) next(from int64, want bool) int64 {
	if from < 0 {
		from = 0
	}
	for from < b.nbits {
		w := from >> 6
		word := b.words[w]
		if !want {
			word = ^word
		}
		word &= ^uint64(0) << uint(from&63)
		if word != 0 {
			bit := w<<6 + int64(bits.TrailingZeros64(word))
			if bit >= b.nbits {
				return -1
			}
			return bit
		}
		from = (w + 1) << 6
	}
	return -1
}

// NextSet returns the first set bit >= from, or -1.
func (b *Bitmap) NextSet(from int64) int64 { return b.next(from, true) }

// NextClear returns the first clear bit >= from, or -1.
func (b *Bitmap) NextClear(from int64) int64 { return b.next(from, false) }

// Runs iterates over the runs of set bits in [from, to) in ascending
// order, yielding each run as [first, end).
func (b *Bitmap) Runs(from, to int64) iter.Seq2[int64, int64] {
	return func(yield func(int64, int64) bool) {
		to := min(to, b.nbits)
		for from < to {
			s := b.NextSet(from)
			if s < 0 || s >= to {
				return
			}
			e := b.NextClear(s)
			if e < 0 || e > to {
				e = to
			}
			if !yield(s, e) {
				return
			}
			from = e
		}
	}
}

// CountRange counts the set bits in [from, to).
func (b *Bitmap) CountRange(from, to int64) int64 {
	from, to = max(from, 0), min(to, b.nbits)
	var n int64
	for from < to {
		w := from >> 6
		lo := uint(from & 63)
		hi := uint(64)
		if (w+1)<<6 > to {
			hi = uint(to - w<<6)
		}
		mask := ^uint64(0) >> (64 - (hi - lo)) << lo
		n += int64(bits.OnesCount64(b.words[w] & mask))
		from = w<<6 + int64(hi)
	}
	return n
}

// Merge ORs other into b (both must cover the same number of bits) and
// returns how many bits were newly set.
func (b *Bitmap) Merge(other *Bitmap) (int64, error) {
	if other.nbits != b.nbits {
		return 0, fmt.Errorf("bitmap merge: %d bits into %d bits", other.nbits, b.nbits)
	}
	var n int64
	for w, o := range other.words {
		if nw := b.words[w] | o; nw != b.words[w] {
			d := int64(bits.OnesCount64(nw ^ b.words[w]))
			b.count += d
			n += d
			b.words[w] = nw
			b.touch(int64(w))
		}
	}
	return n, nil
}

// MergeWords ORs little-endian 64-bit words, as they arrive in DRBD's plain
// P_BITMAP packets, into the bitmap starting at word index offset, and
// returns how many bits were newly set. p must hold whole words, all
// inside the bitmap; bits beyond the last bit must be clear.
func (b *Bitmap) MergeWords(offset int64, p []byte) (int64, error) {
	if len(p)%8 != 0 {
		return 0, fmt.Errorf("bitmap words: %d bytes is not a whole number of words", len(p))
	}
	nw := int64(len(p) / 8)
	last := (b.nbits + 63) / 64
	if offset < 0 || offset > last || nw > last-offset {
		return 0, fmt.Errorf("bitmap words [%d, +%d) outside the bitmap's %d words", offset, nw, last)
	}
	for i := range nw {
		if w := offset + i; w == last-1 {
			if extra := binary.LittleEndian.Uint64(p[i*8:]) & b.tailMask(); extra != 0 {
				return 0, fmt.Errorf("bitmap words: bits set beyond bit %d", b.nbits)
			}
		}
	}
	var n int64
	for i := range nw {
		w := offset + i
		o := binary.LittleEndian.Uint64(p[i*8:])
		if v := b.words[w] | o; v != b.words[w] {
			d := int64(bits.OnesCount64(v ^ b.words[w]))
			b.count += d
			n += d
			b.words[w] = v
			b.touch(w)
		}
	}
	return n, nil
}

// tailMask has the bits of the last used word that lie beyond nbits.
func (b *Bitmap) tailMask() uint64 {
	if r := b.nbits & 63; r != 0 {
		return ^uint64(0) << uint(r)
	}
	return 0
}

// Words returns the number of 64-bit words that hold bits (DRBD's
// bm_words, the unit of P_BITMAP transfers).
func (b *Bitmap) Words() int64 { return (b.nbits + 63) / 64 }

// AppendWords appends n words starting at word index offset as
// little-endian bytes, for sending in P_BITMAP.
func (b *Bitmap) AppendWords(dst []byte, offset, n int64) []byte {
	last := b.Words()
	offset, end := max(offset, 0), min(offset+n, last)
	for w := offset; w < end; w++ {
		dst = binary.LittleEndian.AppendUint64(dst, b.words[w])
	}
	return dst
}

// DirtyPages returns, in ascending order, the pages changed since they were
// last marked clean.
func (b *Bitmap) DirtyPages() []int {
	var out []int
	for i, d := range b.dirty {
		for d != 0 {
			t := bits.TrailingZeros64(d)
			out = append(out, i*64+t)
			d &= d - 1
		}
	}
	return out
}

// IsPageDirty reports whether page i changed since it was marked clean.
func (b *Bitmap) IsPageDirty(i int) bool {
	return i >= 0 && i < len(b.modified) && b.dirty[i>>6]&(1<<(i&63)) != 0
}

// MarkAllDirty marks every page dirty, so that the next flush writes the
// whole bitmap.
func (b *Bitmap) MarkAllDirty() {
	for i := range b.modified {
		b.touch(int64(i) * wordsPerPage)
	}
}

// PageBytes returns a copy of page i in its on-disk form (4 KiB of
// little-endian words) and the version to pass to MarkPageClean once the
// copy is durable.
func (b *Bitmap) PageBytes(i int) ([]byte, PageVersion) {
	out := make([]byte, 0, BlockSize)
	for _, w := range b.words[i*wordsPerPage : (i+1)*wordsPerPage] {
		out = binary.LittleEndian.AppendUint64(out, w)
	}
	return out, PageVersion(b.clock)
}

// MarkPageClean records that page i as of version v is on stable storage.
// If the page changed after PageBytes returned v it stays dirty.
func (b *Bitmap) MarkPageClean(i int, v PageVersion) {
	if b.modified[i] <= uint64(v) {
		b.dirty[i>>6] &^= 1 << (i & 63)
	}
}

// LoadPage replaces page i with its on-disk form p (as read from the
// device) without marking it dirty. Bits beyond the end of the bitmap must
// be clear.
func (b *Bitmap) LoadPage(i int, p []byte) error {
	if i < 0 || i >= len(b.modified) {
		return fmt.Errorf("bitmap page %d out of range [0, %d)", i, len(b.modified))
	}
	if len(p) != BlockSize {
		return fmt.Errorf("bitmap page %d: %d bytes, want %d", i, len(p), BlockSize)
	}
	base := int64(i) * wordsPerPage
	last := b.Words()
	for j := range int64(wordsPerPage) {
		w := binary.LittleEndian.Uint64(p[j*8:])
		switch {
		case base+j >= last:
			if w != 0 {
				return fmt.Errorf("bitmap page %d: bits set beyond bit %d", i, b.nbits)
			}
		case base+j == last-1 && w&b.tailMask() != 0:
			return fmt.Errorf("bitmap page %d: bits set beyond bit %d", i, b.nbits)
		}
	}
	for j := range int64(wordsPerPage) {
		w := binary.LittleEndian.Uint64(p[j*8:])
		b.count += int64(bits.OnesCount64(w)) - int64(bits.OnesCount64(b.words[base+j]))
		b.words[base+j] = w
	}
	return nil
}

// EncodeBitmap returns the whole on-disk bitmap: Pages() pages of
// little-endian 64-bit words.
func EncodeBitmap(b *Bitmap) []byte {
	out := make([]byte, 0, len(b.words)*8)
	for _, w := range b.words {
		out = binary.LittleEndian.AppendUint64(out, w)
	}
	return out
}

// DecodeBitmap parses an on-disk bitmap covering dataBytes of data. p must
// hold at least the pages needed; extra trailing bytes must be zero, and so
// must every bit beyond the last data block. The result has no dirty pages.
func DecodeBitmap(dataBytes int64, p []byte) (*Bitmap, error) {
	if dataBytes < 0 {
		return nil, fmt.Errorf("bitmap: negative data size %d", dataBytes)
	}
	if pages := pagesFor(bitsFor(dataBytes)); int64(len(p))/BlockSize < pages {
		return nil, fmt.Errorf("bitmap: %d bytes, need %d pages for %d bytes of data", len(p), pages, dataBytes)
	}
	b := NewBitmap(dataBytes)
	n := b.Pages() * BlockSize
	for i := range b.Pages() {
		if err := b.LoadPage(i, p[i*BlockSize:(i+1)*BlockSize]); err != nil {
			return nil, err
		}
	}
	for _, c := range p[n:] {
		if c != 0 {
			return nil, fmt.Errorf("bitmap: non-zero bytes after the last page")
		}
	}
	return b, nil
}

// ExtentOf returns the activity-log extent holding data byte off.
func ExtentOf(off int64) uint32 { return uint32(off / ALExtentSize) }

// ExtentsFor returns the activity-log extents the data range [start, end)
// touches, in ascending order.
func ExtentsFor(start, end int64) []uint32 {
	if end <= start {
		return nil
	}
	first, last := ExtentOf(start), ExtentOf(end-1)
	out := make([]uint32, 0, last-first+1)
	for e := first; ; e++ {
		out = append(out, e)
		if e == last {
			break
		}
	}
	return out
}

// PageOfExtent returns the bitmap page holding the bits of extent e.
func PageOfExtent(e uint32) int { return int(int64(e) * BitsPerALExtent / BitsPerPage) }
