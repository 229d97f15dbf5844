// Package meta holds drbdd's on-disk metadata and the rules that read it:
// the superblock, the generation UUIDs and DRBD 8.4's UUID comparison
// (drbd_uuid_compare) and sync handshake (drbd_sync_handshake), the
// out-of-sync bitmap, and the activity log.
//
// The package is pure. It encodes, decodes and decides; it opens no files,
// reads no clocks, draws no random numbers and starts no goroutines. The one
// place that performs I/O, Store, does so only through the three-method
// BlockIO interface handed to it, so that tests can run it against an
// in-memory device that drops unsynced writes or tears them at 512-byte
// granularity, as a power failure would.
//
// # Metadata layout
//
// All regions are 4 KiB aligned and every metadata write is one or more whole
// 4 KiB blocks. With internal metadata the metadata lives at the end of the
// backing device and the replicated data size shrinks accordingly:
//
//	0                                  DataBytes
//	|------------- replicated data -------------|-- bitmap --|-- AL ring --|-SB0-|-SB1-|
//	                                             ^BitmapOffset ^ALOffset    ^SuperblockOffsets
//	                                             `---------------- MetaBytes --------------'
//
// With external metadata the data device is used whole and the metadata
// device holds, from offset 0:
//
//	|-SB0-|-SB1-|-- AL ring (73 x 4 KiB) --|-- bitmap (1 bit per 4 KiB of data) --|
//
// SB0 and SB1 are two 4 KiB superblock slots written alternately (the older
// one is overwritten, then synced), so that a torn superblock write always
// leaves the previous version readable. The activity log ring holds
// ALRingBlocks transaction blocks; the bitmap holds one bit per BMBlockSize
// bytes of data, stored as little-endian 64-bit words as DRBD does.
//
// # Crash-safety invariant
//
// For every 4 KiB block that might differ between the two nodes, either its
// bit is set in the on-disk bitmap or its 4 MiB extent is active in the
// on-disk activity log. Store keeps that invariant by writing an AL
// transaction (and syncing it) before data is written to a newly activated
// extent, and by writing the bitmap pages of an extent before the
// transaction that evicts that extent from the log. After a crash, Open
// replays the ring and sets the bits of every extent that was active, so the
// bitmap again covers every block that might differ.
package meta
