// Package resync decides what a DRBD-style resync or online verify does
// next, how fast it goes, and how its progress is shown.
//
// The package is pure: it opens no sockets, reads no clocks, touches no
// disks and starts no goroutines. The engine that owns those passes time
// in as time.Time values and calls in on each event, which keeps every
// decision here deterministic and testable.
//
// It has four parts, each modelled on the behaviour of DRBD 8.4:
//
//   - Planner walks the out-of-sync bitmap once on a SyncTarget and turns
//     runs of dirty 4 KiB blocks into resync requests (DRBD's
//     make_resync_request), never more than a bounded number in flight,
//     skipping blocks the application is writing and forgetting blocks
//     the application's own replicated writes brought back in sync.
//   - Verifier walks every block from a start sector for online verify
//     (DRBD's make_ov_request) and keeps the books on mismatches.
//   - Controller is the dynamic resync-rate controller (DRBD's
//     drbd_rs_controller with c-plan-ahead, c-fill-target,
//     c-delay-target and c-max-rate) and its fixed-rate fallback
//     (resync-rate), called once per SleepTime tick.
//   - Marks and FormatSyncerProgress reproduce, byte for byte, the two
//     progress lines /proc/drbd shows during resync and verify.
//
// Units follow DRBD: one bitmap bit covers BlockSize (4 KiB) of data, a
// sector is 512 bytes, rates are KiB/s.
package resync

import "time"

// Units and timing constants, named after their DRBD counterparts.
const (
	// BlockSize is the amount of data one bitmap bit covers
	// (BM_BLOCK_SIZE).
	BlockSize = 4096
	// BlockShift is log2(BlockSize) (BM_BLOCK_SHIFT).
	BlockShift = 12
	// SectorSize is the size of the 512-byte sectors the wire protocol
	// counts in.
	SectorSize = 512
	// SectorsPerBit is the number of sectors one bitmap bit covers
	// (BM_SECT_PER_BIT).
	SectorsPerBit = BlockSize / SectorSize
	// ExtentBits is the number of bits in one 16 MiB resync extent
	// (BM_BLOCKS_PER_BM_EXT_B); a resync request never crosses one.
	ExtentBits = (16 << 20) / BlockSize
	// MaxBioSize is the largest request DRBD 8.4 accepts from a peer
	// (DRBD_MAX_BIO_SIZE).
	MaxBioSize = 1 << 20

	// SleepTime is the resync timer period (SLEEP_TIME, HZ/10): the
	// controller is asked for a request budget once per tick.
	SleepTime = 100 * time.Millisecond
	// SyncMarks is the number of rolling progress marks (DRBD_SYNC_MARKS).
	SyncMarks = 8
	// SyncMarkStep is the minimum time between two progress marks
	// (DRBD_SYNC_MARK_STEP, 3*HZ).
	SyncMarkStep = 3 * time.Second
)
