package protocol

import (
	"fmt"
	"slices"
)

// Cmd is a packet command number (DRBD's enum drbd_packet).
type Cmd uint16

// Packet command numbers, as in drbd_protocol.h. The comment after each
// says which socket carries it and which payload type decodes it.
const (
	PData               Cmd = 0x00 // data: Data (mirrored write)
	PDataReply          Cmd = 0x01 // data: Data (answer to PDataRequest)
	PRSDataReply        Cmd = 0x02 // data: Data (answer to PRSDataRequest)
	PBarrier            Cmd = 0x03 // data: Barrier
	PBitmap             Cmd = 0x04 // data: BitmapPlain
	PBecomeSyncTarget   Cmd = 0x05 // data: Empty (obsolete)
	PBecomeSyncSource   Cmd = 0x06 // data: Empty (obsolete)
	PUnplugRemote       Cmd = 0x07 // data: Empty (hint)
	PDataRequest        Cmd = 0x08 // data: BlockReq
	PRSDataRequest      Cmd = 0x09 // data: BlockReq
	PSyncParam          Cmd = 0x0a // data: SyncParam (protocol <= 88)
	PProtocol           Cmd = 0x0b // data: Protocol
	PUUIDs              Cmd = 0x0c // data: UUIDs
	PSizes              Cmd = 0x0d // data: Sizes
	PState              Cmd = 0x0e // data: State
	PSyncUUID           Cmd = 0x0f // data: RSUUID
	PAuthChallenge      Cmd = 0x10 // data: AuthChallenge
	PAuthResponse       Cmd = 0x11 // data: AuthResponse
	PStateChgReq        Cmd = 0x12 // data: ReqState
	PPing               Cmd = 0x13 // meta: Empty
	PPingAck            Cmd = 0x14 // meta: Empty
	PRecvAck            Cmd = 0x15 // meta: BlockAck (protocol B)
	PWriteAck           Cmd = 0x16 // meta: BlockAck (protocol C)
	PRSWriteAck         Cmd = 0x17 // meta: BlockAck (write ack that also sets in sync)
	PSuperseded         Cmd = 0x18 // meta: BlockAck (two-primaries conflict)
	PNegAck             Cmd = 0x19 // meta: BlockAck (write failed)
	PNegDReply          Cmd = 0x1a // meta: BlockAck (read failed)
	PNegRSDReply        Cmd = 0x1b // meta: BlockAck (resync read failed)
	PBarrierAck         Cmd = 0x1c // meta: BarrierAck
	PStateChgReply      Cmd = 0x1d // meta: ReqStateReply
	POVRequest          Cmd = 0x1e // data: BlockReq
	POVReply            Cmd = 0x1f // data: BlockReq with digest
	POVResult           Cmd = 0x20 // meta: BlockAck (BlockID is BlockIDInSync or BlockIDOutOfSync)
	PCsumRSRequest      Cmd = 0x21 // data: BlockReq with digest
	PRSIsInSync         Cmd = 0x22 // meta: BlockAck
	PSyncParam89        Cmd = 0x23 // data: SyncParam89 or SyncParam95 (protocol >= 89)
	PCompressedBitmap   Cmd = 0x24 // data: CompressedBitmap
	PDelayProbe         Cmd = 0x27 // both: DelayProbe
	POutOfSync          Cmd = 0x28 // data: BlockDesc
	PRSCancel           Cmd = 0x29 // meta: BlockAck
	PConnStChgReq       Cmd = 0x2a // data: ReqState (connection wide)
	PConnStChgReply     Cmd = 0x2b // meta: ReqStateReply
	PRetryWrite         Cmd = 0x2c // meta: BlockAck
	PProtocolUpdate     Cmd = 0x2d // data: Protocol
	PTrim               Cmd = 0x31 // data: Trim (discard)
	PRSThinReq          Cmd = 0x32 // data: BlockReq
	PRSDeallocated      Cmd = 0x33 // data: BlockDesc
	PWSame              Cmd = 0x34 // data: WriteSame
	PZeroes             Cmd = 0x36 // data: Trim (write zeroes)
	PMayIgnore          Cmd = 0x100
	PMaxOptCmd          Cmd = 0x101
	PInitialMeta        Cmd = 0xfff1 // meta: Empty, first packet, h80 header
	PInitialData        Cmd = 0xfff2 // data: Empty, first packet, h80 header
	PConnectionFeatures Cmd = 0xfffe // data: ConnectionFeatures, h80 header
)

