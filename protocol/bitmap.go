package protocol

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
)

// RLEVLIBits is the only bitmap encoding DRBD defines (enum
// drbd_bitmap_code RLE_VLI_Bits): run lengths coded as VLI bit strings.
const RLEVLIBits = 2

// BitmapWords returns the number of 64-bit words holding nbits bits.
func BitmapWords(nbits uint64) uint64 { return (nbits + 63) / 64 }

// BitmapPlain is the payload of P_BITMAP: a slice of the out-of-sync
// bitmap as little-endian 64-bit words, bit i of word w standing for bitmap
// bit 64*w+i (DRBD's "lel" layout, the same bytes on 32- and 64-bit hosts).
type BitmapPlain struct {
	Words []uint64
}

// MarshalAppend appends the words in little-endian order.
func (p *BitmapPlain) MarshalAppend(b []byte) []byte {
	for _, w := range p.Words {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	return b
}

// Unmarshal decodes a whole number of words, at most SocketBufferSize
// bytes.
func (p *BitmapPlain) Unmarshal(b []byte) error {
	if len(b) > SocketBufferSize {
		return fmt.Errorf("%w: P_BITMAP of %d bytes exceeds %d", ErrTooLarge, len(b), SocketBufferSize)
	}
	if len(b)%8 != 0 {
		return fmt.Errorf("%w: P_BITMAP of %d bytes is no whole number of words", ErrMalformed, len(b))
	}
	p.Words = make([]uint64, len(b)/8)
	for i := range p.Words {
		p.Words[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return nil
}

// CompressedBitmap is struct p_compressed_bm, the payload of
// P_COMPRESSED_BITMAP. The encoding byte holds the code (RLEVLIBits) in
// bits 0-3, the number of padding bits at the end of Code in bits 4-6, and
// whether the first run is of set bits in bit 7. Code is a stream of VLI
// code words, least significant bit first, each the length of a run of
// equal bits; polarity alternates from run to run.
type CompressedBitmap struct {
	Start   bool   // the first run consists of set bits
	PadBits uint8  // unused bits at the end of Code (0-7)
	Code    []byte // copied by Unmarshal
}

// MarshalAppend appends the encoding byte and the code.
func (c *CompressedBitmap) MarshalAppend(b []byte) []byte {
	enc := byte(RLEVLIBits) | (c.PadBits&7)<<4
	if c.Start {
		enc |= 0x80
	}
	b = append(b, enc)
	return append(b, c.Code...)
}

// Unmarshal decodes the payload: at least one code byte, at most
// SocketBufferSize bytes in all, and the RLEVLIBits encoding.
func (c *CompressedBitmap) Unmarshal(b []byte) error {
	switch {
	case len(b) < 2:
		return fmt.Errorf("%w: P_COMPRESSED_BITMAP of %d bytes holds no code", ErrShortPayload, len(b))
	case len(b) > SocketBufferSize:
		return fmt.Errorf("%w: P_COMPRESSED_BITMAP of %d bytes exceeds %d", ErrTooLarge, len(b), SocketBufferSize)
	case b[0]&0x0f != RLEVLIBits:
		return fmt.Errorf("%w: unknown bitmap encoding %d", ErrMalformed, b[0]&0x0f)
	}
	c.Start = b[0]&0x80 != 0
	c.PadBits = b[0] >> 4 & 7
	c.Code = bytes.Clone(b[1:])
	return nil
}

// Runs decodes the run lengths in order and calls fn for each. It fails if
// the code stream does not end exactly at a code word boundary (after the
// padding is removed).
func (c *CompressedBitmap) Runs(fn func(run uint64) error) error {
	r := newBitReader(c.Code, c.PadBits)
	for r.remaining() > 0 {
		rl, err := r.nextVLI()
		if err != nil {
			return err
		}
		if err := fn(rl); err != nil {
			return err
		}
	}
	return nil
}

// bitmapDataSize is the payload room of one bitmap packet under an agreed
// protocol version: the socket buffer minus the header.
func bitmapDataSize(version int) int { return SocketBufferSize - HeaderSizeFor(version) }

// WordSource is a bitmap a BitmapSender reads, as 64-bit words (bit i is
// bit i%64 of word i/64). ReadWords copies words [off, off+len(dst)) into
// dst. It lets a sender stream a bitmap kept elsewhere, a window at a
// time, instead of copying all of it first.
type WordSource interface {
	ReadWords(dst []uint64, off uint64)
}

// WordSink is a bitmap a BitmapReceiver merges into: OrWords ORs src into
// words [off, off+len(src)).
type WordSink interface {
	OrWords(src []uint64, off uint64)
}

// sliceWords is a bitmap held in a slice, as both source and sink.
type sliceWords []uint64

func (w sliceWords) ReadWords(dst []uint64, off uint64) { copy(dst, w[off:]) }

func (w sliceWords) OrWords(src []uint64, off uint64) {
	for i, v := range src {
		w[off+uint64(i)] |= v
	}
}

// senderWindow is how many words a BitmapSender reads from its source at
// a time.
const senderWindow = 4096

// orBitRange sets bits s..e inclusive in dst, a word at a time through buf
// (a scratch slice of at least one word).
func orBitRange(dst WordSink, buf []uint64, s, e uint64) {
	for s <= e {
		first := s / 64
		n := 0
		for s <= e && n < len(buf) {
			b := s % 64
			k := min(uint64(64)-b, e-s+1)
			buf[n] = lowMask(uint(k)) << b
			n++
			s += k
		}
		dst.OrWords(buf[:n], first)
	}
}

// BitmapReceiver merges a peer's bitmap transfer (P_BITMAP and
// P_COMPRESSED_BITMAP packets) into a local bitmap by OR-ing, exactly as
// DRBD's receive_bitmap() does, including its packet size rules.
type BitmapReceiver struct {
	dst        WordSink
	nwords     uint64
	scratch    []uint64
	nbits      uint64
	dataSize   int
	wordOffset uint64
	bitOffset  uint64
	done       bool
	packets    [2]int // [0] compressed, [1] plain
	bytes      [2]int
	hdrSize    int
}

// NewBitmapReceiver returns a receiver merging into words, a bitmap of
// nbits bits (len(words) must be BitmapWords(nbits)), for packets framed
// under the agreed protocol version.
func NewBitmapReceiver(words []uint64, nbits uint64, version int) (*BitmapReceiver, error) {
	if uint64(len(words)) != BitmapWords(nbits) {
		return nil, fmt.Errorf("bitmap of %d bits needs %d words, got %d", nbits, BitmapWords(nbits), len(words))
	}
	return NewBitmapReceiverInto(sliceWords(words), nbits, version), nil
}

// NewBitmapReceiverInto returns a receiver merging into dst, a bitmap of
// nbits bits, packet by packet, for packets framed under the agreed
// protocol version. It never sets a bit at or past nbits.
func NewBitmapReceiverInto(dst WordSink, nbits uint64, version int) *BitmapReceiver {
	ds := bitmapDataSize(version)
	return &BitmapReceiver{dst: dst, nwords: BitmapWords(nbits), scratch: make([]uint64, ds/8+1), nbits: nbits, dataSize: ds, hdrSize: HeaderSizeFor(version)}
}

// Done reports whether the transfer is complete.
func (r *BitmapReceiver) Done() bool { return r.done }

// Stats returns the number of packets and bytes (headers included)
// received as plain and as compressed bitmap packets.
func (r *BitmapReceiver) Stats() (plainPackets, plainBytes, rlePackets, rleBytes int) {
	return r.packets[1], r.bytes[1], r.packets[0], r.bytes[0]
}

// Receive processes one bitmap packet and reports whether it completed the
// transfer. Any error means the transfer (and the connection) must be
// abandoned; the bitmap may then hold a partial merge.
func (r *BitmapReceiver) Receive(cmd Cmd, payload []byte) (done bool, err error) {
	if r.done {
		return true, fmt.Errorf("%w: %s after the bitmap transfer completed", ErrUnexpectedPacket, cmd)
	}
	switch cmd {
	case PBitmap:
		r.packets[1]++
		r.bytes[1] += r.hdrSize + len(payload)
		err = r.receivePlain(payload)
	case PCompressedBitmap:
		r.packets[0]++
		r.bytes[0] += r.hdrSize + len(payload)
		err = r.receiveCompressed(payload)
	default:
		return false, fmt.Errorf("%w: %s during bitmap transfer", ErrUnexpectedPacket, cmd)
	}
	return r.done, err
}

func (r *BitmapReceiver) receivePlain(payload []byte) error {
	n := min(uint64(r.dataSize/8), r.nwords-r.wordOffset)
	if uint64(len(payload)) != n*8 {
		return fmt.Errorf("%w: P_BITMAP carries %d bytes, expected %d", ErrMalformed, len(payload), n*8)
	}
	if n == 0 {
		r.done = true
		return nil
	}
	words := r.scratch[:n]
	for i := range words {
		words[i] = binary.LittleEndian.Uint64(payload[8*i:])
	}
	if r.wordOffset+n == r.nwords {
		// The bits past nbits in the last word are not the bitmap's.
		if tail := r.nbits % 64; tail != 0 {
			words[n-1] &= lowMask(uint(tail))
		}
	}
	r.dst.OrWords(words, r.wordOffset)
	r.wordOffset += n
	r.bitOffset = min(r.wordOffset*64, r.nbits)
	return nil
}

func (r *BitmapReceiver) receiveCompressed(payload []byte) error {
	if len(payload) > r.dataSize {
		return fmt.Errorf("%w: P_COMPRESSED_BITMAP of %d bytes exceeds %d", ErrTooLarge, len(payload), r.dataSize)
	}
	var c CompressedBitmap
	if err := c.Unmarshal(payload); err != nil {
		return err
	}
	s := r.bitOffset
	toggle := c.Start
	err := c.Runs(func(rl uint64) error {
		if rl > r.nbits-s {
			return fmt.Errorf("%w: bitmap overflow: run of %d bits at bit %d of %d", ErrMalformed, rl, s, r.nbits)
		}
		if toggle {
			orBitRange(r.dst, r.scratch, s, s+rl-1)
		}
		s += rl
		toggle = !toggle
		return nil
	})
	if err != nil {
		return err
	}
	r.bitOffset = s
	r.wordOffset = s / 64
	r.done = s == r.nbits
	return nil
}

// BitmapSender produces the packets of a bitmap transfer the way DRBD's
// send_bitmap_rle_or_plain() does: a run-length coded P_COMPRESSED_BITMAP
// whenever that is smaller than the plain bits it covers, otherwise a
// P_BITMAP with as many words as fit, ended by an empty P_BITMAP when the
// plain words reach the end.
type BitmapSender struct {
	src        WordSource
	nwords     uint64
	win        []uint64 // words [winOff, winOff+len(win)) of src
	winOff     uint64
	nbits      uint64
	dataSize   int
	useRLE     bool
	wordOffset uint64
	bitOffset  uint64
	done       bool
	code       []byte
}

// NewBitmapSender returns a sender for words, a bitmap of nbits bits
// (len(words) must be BitmapWords(nbits)), framed under the agreed protocol
// version. Compression is used when useRLE is set and the version is at
// least 90. The sender reads words while producing packets; the caller
// must not modify them meanwhile.
func NewBitmapSender(words []uint64, nbits uint64, version int, useRLE bool) (*BitmapSender, error) {
	if uint64(len(words)) != BitmapWords(nbits) {
		return nil, fmt.Errorf("bitmap of %d bits needs %d words, got %d", nbits, BitmapWords(nbits), len(words))
	}
	return NewBitmapSenderFrom(sliceWords(words), nbits, version, useRLE), nil
}

// NewBitmapSenderFrom returns a sender for src, a bitmap of nbits bits,
// which it reads a window of words at a time while producing packets.
// Bits set in src while the transfer runs may or may not be sent.
func NewBitmapSenderFrom(src WordSource, nbits uint64, version int, useRLE bool) *BitmapSender {
	ds := bitmapDataSize(version)
	return &BitmapSender{
		src:      src,
		nwords:   BitmapWords(nbits),
		nbits:    nbits,
		dataSize: ds,
		useRLE:   useRLE && version >= 90,
		code:     make([]byte, ds-1),
	}
}

// word returns word i of the source, through the window.
func (s *BitmapSender) word(i uint64) uint64 {
	if i < s.winOff || i >= s.winOff+uint64(len(s.win)) {
		n := min(senderWindow, s.nwords-i)
		if cap(s.win) < senderWindow {
			s.win = make([]uint64, senderWindow)
		}
		s.win = s.win[:n]
		s.winOff = i
		s.src.ReadWords(s.win, i)
	}
	return s.win[i-s.winOff]
}

// findNext returns the index of the first bit >= from that is set (want
// true) or clear (want false), or nbits if there is none.
func (s *BitmapSender) findNext(from uint64, want bool) uint64 {
	for from < s.nbits {
		w := s.word(from / 64)
		if !want {
			w = ^w
		}
		w &= ^uint64(0) << (from % 64)
		if w != 0 {
			pos := from&^63 + uint64(bits.TrailingZeros64(w))
			return min(pos, s.nbits)
		}
		from = from&^63 + 64
	}
	return s.nbits
}

// Next appends the payload of the next packet to dst[:0] and returns its
// command. ok is false once the transfer is complete.
func (s *BitmapSender) Next(dst []byte) (cmd Cmd, payload []byte, ok bool) {
	if s.done {
		return 0, nil, false
	}
	if s.useRLE {
		if c, ok := s.fillRLE(); ok {
			if s.bitOffset >= s.nbits {
				s.done = true
			}
			return PCompressedBitmap, c.MarshalAppend(dst[:0]), true
		}
	}
	n := min(uint64(s.dataSize/8), s.nwords-s.wordOffset)
	payload = dst[:0]
	for i := range n {
		payload = binary.LittleEndian.AppendUint64(payload, s.word(s.wordOffset+i))
	}
	s.wordOffset += n
	s.bitOffset = min(s.wordOffset*64, s.nbits)
	if n == 0 {
		s.done = true
	}
	return PBitmap, payload, true
}

// fillRLE tries to code the bits from bitOffset on into one packet. It
// reports false, leaving the offsets at the start of the current word, if
// there is nothing left or the code would not be smaller than the bits it
// covers.
func (s *BitmapSender) fillRLE() (CompressedBitmap, bool) {
	if s.bitOffset >= s.nbits {
		return CompressedBitmap{}, false
	}
	clear(s.code)
	w := bitWriter{buf: s.code}
	var c CompressedBitmap
	var plain uint64
	first := true
	setRun := false // polarity of the run being measured
	for s.bitOffset < s.nbits {
		next := s.findNext(s.bitOffset, !setRun)
		rl := next - s.bitOffset
		if first {
			first = false
			if rl == 0 {
				// The first bit is set: record that and measure the set run.
				c.Start = true
				setRun = true
				continue
			}
		}
		code, n, err := VLIEncode(rl)
		if err != nil || !w.put(code, uint(n)) {
			break
		}
		plain += rl
		s.bitOffset = next
		setRun = !setRun
	}
	used := w.bytesUsed()
	if plain < uint64(used)*8 || used == 0 {
		// Incompressible: rewind to the start of the word, send plain.
		s.bitOffset -= plain
		s.wordOffset = s.bitOffset / 64
		s.bitOffset = s.wordOffset * 64
		return CompressedBitmap{}, false
	}
	s.wordOffset = s.bitOffset / 64
	c.PadBits = w.padBits()
	c.Code = s.code[:used]
	return c, true
}
