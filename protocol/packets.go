package protocol

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Payload is implemented by every packet payload type in this package.
// MarshalAppend appends the encoded payload (without header) to b.
// Unmarshal decodes a complete payload; it returns an error wrapping
// ErrShortPayload, ErrLongPayload, ErrTooLarge or ErrMalformed for input
// that does not fit the format, and never panics.
type Payload interface {
	MarshalAppend(b []byte) []byte
	Unmarshal(payload []byte) error
}

// Payload sizes in bytes, each the sizeof of DRBD's packed struct.
const (
	DataHeaderSize         = 24 // struct p_data
	TrimSize               = 28 // struct p_trim (and p_wsame without data)
	BlockAckSize           = 24 // struct p_block_ack
	BlockReqSize           = 24 // struct p_block_req (without digest)
	BlockDescSize          = 16 // struct p_block_desc
	BarrierSize            = 8  // struct p_barrier
	BarrierAckSize         = 8  // struct p_barrier_ack
	ProtocolSize           = 24 // struct p_protocol (without integrity_alg)
	SyncParamSize          = 4  // struct p_rs_param (without verify_alg)
	SyncParam89Size        = 132
	SyncParam95Size        = 148
	SizesSize              = 32 // struct p_sizes (without o_qlim)
	QueueLimitsSize        = 24 // struct o_qlim
	UUIDsSize              = 48 // struct p_uuids (UI_EXTENDED_SIZE u64s)
	RSUUIDSize             = 8  // struct p_rs_uuid
	ReqStateSize           = 8  // struct p_req_state
	ReqStateReplySize      = 4  // struct p_req_state_reply
	DelayProbeSize         = 8  // struct p_delay_probe93
	ConnectionFeaturesSize = 72 // struct p_connection_features
	// SharedSecretMax is SHARED_SECRET_MAX: the size of the algorithm name
	// fields, NUL included, and the longest shared secret.
	SharedSecretMax = 64
	// MaxDigestSize bounds checksum digests carried in packets (the largest
	// kernel digest, SHA-512, has 64 bytes).
	MaxDigestSize = 64
)

// Data packet flags (dp_flags), as in drbd_protocol.h.
const (
	DPHardBarrier    uint32 = 1 // no longer used
	DPRWSync         uint32 = 2
	DPMaySetInSync   uint32 = 4
	DPUnplug         uint32 = 8 // no longer used
	DPFUA            uint32 = 16
	DPFlush          uint32 = 32
	DPDiscard        uint32 = 64
	DPSendReceiveAck uint32 = 128 // protocol B write, protocol >= 100
	DPSendWriteAck   uint32 = 256 // protocol C write, protocol >= 100
	DPWSame          uint32 = 512
	DPZeroes         uint32 = 1024
)

// Special block_id values (drbd_int.h). BlockIDSyncer marks resync traffic;
// BlockIDInSync and BlockIDOutOfSync are the P_OV_RESULT verdicts, which
// DRBD sends big-endian.
const (
	BlockIDSyncer    uint64 = ^uint64(0)
	BlockIDInSync    uint64 = 4711
	BlockIDOutOfSync uint64 = 4712
)

// Connection flags in p_protocol's conn_flags.
const (
	CFDiscardMyData uint32 = 1
	CFDryRun        uint32 = 2
)

// Wire protocols in p_protocol's protocol field.
const (
	ProtocolA uint32 = 1
	ProtocolB uint32 = 2
	ProtocolC uint32 = 3
)

// Flags in the UUIDs.Flags word (uuid[UI_FLAGS]).
const (
	UUIDFlagDiscardMyData   uint64 = 1
	UUIDFlagCrashedPrimary  uint64 = 2
	UUIDFlagInconsistent    uint64 = 4
	UUIDFlagSkipInitialSync uint64 = 8
)

// UUID constants from drbd.h and drbd_int.h.
const (
	// UUIDJustCreated is the current UUID of freshly created metadata.
	UUIDJustCreated uint64 = 4
	// UUIDNewBitmapOffset is added to the bitmap UUID to form a sync UUID.
	UUIDNewBitmapOffset uint64 = 0x0001000000000000
)

// Flags in Sizes.DDSFlags (enum dds_flags).
const (
	DDSFForced   uint16 = 1
	DDSFNoResync uint16 = 2
)

func exactLen(what string, p []byte, n int) error {
	switch {
	case len(p) < n:
		return fmt.Errorf("%w: %s needs %d bytes, got %d", ErrShortPayload, what, n, len(p))
	case len(p) > n:
		return fmt.Errorf("%w: %s has %d bytes, expected %d", ErrLongPayload, what, len(p), n)
	}
	return nil
}

func minLen(what string, p []byte, n int) error {
	if len(p) < n {
		return fmt.Errorf("%w: %s needs at least %d bytes, got %d", ErrShortPayload, what, n, len(p))
	}
	return nil
}

