package protocol

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
)

// copyThreshold is the packet size up to which WritePacket copies header
// and payload into one buffer; larger packets go out as a vectored write
// (one writev on network connections) to avoid copying data blocks.
const copyThreshold = 64 << 10

// Conn frames DRBD packets on one of the two TCP connections (data or
// meta). It starts at ProtocolVersionInitial, so the initial packets and
// the feature exchange use h80 headers as DRBD's do; after the handshake
// the caller sets the agreed version with SetVersion (on both
// connections), which switches headers to h100 for version 100 and later.
//
// One goroutine may read (ReadPacket, ReadInitial) while another writes
// (WritePacket, WriteInitial); concurrent readers or concurrent writers
// must be serialized by the caller.
type Conn struct {
	rw      io.ReadWriter
	version atomic.Int32
	volume  atomic.Uint32

	hbuf [HeaderSize100]byte // reader's header buffer
	rbuf []byte              // reader's payload buffer
	wbuf []byte              // writer's buffer
}

// NewConn returns a Conn framing packets on rw at the initial protocol
// version.
func NewConn(rw io.ReadWriter) *Conn {
	c := &Conn{rw: rw}
	c.version.Store(ProtocolVersionInitial)
	return c
}

// Version returns the protocol version used for framing.
func (c *Conn) Version() int { return int(c.version.Load()) }

// SetVersion sets the agreed protocol version. Call it between packets,
// not while a packet is being read or written.
func (c *Conn) SetVersion(v int) { c.version.Store(int32(v)) }

// SetVolume sets the volume number written into h100 headers (0 for a
// single-volume resource).
func (c *Conn) SetVolume(v uint16) { c.volume.Store(uint32(v)) }

// ReadPacket reads the next packet and returns its header and payload.
// The payload is rejected, and the stream left unusable, if it is longer
// than max bytes (max <= 0 means MaxPayload) or the header kind does not
// match the protocol version (h100 from version 100 on, h80 or h95
// before). The returned slice is only valid until the next ReadPacket.
func (c *Conn) ReadPacket(max int) (Header, []byte, error) {
	h, err := c.ReadHeader(max)
	if err != nil {
		return Header{}, nil, err
	}
	p, err := c.ReadBody(h)
	if err != nil {
		return Header{}, nil, err
	}
	return h, p, nil
}

// ReadHeader reads the next packet's header, with ReadPacket's checks,
// and leaves its h.Length payload bytes in the stream: the caller reads
// them with ReadBody, or itself, before the next packet.
func (c *Conn) ReadHeader(max int) (Header, error) {
	if max <= 0 || max > MaxPayload {
		max = MaxPayload
	}
	h, err := readHeader(c.rw, &c.hbuf)
	if err != nil {
		return Header{}, err
	}
	v := c.Version()
	if (v >= 100) != (h.Kind == HeaderH100) {
		return Header{}, fmt.Errorf("%w: %s header on a connection at protocol version %d", ErrBadHeader, h.Kind, v)
	}
	if int(h.Length) > max {
		return Header{}, fmt.Errorf("%w: %s announces %d bytes, limit is %d", ErrTooLarge, h.Cmd, h.Length, max)
	}
	return h, nil
}

// ReadBody reads the payload of the packet whose header ReadHeader just
// returned. The slice is only valid until the next read.
func (c *Conn) ReadBody(h Header) ([]byte, error) {
	if cap(c.rbuf) < int(h.Length) {
		c.rbuf = make([]byte, h.Length)
	}
	p := c.rbuf[:h.Length]
	if _, err := io.ReadFull(c.rw, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("reading %s payload: %w", h.Cmd, err)
	}
	return p, nil
}

