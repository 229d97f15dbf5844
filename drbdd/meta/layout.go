package meta

import (
	"errors"
	"fmt"
)

// Sizes shared by every part of the metadata.
const (
	// SectorSize is the 512-byte unit DRBD counts sizes and offsets in.
	SectorSize = 512
	// BlockSize is the metadata I/O unit: every metadata region is aligned
	// to it and every metadata write covers whole blocks of this size.
	BlockSize = 4096
	// BMBlockSize is how many bytes of data one bitmap bit stands for
	// (DRBD's BM_BLOCK_SIZE).
	BMBlockSize = 4096
	// BitsPerPage is the number of bitmap bits in one 4 KiB bitmap block.
	BitsPerPage = BlockSize * 8
	// ALExtentSize is the amount of data one activity-log extent covers
	// (DRBD's AL_EXTENT_SIZE, 4 MiB).
	ALExtentSize = 4 << 20
	// BitsPerALExtent is the number of bitmap bits one AL extent covers.
	BitsPerALExtent = ALExtentSize / BMBlockSize
	// SuperblockSlots is the number of alternately written superblock copies.
	SuperblockSlots = 2
)

// Activity-log limits, as DRBD 8.4 has them.
const (
	// ALExtentsMin is the smallest al-extents setting accepted.
	ALExtentsMin = 7
	// ALExtentsMax is the largest al-extents setting accepted: slot numbers
	// are 16 bits wide and 0xffff means "no slot".
	ALExtentsMax = 65534
	// ALExtentsDefault is DRBD's default al-extents.
	ALExtentsDefault = 1237
)

// ErrDeviceTooSmall is returned when a device cannot hold the metadata plus
// at least one block of data.
var ErrDeviceTooSmall = errors.New("device too small for drbdd metadata")

// Layout says where the metadata lives and how much data is replicated. All
// offsets are absolute byte offsets on the metadata device, which for
// internal metadata is the backing device itself.
type Layout struct {
	// Internal is true when the metadata sits at the end of the data device.
	Internal bool
	// DataBytes is the usable size of the replicated data, a multiple of
	// BMBlockSize.
	DataBytes int64
	// MetaDevBytes is the size of the device that holds the metadata,
	// rounded down to BlockSize.
	MetaDevBytes int64
	// MetaOffset and MetaBytes delimit the whole metadata area.
	MetaOffset, MetaBytes int64
	// SuperblockOffsets are the two superblock slots.
	SuperblockOffsets [SuperblockSlots]int64
	// ALOffset is the first activity-log transaction block; the ring holds
	// ALBlocks blocks.
	ALOffset int64
	ALBlocks int
	// BitmapOffset and BitmapBytes delimit the on-disk bitmap, a whole
	// number of 4 KiB pages.
	BitmapOffset, BitmapBytes int64
	// ALExtents is the number of activity-log slots (al-extents) the
	// metadata was created with.
	ALExtents int
}

// BitmapBits is the number of bits needed to cover DataBytes.
func (l Layout) BitmapBits() int64 { return bitsFor(l.DataBytes) }

// BitmapPages is the number of 4 KiB pages in the on-disk bitmap.
func (l Layout) BitmapPages() int { return int(l.BitmapBytes / BlockSize) }

// BitmapPageOffset is the device offset of bitmap page i.
func (l Layout) BitmapPageOffset(i int) int64 { return l.BitmapOffset + int64(i)*BlockSize }

// ALBlockOffset is the device offset of activity-log ring block pos.
func (l Layout) ALBlockOffset(pos int) int64 { return l.ALOffset + int64(pos)*BlockSize }

// DataSectors is DataBytes in 512-byte sectors.
func (l Layout) DataSectors() uint64 { return uint64(l.DataBytes / SectorSize) }

func bitsFor(dataBytes int64) int64 { return (dataBytes + BMBlockSize - 1) / BMBlockSize }

func pagesFor(bits int64) int64 { return (bits + BitsPerPage - 1) / BitsPerPage }

func checkALExtents(n int) error {
	if n < ALExtentsMin || n > ALExtentsMax {
		return fmt.Errorf("al-extents %d out of range [%d, %d]", n, ALExtentsMin, ALExtentsMax)
	}
	return nil
}

// InternalLayout places the metadata at the end of a devBytes-sized backing
// device: bitmap, then the activity-log ring, then the two superblock slots,
// and returns what is left in front of them as the data area. The bitmap is
// sized to cover the data area exactly (rounded up to whole pages).
func InternalLayout(devBytes int64, alExtents int) (Layout, error) {
	if err := checkALExtents(alExtents); err != nil {
		return Layout{}, err
	}
	total := devBytes &^ (BlockSize - 1)
	fixed := int64(ALRingBlocks+SuperblockSlots) * BlockSize
	if total <= fixed {
		return Layout{}, fmt.Errorf("%d-byte device: %w", devBytes, ErrDeviceTooSmall)
	}
	avail := total - fixed
	// Each bitmap page costs BlockSize bytes and covers BitsPerPage*BMBlockSize
	// bytes of data; take the fewest pages that cover what remains.
	per := int64(BlockSize + BitsPerPage*BMBlockSize)
	pages := (avail + per - 1) / per
	data := avail - pages*BlockSize
	if data < BMBlockSize {
		return Layout{}, fmt.Errorf("%d-byte device: %w", devBytes, ErrDeviceTooSmall)
	}
	// The rounding may have left a bitmap page with nothing to cover: give
	// it to the data if the fewer pages still cover the larger data area.
	if need := pagesFor(bitsFor(data)); need < pages {
		if d := avail - need*BlockSize; pagesFor(bitsFor(d)) <= need {
			data, pages = d, need
		}
	}
	l := Layout{
		Internal:     true,
		DataBytes:    data,
		MetaDevBytes: total,
		MetaOffset:   data,
		MetaBytes:    total - data,
		BitmapOffset: data,
		BitmapBytes:  pages * BlockSize,
		ALBlocks:     ALRingBlocks,
		ALExtents:    alExtents,
	}
	l.ALOffset = l.BitmapOffset + l.BitmapBytes
	l.SuperblockOffsets[0] = l.ALOffset + int64(ALRingBlocks)*BlockSize
	l.SuperblockOffsets[1] = l.SuperblockOffsets[0] + BlockSize
	return l, l.Validate()
}