var be = binary.BigEndian

// Empty is the payload of packets that carry none (P_PING, P_PING_ACK,
// P_UNPLUG_REMOTE, P_INITIAL_DATA, ...).
type Empty struct{}

// MarshalAppend returns b unchanged.
func (*Empty) MarshalAppend(b []byte) []byte { return b }

// Unmarshal accepts only an empty payload.
func (*Empty) Unmarshal(p []byte) error { return exactLen("empty packet", p, 0) }

// DataHeader is struct p_data, the sub-header of data-carrying packets.
// BlockID is an opaque handle the peer echoes in its acknowledgement.
type DataHeader struct {
	Sector  uint64 // start sector (512 bytes)
	BlockID uint64
	SeqNum  uint32
	DPFlags uint32 // DP* flags
}

// MarshalAppend appends the 24-byte p_data.
func (d *DataHeader) MarshalAppend(b []byte) []byte {
	b = be.AppendUint64(b, d.Sector)
	b = be.AppendUint64(b, d.BlockID)
	b = be.AppendUint32(b, d.SeqNum)
	return be.AppendUint32(b, d.DPFlags)
}

// Unmarshal decodes exactly 24 bytes.
func (d *DataHeader) Unmarshal(p []byte) error {
	if err := exactLen("p_data", p, DataHeaderSize); err != nil {
		return err
	}
	d.decode(p)
	return nil
}

func (d *DataHeader) decode(p []byte) {
	d.Sector = be.Uint64(p)
	d.BlockID = be.Uint64(p[8:])
	d.SeqNum = be.Uint32(p[16:])
	d.DPFlags = be.Uint32(p[20:])
}

// Data is the payload of P_DATA, P_DATA_REPLY and P_RS_DATA_REPLY: a p_data
// sub-header followed by the block. When a data-integrity algorithm is
// agreed, Payload starts with its digest; the caller splits it off.
type Data struct {
	DataHeader
	// Payload aliases the buffer given to Unmarshal; copy it if the buffer
	// is reused.
	Payload []byte
}

// MarshalAppend appends the p_data sub-header and the payload.
func (d *Data) MarshalAppend(b []byte) []byte {
	b = d.DataHeader.MarshalAppend(b)
	return append(b, d.Payload...)
}

// Unmarshal decodes a data packet payload of at least 24 bytes. Payload
// aliases p.
func (d *Data) Unmarshal(p []byte) error {
	if err := minLen("p_data", p, DataHeaderSize); err != nil {
		return err
	}
	if len(p)-DataHeaderSize > MaxBioSize+MaxDigestSize {
		return fmt.Errorf("%w: data block of %d bytes exceeds %d", ErrTooLarge, len(p)-DataHeaderSize, MaxBioSize)
	}
	d.decode(p)
	d.Payload = p[DataHeaderSize:len(p):len(p)]
	return nil
}

// Trim is struct p_trim, the payload of P_TRIM and P_ZEROES: a p_data
// sub-header and the byte count to discard or zero. It carries no data.
type Trim struct {
	DataHeader
	Size uint32 // bytes affected (bio size)
}

// MarshalAppend appends the 28-byte p_trim.
func (t *Trim) MarshalAppend(b []byte) []byte {
	b = t.DataHeader.MarshalAppend(b)
	return be.AppendUint32(b, t.Size)
}

// Unmarshal decodes exactly 28 bytes.
func (t *Trim) Unmarshal(p []byte) error {
	if err := exactLen("p_trim", p, TrimSize); err != nil {
		return err
	}
	t.decode(p)
	t.Size = be.Uint32(p[DataHeaderSize:])
	return nil
}

// WriteSame is the payload of P_WSAME: struct p_wsame (p_data and the byte
// count) followed by the one logical block to repeat.
type WriteSame struct {
	DataHeader
	Size uint32 // bytes affected
	// Payload aliases the buffer given to Unmarshal.
	Payload []byte
}

// MarshalAppend appends the p_wsame sub-header and the block.
func (w *WriteSame) MarshalAppend(b []byte) []byte {
	b = w.DataHeader.MarshalAppend(b)
	b = be.AppendUint32(b, w.Size)
	return append(b, w.Payload...)
}

// Unmarshal decodes at least 28 bytes; Payload aliases the rest of p.
func (w *WriteSame) Unmarshal(p []byte) error {
	if err := minLen("p_wsame", p, TrimSize); err != nil {
		return err
	}
	if len(p)-TrimSize > MaxBioSize {
		return fmt.Errorf("%w: write-same block of %d bytes", ErrTooLarge, len(p)-TrimSize)
	}
	w.decode(p)
	w.Size = be.Uint32(p[DataHeaderSize:])
	w.Payload = p[TrimSize:len(p):len(p)]
	return nil
}