var cmdNames = map[Cmd]string{
	PData:               "P_DATA",
	PDataReply:          "P_DATA_REPLY",
	PRSDataReply:        "P_RS_DATA_REPLY",
	PBarrier:            "P_BARRIER",
	PBitmap:             "P_BITMAP",
	PBecomeSyncTarget:   "P_BECOME_SYNC_TARGET",
	PBecomeSyncSource:   "P_BECOME_SYNC_SOURCE",
	PUnplugRemote:       "P_UNPLUG_REMOTE",
	PDataRequest:        "P_DATA_REQUEST",
	PRSDataRequest:      "P_RS_DATA_REQUEST",
	PSyncParam:          "P_SYNC_PARAM",
	PProtocol:           "P_PROTOCOL",
	PUUIDs:              "P_UUIDS",
	PSizes:              "P_SIZES",
	PState:              "P_STATE",
	PSyncUUID:           "P_SYNC_UUID",
	PAuthChallenge:      "P_AUTH_CHALLENGE",
	PAuthResponse:       "P_AUTH_RESPONSE",
	PStateChgReq:        "P_STATE_CHG_REQ",
	PPing:               "P_PING",
	PPingAck:            "P_PING_ACK",
	PRecvAck:            "P_RECV_ACK",
	PWriteAck:           "P_WRITE_ACK",
	PRSWriteAck:         "P_RS_WRITE_ACK",
	PSuperseded:         "P_SUPERSEDED",
	PNegAck:             "P_NEG_ACK",
	PNegDReply:          "P_NEG_DREPLY",
	PNegRSDReply:        "P_NEG_RS_DREPLY",
	PBarrierAck:         "P_BARRIER_ACK",
	PStateChgReply:      "P_STATE_CHG_REPLY",
	POVRequest:          "P_OV_REQUEST",
	POVReply:            "P_OV_REPLY",
	POVResult:           "P_OV_RESULT",
	PCsumRSRequest:      "P_CSUM_RS_REQUEST",
	PRSIsInSync:         "P_RS_IS_IN_SYNC",
	PSyncParam89:        "P_SYNC_PARAM89",
	PCompressedBitmap:   "P_COMPRESSED_BITMAP",
	PDelayProbe:         "P_DELAY_PROBE",
	POutOfSync:          "P_OUT_OF_SYNC",
	PRSCancel:           "P_RS_CANCEL",
	PConnStChgReq:       "P_CONN_ST_CHG_REQ",
	PConnStChgReply:     "P_CONN_ST_CHG_REPLY",
	PRetryWrite:         "P_RETRY_WRITE",
	PProtocolUpdate:     "P_PROTOCOL_UPDATE",
	PTrim:               "P_TRIM",
	PRSThinReq:          "P_RS_THIN_REQ",
	PRSDeallocated:      "P_RS_DEALLOCATED",
	PWSame:              "P_WSAME",
	PZeroes:             "P_ZEROES",
	PMayIgnore:          "P_MAY_IGNORE",
	PMaxOptCmd:          "P_MAX_OPT_CMD",
	PInitialMeta:        "P_INITIAL_META",
	PInitialData:        "P_INITIAL_DATA",
	PConnectionFeatures: "P_CONNECTION_FEATURES",
}

// String returns DRBD's constant name, e.g. "P_DATA", or
// "P_UNKNOWN(0x0042)" for a number DRBD does not define.
func (c Cmd) String() string {
	if n, ok := cmdNames[c]; ok {
		return n
	}
	return fmt.Sprintf("P_UNKNOWN(0x%04x)", uint16(c))
}

// Known reports whether c is one of DRBD 8.4's packet numbers.
func (c Cmd) Known() bool {
	_, ok := cmdNames[c]
	return ok
}

// OnMetaSocket reports whether DRBD expects c on the meta socket (handled
// by the ack receiver, the "asender"). P_DELAY_PROBE is accepted on both
// sockets and reports true.
func (c Cmd) OnMetaSocket() bool {
	switch c {
	case PPing, PPingAck, PRecvAck, PWriteAck, PRSWriteAck, PSuperseded,
		PNegAck, PNegDReply, PNegRSDReply, POVResult, PBarrierAck,
		PStateChgReply, PRSIsInSync, PDelayProbe, PRSCancel,
		PConnStChgReply, PRetryWrite, PInitialMeta:
		return true
	}
	return false
}

// knownCmds lists every packet number in ascending order.
var knownCmds = func() []Cmd {
	var cmds []Cmd
	for c := range cmdNames {
		cmds = append(cmds, c)
	}
	slices.Sort(cmds)
	return cmds
}()

// KnownCmds returns every packet number DRBD 8.4 defines, in ascending
// order.
func KnownCmds() []Cmd {
	return append([]Cmd(nil), knownCmds...)
}
