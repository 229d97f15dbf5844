package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"drbdd/drbdd/bdev"
	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/netlink"
)

// localDisk is an attached backing disk with its metadata.
type localDisk struct {
	dev   bdev.Device // the data
	mdDev bdev.Device // the metadata device; dev itself for internal metadata
	// size is the exported data size in bytes.
	size int64
	io   *ioState

	// mu guards md, whose Store is not safe for concurrent use; alFree is
	// signalled whenever activity-log references are dropped.
	mu     sync.Mutex
	alFree *sync.Cond
	md     *meta.Store
}

// randomUUID returns a fresh generation UUID.
func randomUUID() uint64 { return meta.RandomUUID() }

// openDisk opens the backing device and its metadata.
func openDisk(dc netlink.DiskConf, io *ioState) (*localDisk, error) {
	mode, err := bdev.ParseDirectIO(dc.DirectIO)
	if err != nil {
		return nil, coded(netlink.ErrInvalidRequest, err)
	}
	dev, err := bdev.OpenFile(dc.BackingDev, mode)
	if err != nil {
		return nil, coded(netlink.ErrOpenDisk, err)
	}
	ld := &localDisk{dev: withDiskFaults(dev, dc.BackingDev), mdDev: dev, io: io}
	if !dc.MetaInternal {
		// Metadata I/O is small and synced; the page cache is fine.
		if ld.mdDev, err = bdev.OpenFile(dc.MetaDev, bdev.DirectOff); err != nil {
			dev.Close()
			return nil, coded(netlink.ErrOpenMetaDisk, err)
		}
	}
	ld.alFree = sync.NewCond(&ld.mu)
	layout, err := meta.LayoutFor(dc.MetaInternal, dev.Size(), ld.mdDev.Size(), int(dc.ALExtents))
	if err == nil {
		ld.md, err = meta.Open(ld.mdDev, layout)
	}
	if err != nil {
		ld.closeDevices()
		return nil, coded(netlink.ErrMetaInvalid, fmt.Errorf("%w ==> use 'drbdadm create-md' to initialize meta-data <==", err))
	}
	ld.size = layout.DataBytes
	return ld, nil
}

func (ld *localDisk) closeDevices() {
	ld.dev.Close()
	if ld.mdDev != unwrapFaults(ld.dev) {
		ld.mdDev.Close()
	}
}

// close makes the data durable, writes clean metadata and releases the
// devices. The data goes first: metadata marked clean must not describe
// writes that a power loss could still take (with external metadata the
// two are separate devices).
func (ld *localDisk) close() error {
	err := ld.dev.Sync()
	ld.mu.Lock()
	if e := ld.md.Close(); err == nil {
		err = e
	}
	ld.mu.Unlock()
	ld.closeDevices()
	return err
}

// extents returns the 4 MiB activity-log extents [off, off+n) touches.
func extents(off, n int64) []uint32 {
	if n <= 0 {
		n = 1
	}
	first := off / meta.ALExtentSize
	last := (off + n - 1) / meta.ALExtentSize
	out := make([]uint32, 0, last-first+1)
	for e := first; e <= last; e++ {
		out = append(out, uint32(e))
	}
	return out
}

// beginWrite records the extents of a write in the activity log before the
// data is written, so that after a crash only logged extents need resync.
func (ld *localDisk) beginWrite(off, n int64) error {
	ext := extents(off, n)
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for {
		before := ld.md.AL().NextTransaction()
		err := ld.md.ALBegin(ext)
		if errors.Is(err, meta.ErrALBusy) {
			// Every slot is referenced by writes in flight: wait for one.
			ld.alFree.Wait()
			continue
		}
		if err != nil {
			return err
		}
		if after := ld.md.AL().NextTransaction(); after != before {
			ld.io.alWrites.Add(after - before)
		}
		return nil
	}
}

// endWrite drops the activity-log references of a finished write.
func (ld *localDisk) endWrite(off, n int64) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	_ = ld.md.ALComplete(extents(off, n))
	ld.alFree.Broadcast()
}

// markOutOfSync records blocks the peer does not have.
func (ld *localDisk) markOutOfSync(off, n int64) {
	ld.mu.Lock()
	ld.md.Bitmap().Set(off, off+n)
	ld.mu.Unlock()
}

func (ld *localDisk) outOfSyncKiB() uint64 {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return uint64(ld.md.Bitmap().Count()) * (meta.BMBlockSize / 1024)
}