// BlockAck is struct p_block_ack, shared by P_RECV_ACK, P_WRITE_ACK,
// P_RS_WRITE_ACK, P_SUPERSEDED, P_NEG_ACK, P_NEG_DREPLY, P_NEG_RS_DREPLY,
// P_OV_RESULT, P_RS_IS_IN_SYNC, P_RS_CANCEL and P_RETRY_WRITE.
type BlockAck struct {
	Sector  uint64
	BlockID uint64 // echoed from the request, or a BlockID* constant
	BlkSize uint32 // bytes
	SeqNum  uint32
}

// MarshalAppend appends the 24-byte p_block_ack.
func (a *BlockAck) MarshalAppend(b []byte) []byte {
	b = be.AppendUint64(b, a.Sector)
	b = be.AppendUint64(b, a.BlockID)
	b = be.AppendUint32(b, a.BlkSize)
	return be.AppendUint32(b, a.SeqNum)
}

// Unmarshal decodes exactly 24 bytes.
func (a *BlockAck) Unmarshal(p []byte) error {
	if err := exactLen("p_block_ack", p, BlockAckSize); err != nil {
		return err
	}
	a.Sector = be.Uint64(p)
	a.BlockID = be.Uint64(p[8:])
	a.BlkSize = be.Uint32(p[16:])
	a.SeqNum = be.Uint32(p[20:])
	return nil
}

// BlockReq is struct p_block_req, the payload of P_DATA_REQUEST,
// P_RS_DATA_REQUEST, P_OV_REQUEST and P_RS_THIN_REQ, and, followed by a
// checksum digest, of P_CSUM_RS_REQUEST and P_OV_REPLY. The pad word is
// sent as zero and ignored on receipt (DRBD does not clear it).
type BlockReq struct {
	Sector  uint64
	BlockID uint64
	BlkSize uint32 // bytes
	// Digest is empty except for P_CSUM_RS_REQUEST and P_OV_REPLY. Unmarshal
	// copies it.
	Digest []byte
}

// MarshalAppend appends the 24-byte p_block_req and the digest.
func (r *BlockReq) MarshalAppend(b []byte) []byte {
	b = be.AppendUint64(b, r.Sector)
	b = be.AppendUint64(b, r.BlockID)
	b = be.AppendUint32(b, r.BlkSize)
	b = be.AppendUint32(b, 0)
	return append(b, r.Digest...)
}

// Unmarshal decodes 24 bytes plus a digest of at most MaxDigestSize bytes.
func (r *BlockReq) Unmarshal(p []byte) error {
	if err := minLen("p_block_req", p, BlockReqSize); err != nil {
		return err
	}
	if len(p)-BlockReqSize > MaxDigestSize {
		return fmt.Errorf("%w: digest of %d bytes exceeds %d", ErrTooLarge, len(p)-BlockReqSize, MaxDigestSize)
	}
	r.Sector = be.Uint64(p)
	r.BlockID = be.Uint64(p[8:])
	r.BlkSize = be.Uint32(p[16:])
	r.Digest = nil
	if len(p) > BlockReqSize {
		r.Digest = bytes.Clone(p[BlockReqSize:])
	}
	return nil
}

// BlockDesc is struct p_block_desc, the payload of P_OUT_OF_SYNC and
// P_RS_DEALLOCATED.
type BlockDesc struct {
	Sector  uint64
	BlkSize uint32 // bytes
}

// MarshalAppend appends the 16-byte p_block_desc (pad zero).
func (d *BlockDesc) MarshalAppend(b []byte) []byte {
	b = be.AppendUint64(b, d.Sector)
	b = be.AppendUint32(b, d.BlkSize)
	return be.AppendUint32(b, 0)
}

// Unmarshal decodes exactly 16 bytes, ignoring the pad word.
func (d *BlockDesc) Unmarshal(p []byte) error {
	if err := exactLen("p_block_desc", p, BlockDescSize); err != nil {
		return err
	}
	d.Sector = be.Uint64(p)
	d.BlkSize = be.Uint32(p[8:])
	return nil
}

// Barrier is struct p_barrier, the payload of P_BARRIER. Barrier is an
// opaque epoch handle the peer echoes in P_BARRIER_ACK.
type Barrier struct {
	Barrier uint32
}

// MarshalAppend appends the 8-byte p_barrier (pad zero).
func (br *Barrier) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, br.Barrier)
	return be.AppendUint32(b, 0)
}

// Unmarshal decodes exactly 8 bytes, ignoring the pad word.
func (br *Barrier) Unmarshal(p []byte) error {
	if err := exactLen("p_barrier", p, BarrierSize); err != nil {
		return err
	}
	br.Barrier = be.Uint32(p)
	return nil
}

// BarrierAck is struct p_barrier_ack, the payload of P_BARRIER_ACK: the
// echoed barrier handle and the number of writes in the epoch.
type BarrierAck struct {
	Barrier uint32
	SetSize uint32
}

