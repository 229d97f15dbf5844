package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

// castagnoli is the CRC-32C table used for every metadata checksum.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SuperblockMagic identifies a drbdd superblock ("DRBM"). It differs from
// DRBD's own metadata magics on purpose: drbdd metadata is not drbdmeta's.
const SuperblockMagic = 0x4452424d

// SuperblockVersion is the on-disk format version this package writes and
// accepts.
const SuperblockVersion = 1

// Flags are the superblock flags, DRBD's MDF_* bits with DRBD 8.4's values.
type Flags uint32

// Superblock flags.
const (
	// MDFConsistent: the local data is consistent (it may be outdated).
	MDFConsistent Flags = 1 << 0
	// MDFPrimaryInd: this node was Primary when the superblock was written.
	MDFPrimaryInd Flags = 1 << 1
	// MDFConnectedInd: the node was connected to its peer.
	MDFConnectedInd Flags = 1 << 2
	// MDFFullSync: a full sync was requested; set all bitmap bits on attach.
	MDFFullSync Flags = 1 << 3
	// MDFWasUpToDate: the local data was UpToDate.
	MDFWasUpToDate Flags = 1 << 4
	// MDFPeerOutDated: the peer's data is known to be Outdated.
	MDFPeerOutDated Flags = 1 << 5
	// MDFCrashedPrimary: this node crashed (or detached) while Primary.
	MDFCrashedPrimary Flags = 1 << 6
	// MDFALClean: the activity log was empty when the metadata was closed,
	// so it need not be applied to the bitmap on attach.
	MDFALClean Flags = 1 << 7
	// MDFALDisabled: the activity log is disabled (every write dirties the
	// bitmap instead).
	MDFALDisabled Flags = 1 << 8
)

var flagNames = []struct {
	f    Flags
	name string
}{
	{MDFConsistent, "consistent"},
	{MDFPrimaryInd, "primary-ind"},
	{MDFConnectedInd, "connected-ind"},
	{MDFFullSync, "full-sync"},
	{MDFWasUpToDate, "was-up-to-date"},
	{MDFPeerOutDated, "peer-out-dated"},
	{MDFCrashedPrimary, "crashed-primary"},
	{MDFALClean, "al-clean"},
	{MDFALDisabled, "al-disabled"},
}

// String lists the set flags, for logs.
func (f Flags) String() string {
	var parts []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint32(f)))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Superblock is the decoded 4 KiB metadata superblock.
type Superblock struct {
	// Seq is incremented on every write; ReadSuperblock picks the valid
	// slot with the highest Seq.
	Seq uint64
	// Flags are the MDF_* flags.
	Flags Flags
	// UUIDs are the generation UUIDs.
	UUIDs UUIDs
	// DeviceUUID identifies the backing device (DRBD's device_uuid).
	DeviceUUID uint64
	// LaSizeSectors is the last size agreed with the peer, in sectors
	// (DRBD's la_size_sect); 0 until a size was agreed.
	LaSizeSectors uint64
	// Layout is where the metadata was placed when it was created.
	Layout Layout
}

// Superblock field offsets; all integers are big-endian as in DRBD's
// struct meta_data_on_disk.
const (
	sbMagic       = 0
	sbVersion     = 4
	sbCRC         = 8
	sbFlags       = 12
	sbSeq         = 16
	sbLaSize      = 24
	sbUUIDs       = 32 // 4 x u64: current, bitmap, history[0], history[1]
	sbDeviceUUID  = 64
	sbBytesPerBit = 72
	sbALExtents   = 76
	sbALBlocks    = 80
	sbInternal    = 84
	sbDataBytes   = 88
	sbMetaDev     = 96
	sbMetaOffset  = 104
	sbMetaBytes   = 112
	sbSB0         = 120
	sbSB1         = 128
	sbALOffset    = 136
	sbBMOffset    = 144
	sbBMBytes     = 152
	sbEnd         = 160 // the rest of the block is zero
)

// ErrNoSuperblock is returned (wrapped) when neither superblock slot holds
// a valid superblock.
var ErrNoSuperblock = errors.New("no valid drbdd superblock (did you run create-md?)")

