package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic numbers of the handshake and the transmission phase.
const (
	magicNBD          = 0x4e42444d41474943 // "NBDMAGIC", the server's greeting
	magicIHaveOpt     = 0x49484156454f5054 // "IHAVEOPT", newstyle greeting and option header
	magicOptReply     = 0x0003e889045565a9 // option reply header
	magicRequest      = 0x25609513         // transmission request header
	magicSimpleReply  = 0x67446698         // simple reply header
	requestHeaderSize = 28                 // bytes in a transmission request header
	replyHeaderSize   = 16                 // bytes in a simple reply header
	optHeaderSize     = 16                 // bytes in an option request header
	optReplyHdrSize   = 20                 // bytes in an option reply header
)

// Handshake flags sent by the server after the greeting.
const (
	handshakeFlagFixedNewstyle = 1 << 0
	handshakeFlagNoZeroes      = 1 << 1
)

// Client flags sent in reply to the handshake flags.
const (
	clientFlagFixedNewstyle = 1 << 0
	clientFlagNoZeroes      = 1 << 1
	clientFlagsKnown        = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Option types of the fixed newstyle negotiation.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11
)

// Option reply types. Errors have bit 31 set.
const (
	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrPolicy  = 1<<31 + 2
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6
	repErrTooBig  = 1<<31 + 9
)

// Information types carried by NBD_REP_INFO replies.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags, sent to the client with the export size. They are
// exported because the kernel's nbd netlink interface takes the same bits
// (NBD_ATTR_SERVER_FLAGS) when a device is attached without a handshake.
const (
	FlagHasFlags        uint16 = 1 << 0 // always set
	FlagReadOnly        uint16 = 1 << 1 // the export refuses writes
	FlagSendFlush       uint16 = 1 << 2 // NBD_CMD_FLUSH is supported
	FlagSendFUA         uint16 = 1 << 3 // NBD_CMD_FLAG_FUA is supported
	FlagRotational      uint16 = 1 << 4 // hint: the medium is rotational
	FlagSendTrim        uint16 = 1 << 5 // NBD_CMD_TRIM is supported
	FlagSendWriteZeroes uint16 = 1 << 6 // NBD_CMD_WRITE_ZEROES is supported
	FlagCanMultiConn    uint16 = 1 << 8 // flushes are visible across connections
)

// Transmission command types.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Transmission command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
const (
	// MinBlockSize is the advertised minimum block size: any byte
	// alignment is accepted.
	MinBlockSize = 1
	// PreferredBlockSize is the advertised preferred block size.
	PreferredBlockSize = 4096
	// MaxBlockSize is the advertised maximum block size and the longest
	// READ or WRITE the server carries out; longer ones get EINVAL.
	MaxBlockSize = 32 << 20
	// MaxWritePayload is the longest WRITE payload the server reads off
	// the socket and discards (replying EINVAL) when the request is
	// refused. A WRITE claiming a longer payload is taken as a
	// desynchronised or hostile stream and the connection is dropped,
	// as the protocol allows for payloads deemed a denial of service.
	MaxWritePayload = 64 << 20
)

// Limits on the handshake.
const (
	// maxOptionLength bounds the data of one option. Longer options get
	// NBD_REP_ERR_TOO_BIG and the connection is dropped.
	maxOptionLength = 64 << 10
	// maxOptions bounds the number of options one connection may send
	// before choosing an export.
	maxOptions = 1024
	// maxStringLength is the protocol's bound on strings (names, error
	// messages).
	maxStringLength = 4096
)

// errBadMagic reports a request or option header with the wrong magic
// number: the stream cannot be trusted any more.
var errBadMagic = errors.New("nbd: bad magic number")

// requestHeader is a decoded transmission request header.
type requestHeader struct {
	Flags  uint16 // command flags (cmdFlag*)
	Type   uint16 // command type (cmd*)
	Handle uint64 // opaque cookie echoed in the reply
	Offset uint64 // byte offset into the export
	Length uint32 // bytes affected; for WRITE also the payload length
}

// parseRequestHeader decodes a 28-byte request header. It fails if b is not
// exactly requestHeaderSize bytes long or the magic number is wrong.
func parseRequestHeader(b []byte) (requestHeader, error) {
	if len(b) != requestHeaderSize {
		return requestHeader{}, fmt.Errorf("nbd: request header is %d bytes, want %d", len(b), requestHeaderSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return requestHeader{}, fmt.Errorf("%w: request magic %#08x", errBadMagic, m)
	}
	return requestHeader{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Handle: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// appendTo appends the wire form of h to b.
func (h requestHeader) appendTo(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	b = binary.BigEndian.AppendUint16(b, h.Type)
	b = binary.BigEndian.AppendUint64(b, h.Handle)
	b = binary.BigEndian.AppendUint64(b, h.Offset)
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// putReplyHeader writes a simple reply header into b, which must hold
// replyHeaderSize bytes.
func putReplyHeader(b []byte, errno Errno, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], uint32(errno))
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// cmdName names a command type for log messages.
func cmdName(t uint16) string {
	switch t {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", t)
}

// checkRequest decides whether a request may go to the backend. It returns
// 0 if so, or the error number to reply with. size is the export size and
// tflags the transmission flags sent to the client. It is pure, so that the
// rules can be tested and fuzzed without a connection.
//
// DISC never reaches checkRequest: the reader handles it.
func checkRequest(h requestHeader, size uint64, tflags uint16) Errno {
	var allowed uint16
	write := false
	switch h.Type {
	case cmdRead, cmdFlush:
		allowed = cmdFlagFUA
	case cmdWrite:
		allowed, write = cmdFlagFUA, true
	case cmdTrim:
		if tflags&FlagSendTrim == 0 {
			return EINVAL
		}
		allowed, write = cmdFlagFUA, true
	case cmdWriteZeroes:
		if tflags&FlagSendWriteZeroes == 0 {
			return EINVAL
		}
		allowed, write = cmdFlagFUA|cmdFlagNoHole, true
	default:
		return EINVAL
	}
	if h.Flags&^allowed != 0 {
		return EINVAL
	}
	if write && tflags&FlagReadOnly != 0 {
		return EPERM
	}
	switch h.Type {
	case cmdFlush:
		// Offset and length are reserved and must be zero.
		if h.Offset != 0 || h.Length != 0 {
			return EINVAL
		}
		return 0
	case cmdRead, cmdWrite:
		if h.Length > MaxBlockSize {
			return EINVAL
		}
	}
	if h.Offset > size || uint64(h.Length) > size-h.Offset {
		if h.Type == cmdWrite || h.Type == cmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	return 0
}
