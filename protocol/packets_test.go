package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// samplePayloads returns one fixed instance of the payload of every packet
// that has one, keyed by command. The values are arbitrary but distinct so
// that field mix-ups show.
func samplePayloads() map[Cmd]Payload {
	dh := DataHeader{Sector: 0x0102030405060708, BlockID: 0x1112131415161718, SeqNum: 0x21222324, DPFlags: DPRWSync | DPSendWriteAck}
	block := bytes.Repeat([]byte{0xa5, 0x5a, 0x00, 0xff}, 128) // 512 bytes
	ack := func(id uint64) *BlockAck {
		return &BlockAck{Sector: 0x0807060504030201, BlockID: id, BlkSize: 4096, SeqNum: 42}
	}
	req := &BlockReq{Sector: 2048, BlockID: BlockIDSyncer, BlkSize: 4096}
	digest := []byte("0123456789abcdef0123") // 20 bytes, a SHA-1 digest
	return map[Cmd]Payload{
		PData:             &Data{DataHeader: dh, Payload: block},
		PDataReply:        &Data{DataHeader: DataHeader{Sector: 8, BlockID: 0xdeadbeef}, Payload: block},
		PRSDataReply:      &Data{DataHeader: DataHeader{Sector: 16, BlockID: BlockIDSyncer}, Payload: block},
		PBarrier:          &Barrier{Barrier: 0x01020304},
		PBitmap:           &BitmapPlain{Words: []uint64{0, 1, 0x8000000000000000, 0x0123456789abcdef}},
		PBecomeSyncTarget: &Empty{},
		PBecomeSyncSource: &Empty{},
		PUnplugRemote:     &Empty{},
		PDataRequest:      &BlockReq{Sector: 1024, BlockID: 0x55aa, BlkSize: 8192},
		PRSDataRequest:    req,
		PSyncParam:        &SyncParam{ResyncRate: 10240, VerifyAlg: "md5"},
		PProtocol: &Protocol{WireProtocol: ProtocolC, AfterSB0P: ASBDiscardZeroChg, AfterSB1P: ASBConsensus,
			AfterSB2P: ASBDisconnect, ConnFlags: CFDiscardMyData, TwoPrimaries: true, IntegrityAlg: "crc32c"},
		PUUIDs: &UUIDs{Current: 0xA1B2C3D4E5F60718, Bitmap: 0, HistoryStart: 0x1111, HistoryEnd: 0x2222,
			DirtyBits: 12345, Flags: UUIDFlagCrashedPrimary | UUIDFlagInconsistent},
		PSizes: &Sizes{DSize: 2097152, USize: 0, CSize: 2097152, MaxBioSize: MaxBioSize, DDSFlags: DDSFNoResync,
			QLim: &QueueLimits{PhysicalBlockSize: 4096, LogicalBlockSize: 512, IOMin: 4096, IOOpt: 65536, DiscardEnabled: true}},
		PState:         &State{Role: RolePrimary, Peer: RoleSecondary, Conn: ConnConnected, Disk: DiskUpToDate, PDsk: DiskUpToDate},
		PSyncUUID:      &RSUUID{UUID: 0x0f1e2d3c4b5a6978},
		PAuthChallenge: &AuthChallenge{Challenge: bytes.Repeat([]byte{0x3c}, ChallengeLen)},
		PAuthResponse:  &AuthResponse{Response: bytes.Repeat([]byte{0x7e}, 32)},
		PStateChgReq:   &ReqState{Mask: State{Role: RoleMask}, Val: State{Role: RolePrimary}},
		PPing:          &Empty{},
		PPingAck:       &Empty{},
		PRecvAck:       ack(0x1112131415161718),
		PWriteAck:      ack(0x1112131415161718),
		PRSWriteAck:    ack(0x1112131415161718),
		PSuperseded:    ack(0x1112131415161718),
		PNegAck:        ack(0x1112131415161718),
		PNegDReply:     ack(0x55aa),
		PNegRSDReply:   ack(BlockIDSyncer),
		PBarrierAck:    &BarrierAck{Barrier: 0x01020304, SetSize: 17},
		PStateChgReply: &ReqStateReply{Result: SSTwoPrimaries},
		POVRequest:     &BlockReq{Sector: 4096, BlockID: BlockIDSyncer, BlkSize: 4096},
		POVReply:       &BlockReq{Sector: 4096, BlockID: BlockIDSyncer, BlkSize: 4096, Digest: digest},
		POVResult:      ack(BlockIDOutOfSync),
		PCsumRSRequest: &BlockReq{Sector: 8192, BlockID: BlockIDSyncer, BlkSize: 4096, Digest: digest},
		PRSIsInSync:    ack(BlockIDInSync),
		PSyncParam89: &SyncParam95{SyncParam89: SyncParam89{ResyncRate: 102400, VerifyAlg: "sha1", CsumsAlg: "crc32c"},
			CPlanAhead: 20, CDelayTarget: 10, CFillTarget: 100, CMaxRate: 102400},
		PCompressedBitmap:   &CompressedBitmap{Start: false, PadBits: 1, Code: []byte{0x99, 0x17}},
		PDelayProbe:         &DelayProbe{SeqNum: 9, Offset: 1500},
		POutOfSync:          &BlockDesc{Sector: 123456, BlkSize: 32768},
		PRSCancel:           ack(BlockIDSyncer),
		PConnStChgReq:       &ReqState{Mask: State{Conn: ConnMask}, Val: State{Conn: ConnDisconnecting}},
		PConnStChgReply:     &ReqStateReply{Result: SSSuccess},
		PRetryWrite:         ack(0x1112131415161718),
		PProtocolUpdate:     &Protocol{WireProtocol: ProtocolA, IntegrityAlg: ""},
		PTrim:               &Trim{DataHeader: DataHeader{Sector: 0, BlockID: 7, SeqNum: 3, DPFlags: DPDiscard | DPSendWriteAck}, Size: 1 << 20},
		PRSThinReq:          &BlockReq{Sector: 65536, BlockID: BlockIDSyncer, BlkSize: 4096},
		PRSDeallocated:      &BlockDesc{Sector: 65536, BlkSize: 4096},
		PWSame:              &WriteSame{DataHeader: DataHeader{Sector: 64, BlockID: 9, DPFlags: DPWSame}, Size: 65536, Payload: block},
		PZeroes:             &Trim{DataHeader: DataHeader{Sector: 128, BlockID: 8, DPFlags: DPZeroes | DPDiscard}, Size: 4096},
		PInitialMeta:        &Empty{},
		PInitialData:        &Empty{},
		PConnectionFeatures: &ConnectionFeatures{ProtocolMin: ProtocolVersionMin, FeatureFlags: FeatureTrim | FeatureThinResync | FeatureWSame | FeatureWZeroes, ProtocolMax: ProtocolVersionMax},
	}
}

