package meta

import (
	"errors"
	"fmt"
	"slices"
)

// BlockIO is the device the metadata lives on. A write is durable only
// after a later Sync returns nil; Store orders its writes and syncs so that
// a crash at any point leaves readable, conservative metadata.
type BlockIO interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
}

// bitmapIOChunk is the largest bitmap read Open issues at once.
const bitmapIOChunk = 1 << 20

// Recovery describes what Open found and did.
type Recovery struct {
	// Clean is true when the metadata was closed cleanly (MDF_AL_CLEAN).
	Clean bool
	// ALExtents are the extents that were active in the activity log and
	// were marked out of sync in the bitmap.
	ALExtents []uint32
	// BitsSet is how many bits applying the log (or a full sync) newly set.
	BitsSet int64
	// ALLost is true when the activity log could not be replayed, so the
	// whole bitmap was set; ALError says why.
	ALLost  bool
	ALError error
	// FullSync is true when MDF_FULL_SYNC was set, so the whole bitmap was
	// set.
	FullSync bool
	// LastTransaction is the highest activity-log transaction number found.
	LastTransaction uint64
}

// Store ties the superblock, bitmap and activity log of one device
// together over a BlockIO and performs their writes in a crash-safe order.
// It is not safe for concurrent use; its owner serializes access.
type Store struct {
	io     BlockIO
	layout Layout
	sb     Superblock
	slot   int // slot holding sb
	bm     *Bitmap
	al     *AL
	rec    Recovery
}

func writeFull(io BlockIO, p []byte, off int64) error {
	n, err := io.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write of %d of %d bytes", n, len(p))
	}
	if err != nil {
		return fmt.Errorf("metadata write at %d: %w", off, err)
	}
	return nil
}

func readFull(io BlockIO, p []byte, off int64) error {
	n, err := io.ReadAt(p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read of %d of %d bytes", n, len(p))
	}
	if err != nil {
		return fmt.Errorf("metadata read at %d: %w", off, err)
	}
	return nil
}

func syncIO(io BlockIO) error {
	if err := io.Sync(); err != nil {
		return fmt.Errorf("metadata sync: %w", err)
	}
	return nil
}

// Create writes fresh metadata for layout (drbdadm create-md): both
// superblock slots are invalidated first, then the bitmap is cleared and
// the activity-log ring initialized, and finally one superblock with
// initial (normally NewUUIDs()), deviceUUID and MDF_AL_CLEAN is written.
// The disk is therefore Inconsistent (no MDF_CONSISTENT) until the first
// sync, as with DRBD.
func Create(io BlockIO, layout Layout, initial UUIDs, deviceUUID uint64) error {
	if err := layout.Validate(); err != nil {
		return err
	}
	zero := make([]byte, BlockSize)
	for _, off := range layout.SuperblockOffsets {
		if err := writeFull(io, zero, off); err != nil {
			return err
		}
	}
	if err := syncIO(io); err != nil {
		return err
	}
	chunk := make([]byte, min(layout.BitmapBytes, bitmapIOChunk))
	for off := int64(0); off < layout.BitmapBytes; off += int64(len(chunk)) {
		n := min(int64(len(chunk)), layout.BitmapBytes-off)
		if err := writeFull(io, chunk[:n], layout.BitmapOffset+off); err != nil {
			return err
		}
	}
	al, err := NewAL(layout.ALExtents, layout.ALBlocks, 0)
	if err != nil {
		return err
	}
	txs, err := al.InitRing()
	if err != nil {
		return err
	}
	for _, tx := range txs {
		if err := writeFull(io, EncodeTransaction(tx), layout.ALBlockOffset(tx.RingPos(layout.ALBlocks))); err != nil {
			return err
		}
	}
	if err := syncIO(io); err != nil {
		return err
	}
	sb := Superblock{
		Seq:        1,
		Flags:      MDFALClean,
		UUIDs:      initial,
		DeviceUUID: deviceUUID,
		Layout:     layout,
	}
	if err := writeFull(io, EncodeSuperblock(sb), layout.SuperblockOffsets[0]); err != nil {
		return err
	}
	return syncIO(io)
}