// MarshalAppend appends the 8-byte p_barrier_ack.
func (a *BarrierAck) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, a.Barrier)
	return be.AppendUint32(b, a.SetSize)
}

// Unmarshal decodes exactly 8 bytes.
func (a *BarrierAck) Unmarshal(p []byte) error {
	if err := exactLen("p_barrier_ack", p, BarrierAckSize); err != nil {
		return err
	}
	a.Barrier = be.Uint32(p)
	a.SetSize = be.Uint32(p[4:])
	return nil
}

// appendCString appends s truncated to SharedSecretMax-1 bytes and a NUL.
func appendCString(b []byte, s string) []byte {
	if len(s) > SharedSecretMax-1 {
		s = s[:SharedSecretMax-1]
	}
	b = append(b, s...)
	return append(b, 0)
}

// appendFixedString appends s in a NUL-padded SharedSecretMax-byte field.
func appendFixedString(b []byte, s string) []byte {
	if len(s) > SharedSecretMax-1 {
		s = s[:SharedSecretMax-1]
	}
	b = append(b, s...)
	return append(b, make([]byte, SharedSecretMax-len(s))...)
}

// cString decodes a NUL-terminated string that must end within field.
func cString(what string, field []byte) (string, error) {
	i := bytes.IndexByte(field, 0)
	if i < 0 {
		return "", fmt.Errorf("%w: %s is not NUL-terminated", ErrMalformed, what)
	}
	return string(field[:i]), nil
}

func checkAlgName(what, s string) error {
	if len(s) > SharedSecretMax-1 {
		return fmt.Errorf("%s %q is longer than %d bytes", what, s, SharedSecretMax-1)
	}
	if bytes.IndexByte([]byte(s), 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte", what, s)
	}
	return nil
}

// AfterSBPolicy is DRBD's enum drbd_after_sb_p: what to do after a split
// brain with zero, one or two primaries.
type AfterSBPolicy uint32

// After-split-brain policies with DRBD's numbers.
const (
	ASBDisconnect         AfterSBPolicy = 0
	ASBDiscardYoungerPri  AfterSBPolicy = 1
	ASBDiscardOlderPri    AfterSBPolicy = 2
	ASBDiscardZeroChg     AfterSBPolicy = 3
	ASBDiscardLeastChg    AfterSBPolicy = 4
	ASBDiscardLocal       AfterSBPolicy = 5
	ASBDiscardRemote      AfterSBPolicy = 6
	ASBConsensus          AfterSBPolicy = 7
	ASBDiscardSecondary   AfterSBPolicy = 8
	ASBCallHelper         AfterSBPolicy = 9
	ASBViolently          AfterSBPolicy = 10
	asbAfterLastPolicyNum AfterSBPolicy = 11
)

var asbNames = [...]string{
	ASBDisconnect:        "disconnect",
	ASBDiscardYoungerPri: "discard-younger-primary",
	ASBDiscardOlderPri:   "discard-older-primary",
	ASBDiscardZeroChg:    "discard-zero-changes",
	ASBDiscardLeastChg:   "discard-least-changes",
	ASBDiscardLocal:      "discard-local",
	ASBDiscardRemote:     "discard-remote",
	ASBConsensus:         "consensus",
	ASBDiscardSecondary:  "discard-secondary",
	ASBCallHelper:        "call-pri-lost-after-sb",
	ASBViolently:         "violently-as0p",
}

// String returns the drbd.conf keyword for the policy, e.g.
// "discard-zero-changes".
func (p AfterSBPolicy) String() string {
	if p < asbAfterLastPolicyNum {
		return asbNames[p]
	}
	return fmt.Sprintf("AfterSBPolicy(%d)", uint32(p))
}

