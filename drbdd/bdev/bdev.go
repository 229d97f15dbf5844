// Package bdev is drbdd's view of a backing disk: a small block-device
// interface with a file/block-device implementation and an in-memory one
// that can inject I/O errors and simulate a crash.
//
// Everything above this package (metadata, replication, the NBD export)
// talks to disks only through Device, so that tests can run the same code
// against MemDevice and observe exactly which writes would have survived a
// power failure.
package bdev

import (
	"errors"
	"fmt"
)

// SectorSize is the unit DRBD's wire protocol counts offsets in.
const SectorSize = 512

// BlockSize is the unit drbdd tracks out-of-sync data in and the preferred
// I/O size it advertises.
const BlockSize = 4096

// Device is a backing disk. All methods may be called concurrently.
//
// ReadAt and WriteAt follow io.ReaderAt / io.WriterAt: a short count always
// comes with an error. A write is durable only after a later Sync returns
// nil; that is the contract MemDevice enforces when it simulates a crash.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// Size is the device size in bytes.
	Size() int64
	Close() error
}

// Trimmer is implemented by devices that can discard a range. After Trim the
// range reads back as zeroes.
type Trimmer interface {
	Trim(off, length int64) error
}

// Zeroer is implemented by devices that can zero a range without the caller
// sending zero bytes.
type Zeroer interface {
	WriteZeroes(off, length int64) error
}

// ErrOutOfRange is returned for I/O that starts or ends outside the device.
var ErrOutOfRange = errors.New("I/O beyond end of device")

// ErrClosed is returned for I/O on a closed device.
var ErrClosed = errors.New("device closed")

// checkRange validates [off, off+n) against size.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("offset %d length %d on %d-byte device: %w", off, n, size, ErrOutOfRange)
	}
	return nil
}

// Trim discards [off, off+length) on d, falling back to writing zeroes when
// d cannot discard, so that callers can rely on the range reading as zeroes.
func Trim(d Device, off, length int64) error {
	if t, ok := d.(Trimmer); ok {
		return t.Trim(off, length)
	}
	return WriteZeroes(d, off, length)
}

// zeroChunk is the largest run of zero bytes WriteZeroes writes at once when
// the device has no native way to zero a range.
const zeroChunk = 1 << 20

// WriteZeroes zeroes [off, off+length) on d, natively when d implements
// Zeroer and by writing zero buffers otherwise.
func WriteZeroes(d Device, off, length int64) error {
	if z, ok := d.(Zeroer); ok {
		return z.WriteZeroes(off, length)
	}
	if err := checkRange(off, length, d.Size()); err != nil {
		return err
	}
	buf := make([]byte, min(length, zeroChunk))
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := d.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// WritebackStarter is implemented by devices that cache writes (a file in
// the page cache): StartWriteback begins writing [off, off+length) to
// stable storage without waiting for it, so that a later Sync finds little
// left to do.
type WritebackStarter interface {
	StartWriteback(off, length int64) error
}

// StartWriteback starts writing back [off, off+length) of d where d
// caches writes; it does nothing on other devices.
func StartWriteback(d Device, off, length int64) error {
	if w, ok := d.(WritebackStarter); ok {
		return w.StartWriteback(off, length)
	}
	return nil
}

// FUAWriter is implemented by devices that can make a single write durable
// without flushing everything else (pwritev2 with RWF_DSYNC).
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// BlockingWriter is implemented by devices whose WriteAt may go through
// asynchronous I/O and that can also write with one blocking call.
type BlockingWriter interface {
	WriteAtBlocking(p []byte, off int64) (int, error)
}

// WriteBlocking writes p at off with a blocking call where d offers one,
// else with WriteAt.
func WriteBlocking(d Device, p []byte, off int64) (int, error) {
	if b, ok := d.(BlockingWriter); ok {
		return b.WriteAtBlocking(p, off)
	}
	return d.WriteAt(p, off)
}

// WriteFUA writes p at off and makes it durable before returning, with a
// forced-unit-access write where the device has one and write+Sync
// otherwise.
func WriteFUA(d Device, p []byte, off int64) (int, error) {
	if f, ok := d.(FUAWriter); ok {
		return f.WriteAtFUA(p, off)
	}
	n, err := d.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, d.Sync()
}