func (ld *localDisk) uuids() meta.UUIDs {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.md.UUIDs()
}

func (ld *localDisk) flags() meta.Flags {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.md.Superblock().Flags
}

// updateUUIDs applies fn to the generation UUIDs and writes them durably.
func (ld *localDisk) updateUUIDs(fn func(*meta.UUIDs)) error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	u := ld.md.UUIDs()
	fn(&u)
	if u == ld.md.UUIDs() {
		return nil
	}
	return ld.md.SetUUIDs(u)
}

// syncFlags writes the metadata flags that follow from a state, as DRBD
// does after every state change, so that a restart knows whether its data
// was consistent, up to date, or Primary.
func (ld *localDisk) syncFlags(s replication.State) error {
	want := FlagsForState(s)
	ld.mu.Lock()
	defer ld.mu.Unlock()
	const owned = meta.MDFConsistent | meta.MDFPrimaryInd | meta.MDFConnectedInd | meta.MDFWasUpToDate | meta.MDFPeerOutDated
	cur := ld.md.Superblock().Flags
	if cur&owned == want {
		return nil
	}
	return ld.md.Update(func(sb *meta.Superblock) { sb.Flags = sb.Flags&^owned | want })
}

// markOutdated clears the disk's was-up-to-date flag: a consistent disk
// then attaches Outdated, an inconsistent one stays Inconsistent. It only
// ever lowers what the flags claim, so it is safe on a failing disk too.
func (ld *localDisk) markOutdated() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if ld.md.Superblock().Flags&meta.MDFWasUpToDate == 0 {
		return nil
	}
	return ld.md.Update(func(sb *meta.Superblock) { sb.Flags &^= meta.MDFWasUpToDate })
}

// FlagsForState returns the state-derived metadata flags (DRBD's rule in
// __drbd_set_state): Primary indicator, connected indicator, consistent,
// was-up-to-date and peer-outdated.
func FlagsForState(s replication.State) meta.Flags {
	var f meta.Flags
	if s.Role == replication.Primary || (s.PDsk < replication.Inconsistent && s.Peer == replication.Primary) {
		f |= meta.MDFPrimaryInd
	}
	if s.Conn > replication.WFReportParams {
		f |= meta.MDFConnectedInd
	}
	if s.Disk > replication.Inconsistent {
		f |= meta.MDFConsistent
	}
	if s.Disk > replication.Outdated {
		f |= meta.MDFWasUpToDate
	}
	if s.PDsk <= replication.Outdated && s.PDsk >= replication.Inconsistent {
		f |= meta.MDFPeerOutDated
	}
	return f
}

// DiskStateFromFlags returns the disk states a freshly attached disk gets
// from its metadata flags (DRBD's drbd_adm_attach): consistent data that
// was up to date comes back UpToDate when no fencing policy asks to wait
// for the peer; a known-outdated peer is remembered.
func DiskStateFromFlags(f meta.Flags, fencing replication.Fencing) (disk, pdsk replication.DiskState) {
	disk, pdsk = replication.Inconsistent, replication.DUnknown
	if f&meta.MDFConsistent != 0 {
		disk = replication.Outdated
		if f&meta.MDFWasUpToDate != 0 {
			disk = replication.Consistent
		}
	}
	if f&meta.MDFPeerOutDated != 0 {
		pdsk = replication.Outdated
	}
	if disk == replication.Consistent && (pdsk == replication.Outdated || fencing == replication.FenceDontCare) {
		disk = replication.UpToDate
	}
	return disk, pdsk
}