// EncodeSuperblock returns the 4 KiB on-disk form of sb, with its CRC-32C.
func EncodeSuperblock(sb Superblock) []byte {
	b := make([]byte, BlockSize)
	be := binary.BigEndian
	be.PutUint32(b[sbMagic:], SuperblockMagic)
	be.PutUint32(b[sbVersion:], SuperblockVersion)
	be.PutUint32(b[sbFlags:], uint32(sb.Flags))
	be.PutUint64(b[sbSeq:], sb.Seq)
	be.PutUint64(b[sbLaSize:], sb.LaSizeSectors)
	be.PutUint64(b[sbUUIDs:], sb.UUIDs.Current)
	be.PutUint64(b[sbUUIDs+8:], sb.UUIDs.Bitmap)
	be.PutUint64(b[sbUUIDs+16:], sb.UUIDs.History[0])
	be.PutUint64(b[sbUUIDs+24:], sb.UUIDs.History[1])
	be.PutUint64(b[sbDeviceUUID:], sb.DeviceUUID)
	be.PutUint32(b[sbBytesPerBit:], BMBlockSize)
	l := sb.Layout
	be.PutUint32(b[sbALExtents:], uint32(l.ALExtents))
	be.PutUint32(b[sbALBlocks:], uint32(l.ALBlocks))
	if l.Internal {
		be.PutUint32(b[sbInternal:], 1)
	}
	be.PutUint64(b[sbDataBytes:], uint64(l.DataBytes))
	be.PutUint64(b[sbMetaDev:], uint64(l.MetaDevBytes))
	be.PutUint64(b[sbMetaOffset:], uint64(l.MetaOffset))
	be.PutUint64(b[sbMetaBytes:], uint64(l.MetaBytes))
	be.PutUint64(b[sbSB0:], uint64(l.SuperblockOffsets[0]))
	be.PutUint64(b[sbSB1:], uint64(l.SuperblockOffsets[1]))
	be.PutUint64(b[sbALOffset:], uint64(l.ALOffset))
	be.PutUint64(b[sbBMOffset:], uint64(l.BitmapOffset))
	be.PutUint64(b[sbBMBytes:], uint64(l.BitmapBytes))
	be.PutUint32(b[sbCRC:], crc32.Checksum(b, castagnoli))
	return b
}

// blockCRC computes the CRC-32C of a 4 KiB block whose checksum field at
// off is taken as zero.
func blockCRC(b []byte, off int) uint32 {
	crc := crc32.Update(0, castagnoli, b[:off])
	crc = crc32.Update(crc, castagnoli, []byte{0, 0, 0, 0})
	return crc32.Update(crc, castagnoli, b[off+4:])
}

// toInt64 converts an on-disk u64 to int64, rejecting values that would
// turn negative.
func toInt64(v uint64, what string, err *error) int64 {
	if v > 1<<62 && *err == nil {
		*err = fmt.Errorf("superblock: %s %d out of range", what, v)
	}
	return int64(v)
}