// Open reads the metadata of layout and brings it into a consistent,
// attached state:
//
//   - the newest valid superblock is read, and its layout must equal layout;
//   - the bitmap is read;
//   - unless the metadata was closed cleanly, the activity log is replayed
//     and every extent that was active is marked out of sync (if the log
//     cannot be replayed, the whole bitmap is set);
//   - if MDF_FULL_SYNC is set, the whole bitmap is set;
//   - changed bitmap pages are written and synced;
//   - the activity log is emptied on disk;
//   - MDF_AL_CLEAN and MDF_FULL_SYNC are cleared in a new superblock.
//
// Recovery reports what was found.
func Open(io BlockIO, layout Layout) (*Store, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	sb, slot, err := ReadSuperblock(io, layout.SuperblockOffsets)
	if err != nil {
		return nil, err
	}
	if sb.Layout != layout {
		return nil, fmt.Errorf("metadata layout mismatch (device resized or wrong al-extents?): on disk %+v, expected %+v",
			sb.Layout, layout)
	}
	s := &Store{io: io, layout: layout, sb: sb, slot: slot, bm: NewBitmap(layout.DataBytes)}
	if err := s.readBitmap(); err != nil {
		return nil, err
	}

	ring := make([][]byte, layout.ALBlocks)
	for i := range ring {
		ring[i] = make([]byte, BlockSize)
		if err := readFull(io, ring[i], layout.ALBlockOffset(i)); err != nil {
			return nil, err
		}
	}
	active, lastTr, alErr := RecoverAL(ring)
	s.rec.LastTransaction = lastTr
	s.rec.Clean = sb.Flags&MDFALClean != 0
	switch {
	case s.rec.Clean:
	case alErr != nil:
		s.rec.ALLost, s.rec.ALError = true, alErr
		s.rec.BitsSet += s.bm.SetAll()
	default:
		s.rec.ALExtents = active
		for _, e := range active {
			s.rec.BitsSet += s.bm.SetExtent(e)
		}
	}
	if sb.Flags&MDFFullSync != 0 {
		s.rec.FullSync = true
		s.rec.BitsSet += s.bm.SetAll()
	}
	if err := s.FlushBitmap(); err != nil {
		return nil, err
	}

	next := uint64(0)
	if alErr == nil || errors.Is(alErr, ErrALIncomplete) {
		next = lastTr + 1
	}
	s.al, err = NewAL(layout.ALExtents, layout.ALBlocks, next)
	if err != nil {
		return nil, err
	}
	txs, _, err := s.al.Reset()
	if err != nil {
		return nil, err
	}
	if err := s.writeTransactions(txs); err != nil {
		return nil, err
	}
	sb.Flags &^= MDFALClean | MDFFullSync
	if err := s.WriteSuperblock(sb); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) readBitmap() error {
	buf := make([]byte, min(s.layout.BitmapBytes, bitmapIOChunk))
	pages := s.bm.Pages()
	for off := int64(0); off < int64(pages)*BlockSize; off += int64(len(buf)) {
		n := min(int64(len(buf)), int64(pages)*BlockSize-off)
		if err := readFull(s.io, buf[:n], s.layout.BitmapOffset+off); err != nil {
			return err
		}
		for p := int64(0); p < n; p += BlockSize {
			if err := s.bm.LoadPage(int((off+p)/BlockSize), buf[p:p+BlockSize]); err != nil {
				return fmt.Errorf("on-disk bitmap: %w", err)
			}
		}
	}
	return nil
}

func (s *Store) writeTransactions(txs []*Transaction) error {
	for _, tx := range txs {
		if err := writeFull(s.io, EncodeTransaction(tx), s.layout.ALBlockOffset(tx.RingPos(s.layout.ALBlocks))); err != nil {
			return err
		}
	}
	return syncIO(s.io)
}

// Layout is the metadata layout.
func (s *Store) Layout() Layout { return s.layout }

// Superblock returns the last superblock written or read.
func (s *Store) Superblock() Superblock { return s.sb }

// UUIDs returns the generation UUIDs of the current superblock.
func (s *Store) UUIDs() UUIDs { return s.sb.UUIDs }

// Bitmap is the in-memory bitmap. Changes reach the disk with FlushBitmap,
// and for evicted extents automatically in ALBegin.
func (s *Store) Bitmap() *Bitmap { return s.bm }

// AL is the in-memory activity log. Use ALBegin and ALComplete to change
// it, so that the transactions are written.
func (s *Store) AL() *AL { return s.al }

// Recovery reports what Open found.
func (s *Store) Recovery() Recovery { return s.rec }

// WriteSuperblock writes sb durably: its sequence number is set to one past
// the current one and it is written to the slot not holding the current
// superblock, then synced. The layout cannot change.
func (s *Store) WriteSuperblock(sb Superblock) error {
	if sb.Layout != s.layout {
		return errors.New("metadata: WriteSuperblock cannot change the layout")
	}
	if sb.LaSizeSectors > s.layout.DataSectors() {
		return fmt.Errorf("metadata: last agreed size %d sectors exceeds the data area", sb.LaSizeSectors)
	}
	sb.Seq = s.sb.Seq + 1
	target := 1 - s.slot
	if err := writeFull(s.io, EncodeSuperblock(sb), s.layout.SuperblockOffsets[target]); err != nil {
		return err
	}
	if err := syncIO(s.io); err != nil {
		return err
	}
	s.sb, s.slot = sb, target
	return nil
}