// ParseAfterSBPolicy maps a drbd.conf keyword to its policy.
func ParseAfterSBPolicy(s string) (AfterSBPolicy, error) {
	for i, n := range asbNames {
		if n == s {
			return AfterSBPolicy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown after-split-brain policy %q", s)
}

// FromPeer converts a policy received from the peer into this node's
// terms, like DRBD's convert_after_sb(): discard-local and discard-remote
// swap, everything else must be equal on both sides.
func (p AfterSBPolicy) FromPeer() AfterSBPolicy {
	switch p {
	case ASBDiscardRemote:
		return ASBDiscardLocal
	case ASBDiscardLocal:
		return ASBDiscardRemote
	}
	return p
}

// Protocol is struct p_protocol plus its trailing integrity_alg string,
// the payload of P_PROTOCOL and P_PROTOCOL_UPDATE.
type Protocol struct {
	WireProtocol uint32 // ProtocolA, ProtocolB or ProtocolC
	AfterSB0P    AfterSBPolicy
	AfterSB1P    AfterSBPolicy
	AfterSB2P    AfterSBPolicy
	ConnFlags    uint32 // CF* flags
	TwoPrimaries bool
	IntegrityAlg string // data-integrity-alg, "" for none; protocol >= 87
}

// Validate reports whether the integrity algorithm name fits the wire.
func (p *Protocol) Validate() error {
	return checkAlgName("data-integrity-alg", p.IntegrityAlg)
}

// MarshalAppend appends the payload as protocol 87 and later send it: the
// 24-byte p_protocol followed by the NUL-terminated integrity algorithm.
// Names longer than 63 bytes are truncated; check with Validate.
func (p *Protocol) MarshalAppend(b []byte) []byte {
	return p.MarshalAppendVersion(b, ProtocolVersionMax)
}

// MarshalAppendVersion appends the payload for an agreed protocol version;
// below 87 the integrity algorithm is omitted.
func (p *Protocol) MarshalAppendVersion(b []byte, version int) []byte {
	b = be.AppendUint32(b, p.WireProtocol)
	b = be.AppendUint32(b, uint32(p.AfterSB0P))
	b = be.AppendUint32(b, uint32(p.AfterSB1P))
	b = be.AppendUint32(b, uint32(p.AfterSB2P))
	b = be.AppendUint32(b, p.ConnFlags)
	tp := uint32(0)
	if p.TwoPrimaries {
		tp = 1
	}
	b = be.AppendUint32(b, tp)
	if version >= 87 {
		b = appendCString(b, p.IntegrityAlg)
	}
	return b
}

// Unmarshal decodes 24 bytes, optionally followed by a NUL-terminated
// integrity algorithm name of at most 64 bytes (NUL included).
func (p *Protocol) Unmarshal(b []byte) error {
	if err := minLen("p_protocol", b, ProtocolSize); err != nil {
		return err
	}
	alg := b[ProtocolSize:]
	if len(alg) > SharedSecretMax {
		return fmt.Errorf("%w: integrity_alg of %d bytes exceeds %d", ErrTooLarge, len(alg), SharedSecretMax)
	}
	p.IntegrityAlg = ""
	if len(alg) > 0 {
		s, err := cString("integrity_alg", alg)
		if err != nil {
			return err
		}
		p.IntegrityAlg = s
	}
	p.WireProtocol = be.Uint32(b)
	p.AfterSB0P = AfterSBPolicy(be.Uint32(b[4:]))
	p.AfterSB1P = AfterSBPolicy(be.Uint32(b[8:]))
	p.AfterSB2P = AfterSBPolicy(be.Uint32(b[12:]))
	p.ConnFlags = be.Uint32(b[16:])
	p.TwoPrimaries = be.Uint32(b[20:]) != 0
	return nil
}

// SyncParamCmd returns the command DRBD uses for resync parameters under an
// agreed protocol version: P_SYNC_PARAM89 from 89 on, P_SYNC_PARAM before.
func SyncParamCmd(version int) Cmd {
	if version >= 89 {
		return PSyncParam89
	}
	return PSyncParam
}

// SyncParam is struct p_rs_param, the P_SYNC_PARAM payload of protocol
// versions up to 88: the resync rate, followed in version 88 by the
// NUL-terminated verify algorithm.
type SyncParam struct {
	ResyncRate uint32 // KiB/s
	VerifyAlg  string // protocol 88 only
}

// MarshalAppend appends the protocol 88 form (rate and verify-alg).
func (s *SyncParam) MarshalAppend(b []byte) []byte {
	return s.MarshalAppendVersion(b, 88)
}

// MarshalAppendVersion appends the payload for an agreed protocol version
// (86 to 88); before 88 only the rate is sent.
func (s *SyncParam) MarshalAppendVersion(b []byte, version int) []byte {
	b = be.AppendUint32(b, s.ResyncRate)
	if version >= 88 {
		b = appendCString(b, s.VerifyAlg)
	}
	return b
}

// Unmarshal decodes 4 bytes, optionally followed by a NUL-terminated verify
// algorithm of at most 64 bytes.
func (s *SyncParam) Unmarshal(p []byte) error {
	if err := minLen("p_rs_param", p, SyncParamSize); err != nil {
		return err
	}
	alg := p[SyncParamSize:]
	if len(alg) > SharedSecretMax {
		return fmt.Errorf("%w: verify_alg of %d bytes exceeds %d", ErrTooLarge, len(alg), SharedSecretMax)
	}
	s.VerifyAlg = ""
	if len(alg) > 0 {
		v, err := cString("verify_alg", alg)
		if err != nil {
			return err
		}
		s.VerifyAlg = v
	}
	s.ResyncRate = be.Uint32(p)
	return nil
}

// SyncParam89 is struct p_rs_param_89, the P_SYNC_PARAM89 payload of
// protocol versions 89 to 94 (132 bytes).
type SyncParam89 struct {
	ResyncRate uint32 // KiB/s
	VerifyAlg  string // at most 63 bytes
	CsumsAlg   string // at most 63 bytes
}

// Validate reports whether the algorithm names fit their 64-byte fields.
func (s *SyncParam89) Validate() error {
	if err := checkAlgName("verify-alg", s.VerifyAlg); err != nil {
		return err
	}
	return checkAlgName("csums-alg", s.CsumsAlg)
}

// MarshalAppend appends the 132-byte p_rs_param_89. Names longer than 63
// bytes are truncated; check with Validate.
func (s *SyncParam89) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, s.ResyncRate)
	b = appendFixedString(b, s.VerifyAlg)
	return appendFixedString(b, s.CsumsAlg)
}