// DecodeSuperblock parses and checks a 4 KiB superblock: magic, version,
// checksum, bitmap granularity and a self-consistent layout. Any failure is
// reported as an error; it never panics on arbitrary input.
func DecodeSuperblock(b []byte) (Superblock, error) {
	if len(b) != BlockSize {
		return Superblock{}, fmt.Errorf("superblock: %d bytes, want %d", len(b), BlockSize)
	}
	be := binary.BigEndian
	if m := be.Uint32(b[sbMagic:]); m != SuperblockMagic {
		return Superblock{}, fmt.Errorf("superblock: bad magic 0x%08x", m)
	}
	if v := be.Uint32(b[sbVersion:]); v != SuperblockVersion {
		return Superblock{}, fmt.Errorf("superblock: unsupported format version %d", v)
	}
	if got, want := be.Uint32(b[sbCRC:]), blockCRC(b, sbCRC); got != want {
		return Superblock{}, fmt.Errorf("superblock: checksum mismatch (stored 0x%08x, computed 0x%08x)", got, want)
	}
	if bpb := be.Uint32(b[sbBytesPerBit:]); bpb != BMBlockSize {
		return Superblock{}, fmt.Errorf("superblock: %d bytes per bitmap bit, want %d", bpb, BMBlockSize)
	}
	var sb Superblock
	sb.Flags = Flags(be.Uint32(b[sbFlags:]))
	sb.Seq = be.Uint64(b[sbSeq:])
	sb.LaSizeSectors = be.Uint64(b[sbLaSize:])
	sb.UUIDs = UUIDs{
		Current: be.Uint64(b[sbUUIDs:]),
		Bitmap:  be.Uint64(b[sbUUIDs+8:]),
		History: [2]uint64{be.Uint64(b[sbUUIDs+16:]), be.Uint64(b[sbUUIDs+24:])},
	}
	sb.DeviceUUID = be.Uint64(b[sbDeviceUUID:])
	var err error
	internal := be.Uint32(b[sbInternal:])
	if internal > 1 {
		return Superblock{}, fmt.Errorf("superblock: bad internal flag %d", internal)
	}
	alExt, alBlocks := be.Uint32(b[sbALExtents:]), be.Uint32(b[sbALBlocks:])
	if alExt > ALExtentsMax || alBlocks > ALRingBlocks {
		return Superblock{}, fmt.Errorf("superblock: al-extents %d / AL blocks %d out of range", alExt, alBlocks)
	}
	sb.Layout = Layout{
		Internal:     internal == 1,
		ALExtents:    int(alExt),
		ALBlocks:     int(alBlocks),
		DataBytes:    toInt64(be.Uint64(b[sbDataBytes:]), "data size", &err),
		MetaDevBytes: toInt64(be.Uint64(b[sbMetaDev:]), "meta device size", &err),
		MetaOffset:   toInt64(be.Uint64(b[sbMetaOffset:]), "metadata offset", &err),
		MetaBytes:    toInt64(be.Uint64(b[sbMetaBytes:]), "metadata size", &err),
		SuperblockOffsets: [SuperblockSlots]int64{
			toInt64(be.Uint64(b[sbSB0:]), "superblock offset", &err),
			toInt64(be.Uint64(b[sbSB1:]), "superblock offset", &err),
		},
		ALOffset:     toInt64(be.Uint64(b[sbALOffset:]), "AL offset", &err),
		BitmapOffset: toInt64(be.Uint64(b[sbBMOffset:]), "bitmap offset", &err),
		BitmapBytes:  toInt64(be.Uint64(b[sbBMBytes:]), "bitmap size", &err),
	}
	if err != nil {
		return Superblock{}, err
	}
	if err := sb.Layout.Validate(); err != nil {
		return Superblock{}, fmt.Errorf("superblock: %w", err)
	}
	if sb.LaSizeSectors > uint64(sb.Layout.DataBytes/SectorSize) {
		return Superblock{}, fmt.Errorf("superblock: last agreed size %d sectors exceeds data area of %d bytes",
			sb.LaSizeSectors, sb.Layout.DataBytes)
	}
	return sb, nil
}

// SlotReader is the part of BlockIO needed to read superblocks.
type SlotReader interface {
	ReadAt(p []byte, off int64) (int, error)
}

// ReadSuperblock reads both superblock slots at offsets and returns the
// valid one with the highest sequence number, and that slot's index. If
// neither slot is valid the error wraps ErrNoSuperblock and describes why
// each slot was rejected. A read error on one slot is tolerated when the
// other slot is valid.
func ReadSuperblock(r SlotReader, offsets [SuperblockSlots]int64) (Superblock, int, error) {
	var (
		best    Superblock
		bestIdx = -1
		why     [SuperblockSlots]error
	)
	buf := make([]byte, BlockSize)
	for i, off := range offsets {
		if _, err := r.ReadAt(buf, off); err != nil {
			why[i] = fmt.Errorf("read at %d: %w", off, err)
			continue
		}
		sb, err := DecodeSuperblock(buf)
		if err != nil {
			why[i] = err
			continue
		}
		if bestIdx < 0 || sb.Seq > best.Seq {
			best, bestIdx = sb, i
		}
	}
	if bestIdx < 0 {
		return Superblock{}, -1, fmt.Errorf("%w: slot 0: %w; slot 1: %w", ErrNoSuperblock, why[0], why[1])
	}
	return best, bestIdx, nil
}