// Attach opens the backing disk and its metadata (DRBD_ADM_ATTACH).
func (r *Resource) Attach(ctx context.Context, dc netlink.DiskConf) error {
	return r.act(ctx, func() error {
		if r.ldev.Load() != nil {
			return coded(netlink.ErrDiskConfigured, fmt.Errorf("%s: already attached to %s", r.name, r.diskConf.BackingDev))
		}
		if r.Minor() < 0 {
			return coded(netlink.ErrMinorInvalid, fmt.Errorf("%s: no minor: run new-minor first", r.name))
		}
		ns := r.State()
		ns.Disk = replication.Attaching
		if err := r.setState(ns, false); err != nil {
			return err
		}
		s := r.sess.Load()
		primary := ns.Role == replication.Primary
		if s != nil && primary {
			// A diskless Primary serving its peer's data: its requests
			// wait out the reconnect instead of failing.
			r.rehandshakeUntil.Store(time.Now().Add(2 * handshakeTimeout).UnixNano())
		}
		if s != nil {
			// The peer must not take the disk for what its flags say (it
			// may have missed writes while detached) before the sync
			// handshake has compared generations: end the session first,
			// so that no state is sent on it, and let the reconnect's
			// handshake decide what to resync.
			r.logf("%s: disk attached while connected: reconnecting for the sync handshake", s.c.peerName)
			s.cancel(errRehandshake)
		}
		ld, err := openDisk(dc, &r.io)
		if err != nil {
			ns.Disk = replication.Diskless
			_ = r.setState(ns, true)
			return fmt.Errorf("%s: attach %s: %w", r.name, dc.BackingDev, err)
		}
		rec := ld.md.Recovery()
		if !rec.Clean {
			r.logf("meta data was not closed cleanly: applied activity log (%d extents, %d KiB marked out of sync)",
				len(rec.ALExtents), rec.BitsSet*meta.BMBlockSize/1024)
		}
		if err := r.checkPrimaryAttach(ld, s != nil); err != nil {
			// A session cancelled above reconnects diskless; requests
			// keep waiting for it.
			ld.close()
			ns.Disk = replication.Diskless
			_ = r.setState(ns, true)
			return fmt.Errorf("%s: attach %s: %w", r.name, dc.BackingDev, err)
		}
		r.diskConf = &dc
		r.diskConfV.Store(&dc)
		r.onIOError.Store(dc.OnIOError)
		// DRBD's CRASHED_PRIMARY: attached with the Primary indicator set
		// means this node died (or detached) while Primary.
		r.crashedPrimary = ld.flags()&(meta.MDFPrimaryInd|meta.MDFCrashedPrimary) != 0
		if primary && s != nil {
			// DRBD holds a Primary's new disk in Negotiating until the
			// sync handshake has compared generations: its data is older
			// than what the device shows, and becomes UpToDate only
			// through a resync from the peer.
			ns.Disk = replication.Negotiating
		} else {
			ns.Disk, ns.PDsk = DiskStateFromFlags(ld.flags(), r.checkContext(true).Fencing)
		}
		r.capacity.Store(ld.size)
		r.ldev.Store(ld)
		if err := r.setState(ns, true); err != nil {
			return err
		}
		mode := "page cache"
		if ld.direct() {
			mode = "direct I/O"
		}
		r.logf("attached %s (%s): %d KiB data, UUIDs %s", dc.BackingDev, mode, ld.size>>10, ld.uuids())
		return nil
	})
}

// checkPrimaryAttach refuses a disk a diskless Primary cannot take: one of
// another size than its device, and, while disconnected, one that does
// not hold the data the device shows: not UpToDate by its flags, missing
// writes acknowledged while diskless, or of another generation (DRBD's
// "Can only attach to data with current UUID"). While connected the sync
// handshake decides.
func (r *Resource) checkPrimaryAttach(ld *localDisk, connected bool) error {
	if r.State().Role != replication.Primary {
		return nil
	}
	if size := r.capacity.Load(); size != 0 && size != ld.size {
		return fmt.Errorf("the disk holds %d KiB but the device shows %d KiB", ld.size>>10, size>>10)
	}
	if connected {
		return nil
	}
	if r.disklessAcked.Load() {
		return errors.New("writes were acknowledged while diskless and only the peer holds them: attach while connected")
	}
	// Consistent is as good as it gets without a peer when fencing is
	// configured; Outdated and Inconsistent disks are refused.
	if d, _ := DiskStateFromFlags(ld.flags(), r.checkContext(true).Fencing); d < replication.Consistent {
		return fmt.Errorf("a disconnected Primary needs UpToDate data, and the disk is %s", d)
	}
	want := r.exposedUUID.Load()
	if want != 0 && !r.exposes(ld.uuids().Current) {
		return fmt.Errorf("can only attach to data with current UUID=%016X (the disk's is %016X)", want, ld.uuids().Current)
	}
	return nil
}

// failAttachedDisk detaches a disk whose sync handshake found it cannot
// join (DRBD fails a Negotiating disk then). Runs on the owner goroutine.
func (r *Resource) failAttachedDisk() error {
	if r.State().Disk != replication.Negotiating {
		return nil
	}
	return r.detach(true)
}

// onIOErrorPolicy returns the attached disk's on-io-error policy for the
// I/O path; "detach", DRBD's default, when none was configured.
func (r *Resource) onIOErrorPolicy() string {
	if v, _ := r.onIOError.Load().(string); v != "" {
		return v
	}
	return "detach"
}