func TestEveryCmdHasSample(t *testing.T) {
	samples := samplePayloads()
	for _, c := range KnownCmds() {
		if c == PMayIgnore || c == PMaxOptCmd {
			if NewPayload(c) != nil {
				t.Errorf("%s is a marker, not a packet", c)
			}
			continue
		}
		if _, ok := samples[c]; !ok {
			t.Errorf("no sample payload for %s", c)
		}
		if NewPayload(c) == nil {
			t.Errorf("NewPayload(%s) = nil", c)
		}
	}
	if len(samples) != len(KnownCmds())-2 {
		t.Errorf("%d samples for %d commands", len(samples), len(KnownCmds())-2)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	for cmd, p := range samplePayloads() {
		t.Run(cmd.String(), func(t *testing.T) {
			enc := p.MarshalAppend([]byte("prefix"))
			if !bytes.HasPrefix(enc, []byte("prefix")) {
				t.Fatal("MarshalAppend dropped the prefix")
			}
			enc = enc[len("prefix"):]
			dec, err := DecodePayload(cmd, enc)
			if err != nil {
				t.Fatalf("DecodePayload: %v", err)
			}
			if !reflect.DeepEqual(dec, p) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", dec, p)
			}
			if again := dec.MarshalAppend(nil); !bytes.Equal(again, enc) {
				t.Fatalf("re-encoding differs:\n%x\n%x", again, enc)
			}
			// Any truncation is refused, never a panic.
			for n := 0; n < len(enc); n++ {
				if d, err := DecodePayload(cmd, enc[:n]); err == nil && !truncationAllowed(cmd, n) {
					t.Fatalf("truncated to %d bytes decoded as %#v", n, d)
				}
			}
		})
	}
}