// Update applies fn to a copy of the current superblock and writes the
// result with WriteSuperblock.
func (s *Store) Update(fn func(*Superblock)) error {
	sb := s.sb
	fn(&sb)
	return s.WriteSuperblock(sb)
}

// SetUUIDs writes new generation UUIDs.
func (s *Store) SetUUIDs(u UUIDs) error {
	return s.Update(func(sb *Superblock) { sb.UUIDs = u })
}

// flushPages writes the given dirty bitmap pages and syncs.
func (s *Store) flushPages(pages []int) error {
	if len(pages) == 0 {
		return nil
	}
	type written struct {
		page int
		v    PageVersion
	}
	done := make([]written, 0, len(pages))
	for _, p := range pages {
		b, v := s.bm.PageBytes(p)
		if err := writeFull(s.io, b, s.layout.BitmapPageOffset(p)); err != nil {
			return err
		}
		done = append(done, written{p, v})
	}
	if err := syncIO(s.io); err != nil {
		return err
	}
	for _, w := range done {
		s.bm.MarkPageClean(w.page, w.v)
	}
	return nil
}

// FlushBitmap writes every dirty bitmap page and syncs.
func (s *Store) FlushBitmap() error { return s.flushPages(s.bm.DirtyPages()) }

// SetAllAndWrite marks the whole device out of sync and writes the whole
// bitmap, with MDF_FULL_SYNC set in the superblock while it does so, so
// that a crash in the middle still ends in a full sync
// (drbd_bmio_set_n_write).
func (s *Store) SetAllAndWrite() error {
	if err := s.Update(func(sb *Superblock) { sb.Flags |= MDFFullSync }); err != nil {
		return err
	}
	s.bm.SetAll()
	s.bm.MarkAllDirty()
	if err := s.FlushBitmap(); err != nil {
		return err
	}
	return s.Update(func(sb *Superblock) { sb.Flags &^= MDFFullSync })
}

// ClearAllAndWrite marks the whole device in sync and writes the whole
// bitmap (drbd_bmio_clear_n_write), as for skipping the initial sync.
func (s *Store) ClearAllAndWrite() error {
	s.bm.ClearAll()
	s.bm.MarkAllDirty()
	return s.FlushBitmap()
}

// ALBegin makes extents active in the activity log before data is written
// to them. When a transaction is needed it writes, in this order and each
// synced: the dirty bitmap pages of the evicted extents, then the
// transaction block; only then does the caller's data write proceed. It
// returns ErrALBusy (wrapped or not) when the caller must wait for
// ALComplete calls and retry. On an I/O error nothing is changed in memory.
func (s *Store) ALBegin(extents []uint32) error {
	tx, needWrite, evicted, err := s.al.Begin(extents)
	if err != nil || !needWrite {
		return err
	}
	var pages []int
	for _, e := range evicted {
		p := PageOfExtent(e)
		if p < s.bm.Pages() && s.bm.IsPageDirty(p) && !slices.Contains(pages, p) {
			pages = append(pages, p)
		}
	}
	slices.Sort(pages)
	if err := s.flushPages(pages); err != nil {
		return errors.Join(err, s.al.Abort(tx))
	}
	if err := writeFull(s.io, EncodeTransaction(tx), s.layout.ALBlockOffset(tx.RingPos(s.layout.ALBlocks))); err != nil {
		return errors.Join(err, s.al.Abort(tx))
	}
	if err := syncIO(s.io); err != nil {
		return errors.Join(err, s.al.Abort(tx))
	}
	return s.al.Commit(tx)
}

// ALComplete drops the references ALBegin took, once the data writes are
// done.
func (s *Store) ALComplete(extents []uint32) error { return s.al.Complete(extents) }

// Close shuts the metadata down cleanly: every extent must be complete;
// the bitmap is flushed, the activity log emptied on disk, and
// MDF_AL_CLEAN set, so that the next Open need not apply the log.
func (s *Store) Close() error {
	if s.al.InUse() || s.al.Pending() != nil {
		return fmt.Errorf("metadata close: activity log in use: %w", ErrALBusy)
	}
	if err := s.FlushBitmap(); err != nil {
		return err
	}
	txs, _, err := s.al.Reset()
	if err != nil {
		return err
	}
	if err := s.writeTransactions(txs); err != nil {
		return err
	}
	return s.Update(func(sb *Superblock) { sb.Flags |= MDFALClean })
}
