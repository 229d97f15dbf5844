package protocol

import (
	"errors"
	"fmt"
	"strings"
)

// Protocol versions: the range DRBD 8.4 accepts (PRO_VERSION_MIN and
// PRO_VERSION_MAX) and the version assumed before the handshake.
const (
	ProtocolVersionMin = 86
	ProtocolVersionMax = 101
	// ProtocolVersionInitial is what DRBD assumes until P_CONNECTION_FEATURES
	// has been exchanged; it makes the first packets use the h80 header.
	ProtocolVersionInitial = 80
)

// FeatureFlags is the feature_flags word of P_CONNECTION_FEATURES.
type FeatureFlags uint32

// Feature flags (DRBD_FF_*).
const (
	// FeatureTrim (DRBD_FF_TRIM) enables discards on the wire (P_TRIM).
	FeatureTrim FeatureFlags = 1
	// FeatureThinResync (DRBD_FF_THIN_RESYNC) enables P_RS_THIN_REQ and
	// P_RS_DEALLOCATED.
	FeatureThinResync FeatureFlags = 2
	// FeatureWSame (DRBD_FF_WSAME) enables P_WSAME and appends o_qlim to
	// p_sizes.
	FeatureWSame FeatureFlags = 4
	// FeatureWZeroes (DRBD_FF_WZEROES) enables P_ZEROES (write zeroes on the
	// wire) and tells a P_TRIM receiver that the sender means discard, not
	// zero-out.
	FeatureWZeroes FeatureFlags = 8

	// SupportedFeatures is every feature this package can encode and
	// decode; what the daemon advertises is its own choice.
	SupportedFeatures = FeatureTrim | FeatureThinResync | FeatureWSame | FeatureWZeroes
)

// String lists the flags the way DRBD logs them, e.g. "TRIM WRITE_ZEROES",
// or "none".
func (f FeatureFlags) String() string {
	if f == 0 {
		return "none"
	}
	var parts []string
	names := []struct {
		f FeatureFlags
		n string
	}{{FeatureTrim, "TRIM"}, {FeatureThinResync, "THIN_RESYNC"}, {FeatureWSame, "WRITE_SAME"}, {FeatureWZeroes, "WRITE_ZEROES"}}
	rest := f
	for _, n := range names {
		if f&n.f != 0 {
			parts = append(parts, n.n)
			rest &^= n.f
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint32(rest)))
	}
	return strings.Join(parts, " ")
}

// ConnectionFeatures is struct p_connection_features, the 72-byte payload
// of P_CONNECTION_FEATURES. Note the field order on the wire: protocol_min,
// feature_flags, protocol_max, then a pad word and 56 reserved bytes, sent
// as zero and ignored on receipt. With its 8-byte h80 header the packet has
// 80 bytes.
type ConnectionFeatures struct {
	ProtocolMin  uint32
	FeatureFlags FeatureFlags
	ProtocolMax  uint32
}

// LocalFeatures returns the features packet for this implementation's
// version range and the given feature flags.
func LocalFeatures(flags FeatureFlags) ConnectionFeatures {
	return ConnectionFeatures{ProtocolMin: ProtocolVersionMin, FeatureFlags: flags, ProtocolMax: ProtocolVersionMax}
}

// MarshalAppend appends the 72-byte payload.
func (f *ConnectionFeatures) MarshalAppend(b []byte) []byte {
	b = be.AppendUint32(b, f.ProtocolMin)
	b = be.AppendUint32(b, uint32(f.FeatureFlags))
	b = be.AppendUint32(b, f.ProtocolMax)
	return append(b, make([]byte, ConnectionFeaturesSize-12)...)
}

// Unmarshal decodes exactly 72 bytes; DRBD refuses any other length.
func (f *ConnectionFeatures) Unmarshal(p []byte) error {
	if err := exactLen("p_connection_features", p, ConnectionFeaturesSize); err != nil {
		return err
	}
	f.ProtocolMin = be.Uint32(p)
	f.FeatureFlags = FeatureFlags(be.Uint32(p[4:]))
	f.ProtocolMax = be.Uint32(p[8:])
	return nil
}

// Negotiate computes the agreed protocol version and features between f
// (this node) and peer, as drbd_do_features() does.
func (f ConnectionFeatures) Negotiate(peer ConnectionFeatures) (version int, features FeatureFlags, err error) {
	version, err = NegotiateVersion(int(f.ProtocolMin), int(f.ProtocolMax), int(peer.ProtocolMin), int(peer.ProtocolMax))
	if err != nil {
		return 0, 0, err
	}
	return version, NegotiateFeatures(f.FeatureFlags, peer.FeatureFlags), nil
}

// ErrIncompatibleDialects is returned when the two protocol version ranges
// do not overlap; retrying cannot help.
var ErrIncompatibleDialects = errors.New("incompatible DRBD dialects")

// NegotiateVersion returns the protocol version two nodes agree on, as
// drbd_do_features() computes it: a peer maximum of zero means the peer
// only speaks its minimum; the ranges must overlap; the result is the
// smaller of the two maxima. The error text matches DRBD's log message.
func NegotiateVersion(localMin, localMax, peerMin, peerMax int) (int, error) {
	if peerMax == 0 {
		peerMax = peerMin
	}
	if localMax < peerMin || localMin > peerMax {
		return 0, fmt.Errorf("%w: I support %d-%d, peer supports %d-%d",
			ErrIncompatibleDialects, localMin, localMax, peerMin, peerMax)
	}
	return min(localMax, peerMax), nil
}

// NegotiateFeatures returns the features both sides support.
func NegotiateFeatures(local, peer FeatureFlags) FeatureFlags {
	return local & peer
}