// Unmarshal decodes exactly 132 bytes.
func (s *SyncParam89) Unmarshal(p []byte) error {
	if err := exactLen("p_rs_param_89", p, SyncParam89Size); err != nil {
		return err
	}
	return s.decode(p)
}

func (s *SyncParam89) decode(p []byte) error {
	v, err := cString("verify_alg", p[4:4+SharedSecretMax])
	if err != nil {
		return err
	}
	c, err := cString("csums_alg", p[4+SharedSecretMax:4+2*SharedSecretMax])
	if err != nil {
		return err
	}
	s.ResyncRate = be.Uint32(p)
	s.VerifyAlg, s.CsumsAlg = v, c
	return nil
}

// SyncParam95 is struct p_rs_param_95, the P_SYNC_PARAM89 payload from
// protocol version 95 on (148 bytes): SyncParam89 plus the dynamic resync
// speed controller settings.
type SyncParam95 struct {
	SyncParam89
	CPlanAhead   uint32 // 1/10 seconds
	CDelayTarget uint32 // 1/10 seconds
	CFillTarget  uint32 // sectors
	CMaxRate     uint32 // KiB/s
}

// MarshalAppend appends the 148-byte p_rs_param_95.
func (s *SyncParam95) MarshalAppend(b []byte) []byte {
	b = s.SyncParam89.MarshalAppend(b)
	b = be.AppendUint32(b, s.CPlanAhead)
	b = be.AppendUint32(b, s.CDelayTarget)
	b = be.AppendUint32(b, s.CFillTarget)
	return be.AppendUint32(b, s.CMaxRate)
}

// Unmarshal decodes exactly 148 bytes.
func (s *SyncParam95) Unmarshal(p []byte) error {
	if err := exactLen("p_rs_param_95", p, SyncParam95Size); err != nil {
		return err
	}
	if err := s.SyncParam89.decode(p); err != nil {
		return err
	}
	p = p[SyncParam89Size:]
	s.CPlanAhead = be.Uint32(p)
	s.CDelayTarget = be.Uint32(p[4:])
	s.CFillTarget = be.Uint32(p[8:])
	s.CMaxRate = be.Uint32(p[12:])
	return nil
}

// QueueLimits is struct o_qlim, appended to p_sizes when DRBD_FF_WSAME is
// agreed.
type QueueLimits struct {
	PhysicalBlockSize uint32
	LogicalBlockSize  uint32
	AlignmentOffset   uint32
	IOMin             uint32
	IOOpt             uint32
	DiscardEnabled    bool
	DiscardZeroesData bool
	WriteSameCapable  bool
}