// ReadPayload reads the next packet, checks that it carries cmd, and
// decodes its payload into p.
func (c *Conn) ReadPayload(cmd Cmd, p Payload) error {
	h, b, err := c.ReadPacket(0)
	if err != nil {
		return err
	}
	if h.Cmd != cmd {
		return fmt.Errorf("%w: expected %s, received %s (0x%04x)", ErrUnexpectedPacket, cmd, h.Cmd, uint16(h.Cmd))
	}
	if err := p.Unmarshal(b); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

// WritePacket writes one packet whose payload is the concatenation of the
// given slices, with the header DRBD uses at the current version. Packets
// up to 64 KiB are written with a single Write call; larger ones as a
// vectored write.
func (c *Conn) WritePacket(cmd Cmd, payload ...[]byte) error {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	var err error
	if c.wbuf, err = c.AppendPacketHeader(c.wbuf[:0], cmd, n); err != nil {
		return err
	}
	if len(c.wbuf)+n <= copyThreshold {
		for _, p := range payload {
			c.wbuf = append(c.wbuf, p...)
		}
		_, err = c.rw.Write(c.wbuf)
		return err
	}
	bufs := make(net.Buffers, 0, 1+len(payload))
	bufs = append(bufs, c.wbuf)
	for _, p := range payload {
		if len(p) > 0 {
			bufs = append(bufs, p)
		}
	}
	if vw, ok := c.rw.(VectorWriter); ok {
		return vw.WriteVectors(bufs)
	}
	_, err = bufs.WriteTo(c.rw)
	return err
}

// AppendPacketHeader appends the header of a packet of cmd with an
// n-byte payload, as WritePacket would write it, for a caller that writes
// the payload itself.
func (c *Conn) AppendPacketHeader(b []byte, cmd Cmd, n int) ([]byte, error) {
	v := c.Version()
	if n > MaxPayloadFor(v) {
		return b, fmt.Errorf("%w: %s payload of %d bytes exceeds %d at protocol version %d", ErrTooLarge, cmd, n, MaxPayloadFor(v), v)
	}
	return AppendHeader(b, v, cmd, uint16(c.volume.Load()), n), nil
}

// VectorWriter is implemented by writers that can write several buffers
// at once without first copying them together. WritePacket hands a large
// packet's header and payload parts to WriteVectors when the Conn's
// writer has it; the writer must be done with the buffers when it returns.
type VectorWriter interface {
	WriteVectors(bufs [][]byte) error
}

// WritePayload encodes p and writes it as a cmd packet.
func (c *Conn) WritePayload(cmd Cmd, p Payload) error {
	return c.WritePacket(cmd, p.MarshalAppend(nil))
}

// WriteInitial writes the first packet of a connection, P_INITIAL_DATA on
// the data socket or P_INITIAL_META on the meta socket: an h80 header with
// no payload, whatever the version.
func (c *Conn) WriteInitial(cmd Cmd) error {
	if cmd != PInitialData && cmd != PInitialMeta {
		return fmt.Errorf("%w: %s is not an initial packet", ErrUnexpectedPacket, cmd)
	}
	var b [HeaderSize80]byte
	_, err := c.rw.Write(appendHeaderKind(b[:0], HeaderH80, cmd, 0, 0))
	return err
}

// ReadInitial reads the first packet of an accepted connection and returns
// its command, P_INITIAL_DATA or P_INITIAL_META, which tells which of the
// two sockets this connection is.
func (c *Conn) ReadInitial() (Cmd, error) {
	h, err := readHeader(c.rw, &c.hbuf)
	if err != nil {
		return 0, fmt.Errorf("receiving initial packet: %w", err)
	}
	if h.Kind == HeaderH100 {
		return 0, fmt.Errorf("%w: initial packet with an h100 header", ErrBadHeader)
	}
	if h.Cmd != PInitialData && h.Cmd != PInitialMeta {
		return 0, fmt.Errorf("%w: expected an initial packet, received %s (0x%04x)", ErrUnexpectedPacket, h.Cmd, uint16(h.Cmd))
	}
	if h.Length != 0 {
		return 0, fmt.Errorf("%w: initial packet announces %d payload bytes", ErrMalformed, h.Length)
	}
	return h.Cmd, nil
}

// ExchangeFeatures performs the P_CONNECTION_FEATURES handshake on the data
// socket like drbd_do_features(): it sends local, reads the peer's packet
// (which must be P_CONNECTION_FEATURES with a 72-byte payload), and
// negotiates. On success it sets the agreed version on c (set it on the
// meta connection too) and returns the agreed version and features.
func (c *Conn) ExchangeFeatures(local ConnectionFeatures) (version int, features FeatureFlags, err error) {
	if err := c.WritePayload(PConnectionFeatures, &local); err != nil {
		return 0, 0, fmt.Errorf("sending features: %w", err)
	}
	var peer ConnectionFeatures
	if err := c.ReadPayload(PConnectionFeatures, &peer); err != nil {
		return 0, 0, fmt.Errorf("receiving features: %w", err)
	}
	version, features, err = local.Negotiate(peer)
	if err != nil {
		return 0, 0, err
	}
	c.SetVersion(version)
	return version, features, nil
}

// Authenticate runs DRBD's CRAM-HMAC exchange (drbd_do_auth()) on the data
// socket after the feature handshake: it sends a fresh challenge read from
// random (crypto/rand if nil), answers the peer's challenge with
// HMAC(secret, challenge) and checks the peer's answer to its own in
// constant time. Both sides run the same steps. Errors wrapping
// ErrAuthFailed mean the peer does not know the secret (or tried to
// reflect our challenge); others are protocol or I/O failures.
func (c *Conn) Authenticate(alg string, secret []byte, random io.Reader) error {
	respSize, err := CRAMResponseSize(alg)
	if err != nil {
		return err
	}
	if err := checkSecret(secret); err != nil {
		return err
	}
	mine, err := NewChallenge(random)
	if err != nil {
		return err
	}
	if err := c.WritePacket(PAuthChallenge, mine); err != nil {
		return fmt.Errorf("sending auth challenge: %w", err)
	}
	var peers AuthChallenge
	if err := c.ReadPayload(PAuthChallenge, &peers); err != nil {
		return fmt.Errorf("receiving auth challenge: %w", err)
	}
	if err := CheckPeerChallenge(mine, peers.Challenge); err != nil {
		return err
	}
	resp, err := CRAMResponse(alg, secret, peers.Challenge)
	if err != nil {
		return err
	}
	if err := c.WritePacket(PAuthResponse, resp); err != nil {
		return fmt.Errorf("sending auth response: %w", err)
	}
	h, b, err := c.ReadPacket(MaxDigestSize)
	if err != nil {
		return fmt.Errorf("receiving auth response: %w", err)
	}
	if h.Cmd != PAuthResponse {
		return fmt.Errorf("%w: expected %s, received %s (0x%04x)", ErrUnexpectedPacket, PAuthResponse, h.Cmd, uint16(h.Cmd))
	}
	if len(b) != respSize {
		return fmt.Errorf("%w: AuthResponse of %d bytes, expected %d", ErrAuthFailed, len(b), respSize)
	}
	return VerifyCRAMResponse(alg, secret, mine, b)
}
