package resync

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// VerifyConfig configures a Verifier.
type VerifyConfig struct {
	// DeviceSectors is the device size in sectors. It must not be zero.
	DeviceSectors uint64
	// StartSector is where the verify begins; it is rounded down to a
	// block boundary, as drbdsetup verify --start does.
	StartSector uint64
	// StopSector, when not zero, ends the verify once a request reaches
	// it (DRBD's ov_stop_sector, protocol 97 and later). Zero means the
	// end of the device.
	StopSector uint64
	// MaxInFlight bounds the number of outstanding requests. Zero means
	// DefaultMaxInFlight.
	MaxInFlight int
	// Busy reports application I/O in flight; nil means never busy. A
	// busy block ends the tick's requests, and the walk retries it on
	// the next tick, like DRBD's drbd_try_rs_begin_io.
	Busy BusyFunc
}

// Range is a run of sectors online verify found out of sync.
type Range struct {
	Sector  uint64
	Sectors uint64
}

// String formats the range the way DRBD logs it.
func (r Range) String() string {
	return fmt.Sprintf("Out of sync: start=%d, size=%d (sectors)", r.Sector, r.Sectors)
}

// Verifier walks every block of a device from a start sector for online
// verify, the way DRBD's make_ov_request does on the VerifySource: one
// BlockSize request per block, in order, never more than MaxInFlight
// outstanding. It keeps the books on the peer's answers (P_OV_RESULT, or
// the local comparison of P_OV_REPLY digests) and collects the
// out-of-sync ranges. Its Progress drives Marks and FormatSyncerProgress
// as a resync's does: start the marks at Progress().Total and advance them
// with Progress().Left.
//
// A Verifier is not safe for concurrent use.
type Verifier struct {
	sectors  uint64
	bits     uint64
	start    uint64
	stop     uint64
	maxIn    int
	busyFn   BusyFunc
	position uint64 // next sector to request (DRBD's ov_position)
	total    uint64 // DRBD's rs_total for a verify run
	left     uint64 // DRBD's ov_left
	issued   uint64
	inflight map[uint64]uint32
	oos      []Range // sorted, merged
	oosBits  uint64
}