// Sizes is struct p_sizes, the payload of P_SIZES. Sizes are in 512-byte
// sectors. QLim must be set exactly when the agreed features include
// FeatureWSame; DRBD rejects the packet otherwise.
type Sizes struct {
	DSize          uint64 // backing disk size
	USize          uint64 // user requested size
	CSize          uint64 // current exported size
	MaxBioSize     uint32 // bytes
	QueueOrderType uint16
	DDSFlags       uint16 // DDSF* flags
	QLim           *QueueLimits
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// MarshalAppend appends the 32-byte p_sizes and, if QLim is set, the
// 24-byte o_qlim.
func (s *Sizes) MarshalAppend(b []byte) []byte {
	b = be.AppendUint64(b, s.DSize)
	b = be.AppendUint64(b, s.USize)
	b = be.AppendUint64(b, s.CSize)
	b = be.AppendUint32(b, s.MaxBioSize)
	b = be.AppendUint16(b, s.QueueOrderType)
	b = be.AppendUint16(b, s.DDSFlags)
	if q := s.QLim; q != nil {
		b = be.AppendUint32(b, q.PhysicalBlockSize)
		b = be.AppendUint32(b, q.LogicalBlockSize)
		b = be.AppendUint32(b, q.AlignmentOffset)
		b = be.AppendUint32(b, q.IOMin)
		b = be.AppendUint32(b, q.IOOpt)
		b = append(b, boolByte(q.DiscardEnabled), boolByte(q.DiscardZeroesData), boolByte(q.WriteSameCapable), 0)
	}
	return b
}

// Unmarshal decodes 32 bytes (no queue limits) or 56 bytes (with them).
func (s *Sizes) Unmarshal(p []byte) error {
	if len(p) != SizesSize && len(p) != SizesSize+QueueLimitsSize {
		if len(p) < SizesSize {
			return fmt.Errorf("%w: p_sizes needs %d bytes, got %d", ErrShortPayload, SizesSize, len(p))
		}
		return fmt.Errorf("%w: p_sizes has %d bytes, expected %d or %d", ErrLongPayload, len(p), SizesSize, SizesSize+QueueLimitsSize)
	}
	s.DSize = be.Uint64(p)
	s.USize = be.Uint64(p[8:])
	s.CSize = be.Uint64(p[16:])
	s.MaxBioSize = be.Uint32(p[24:])
	s.QueueOrderType = be.Uint16(p[28:])
	s.DDSFlags = be.Uint16(p[30:])
	s.QLim = nil
	if len(p) > SizesSize {
		q := p[SizesSize:]
		s.QLim = &QueueLimits{
			PhysicalBlockSize: be.Uint32(q),
			LogicalBlockSize:  be.Uint32(q[4:]),
			AlignmentOffset:   be.Uint32(q[8:]),
			IOMin:             be.Uint32(q[12:]),
			IOOpt:             be.Uint32(q[16:]),
			DiscardEnabled:    q[20] != 0,
			DiscardZeroesData: q[21] != 0,
			WriteSameCapable:  q[22] != 0,
		}
	}
	return nil
}

// UUIDs is struct p_uuids, the payload of P_UUIDS: the generation UUIDs
// (uuid[UI_CURRENT..UI_HISTORY_END]), the number of set bitmap bits
// (uuid[UI_SIZE]) and flags (uuid[UI_FLAGS], UUIDFlag* bits).
type UUIDs struct {
	Current      uint64
	Bitmap       uint64
	HistoryStart uint64
	HistoryEnd   uint64
	DirtyBits    uint64
	Flags        uint64
}

// MarshalAppend appends the 48-byte p_uuids.
func (u *UUIDs) MarshalAppend(b []byte) []byte {
	for _, v := range [...]uint64{u.Current, u.Bitmap, u.HistoryStart, u.HistoryEnd, u.DirtyBits, u.Flags} {
		b = be.AppendUint64(b, v)
	}
	return b
}

// Unmarshal decodes exactly 48 bytes.
func (u *UUIDs) Unmarshal(p []byte) error {
	if err := exactLen("p_uuids", p, UUIDsSize); err != nil {
		return err
	}
	u.Current = be.Uint64(p)
	u.Bitmap = be.Uint64(p[8:])
	u.HistoryStart = be.Uint64(p[16:])
	u.HistoryEnd = be.Uint64(p[24:])
	u.DirtyBits = be.Uint64(p[32:])
	u.Flags = be.Uint64(p[40:])
	return nil
}

// RSUUID is struct p_rs_uuid, the payload of P_SYNC_UUID.
type RSUUID struct {
	UUID uint64
}

// MarshalAppend appends the 8-byte p_rs_uuid.
func (r *RSUUID) MarshalAppend(b []byte) []byte { return be.AppendUint64(b, r.UUID) }

// Unmarshal decodes exactly 8 bytes.
func (r *RSUUID) Unmarshal(p []byte) error {
	if err := exactLen("p_rs_uuid", p, RSUUIDSize); err != nil {
		return err
	}
	r.UUID = be.Uint64(p)
	return nil
}

// ReqState is struct p_req_state, the payload of P_STATE_CHG_REQ and
// P_CONN_ST_CHG_REQ: which state fields to change (Mask holds *Mask values
// in those fields) and their new values, from the sender's point of view.
type ReqState struct {
	Mask State
	Val  State
}

// MarshalAppend appends the 8-byte p_req_state.
func (r *ReqState) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, r.Mask.Pack())
	return be.AppendUint32(b, r.Val.Pack())
}

// Unmarshal decodes exactly 8 bytes.
func (r *ReqState) Unmarshal(p []byte) error {
	if err := exactLen("p_req_state", p, ReqStateSize); err != nil {
		return err
	}
	r.Mask = UnpackState(be.Uint32(p))
	r.Val = UnpackState(be.Uint32(p[4:]))
	return nil
}

// ReqStateReply is struct p_req_state_reply, the payload of
// P_STATE_CHG_REPLY and P_CONN_ST_CHG_REPLY.
type ReqStateReply struct {
	Result StateChangeResult
}

// MarshalAppend appends the 4-byte p_req_state_reply.
func (r *ReqStateReply) MarshalAppend(b []byte) []byte {
	return be.AppendUint32(b, uint32(r.Result))
}

