package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// errAborted reports that the client ended the handshake with NBD_OPT_ABORT.
// It is a clean end, not a failure.
var errAborted = errors.New("nbd: client aborted the handshake")

// optReplies accumulates option replies so that each answer goes out in one
// write.
type optReplies struct {
	buf []byte
}

// add appends one option reply whose payload is the concatenation of data.
func (r *optReplies) add(opt, typ uint32, data ...[]byte) {
	n := 0
	for _, d := range data {
		n += len(d)
	}
	r.buf = binary.BigEndian.AppendUint64(r.buf, magicOptReply)
	r.buf = binary.BigEndian.AppendUint32(r.buf, opt)
	r.buf = binary.BigEndian.AppendUint32(r.buf, typ)
	r.buf = binary.BigEndian.AppendUint32(r.buf, uint32(n))
	for _, d := range data {
		r.buf = append(r.buf, d...)
	}
}

// addError appends an error reply carrying msg, cut to the protocol's
// string limit.
func (r *optReplies) addError(opt, typ uint32, msg string) {
	r.add(opt, typ, []byte(protoString(msg)))
}

// flush writes the accumulated replies to w.
func (r *optReplies) flush(w io.Writer) error {
	if len(r.buf) == 0 {
		return nil
	}
	_, err := w.Write(r.buf)
	r.buf = r.buf[:0]
	return err
}

// protoString makes s a valid protocol string: valid UTF-8, no NUL bytes,
// at most maxStringLength bytes.
func protoString(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.ReplaceAll(s, "\x00", "?")
	if len(s) <= maxStringLength {
		return s
	}
	s = s[:maxStringLength]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// infoRequest is the decoded data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes the data of NBD_OPT_INFO or NBD_OPT_GO:
// a 32-bit name length, the name, a 16-bit count and that many 16-bit
// information types. The lengths must add up exactly.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, fmt.Errorf("option data is %d bytes, need at least 6", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data)
	if uint64(nameLen) > uint64(len(data)-6) {
		return infoRequest{}, fmt.Errorf("name length %d does not fit in %d bytes of option data", nameLen, len(data))
	}
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("%d information requests need %d bytes, have %d", n, 2*n, len(rest))
	}
	req := infoRequest{name: string(data[4 : 4+nameLen]), infos: make([]uint16, n)}
	for i := range n {
		req.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return req, nil
}

// negotiator runs the fixed newstyle handshake for one connection.
type negotiator struct {
	provider ExportProvider
	logf     func(format string, args ...any)
	br       *bufio.Reader
	w        io.Writer
	out      optReplies
	data     []byte // option data, reused between options
	noZeroes bool   // the client set NBD_FLAG_C_NO_ZEROES
}

