package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Header magics as DRBD defines them (DRBD_MAGIC, DRBD_MAGIC_BIG and
// DRBD_MAGIC_100).
const (
	MagicH80  uint32 = 0x83740267
	MagicH95  uint16 = 0x835a
	MagicH100 uint32 = 0x8620ec20
)

// Header sizes in bytes (sizeof struct p_header80/p_header95/p_header100).
const (
	HeaderSize80  = 8
	HeaderSize95  = 8
	HeaderSize100 = 16
)

// Size limits taken from drbd_int.h and drbd_protocol.h.
const (
	// MaxBioSize is DRBD_MAX_BIO_SIZE: the largest data block one P_DATA
	// packet carries (1 MiB).
	MaxBioSize = 1 << 20
	// MaxSizeH80Packet is DRBD_MAX_SIZE_H80_PACKET: a sender below protocol
	// 100 switches to the h95 header for payloads larger than this.
	MaxSizeH80Packet = 1 << 15
	// MaxBioSizeP95 is DRBD_MAX_BIO_SIZE_P95, the data block limit for
	// protocol versions 95 to 99.
	MaxBioSizeP95 = 1 << 17
	// SocketBufferSize is DRBD_SOCKET_BUFFER_SIZE: bitmap packets, header
	// included, never exceed it.
	SocketBufferSize = 4096
	// MaxPayload bounds the payload length ReadHeader accepts: the largest
	// data block plus generous room for the 24-byte p_data header and an
	// integrity digest (at most 64 bytes).
	MaxPayload = MaxBioSize + 4096
)

// Errors returned (wrapped, with details) by the decoders in this package.
// Test for them with errors.Is.
var (
	// ErrBadMagic reports a header whose magic is none of DRBD's.
	ErrBadMagic = errors.New("drbd protocol: bad header magic")
	// ErrBadHeader reports a header that is well-formed but not acceptable
	// here, such as non-zero h100 padding or the wrong header kind for the
	// agreed protocol version.
	ErrBadHeader = errors.New("drbd protocol: bad header")
	// ErrTooLarge reports a payload longer than a limit.
	ErrTooLarge = errors.New("drbd protocol: payload too large")
	// ErrShortPayload reports a payload shorter than its format needs.
	ErrShortPayload = errors.New("drbd protocol: payload too short")
	// ErrLongPayload reports a payload longer than its fixed format.
	ErrLongPayload = errors.New("drbd protocol: payload too long")
	// ErrMalformed reports a payload whose content violates the format.
	ErrMalformed = errors.New("drbd protocol: malformed payload")
	// ErrUnexpectedPacket reports a packet that does not fit the current
	// step of a conversation.
	ErrUnexpectedPacket = errors.New("drbd protocol: unexpected packet")
)

// HeaderKind names one of DRBD's three header layouts.
type HeaderKind uint8

// The header layouts.
const (
	HeaderH80 HeaderKind = iota + 1
	HeaderH95
	HeaderH100
)

// String returns "h80", "h95" or "h100".
func (k HeaderKind) String() string {
	switch k {
	case HeaderH80:
		return "h80"
	case HeaderH95:
		return "h95"
	case HeaderH100:
		return "h100"
	}
	return fmt.Sprintf("HeaderKind(%d)", uint8(k))
}

// Size returns the encoded size of a header of this kind in bytes.
func (k HeaderKind) Size() int {
	if k == HeaderH100 {
		return HeaderSize100
	}
	return HeaderSize80
}

// Header is a decoded packet header. Volume is always zero for h80 and h95.
type Header struct {
	Kind   HeaderKind
	Cmd    Cmd
	Volume uint16
	Length uint32 // payload bytes following the header
}

// String formats the header for logs.
func (h Header) String() string {
	return fmt.Sprintf("%s %s vol=%d len=%d", h.Kind, h.Cmd, h.Volume, h.Length)
}

// HeaderSizeFor returns the header size DRBD uses for an agreed protocol
// version, like drbd_header_size(): 16 bytes from version 100 on, 8 before.
func HeaderSizeFor(version int) int {
	if version >= 100 {
		return HeaderSize100
	}
	return HeaderSize80
}

// HeaderKindFor returns the header kind DRBD's prepare_header() picks for a
// payload of length bytes under an agreed protocol version: h100 from version
// 100 on, h95 from version 95 on for payloads above MaxSizeH80Packet, h80
// otherwise. A payload that no h80 header can describe (above 65535 bytes)
// gets h95 even below version 95; such peers cannot receive it at all, so
// callers should respect MaxPayloadFor.
func HeaderKindFor(version, length int) HeaderKind {
	switch {
	case version >= 100:
		return HeaderH100
	case version >= 95 && length > MaxSizeH80Packet:
		return HeaderH95
	case length > math.MaxUint16:
		return HeaderH95
	default:
		return HeaderH80
	}
}

// MaxPayloadFor returns the largest payload a packet may carry under an
// agreed protocol version: MaxPayload, or 65535 below version 95 where only
// the h80 header exists.
func MaxPayloadFor(version int) int {
	if version < 95 {
		return math.MaxUint16
	}
	return MaxPayload
}

// AppendHeader appends the header DRBD would send for a payload of length
// bytes of command cmd under the agreed protocol version (see HeaderKindFor).
// The volume is only carried by h100. It panics if length is negative or
// does not fit in 32 bits, which is a programming error.
func AppendHeader(buf []byte, version int, cmd Cmd, volume uint16, length int) []byte {
	if length < 0 || int64(length) > math.MaxUint32 {
		panic(fmt.Sprintf("protocol.AppendHeader: invalid payload length %d", length))
	}
	return appendHeaderKind(buf, HeaderKindFor(version, length), cmd, volume, uint32(length))
}

func appendHeaderKind(buf []byte, kind HeaderKind, cmd Cmd, volume uint16, length uint32) []byte {
	switch kind {
	case HeaderH100:
		buf = binary.BigEndian.AppendUint32(buf, MagicH100)
		buf = binary.BigEndian.AppendUint16(buf, volume)
		buf = binary.BigEndian.AppendUint16(buf, uint16(cmd))
		buf = binary.BigEndian.AppendUint32(buf, length)
		return binary.BigEndian.AppendUint32(buf, 0)
	case HeaderH95:
		buf = binary.BigEndian.AppendUint16(buf, MagicH95)
		buf = binary.BigEndian.AppendUint16(buf, uint16(cmd))
		return binary.BigEndian.AppendUint32(buf, length)
	default:
		buf = binary.BigEndian.AppendUint32(buf, MagicH80)
		buf = binary.BigEndian.AppendUint16(buf, uint16(cmd))
		return binary.BigEndian.AppendUint16(buf, uint16(length))
	}
}

// ReadHeader reads one packet header from r, recognising h80, h95 and h100
// by their magic. It rejects unknown magics, non-zero h100 padding and
// payload lengths above MaxPayload. A stream that ends inside the header
// yields io.ErrUnexpectedEOF (io.EOF if it ends before the first byte).
func ReadHeader(r io.Reader) (Header, error) {
	var buf [HeaderSize100]byte
	return readHeader(r, &buf)
}

func readHeader(r io.Reader, buf *[HeaderSize100]byte) (Header, error) {
	if _, err := io.ReadFull(r, buf[:HeaderSize80]); err != nil {
		return Header{}, err
	}
	kind, err := headerKindOf(buf[:4])
	if err != nil {
		return Header{}, err
	}
	if kind == HeaderH100 {
		if _, err := io.ReadFull(r, buf[HeaderSize80:HeaderSize100]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Header{}, err
		}
	}
	return decodeHeader(kind, buf[:kind.Size()])
}

// ParseHeader decodes the header at the start of b and returns it with its
// size. It applies the same checks as ReadHeader and reports
// ErrShortPayload if b holds less than a whole header.
func ParseHeader(b []byte) (Header, int, error) {
	if len(b) < 4 {
		return Header{}, 0, fmt.Errorf("%w: %d bytes cannot hold a header", ErrShortPayload, len(b))
	}
	kind, err := headerKindOf(b[:4])
	if err != nil {
		return Header{}, 0, err
	}
	if len(b) < kind.Size() {
		return Header{}, 0, fmt.Errorf("%w: %d bytes cannot hold an %s header", ErrShortPayload, len(b), kind)
	}
	h, err := decodeHeader(kind, b[:kind.Size()])
	if err != nil {
		return Header{}, 0, err
	}
	return h, kind.Size(), nil
}

func headerKindOf(b []byte) (HeaderKind, error) {
	switch {
	case binary.BigEndian.Uint32(b) == MagicH100:
		return HeaderH100, nil
	case binary.BigEndian.Uint32(b) == MagicH80:
		return HeaderH80, nil
	case binary.BigEndian.Uint16(b) == MagicH95:
		return HeaderH95, nil
	}
	return 0, fmt.Errorf("%w 0x%08x", ErrBadMagic, binary.BigEndian.Uint32(b))
}

func decodeHeader(kind HeaderKind, b []byte) (Header, error) {
	var h Header
	h.Kind = kind
	switch kind {
	case HeaderH100:
		h.Volume = binary.BigEndian.Uint16(b[4:])
		h.Cmd = Cmd(binary.BigEndian.Uint16(b[6:]))
		h.Length = binary.BigEndian.Uint32(b[8:])
		if pad := binary.BigEndian.Uint32(b[12:]); pad != 0 {
			return Header{}, fmt.Errorf("%w: h100 padding is 0x%08x, not zero", ErrBadHeader, pad)
		}
	case HeaderH95:
		h.Cmd = Cmd(binary.BigEndian.Uint16(b[2:]))
		h.Length = binary.BigEndian.Uint32(b[4:])
	default:
		h.Cmd = Cmd(binary.BigEndian.Uint16(b[4:]))
		h.Length = uint32(binary.BigEndian.Uint16(b[6:]))
	}
	if h.Length > MaxPayload {
		return Header{}, fmt.Errorf("%w: %s announces %d bytes, limit is %d", ErrTooLarge, h.Cmd, h.Length, MaxPayload)
	}
	return h, nil
}