// NewVerifier returns a Verifier for a verify run that begins now.
func NewVerifier(cfg VerifyConfig) (*Verifier, error) {
	if cfg.DeviceSectors == 0 {
		return nil, errors.New("resync: verify of an empty device")
	}
	if cfg.DeviceSectors > math.MaxUint64-SectorsPerBit {
		return nil, fmt.Errorf("resync: device of %d sectors is too large", cfg.DeviceSectors)
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlight < 0 || cfg.MaxInFlight > MaxInFlightLimit {
		return nil, fmt.Errorf("resync: max in flight %d out of range 1..%d", cfg.MaxInFlight, MaxInFlightLimit)
	}
	bits := (cfg.DeviceSectors + SectorsPerBit - 1) / SectorsPerBit
	start := cfg.StartSector &^ (SectorsPerBit - 1)
	if start >= cfg.DeviceSectors {
		return nil, fmt.Errorf("resync: verify start sector %d beyond the device's %d sectors", cfg.StartSector, cfg.DeviceSectors)
	}
	stop := uint64(math.MaxUint64)
	if cfg.StopSector != 0 {
		stop = cfg.StopSector
	}
	left := bits - start/SectorsPerBit
	return &Verifier{
		sectors:  cfg.DeviceSectors,
		bits:     bits,
		start:    start,
		stop:     stop,
		maxIn:    cfg.MaxInFlight,
		busyFn:   cfg.Busy,
		position: start,
		total:    left,
		left:     left,
		inflight: make(map[uint64]uint32),
	}, nil
}

// Next returns the verify requests to send now, at most budget of them
// (one block each) and at most MaxInFlight outstanding.
func (v *Verifier) Next(budget int) []Request {
	var out []Request
	for ; budget > 0 && len(v.inflight) < v.maxIn; budget-- {
		if v.issuingDone() {
			break
		}
		bit := v.position / SectorsPerBit
		if v.busyFn != nil && v.busyFn(bit, 1) {
			break
		}
		size := uint64(BlockSize)
		if v.position+SectorsPerBit > v.sectors {
			size = (v.sectors - v.position) * SectorSize
		}
		out = append(out, Request{Sector: v.position, Size: uint32(size)})
		v.inflight[v.position] = uint32(size)
		v.position += SectorsPerBit
		v.issued++
	}
	return out
}

// issuingDone reports whether the walk has sent its last request: it
// reached the end of the device, or the stop sector after sending at
// least one request.
func (v *Verifier) issuingDone() bool {
	return v.position >= v.sectors || (v.issued > 0 && v.position >= v.stop)
}

// OVResult records the verdict on the outstanding request at sector with
// the given size: inSync is false when the two nodes' digests differ. It
// reports whether the verify run is finished, and returns an error
// wrapping ErrUnknownRequest, changing nothing, when no such request is
// outstanding.
func (v *Verifier) OVResult(sector uint64, size uint32, inSync bool) (finished bool, err error) {
	got, ok := v.inflight[sector]
	if !ok || got != size {
		return v.Finished(), fmt.Errorf("%w: verify sector %d size %d", ErrUnknownRequest, sector, size)
	}
	delete(v.inflight, sector)
	if !inSync {
		v.addOutOfSync(sector, (uint64(size)+SectorSize-1)/SectorSize)
		v.oosBits += (uint64(size) + BlockSize - 1) / BlockSize
	}
	if v.left > 0 {
		v.left--
	}
	return v.Finished(), nil
}

// addOutOfSync merges the sector range into the sorted range list.
func (v *Verifier) addOutOfSync(sector, n uint64) {
	i := sort.Search(len(v.oos), func(i int) bool { return v.oos[i].Sector+v.oos[i].Sectors >= sector })
	j := i
	s, e := sector, sector+n
	for j < len(v.oos) && v.oos[j].Sector <= e {
		s = min(s, v.oos[j].Sector)
		e = max(e, v.oos[j].Sector+v.oos[j].Sectors)
		j++
	}
	v.oos = append(v.oos[:i], append([]Range{{Sector: s, Sectors: e - s}}, v.oos[j:]...)...)
}

// Finished reports whether every request has been sent and answered.
func (v *Verifier) Finished() bool {
	return v.issuingDone() && len(v.inflight) == 0
}

// OutOfSync returns the out-of-sync ranges found so far, sorted and with
// adjacent ranges merged.
func (v *Verifier) OutOfSync() []Range {
	return append([]Range(nil), v.oos...)
}

// OutOfSyncBlocks returns the number of blocks found out of sync.
func (v *Verifier) OutOfSyncBlocks() uint64 { return v.oosBits }

// Summary returns DRBD's alert for a verify run that found differences,
// "Online verify found N 4k block out of sync!", or "" when it found
// none.
func (v *Verifier) Summary() string {
	return VerifySummary(v.oosBits)
}

// VerifySummary formats DRBD's end-of-verify alert for n out-of-sync
// blocks, word for word as drbd_resync_finished logs it (DRBD writes
// "block" whatever the count). It returns "" when n is zero, as DRBD then
// logs nothing.
func VerifySummary(n uint64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("Online verify found %d %dk block out of sync!", n, BlockSize/1024)
}

// Position returns the next sector the walk will request
// (DRBD's ov_position).
func (v *Verifier) Position() uint64 { return v.position }

// StartSector returns the block-aligned sector the walk began at.
func (v *Verifier) StartSector() uint64 { return v.start }

// Progress returns the verify's progress: Total is the number of blocks
// from the start sector to the end of the device and Left DRBD's ov_left.
func (v *Verifier) Progress() Progress {
	return Progress{
		Total:        v.total,
		Left:         v.left,
		Done:         v.total - v.left,
		InFlight:     len(v.inflight),
		InFlightBits: uint64(len(v.inflight)),
		Cursor:       v.position / SectorsPerBit,
		Passes:       1,
	}
}
