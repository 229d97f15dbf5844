package resync

import "math/bits"

// memBitmap is a plain in-memory Bitmap for tests.
type memBitmap struct {
	w []uint64
	n uint64
}

func newMemBitmap(n uint64) *memBitmap {
	return &memBitmap{w: make([]uint64, (n+63)/64), n: n}
}

// bitmapOf builds a bitmap from a pattern: 'X' is a set bit, anything else
// a clear one.
func bitmapOf(pattern string) *memBitmap {
	m := newMemBitmap(uint64(len(pattern)))
	for i, c := range pattern {
		if c == 'X' {
			m.Set(uint64(i), 1)
		}
	}
	return m
}

func (m *memBitmap) Bits() uint64 { return m.n }

func (m *memBitmap) Test(b uint64) bool {
	return b < m.n && m.w[b/64]&(1<<(b%64)) != 0
}

func (m *memBitmap) Set(b, n uint64) {
	for i := b; i < b+n && i < m.n; i++ {
		m.w[i/64] |= 1 << (i % 64)
	}
}

func (m *memBitmap) Clear(b, n uint64) {
	for i := b; i < b+n && i < m.n; i++ {
		m.w[i/64] &^= 1 << (i % 64)
	}
}

func (m *memBitmap) NextSet(from uint64) (uint64, bool) {
	if from >= m.n {
		return 0, false
	}
	i := from / 64
	w := m.w[i] &^ (1<<(from%64) - 1)
	for {
		if w != 0 {
			b := i*64 + uint64(bits.TrailingZeros64(w))
			return b, b < m.n
		}
		i++
		if i >= uint64(len(m.w)) {
			return 0, false
		}
		w = m.w[i]
	}
}

func (m *memBitmap) Weight() uint64 {
	var n uint64
	for _, w := range m.w {
		n += uint64(bits.OnesCount64(w))
	}
	return n
}

func (m *memBitmap) String() string {
	b := make([]byte, m.n)
	for i := range b {
		b[i] = '.'
		if m.Test(uint64(i)) {
			b[i] = 'X'
		}
	}
	return string(b)
}
