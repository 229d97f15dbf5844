package protocol

import (
	"errors"
	"fmt"
)

// DRBD's variable length integer code (drbd_vli.h) encodes the run lengths
// of a compressed bitmap. A code word is read least significant bit first:
// a prefix selects one of ten levels, the data bits that follow hold the
// value minus the level's base. The data bit counts follow the Fibonacci
// sequence (1, 1, 2, 3, 5, 8, 13, 21, 34) except the last level, which has
// 56 so that its code word is 64 bits long:
//
//	prefix      data bits  values
//	0           1          1..2
//	10          1          3..4
//	110         2          5..8
//	1110        3          9..16
//	11110       5          17..48
//	111110      8          49..304
//	11111100    13         305..8496
//	11111110    21         8497..2105648
//	11111101    34         2105649..17181974832
//	11111111    56         17181974833..VLIMax
//
// (Prefixes are shown in transmission order; as numbers they are the
// values 0x0, 0x1, 0x3, 0x7, 0xf, 0x1f, 0x3f, 0x7f, 0xbf and 0xff.)
type vliLevel struct {
	total  uint // code word bits
	prefix uint // prefix bits
	value  uint64
}

var vliLevels = [...]vliLevel{
	{2, 1, 0x00},
	{3, 2, 0x01},
	{5, 3, 0x03},
	{7, 4, 0x07},
	{10, 5, 0x0f},
	{14, 6, 0x1f},
	{21, 8, 0x3f},
	{29, 8, 0x7f},
	{42, 8, 0xbf},
	{64, 8, 0xff},
}

// VLIMax is the largest value the code can represent (2^56 + 0x400202130).
const VLIMax uint64 = 0x100000400202130

// VLIMaxBits is the length of the longest code word.
const VLIMaxBits = 64

// Errors from VLIEncode.
var (
	ErrVLIZero     = errors.New("drbd protocol: VLI cannot encode zero")
	ErrVLIOverflow = errors.New("drbd protocol: value too large for VLI")
)

func lowMask(n uint) uint64 {
	if n >= 64 {
		return ^uint64(0)
	}
	return 1<<n - 1
}

// VLIEncode returns the code word for v (to be sent least significant bit
// first) and its length in bits. Zero and values above VLIMax cannot be
// encoded.
func VLIEncode(v uint64) (code uint64, nbits int, err error) {
	if v == 0 {
		return 0, 0, ErrVLIZero
	}
	var max uint64
	adj := uint64(1)
	for _, l := range vliLevels {
		max += 1 << (l.total - l.prefix)
		if v <= max {
			return (v-adj)<<l.prefix | l.value, int(l.total), nil
		}
		adj = max + 1
	}
	return 0, 0, fmt.Errorf("%w: %d > %d", ErrVLIOverflow, v, VLIMax)
}

// VLIDecode decodes the code word in the least significant bits of in and
// returns its value and length in bits. Every bit pattern starts with a
// valid prefix, so decoding always succeeds; the caller must check that the
// returned length does not exceed the number of valid bits in in.
func VLIDecode(in uint64) (v uint64, nbits int) {
	adj := uint64(1)
	for _, l := range vliLevels {
		if in&lowMask(l.prefix) == l.value {
			return (in&lowMask(l.total))>>l.prefix + adj, int(l.total)
		}
		adj += 1 << (l.total - l.prefix)
	}
	return 0, 0 // not reached: the prefixes cover every bit pattern
}

// bitWriter appends bits least significant bit first into a fixed-size
// buffer, like DRBD's struct bitstream with bitstream_put_bits().
type bitWriter struct {
	buf []byte // zeroed, fixed length
	pos uint   // bits written
}

// put writes the n low bits of v. It reports false, writing nothing, if
// they do not fit.
func (w *bitWriter) put(v uint64, n uint) bool {
	if n == 0 {
		return true
	}
	if (w.pos+n-1)>>3 >= uint(len(w.buf)) {
		return false
	}
	v &= lowMask(n)
	for n > 0 {
		i, sh := w.pos>>3, w.pos&7
		w.buf[i] |= byte(v << sh)
		k := 8 - sh
		if k > n {
			k = n
		}
		v >>= k
		n -= k
		w.pos += k
	}
	return true
}

// bytesUsed returns the number of bytes holding written bits.
func (w *bitWriter) bytesUsed() int { return int((w.pos + 7) >> 3) }

// padBits returns the number of unused bits in the last byte.
func (w *bitWriter) padBits() uint8 { return uint8((8 - w.pos&7) & 7) }

// bitReader reads bits least significant bit first from a byte slice whose
// last padBits bits are padding.
type bitReader struct {
	buf   []byte
	pos   uint
	total uint
}

func newBitReader(buf []byte, padBits uint8) bitReader {
	total := uint(len(buf)) * 8
	if uint(padBits) > total {
		total = 0
	} else {
		total -= uint(padBits)
	}
	return bitReader{buf: buf, total: total}
}

func (r *bitReader) remaining() uint { return r.total - r.pos }

// peek returns the next min(64, remaining) bits without consuming them;
// bits past the end read as zero.
func (r *bitReader) peek() uint64 {
	i, sh := r.pos>>3, r.pos&7
	var v uint64
	for k := uint(0); k < 8 && i+k < uint(len(r.buf)); k++ {
		v |= uint64(r.buf[i+k]) << (8 * k)
	}
	v >>= sh
	if sh > 0 && i+8 < uint(len(r.buf)) {
		v |= uint64(r.buf[i+8]) << (64 - sh)
	}
	return v & lowMask(r.remaining())
}

// nextVLI decodes the next code word.
func (r *bitReader) nextVLI() (uint64, error) {
	v, n := VLIDecode(r.peek())
	if n == 0 || uint(n) > r.remaining() {
		return 0, fmt.Errorf("%w: truncated VLI code word at bit %d of %d", ErrMalformed, r.pos, r.total)
	}
	r.pos += uint(n)
	return v, nil
}