// truncationAllowed reports whether a prefix of n bytes of the sample
// payload of cmd is itself a valid payload (variable-length formats).
func truncationAllowed(cmd Cmd, n int) bool {
	switch cmd {
	case PData, PDataReply, PRSDataReply:
		return n >= DataHeaderSize
	case PWSame:
		return n >= TrimSize
	case PBitmap:
		return n%8 == 0
	case PCompressedBitmap:
		return n >= 2
	case PSizes:
		return n == SizesSize
	case PSyncParam:
		return n == SyncParamSize
	case PProtocol, PProtocolUpdate:
		return n == ProtocolSize
	case PAuthChallenge:
		return n >= ChallengeLen
	case PAuthResponse:
		return n >= 1
	case POVReply, PCsumRSRequest:
		return n > BlockReqSize
	case PSyncParam89:
		return n == SyncParam89Size
	}
	return false
}

// Sizes of DRBD's packed structs, computed from drbd_protocol.h by hand.
func TestStructSizes(t *testing.T) {
	sizes := []struct {
		name string
		got  int
		want int
	}{
		{"p_data", len((&DataHeader{}).MarshalAppend(nil)), 8 + 8 + 4 + 4},
		{"p_trim", len((&Trim{}).MarshalAppend(nil)), 24 + 4},
		{"p_wsame", len((&WriteSame{}).MarshalAppend(nil)), 24 + 4},
		{"p_block_ack", len((&BlockAck{}).MarshalAppend(nil)), 8 + 8 + 4 + 4},
		{"p_block_req", len((&BlockReq{}).MarshalAppend(nil)), 8 + 8 + 4 + 4},
		{"p_block_desc", len((&BlockDesc{}).MarshalAppend(nil)), 8 + 4 + 4},
		{"p_connection_features", len((&ConnectionFeatures{}).MarshalAppend(nil)), 4*4 + 7*8},
		{"p_barrier", len((&Barrier{}).MarshalAppend(nil)), 4 + 4},
		{"p_barrier_ack", len((&BarrierAck{}).MarshalAppend(nil)), 4 + 4},
		{"p_rs_param (v87)", len((&SyncParam{}).MarshalAppendVersion(nil, 87)), 4},
		{"p_rs_param_89", len((&SyncParam89{}).MarshalAppend(nil)), 4 + 64 + 64},
		{"p_rs_param_95", len((&SyncParam95{}).MarshalAppend(nil)), 4 + 64 + 64 + 4*4},
		{"p_protocol (v86)", len((&Protocol{}).MarshalAppendVersion(nil, 86)), 6 * 4},
		{"p_protocol + \"\"", len((&Protocol{}).MarshalAppend(nil)), 6*4 + 1},
		{"p_uuids", len((&UUIDs{}).MarshalAppend(nil)), 6 * 8},
		{"p_rs_uuid", len((&RSUUID{}).MarshalAppend(nil)), 8},
		{"p_sizes", len((&Sizes{}).MarshalAppend(nil)), 3*8 + 4 + 2 + 2},
		{"p_sizes + o_qlim", len((&Sizes{QLim: &QueueLimits{}}).MarshalAppend(nil)), 32 + 5*4 + 4},
		{"p_state", len((&State{}).MarshalAppend(nil)), 4},
		{"p_req_state", len((&ReqState{}).MarshalAppend(nil)), 4 + 4},
		{"p_req_state_reply", len((&ReqStateReply{}).MarshalAppend(nil)), 4},
		{"p_delay_probe93", len((&DelayProbe{}).MarshalAppend(nil)), 4 + 4},
		{"p_compressed_bm (no code)", len((&CompressedBitmap{}).MarshalAppend(nil)), 1},
		{"features packet with h80", HeaderSize80 + ConnectionFeaturesSize, 80},
	}
	for _, s := range sizes {
		if s.got != s.want {
			t.Errorf("%s: %d bytes, want %d", s.name, s.got, s.want)
		}
	}
	consts := map[string][2]int{
		"DataHeaderSize": {DataHeaderSize, 24}, "TrimSize": {TrimSize, 28}, "BlockAckSize": {BlockAckSize, 24},
		"BlockReqSize": {BlockReqSize, 24}, "BlockDescSize": {BlockDescSize, 16}, "SizesSize": {SizesSize, 32},
		"QueueLimitsSize": {QueueLimitsSize, 24}, "UUIDsSize": {UUIDsSize, 48}, "SyncParam89Size": {SyncParam89Size, 132},
		"SyncParam95Size": {SyncParam95Size, 148}, "ConnectionFeaturesSize": {ConnectionFeaturesSize, 72},
	}
	for n, v := range consts {
		if v[0] != v[1] {
			t.Errorf("%s = %d, want %d", n, v[0], v[1])
		}
	}
}

