// Package protocol implements DRBD 8.4's peer wire protocol (protocol
// versions 86 to 101; drbdd speaks 101) as pure, bound-checked encoders and
// decoders plus a small framed connection type.
//
// The formats follow the Linux kernel's DRBD 8.4 sources (drbd_protocol.h,
// drbd_receiver.c, drbd_main.c, drbd_vli.h, include/linux/drbd.h); no code
// was copied, only the wire facts. The facts that matter most:
//
//   - Every packet starts with one of three headers, all big-endian: h80
//     (u32 magic 0x83740267, u16 command, u16 length; 8 bytes), h95 (u16
//     magic 0x835a, u16 command, u32 length; 8 bytes) and h100 (u32 magic
//     0x8620ec20, u16 volume, u16 command, u32 length, u32 pad that must be
//     zero; 16 bytes). The length counts the payload only. Before the
//     version is agreed DRBD assumes protocol 80, so the initial packets and
//     the feature packet always travel with an h80 header. From protocol 100
//     on, every packet uses h100 and a receiver rejects anything else; below
//     100 a sender uses h95 only for payloads above 32 KiB (protocol >= 95).
//   - Each of the two TCP connections (data and meta) starts with an 8-byte
//     h80 packet carrying no payload: P_INITIAL_DATA (0xfff2) on the data
//     socket and P_INITIAL_META (0xfff1) on the meta socket. The receiver
//     reads only the header.
//   - P_CONNECTION_FEATURES (0xfffe) is sent on the data socket only. Its
//     payload (struct p_connection_features) is 72 bytes: protocol_min,
//     feature_flags, protocol_max, a u32 pad and 7 reserved u64s, so the
//     whole packet with its h80 header is the "80-byte handshake". A peer
//     rejects any other payload length. The agreed version is
//     min(own max, peer max); the agreed features are the intersection.
//   - CRAM-HMAC follows on the data socket (with the agreed header): both
//     sides send a 64-byte P_AUTH_CHALLENGE, accept a peer challenge of 64 to
//     128 bytes, refuse a peer that echoes their own challenge, answer with
//     P_AUTH_RESPONSE = HMAC(shared secret, peer's whole challenge) and
//     compare the peer's answer with HMAC(secret, own challenge).
//   - Numbers are big-endian, except two opaque handles that DRBD writes in
//     host order and the peer only echoes: block_id (p_data, p_block_ack,
//     p_block_req) and the barrier number (p_barrier, p_barrier_ack). This
//     package encodes them big-endian too, which keeps echoes byte-exact. The
//     special block ids ID_SYNCER (all ones) and ID_IN_SYNC/ID_OUT_OF_SYNC
//     (4711/4712, sent big-endian) are exported as BlockID* constants.
//   - The connection state (union drbd_state) is a GCC bitfield laid out
//     least significant bit first on little-endian hosts (role:2, peer:2,
//     conn:5, disk:4, pdsk:4, susp:1, aftr_isp:1, peer_isp:1, user_isp:1,
//     susp_nod:1, susp_fen:1) and sent as cpu_to_be32 of the resulting
//     integer.
//   - Bitmaps travel as P_BITMAP (little-endian 64-bit words, exactly
//     min((4096-header)/8, words left) of them per packet, ended by an empty
//     P_BITMAP) or P_COMPRESSED_BITMAP (one encoding byte, then run lengths
//     as DRBD's variable length integer bit code, least significant bit
//     first; at most 4096-header bytes).
package protocol