// Unmarshal decodes exactly 4 bytes.
func (r *ReqStateReply) Unmarshal(p []byte) error {
	if err := exactLen("p_req_state_reply", p, ReqStateReplySize); err != nil {
		return err
	}
	r.Result = StateChangeResult(int32(be.Uint32(p)))
	return nil
}

// DelayProbe is struct p_delay_probe93, the payload of P_DELAY_PROBE,
// which current DRBD receivers skip.
type DelayProbe struct {
	SeqNum uint32
	Offset uint32 // microseconds after the reference point
}

// MarshalAppend appends the 8-byte p_delay_probe93.
func (d *DelayProbe) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, d.SeqNum)
	return be.AppendUint32(b, d.Offset)
}

// Unmarshal decodes exactly 8 bytes.
func (d *DelayProbe) Unmarshal(p []byte) error {
	if err := exactLen("p_delay_probe93", p, DelayProbeSize); err != nil {
		return err
	}
	d.SeqNum = be.Uint32(p)
	d.Offset = be.Uint32(p[4:])
	return nil
}

// NewPayload returns a zero payload value of the type that decodes cmd,
// or nil if cmd carries no defined payload. For P_SYNC_PARAM89 it returns
// a *SyncParam95; DecodePayload picks the 89 or 95 layout by length.
func NewPayload(cmd Cmd) Payload {
	switch cmd {
	case PData, PDataReply, PRSDataReply:
		return new(Data)
	case PTrim, PZeroes:
		return new(Trim)
	case PWSame:
		return new(WriteSame)
	case PBarrier:
		return new(Barrier)
	case PBitmap:
		return new(BitmapPlain)
	case PCompressedBitmap:
		return new(CompressedBitmap)
	case PBecomeSyncTarget, PBecomeSyncSource, PUnplugRemote, PPing, PPingAck,
		PInitialData, PInitialMeta:
		return new(Empty)
	case PDataRequest, PRSDataRequest, POVRequest, PRSThinReq, PCsumRSRequest, POVReply:
		return new(BlockReq)
	case PSyncParam:
		return new(SyncParam)
	case PSyncParam89:
		return new(SyncParam95)
	case PProtocol, PProtocolUpdate:
		return new(Protocol)
	case PUUIDs:
		return new(UUIDs)
	case PSizes:
		return new(Sizes)
	case PState:
		return new(State)
	case PSyncUUID:
		return new(RSUUID)
	case PAuthChallenge:
		return new(AuthChallenge)
	case PAuthResponse:
		return new(AuthResponse)
	case PStateChgReq, PConnStChgReq:
		return new(ReqState)
	case PRecvAck, PWriteAck, PRSWriteAck, PSuperseded, PNegAck, PNegDReply,
		PNegRSDReply, POVResult, PRSIsInSync, PRSCancel, PRetryWrite:
		return new(BlockAck)
	case PBarrierAck:
		return new(BarrierAck)
	case PStateChgReply, PConnStChgReply:
		return new(ReqStateReply)
	case PDelayProbe:
		return new(DelayProbe)
	case POutOfSync, PRSDeallocated:
		return new(BlockDesc)
	case PConnectionFeatures:
		return new(ConnectionFeatures)
	}
	return nil
}

// DecodePayload decodes the payload of a packet with command cmd into the
// matching type (see NewPayload), applying the size rules DRBD's receiver
// applies for that command. It never panics.
func DecodePayload(cmd Cmd, payload []byte) (Payload, error) {
	switch cmd {
	case PDataRequest, PRSDataRequest, POVRequest, PRSThinReq:
		// These carry no digest; DRBD refuses trailing bytes.
		if err := exactLen(cmd.String(), payload, BlockReqSize); err != nil {
			return nil, err
		}
	case PCsumRSRequest, POVReply:
		if len(payload) == BlockReqSize {
			return nil, fmt.Errorf("%w: %s carries no digest", ErrShortPayload, cmd)
		}
	case PSyncParam89:
		if n := len(payload); n != SyncParam89Size && n != SyncParam95Size {
			kind := ErrShortPayload
			if n > SyncParam95Size {
				kind = ErrLongPayload
			}
			return nil, fmt.Errorf("%w: %s payload of %d bytes, expected %d (p_rs_param_89) or %d (p_rs_param_95)",
				kind, cmd, n, SyncParam89Size, SyncParam95Size)
		}
		if len(payload) == SyncParam89Size {
			p := new(SyncParam89)
			if err := p.Unmarshal(payload); err != nil {
				return nil, fmt.Errorf("%s: %w", cmd, err)
			}
			return p, nil
		}
	}
	p := NewPayload(cmd)
	if p == nil {
		return nil, fmt.Errorf("%w: %s has no payload format", ErrUnexpectedPacket, cmd)
	}
	if err := p.Unmarshal(payload); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return p, nil
}
