package protocol

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// Level boundaries of the code table in drbd_vli.h: the first value of
// each level and the code length there.
var vliBounds = []struct {
	first uint64
	bits  int
}{
	{1, 2}, {3, 3}, {5, 5}, {9, 7}, {17, 10}, {49, 14}, {305, 21},
	{8497, 29}, {2105649, 42}, {17181974833, 64},
}

func TestVLIBoundaries(t *testing.T) {
	for i, b := range vliBounds {
		last := VLIMax
		if i+1 < len(vliBounds) {
			last = vliBounds[i+1].first - 1
		}
		for _, v := range []uint64{b.first, b.first + 1, last - 1, last} {
			code, n, err := VLIEncode(v)
			if err != nil || n != b.bits {
				t.Fatalf("VLIEncode(%d) = %d bits, %v; want %d bits", v, n, err, b.bits)
			}
			if n < 64 && code>>uint(n) != 0 {
				t.Fatalf("VLIEncode(%d) has bits above its length", v)
			}
			got, m := VLIDecode(code)
			if got != v || m != n {
				t.Fatalf("VLIDecode(VLIEncode(%d)) = %d, %d bits", v, got, m)
			}
			// Garbage in the bits after the code word is ignored.
			if n < 64 {
				got, m = VLIDecode(code | ^uint64(0)<<uint(n))
				if got != v || m != n {
					t.Fatalf("VLIDecode with trailing ones = %d, %d", got, m)
				}
			}
		}
	}
	if VLIMax != 0x100000400202130 {
		t.Fatal("VLIMax differs from drbd_vli.h")
	}
}

func TestVLIErrors(t *testing.T) {
	if _, _, err := VLIEncode(0); !errors.Is(err, ErrVLIZero) {
		t.Errorf("encode 0: %v", err)
	}
	if _, _, err := VLIEncode(VLIMax + 1); !errors.Is(err, ErrVLIOverflow) {
		t.Errorf("encode max+1: %v", err)
	}
	if _, _, err := VLIEncode(^uint64(0)); !errors.Is(err, ErrVLIOverflow) {
		t.Errorf("encode 2^64-1: %v", err)
	}
}

// Hand-computed code words: 1 is "00", 2 is "10" (LSB first), 3 is "100",
// 7 is prefix 011 then data 10, i.e. the value 0b10011.
func TestVLIKnownCodes(t *testing.T) {
	tests := []struct {
		v    uint64
		code uint64
		bits int
	}{
		{1, 0b00, 2}, {2, 0b10, 2}, {3, 0b001, 3}, {4, 0b101, 3},
		{7, 0b10011, 5}, {10, 0b0010111, 7}, {17, 0b0000001111, 10},
		{VLIMax, 0xffffffffffffffff, 64},
	}
	for _, tt := range tests {
		code, n, err := VLIEncode(tt.v)
		if err != nil || code != tt.code || n != tt.bits {
			t.Errorf("VLIEncode(%d) = %#b/%d, %v; want %#b/%d", tt.v, code, n, err, tt.code, tt.bits)
		}
	}
}

func TestVLIRoundTrip(t *testing.T) {
	for v := uint64(1); v < 100000; v++ {
		code, n, err := VLIEncode(v)
		if err != nil {
			t.Fatal(err)
		}
		if got, m := VLIDecode(code); got != v || m != n {
			t.Fatalf("%d: got %d/%d", v, got, m)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		v := r.Uint64N(VLIMax) + 1
		code, n, err := VLIEncode(v)
		if err != nil {
			t.Fatal(err)
		}
		if got, m := VLIDecode(code); got != v || m != n {
			t.Fatalf("%d: got %d/%d", v, got, m)
		}
	}
}

// A stream of code words written with bitWriter reads back with bitReader,
// across byte boundaries, including 64-bit words at odd offsets.
func TestBitstreamRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for iter := 0; iter < 200; iter++ {
		w := bitWriter{buf: make([]byte, 512)}
		var vals []uint64
		for {
			var v uint64
			switch r.IntN(3) {
			case 0:
				v = r.Uint64N(20) + 1
			case 1:
				v = r.Uint64N(1<<30) + 1
			default:
				v = VLIMax - r.Uint64N(1000)
			}
			code, n, err := VLIEncode(v)
			if err != nil {
				t.Fatal(err)
			}
			if !w.put(code, uint(n)) {
				break
			}
			vals = append(vals, v)
		}
		rd := newBitReader(w.buf[:w.bytesUsed()], w.padBits())
		for i, want := range vals {
			got, err := rd.nextVLI()
			if err != nil || got != want {
				t.Fatalf("iter %d value %d: got %d, %v; want %d", iter, i, got, err, want)
			}
		}
		if rd.remaining() != 0 {
			t.Fatalf("%d bits left over", rd.remaining())
		}
	}
}

func TestBitWriterFull(t *testing.T) {
	w := bitWriter{buf: make([]byte, 1)}
	if !w.put(0x7f, 7) || w.put(0x3, 2) || !w.put(1, 1) || w.put(1, 1) {
		t.Fatal("bitWriter does not respect its buffer size")
	}
	if w.buf[0] != 0xff || w.padBits() != 0 {
		t.Fatalf("buf %x pad %d", w.buf, w.padBits())
	}
}
