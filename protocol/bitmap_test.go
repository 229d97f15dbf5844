package protocol

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// A compressed bitmap built by hand from the code table: 20 bits, bits 3-9
// set. Runs 3 (clear), 7 (set), 10 (clear) code as 100, 11001 and 1110100
// (LSB first), 15 bits: bytes 0x99 0x17 with one pad bit; the encoding
// byte is RLE_VLI_Bits (2) | pad 1 << 4, start polarity clear.
func TestCompressedBitmapHandBuilt(t *testing.T) {
	payload := []byte{0x12, 0x99, 0x17}
	words := make([]uint64, 1)
	r, err := NewBitmapReceiver(words, 20, 101)
	if err != nil {
		t.Fatal(err)
	}
	done, err := r.Receive(PCompressedBitmap, payload)
	if err != nil || !done {
		t.Fatalf("Receive = %v, %v", done, err)
	}
	if words[0] != 0x3f8 {
		t.Fatalf("bitmap %#x, want 0x3f8", words[0])
	}
	var c CompressedBitmap
	if err := c.Unmarshal(payload); err != nil {
		t.Fatal(err)
	}
	var runs []uint64
	if err := c.Runs(func(rl uint64) error { runs = append(runs, rl); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(runs, []uint64{3, 7, 10}) || c.Start || c.PadBits != 1 {
		t.Fatalf("runs %v start %v pad %d", runs, c.Start, c.PadBits)
	}

	// The sender produces exactly these bytes for that bitmap.
	s, err := NewBitmapSender([]uint64{0x3f8}, 20, 101, true)
	if err != nil {
		t.Fatal(err)
	}
	cmd, p, ok := s.Next(nil)
	if !ok || cmd != PCompressedBitmap || string(p) != string(payload) {
		t.Fatalf("sender: %s %x", cmd, p)
	}
	if _, _, ok := s.Next(nil); ok {
		t.Fatal("sender continues after the last packet")
	}
}

func TestCompressedBitmapStartSet(t *testing.T) {
	// Bits 0-499 of 1000 set: runs 500 (set) and 500 (clear), 21 code bits
	// each, far fewer than 1000 plain bits.
	src := make([]uint64, BitmapWords(1000))
	setBitRange(src, 0, 499)
	s, _ := NewBitmapSender(src, 1000, 101, true)
	cmd, p, _ := s.Next(nil)
	var c CompressedBitmap
	if cmd != PCompressedBitmap || c.Unmarshal(p) != nil || !c.Start || len(c.Code) != 6 || c.PadBits != 6 {
		t.Fatalf("%s %x", cmd, p)
	}
	dst := make([]uint64, len(src))
	receiveAll(t, dst, 1000, 101, src, true)
	if !slices.Equal(dst, src) {
		t.Fatal("bitmap differs")
	}
}

func TestCompressedBitmapErrors(t *testing.T) {
	tests := []struct {
		name    string
		nbits   uint64
		payload []byte
		want    error
	}{
		// Run of 3 set bits in a 2-bit bitmap.
		{"overflow", 2, []byte{0x82, 0x01}, ErrMalformed},
		// Run code 110 needs 5 bits; only 3 valid (pad 5).
		{"truncated code", 100, []byte{0x52, 0x03}, ErrMalformed},
		{"bad encoding", 100, []byte{0x01, 0x00}, ErrMalformed},
		{"too large", 100, make([]byte, 4081), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := NewBitmapReceiver(make([]uint64, BitmapWords(tt.nbits)), tt.nbits, 101)
			if _, err := r.Receive(PCompressedBitmap, tt.payload); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	r, _ := NewBitmapReceiver(make([]uint64, 1), 64, 101)
	if _, err := r.Receive(PData, nil); !errors.Is(err, ErrUnexpectedPacket) {
		t.Fatalf("P_DATA during transfer: %v", err)
	}
	if _, err := r.Receive(PBitmap, make([]byte, 16)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("too many words: %v", err)
	}
	if _, err := NewBitmapReceiver(make([]uint64, 2), 64, 101); err == nil {
		t.Fatal("word count mismatch accepted")
	}
}

// receiveAll runs a whole transfer of src through a sender and a fresh
// receiver merging into dst, checking DRBD's packet size rules on the way,
// and returns the packet commands.
func receiveAll(t *testing.T, dst []uint64, nbits uint64, version int, src []uint64, rle bool) []Cmd {
	t.Helper()
	s, err := NewBitmapSender(src, nbits, version, rle)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewBitmapReceiver(dst, nbits, version)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []Cmd
	var buf []byte
	maxPayload := SocketBufferSize - HeaderSizeFor(version)
	for {
		cmd, p, ok := s.Next(buf)
		if !ok {
			break
		}
		buf = p
		if len(p) > maxPayload {
			t.Fatalf("%s payload of %d bytes exceeds %d", cmd, len(p), maxPayload)
		}
		cmds = append(cmds, cmd)
		done, err := r.Receive(cmd, p)
		if err != nil {
			t.Fatalf("packet %d (%s): %v", len(cmds), cmd, err)
		}
		if done {
			if _, _, ok := s.Next(buf); ok {
				t.Fatal("receiver done before sender")
			}
			break
		}
		if len(cmds) > 1<<20 {
			t.Fatal("transfer does not end")
		}
	}
	if !r.Done() {
		t.Fatal("receiver not done after sender finished")
	}
	return cmds
}

func randomBitmap(r *rand.Rand, nbits uint64, kind int) []uint64 {
	w := make([]uint64, BitmapWords(nbits))
	switch kind {
	case 0: // empty
	case 1: // full
		for i := range w {
			w[i] = ^uint64(0)
		}
	case 2: // noise: incompressible
		for i := range w {
			w[i] = r.Uint64()
		}
	case 3: // alternating bits: worst case for RLE
		for i := range w {
			w[i] = 0x5555555555555555
		}
	default: // a few dirty extents
		for n := r.IntN(20); n > 0; n-- {
			s := r.Uint64N(nbits)
			e := min(nbits-1, s+r.Uint64N(5000))
			setBitRange(w, s, e)
		}
	}
	if tail := nbits % 64; tail != 0 {
		w[len(w)-1] &= lowMask(uint(tail))
	}
	return w
}

func TestBitmapTransferRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	sizes := []uint64{1, 63, 64, 65, 1000, 32704, 32768, 100003, 1 << 20}
	for _, nbits := range sizes {
		for kind := 0; kind < 6; kind++ {
			for _, version := range []int{89, 96, 100, 101} {
				for _, rle := range []bool{false, true} {
					src := randomBitmap(r, nbits, kind)
					dst := make([]uint64, len(src))
					cmds := receiveAll(t, dst, nbits, version, src, rle)
					if !slices.Equal(dst, src) {
						t.Fatalf("bits=%d kind=%d v=%d rle=%v: bitmap differs", nbits, kind, version, rle)
					}
					if !rle || version < 90 {
						for _, c := range cmds {
							if c != PBitmap {
								t.Fatalf("compressed packet without RLE")
							}
						}
					}
					if cmds[len(cmds)-1] == PBitmap {
						// Plain transfers end with an empty P_BITMAP, which
						// receiveAll verified by completing.
						continue
					}
				}
			}
		}
	}
}

// Merging ORs: bits already set locally stay set.
func TestBitmapReceiverORs(t *testing.T) {
	src := []uint64{0x0f0f, 0}
	dst := []uint64{0xf000, 1}
	receiveAll(t, dst, 128, 101, src, true)
	if dst[0] != 0xff0f || dst[1] != 1 {
		t.Fatalf("%x", dst)
	}
	// Surplus bits past nbits are cleared.
	dst = []uint64{0}
	receiveAll(t, dst, 4, 101, []uint64{^uint64(0)}, false)
	if dst[0] != 0xf {
		t.Fatalf("surplus bits kept: %#x", dst[0])
	}
}

// A sparse 1 TiB bitmap (2^28 bits) compresses into a handful of packets.
func TestBitmapCompressesSparse(t *testing.T) {
	nbits := uint64(1) << 28
	src := make([]uint64, BitmapWords(nbits))
	setBitRange(src, 12345, 12345+4095)
	setBitRange(src, nbits-100, nbits-1)
	dst := make([]uint64, len(src))
	cmds := receiveAll(t, dst, nbits, 101, src, true)
	if len(cmds) != 1 || cmds[0] != PCompressedBitmap {
		t.Fatalf("packets: %v", cmds)
	}
	if !slices.Equal(src, dst) {
		t.Fatal("bitmap differs")
	}
}

func TestPlainPacketSizes(t *testing.T) {
	// 1200 words at protocol 101: 510 + 510 + 180 + empty terminator.
	src := make([]uint64, 1200)
	s, _ := NewBitmapSender(src, 1200*64, 101, false)
	var sizes []int
	for {
		_, p, ok := s.Next(nil)
		if !ok {
			break
		}
		sizes = append(sizes, len(p))
	}
	if !slices.Equal(sizes, []int{4080, 4080, 1440, 0}) {
		t.Fatalf("sizes %v", sizes)
	}
	// At protocol 96 (8-byte header) 511 words fit.
	s, _ = NewBitmapSender(src, 1200*64, 96, false)
	_, p, _ := s.Next(nil)
	if len(p) != 4088 {
		t.Fatalf("v96 packet %d bytes", len(p))
	}
}

func TestFindNext(t *testing.T) {
	w := []uint64{0, 1 << 5, ^uint64(0)}
	if got := findNext(w, 192, 0, true); got != 69 {
		t.Errorf("next set = %d", got)
	}
	if got := findNext(w, 192, 69, false); got != 70 {
		t.Errorf("next clear = %d", got)
	}
	if got := findNext(w, 192, 128, false); got != 192 {
		t.Errorf("no clear bit: %d", got)
	}
	if got := findNext(w, 130, 128, false); got != 130 {
		t.Errorf("clamped: %d", got)
	}
}

// countingWords is a slice bitmap that counts how it is read and written.
type countingWords struct {
	sliceWords
	reads, maxRead int
	ors            int
}

func (c *countingWords) ReadWords(dst []uint64, off uint64) {
	c.reads++
	c.maxRead = max(c.maxRead, len(dst))
	c.sliceWords.ReadWords(dst, off)
}

func (c *countingWords) OrWords(src []uint64, off uint64) {
	c.ors++
	if off+uint64(len(src)) > uint64(len(c.sliceWords)) {
		panic("OrWords past the end of the bitmap")
	}
	c.sliceWords.OrWords(src, off)
}

// TestBitmapStreaming: a bitmap many windows long goes from a WordSource
// to a WordSink read a window at a time and merged packet by packet, for
// dense (plain) and sparse (compressed) contents, and arrives whole, with
// no bit set past the end.
func TestBitmapStreaming(t *testing.T) {
	const nbits = 40*senderWindow*64 - 7
	for _, tc := range []struct {
		name string
		fill func(w []uint64)
	}{
		{"sparse", func(w []uint64) {
			for b := uint64(3); b < nbits; b += 99991 {
				setBitRange(w, b, min(b+700, nbits-1))
			}
		}},
		{"dense", func(w []uint64) {
			for i := range w {
				w[i] = 0x9e3779b97f4a7c15 * uint64(i+1)
			}
			w[len(w)-1] &= lowMask(nbits % 64)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &countingWords{sliceWords: make([]uint64, BitmapWords(nbits))}
			tc.fill(src.sliceWords)
			dst := &countingWords{sliceWords: make([]uint64, BitmapWords(nbits))}
			dst.sliceWords[len(dst.sliceWords)-1] = 1 // a bit of our own survives the merge
			s := NewBitmapSenderFrom(src, nbits, 101, true)
			r := NewBitmapReceiverInto(dst, nbits, 101)
			for !r.Done() {
				cmd, p, ok := s.Next(nil)
				if !ok {
					t.Fatal("sender finished before the receiver")
				}
				if _, err := r.Receive(cmd, p); err != nil {
					t.Fatal(err)
				}
			}
			want := slices.Clone(src.sliceWords)
			want[len(want)-1] |= 1
			if !slices.Equal(dst.sliceWords, want) {
				t.Fatal("the merged bitmap differs")
			}
			if src.maxRead > senderWindow || src.reads < 40 {
				t.Errorf("source read %d times, at most %d words: not windowed", src.reads, src.maxRead)
			}
			if dst.ors == 0 {
				t.Error("nothing merged into the sink")
			}
		})
	}
}