// run performs the handshake. On success it returns the export chosen with
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME, whose Release the caller now owns. It
// returns errAborted if the client sent NBD_OPT_ABORT, and another error
// if the client broke the protocol or the connection failed; in both cases
// no export is held.
func (n *negotiator) run() (*Export, error) {
	var greet [18]byte
	binary.BigEndian.PutUint64(greet[0:], magicNBD)
	binary.BigEndian.PutUint64(greet[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(greet[16:], handshakeFlagFixedNewstyle|handshakeFlagNoZeroes)
	if _, err := n.w.Write(greet[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.br, cf[:]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientFlagsKnown != 0 {
		return nil, fmt.Errorf("client sent unknown flags %#x", flags)
	}
	n.noZeroes = flags&clientFlagNoZeroes != 0
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE is still served in fixed
	// newstyle, which the protocol allows: such a client only ever sends
	// NBD_OPT_EXPORT_NAME, which has no reply header either way.

	var hdr [optHeaderSize]byte
	for range maxOptions {
		if _, err := io.ReadFull(n.br, hdr[:]); err != nil {
			return nil, fmt.Errorf("reading option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicIHaveOpt {
			return nil, fmt.Errorf("%w: option magic %#016x", errBadMagic, m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLength {
			if opt != optExportName {
				// The data could be skipped, but an option this long
				// is almost surely garbage or abuse: say why and go.
				n.out.addError(opt, repErrTooBig, fmt.Sprintf("option data of %d bytes exceeds the limit of %d", length, maxOptionLength))
				_ = n.out.flush(n.w)
			}
			return nil, fmt.Errorf("option %d has %d bytes of data, limit %d", opt, length, maxOptionLength)
		}
		if cap(n.data) < int(length) {
			n.data = make([]byte, length)
		}
		data := n.data[:length]
		if _, err := io.ReadFull(n.br, data); err != nil {
			return nil, fmt.Errorf("reading option %d data: %w", opt, err)
		}
		exp, done, err := n.option(opt, data)
		if ferr := n.out.flush(n.w); ferr != nil && err == nil {
			if exp != nil {
				exp.release()
			}
			return nil, ferr
		}
		if done || err != nil {
			return exp, err
		}
	}
	return nil, fmt.Errorf("client sent %d options without choosing an export", maxOptions)
}

// option handles one option. It queues replies in n.out. It returns done
// with the chosen export when transmission should start, done with
// errAborted on NBD_OPT_ABORT, and an error when the connection must be
// dropped.
func (n *negotiator) option(opt uint32, data []byte) (exp *Export, done bool, err error) {
	switch opt {
	case optExportName:
		return n.exportName(string(data))
	case optAbort:
		// Any data is ignored, as the protocol asks.
		n.out.add(opt, repAck)
		return nil, true, errAborted
	case optList:
		if len(data) != 0 {
			n.out.addError(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
			return nil, false, nil
		}
		for _, name := range n.provider.List() {
			name = protoString(name)
			var l [4]byte
			binary.BigEndian.PutUint32(l[:], uint32(len(name)))
			n.out.add(opt, repServer, l[:], []byte(name))
		}
		n.out.add(opt, repAck)
		return nil, false, nil
	case optInfo, optGo:
		return n.infoOrGo(opt, data)
	case optStartTLS:
		n.out.addError(opt, repErrUnsup, "TLS is not supported by this server")
		return nil, false, nil
	case optStructuredReply, optListMetaContext, optSetMetaContext, optExtendedHeaders:
		n.out.addError(opt, repErrUnsup, "only simple replies are supported")
		return nil, false, nil
	}
	n.out.addError(opt, repErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	return nil, false, nil
}

// open resolves a name through the provider. The empty name selects the
// only export if the provider lists exactly one.
func (n *negotiator) open(name string) (*Export, error) {
	if name == "" {
		if names := n.provider.List(); len(names) == 1 {
			name = names[0]
		}
	}
	exp, err := n.provider.Open(name)
	if err == nil && (exp == nil || exp.Backend == nil) {
		if exp != nil {
			exp.release()
		}
		err = fmt.Errorf("%q: export has no backend", name)
	}
	if err != nil {
		return nil, err
	}
	if exp.Backend.Size() < 0 {
		exp.release()
		return nil, fmt.Errorf("%q: export has negative size", name)
	}
	return exp, nil
}

// exportName handles NBD_OPT_EXPORT_NAME, which cannot report errors: an
// export that cannot be opened ends the connection.
func (n *negotiator) exportName(name string) (*Export, bool, error) {
	exp, err := n.open(name)
	if err != nil {
		return nil, true, fmt.Errorf("NBD_OPT_EXPORT_NAME %q: %w", name, err)
	}
	var b [10 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(exp.Backend.Size()))
	binary.BigEndian.PutUint16(b[8:], exp.TransmissionFlags())
	if n.noZeroes {
		n.out.buf = append(n.out.buf, b[:10]...)
	} else {
		n.out.buf = append(n.out.buf, b[:]...)
	}
	return exp, true, nil
}

// infoOrGo handles NBD_OPT_INFO and NBD_OPT_GO.
func (n *negotiator) infoOrGo(opt uint32, data []byte) (*Export, bool, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		n.out.addError(opt, repErrInvalid, err.Error())
		return nil, false, nil
	}
	exp, err := n.open(req.name)
	if err != nil {
		typ := uint32(repErrPolicy)
		if errors.Is(err, ErrUnknownExport) {
			typ = repErrUnknown
		}
		n.logf("nbd: refusing export %q: %v", req.name, err)
		n.out.addError(opt, typ, err.Error())
		return nil, false, nil
	}
	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(exp.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:], exp.TransmissionFlags())
	n.out.add(opt, repInfo, b[:12])
	// Block size constraints are always sent: they are the defaults
	// except for the maximum, which clients ignoring them also respect.
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], MinBlockSize)
	binary.BigEndian.PutUint32(b[6:], PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:], MaxBlockSize)
	n.out.add(opt, repInfo, b[:14])
	sentName, sentDesc := false, false
	for _, info := range req.infos {
		switch info {
		case infoName:
			if sentName {
				continue
			}
			sentName = true
			name := exp.Name
			if name == "" {
				name = req.name
			}
			binary.BigEndian.PutUint16(b[0:], infoName)
			n.out.add(opt, repInfo, b[:2], []byte(protoString(name)))
		case infoDescription:
			if sentDesc || exp.Description == "" {
				continue
			}
			sentDesc = true
			binary.BigEndian.PutUint16(b[0:], infoDescription)
			n.out.add(opt, repInfo, b[:2], []byte(protoString(exp.Description)))
		}
	}
	n.out.add(opt, repAck)
	if opt == optInfo {
		exp.release()
		return nil, false, nil
	}
	return exp, true, nil
}