// promoted updates UUIDs and flags after promotion.
func (ld *localDisk) promoted(forced, peerDiskReachable bool) (generated bool, err error) {
	err = ld.updateUUIDs(func(u *meta.UUIDs) { generated = u.Promote(randomUUID(), peerDiskReachable, forced) })
	return generated, err
}

// demoted clears the Primary bit of the current UUID.
func (ld *localDisk) demoted() error {
	return ld.updateUUIDs(func(u *meta.UUIDs) { u.Demote() })
}

// diskConfCopy returns the attached disk's configuration (zero when
// diskless), safe to call from any goroutine.
func (r *Resource) diskConfCopy() netlink.DiskConf {
	if dc := r.diskConfV.Load(); dc != nil {
		return *dc
	}
	return netlink.DiskConf{}
}

// bitsSet returns the number of out-of-sync blocks.
func (ld *localDisk) bitsSet() int64 {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.md.Bitmap().Count()
}

// setAllOutOfSync marks the whole device out of sync on disk (full sync).
func (ld *localDisk) setAllOutOfSync() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.md.SetAllAndWrite()
}

// syncDataAndBitmap makes the data device durable and then writes the
// dirty bitmap pages, with the bitmap locked throughout: no bit can be
// cleared between the two steps, so a bit that is clear on disk always
// stands for data that is on disk. Resync progress is persisted this way.
func (ld *localDisk) syncDataAndBitmap() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if err := ld.dev.Sync(); err != nil {
		return err
	}
	return ld.flushBitmapLocked()
}

// flushBitmap writes changed bitmap pages.
func (ld *localDisk) flushBitmap() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.flushBitmapLocked()
}

// flushBitmapLocked writes changed bitmap pages. Caller holds mu.
func (ld *localDisk) flushBitmapLocked() error {
	n := len(ld.md.Bitmap().DirtyPages())
	if n == 0 {
		return nil
	}
	ld.io.bmWrites.Add(uint64(n))
	return ld.md.FlushBitmap()
}

// clearRange marks the blocks fully inside [off, off+n) in sync.
func (ld *localDisk) clearRange(off, n int64) {
	ld.mu.Lock()
	ld.md.Bitmap().Clear(off, off+n)
	ld.mu.Unlock()
}

// clearFullBlocks marks in sync the blocks a replicated write covered
// completely: both sides now hold the same bytes there.
func (ld *localDisk) clearFullBlocks(off, n int64) { ld.clearRange(off, n) }

// liveBitmap gives the bitmap exchange the local disk's bitmap a window
// of words at a time, each under the disk's lock, so that neither our
// bitmap nor the peer's is ever copied whole (32 MiB per TiB each). One
// goroutine uses one liveBitmap.
type liveBitmap struct {
	ld  *localDisk
	buf []byte
	err error // the first error merging into the bitmap
}

// ReadWords copies words [off, off+len(dst)) of the bitmap into dst.
func (b *liveBitmap) ReadWords(dst []uint64, off uint64) {
	b.ld.mu.Lock()
	b.buf = b.ld.md.Bitmap().AppendWords(b.buf[:0], int64(off), int64(len(dst)))
	b.ld.mu.Unlock()
	clear(dst)
	for i := 0; i*8 < len(b.buf) && i < len(dst); i++ {
		dst[i] = binary.LittleEndian.Uint64(b.buf[i*8:])
	}
}

// OrWords ORs the peer's words into the bitmap at word off.
func (b *liveBitmap) OrWords(src []uint64, off uint64) {
	b.buf = b.buf[:0]
	for _, w := range src {
		b.buf = binary.LittleEndian.AppendUint64(b.buf, w)
	}
	b.ld.mu.Lock()
	_, err := b.ld.md.Bitmap().MergeWords(int64(off), b.buf)
	b.ld.mu.Unlock()
	if err != nil && b.err == nil {
		b.err = err
	}
}

// bitmapBits returns the number of bits in the bitmap.
func (ld *localDisk) bitmapBits() uint64 {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return uint64(ld.md.Bitmap().Len())
}

// clearAllInSync marks the whole device in sync on disk.
func (ld *localDisk) clearAllInSync() error {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.md.ClearAllAndWrite()
}

// direct reports whether the data device bypasses the page cache.
func (ld *localDisk) direct() bool {
	fd, ok := ld.dev.(*bdev.FileDevice)
	return ok && fd.Direct()
}