func TestDPFlagValues(t *testing.T) {
	want := []uint32{DPHardBarrier, DPRWSync, DPMaySetInSync, DPUnplug, DPFUA, DPFlush, DPDiscard,
		DPSendReceiveAck, DPSendWriteAck, DPWSame, DPZeroes}
	for i, f := range want {
		if f != 1<<i {
			t.Errorf("flag %d = %d, want %d", i, f, 1<<i)
		}
	}
}

func TestDecodePayloadRules(t *testing.T) {
	req := (&BlockReq{Sector: 1, BlkSize: 4096}).MarshalAppend(nil)
	withDigest := append(append([]byte(nil), req...), 1, 2, 3, 4)
	tests := []struct {
		name string
		cmd  Cmd
		in   []byte
		want error
	}{
		{"data request with trailing bytes", PDataRequest, withDigest, ErrLongPayload},
		{"csum request without digest", PCsumRSRequest, req, ErrShortPayload},
		{"digest too long", POVReply, append(req, make([]byte, 65)...), ErrTooLarge},
		{"features 80 bytes", PConnectionFeatures, make([]byte, 80), ErrLongPayload},
		{"features 32 bytes", PConnectionFeatures, make([]byte, 32), ErrShortPayload},
		{"sizes 40 bytes", PSizes, make([]byte, 40), ErrLongPayload},
		{"sync param 140", PSyncParam89, make([]byte, 140), ErrShortPayload},
		{"sync param 150", PSyncParam89, make([]byte, 150), ErrLongPayload},
		{"sync param alg unterminated", PSyncParam89, bytes.Repeat([]byte{'a'}, SyncParam95Size), ErrMalformed},
		{"protocol alg too long", PProtocol, make([]byte, ProtocolSize+65), ErrTooLarge},
		{"protocol alg unterminated", PProtocol, append(make([]byte, ProtocolSize), 'x'), ErrMalformed},
		{"ping with payload", PPing, []byte{0}, ErrLongPayload},
		{"challenge too short", PAuthChallenge, make([]byte, 63), ErrShortPayload},
		{"challenge too long", PAuthChallenge, make([]byte, 129), ErrTooLarge},
		{"bitmap odd", PBitmap, make([]byte, 12), ErrMalformed},
		{"bitmap too long", PBitmap, make([]byte, 4104), ErrTooLarge},
		{"cbitmap encoding", PCompressedBitmap, []byte{0x03, 0}, ErrMalformed},
		{"cbitmap empty code", PCompressedBitmap, []byte{0x02}, ErrShortPayload},
		{"unknown", Cmd(0x42), nil, ErrUnexpectedPacket},
		{"marker", PMayIgnore, nil, ErrUnexpectedPacket},
		{"data too long", PData, make([]byte, DataHeaderSize+MaxBioSize+MaxDigestSize+1), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodePayload(tt.cmd, tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// P_SYNC_PARAM89 with the 89 layout.
	p89 := &SyncParam89{ResyncRate: 250, VerifyAlg: "md5"}
	got, err := DecodePayload(PSyncParam89, p89.MarshalAppend(nil))
	if err != nil || !reflect.DeepEqual(got, p89) {
		t.Fatalf("SyncParam89: %#v, %v", got, err)
	}
}

func TestVersionedMarshal(t *testing.T) {
	p := &Protocol{WireProtocol: ProtocolC, IntegrityAlg: "sha1"}
	if n := len(p.MarshalAppendVersion(nil, 86)); n != ProtocolSize {
		t.Errorf("v86 p_protocol has %d bytes", n)
	}
	if n := len(p.MarshalAppendVersion(nil, 87)); n != ProtocolSize+5 {
		t.Errorf("v87 p_protocol has %d bytes", n)
	}
	sp := &SyncParam{ResyncRate: 1, VerifyAlg: "md5"}
	if n := len(sp.MarshalAppendVersion(nil, 87)); n != 4 {
		t.Errorf("v87 p_rs_param has %d bytes", n)
	}
	if n := len(sp.MarshalAppendVersion(nil, 88)); n != 8 {
		t.Errorf("v88 p_rs_param has %d bytes", n)
	}
	if SyncParamCmd(88) != PSyncParam || SyncParamCmd(89) != PSyncParam89 {
		t.Error("SyncParamCmd")
	}
	long := strings.Repeat("x", 64)
	if (&Protocol{IntegrityAlg: long}).Validate() == nil || (&SyncParam89{CsumsAlg: long}).Validate() == nil {
		t.Error("64-byte algorithm name validated")
	}
	if n := len((&SyncParam89{VerifyAlg: long}).MarshalAppend(nil)); n != SyncParam89Size {
		t.Errorf("long name changed the size to %d", n)
	}
}

func TestAfterSBPolicy(t *testing.T) {
	for p := ASBDisconnect; p <= ASBViolently; p++ {
		q, err := ParseAfterSBPolicy(p.String())
		if err != nil || q != p {
			t.Errorf("%d: %q -> %d, %v", p, p.String(), q, err)
		}
	}
	if ASBDiscardLocal.FromPeer() != ASBDiscardRemote || ASBDiscardRemote.FromPeer() != ASBDiscardLocal || ASBConsensus.FromPeer() != ASBConsensus {
		t.Error("FromPeer")
	}
	if _, err := ParseAfterSBPolicy("bogus"); err == nil {
		t.Error("bogus policy parsed")
	}
}

func TestCmdNames(t *testing.T) {
	if PData.String() != "P_DATA" || PConnectionFeatures.String() != "P_CONNECTION_FEATURES" ||
		PInitialMeta.String() != "P_INITIAL_META" || Cmd(0x42).String() != "P_UNKNOWN(0x0042)" {
		t.Error("names")
	}
	if !PWriteAck.OnMetaSocket() || PData.OnMetaSocket() || !PDelayProbe.OnMetaSocket() {
		t.Error("OnMetaSocket")
	}
	cmds := KnownCmds()
	for i := 1; i < len(cmds); i++ {
		if cmds[i] <= cmds[i-1] {
			t.Fatal("KnownCmds not sorted")
		}
	}
	if len(cmds) != 54 {
		t.Errorf("%d known commands", len(cmds))
	}
}
