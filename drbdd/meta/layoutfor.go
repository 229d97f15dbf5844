package meta

import (
	"crypto/rand"
	"encoding/binary"
)

// LayoutFor returns the layout for a disk whose data device is dataDevBytes
// long, with internal metadata or an external metadata device of
// metaDevBytes. It is what both attach and create-md use, so that the two
// always agree on where metadata lives.
func LayoutFor(internal bool, dataDevBytes, metaDevBytes int64, alExtents int) (Layout, error) {
	if alExtents == 0 {
		alExtents = ALExtentsDefault
	}
	if internal {
		return InternalLayout(dataDevBytes, alExtents)
	}
	return ExternalLayout(dataDevBytes, metaDevBytes, alExtents)
}

// RandomUUID returns a fresh random generation UUID with the primary bit
// clear.
func RandomUUID() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand never fails on Linux; a UUID that is not random
		// would silently break split-brain detection, so do not go on.
		panic("crypto/rand: " + err.Error())
	}
	return binary.LittleEndian.Uint64(b[:]) &^ UUIDPrimaryBit
}