// ExternalLayout places the metadata at the start of a separate
// metaDevBytes-sized device (superblock slots, activity-log ring, bitmap)
// and uses the whole data device, rounded down to BMBlockSize.
func ExternalLayout(dataBytes, metaDevBytes int64, alExtents int) (Layout, error) {
	if err := checkALExtents(alExtents); err != nil {
		return Layout{}, err
	}
	data := dataBytes &^ (BMBlockSize - 1)
	if data < BMBlockSize {
		return Layout{}, fmt.Errorf("%d-byte data device: %w", dataBytes, ErrDeviceTooSmall)
	}
	pages := pagesFor(bitsFor(data))
	need := int64(SuperblockSlots+ALRingBlocks)*BlockSize + pages*BlockSize
	total := metaDevBytes &^ (BlockSize - 1)
	if total < need {
		return Layout{}, fmt.Errorf("%d-byte meta device, need %d bytes for %d bytes of data: %w",
			metaDevBytes, need, data, ErrDeviceTooSmall)
	}
	l := Layout{
		DataBytes:         data,
		MetaDevBytes:      total,
		MetaOffset:        0,
		MetaBytes:         need,
		SuperblockOffsets: [SuperblockSlots]int64{0, BlockSize},
		ALOffset:          SuperblockSlots * BlockSize,
		ALBlocks:          ALRingBlocks,
		BitmapBytes:       pages * BlockSize,
		ALExtents:         alExtents,
	}
	l.BitmapOffset = l.ALOffset + int64(ALRingBlocks)*BlockSize
	return l, l.Validate()
}

// Validate checks that the layout is self-consistent: every region 4 KiB
// aligned, inside the metadata area and the device, not overlapping another
// region (or, for internal metadata, the data), and the bitmap large enough
// for the data. Decoded superblocks are validated with it before use.
func (l Layout) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("invalid metadata layout: "+format, args...)
	}
	if l.DataBytes < BMBlockSize || l.DataBytes%BMBlockSize != 0 {
		return bad("data size %d", l.DataBytes)
	}
	if l.MetaDevBytes <= 0 || l.MetaDevBytes%BlockSize != 0 {
		return bad("meta device size %d", l.MetaDevBytes)
	}
	if err := checkALExtents(l.ALExtents); err != nil {
		return bad("%v", err)
	}
	if l.ALBlocks < minALBlocks(l.ALExtents) || l.ALBlocks > ALRingBlocks {
		return bad("%d AL blocks for %d extents", l.ALBlocks, l.ALExtents)
	}
	if l.BitmapBytes%BlockSize != 0 || l.BitmapBytes < pagesFor(l.BitmapBits())*BlockSize {
		return bad("bitmap of %d bytes for %d bytes of data", l.BitmapBytes, l.DataBytes)
	}
	if l.BitmapBytes > l.MetaDevBytes {
		return bad("bitmap of %d bytes on %d-byte device", l.BitmapBytes, l.MetaDevBytes)
	}
	if l.MetaOffset < 0 || l.MetaBytes <= 0 || l.MetaOffset%BlockSize != 0 ||
		l.MetaBytes > l.MetaDevBytes-l.MetaOffset {
		return bad("metadata area [%d, +%d) on %d-byte device", l.MetaOffset, l.MetaBytes, l.MetaDevBytes)
	}
	type region struct {
		name     string
		off, len int64
	}
	regions := []region{
		{"superblock 0", l.SuperblockOffsets[0], BlockSize},
		{"superblock 1", l.SuperblockOffsets[1], BlockSize},
		{"activity log", l.ALOffset, int64(l.ALBlocks) * BlockSize},
		{"bitmap", l.BitmapOffset, l.BitmapBytes},
	}
	metaEnd := l.MetaOffset + l.MetaBytes
	for i, r := range regions {
		if r.off%BlockSize != 0 || r.off < l.MetaOffset || r.off > metaEnd || r.len > metaEnd-r.off {
			return bad("%s at [%d, +%d) outside metadata area [%d, %d)", r.name, r.off, r.len, l.MetaOffset, metaEnd)
		}
		for _, o := range regions[:i] {
			if r.off < o.off+o.len && o.off < r.off+r.len {
				return bad("%s overlaps %s", r.name, o.name)
			}
		}
	}
	if l.Internal {
		if l.DataBytes > l.MetaOffset {
			return bad("data [0, %d) overlaps metadata at %d", l.DataBytes, l.MetaOffset)
		}
	}
	return nil
}
