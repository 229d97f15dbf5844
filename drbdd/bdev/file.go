package bdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirectIO selects whether a FileDevice bypasses the page cache.
type DirectIO string

const (
	// DirectAuto uses O_DIRECT for block devices and the page cache for
	// regular files. A file-backed disk is usually a test or lab setup on a
	// host filesystem, where the page cache plus fdatasync on FLUSH/FUA is
	// both correct and what reference servers such as nbdkit do; a real
	// block device is where bypassing the cache matters, as DRBD does.
	DirectAuto DirectIO = "auto"
	// DirectOn always opens with O_DIRECT when the filesystem supports it.
	DirectOn DirectIO = "on"
	// DirectOff never uses O_DIRECT.
	DirectOff DirectIO = "off"
)

// ParseDirectIO validates a direct-io setting; the empty string means auto.
func ParseDirectIO(s string) (DirectIO, error) {
	switch DirectIO(s) {
	case "", DirectAuto:
		return DirectAuto, nil
	case DirectOn, DirectOff:
		return DirectIO(s), nil
	}
	return "", fmt.Errorf("direct-io %q: want auto, on or off", s)
}

// FileDevice is a Device backed by a regular file or a block device.
//
// With O_DIRECT it keeps two descriptors: aligned requests go to the direct
// one and anything unaligned to a buffered one. Linux keeps the two coherent
// (direct I/O writes back and invalidates cached pages in its range), so the
// mix is safe and unaligned NBD clients still work.
type FileDevice struct {
	path     string
	size     int64
	isBlock  bool
	buffered *os.File
	direct   *os.File // nil when O_DIRECT is not in use
	aio      *asyncIO // direct's AIO context; nil when it has none

	// bounce holds 4 KiB-aligned scratch buffers for direct I/O whose
	// caller buffer is not aligned in memory.
	bounce sync.Pool
}

// aioOff turns AIO off (DRBDD_NO_AIO set): O_DIRECT I/O is then done
// with blocking calls, one thread each.
var aioOff = os.Getenv("DRBDD_NO_AIO") != ""

// OpenFile opens path (a regular file or block device) read-write.
func OpenFile(path string, mode DirectIO) (*FileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing disk: %w", err)
	}
	d := &FileDevice{path: path, buffered: f}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0:
		d.isBlock = true
		var sz uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
			f.Close()
			return nil, fmt.Errorf("%s: BLKGETSIZE64: %w", path, e)
		}
		d.size = int64(sz)
	case fi.Mode().IsRegular():
		d.size = fi.Size()
	default:
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file or block device", path)
	}
	if mode == DirectOn || (mode == DirectAuto && d.isBlock) {
		df, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
		if err == nil {
			d.direct = df
			if !aioOff {
				if a, err := newAsyncIO(int(df.Fd())); err == nil {
					d.aio = a
				}
			}
		} else if mode == DirectOn {
			f.Close()
			return nil, fmt.Errorf("open %s with O_DIRECT: %w", path, err)
		}
	}
	return d, nil
}

// Path returns the path the device was opened from.
func (d *FileDevice) Path() string { return d.path }

// Size returns the device size in bytes.
func (d *FileDevice) Size() int64 { return d.size }

// Direct reports whether O_DIRECT is in use for aligned requests.
func (d *FileDevice) Direct() bool { return d.direct != nil }

// aligned reports whether a request at off with buffer p can use O_DIRECT.
func aligned(p []byte, off int64) bool {
	return off%BlockSize == 0 && len(p)%BlockSize == 0 && len(p) > 0
}

func addrAligned(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%BlockSize == 0
}

// alignedBuf returns a BlockSize-aligned buffer of n bytes for direct I/O.
func (d *FileDevice) alignedBuf(n int) ([]byte, func()) {
	if v, ok := d.bounce.Get().(*[]byte); ok && cap(*v) >= n {
		return (*v)[:n], func() { d.bounce.Put(v) }
	}
	raw := make([]byte, n+BlockSize)
	shift := int(-uintptr(unsafe.Pointer(&raw[0])) & (BlockSize - 1))
	b := raw[shift : shift+n : shift+n]
	return b, func() { d.bounce.Put(&b) }
}

// ReadAt reads len(p) bytes at off.
func (d *FileDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	if d.direct != nil && aligned(p, off) {
		if addrAligned(p) {
			return d.directIO(iocbCmdPread, p, off)
		}
		b, put := d.alignedBuf(len(p))
		defer put()
		n, err := d.directIO(iocbCmdPread, b, off)
		copy(p, b[:n])
		return n, err
	}
	return d.buffered.ReadAt(p, off)
}

// WriteAt writes p at off.
func (d *FileDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	if d.direct != nil && aligned(p, off) {
		if addrAligned(p) {
			return d.directIO(iocbCmdPwrite, p, off)
		}
		b, put := d.alignedBuf(len(p))
		defer put()
		copy(b, p)
		return d.directIO(iocbCmdPwrite, b, off)
	}
	return d.buffered.WriteAt(p, off)
}

// The opcodes of an asyncIO request (the kernel's IOCB_CMD_PREAD and
// IOCB_CMD_PWRITE), also used to tell directIO which way to go.
const (
	iocbCmdPread  = 0
	iocbCmdPwrite = 1
)

// errAIOUnavailable tells the caller to do the I/O the blocking way.
var errAIOUnavailable = errors.New("aio unavailable")

// directIO reads or writes (op) an aligned buffer on the direct
// descriptor: through AIO when the device has a context, else, or when
// AIO refuses the request, with a blocking call.
func (d *FileDevice) directIO(op uint16, p []byte, off int64) (int, error) {
	if d.aio != nil {
		n, err := d.aio.do(op, p, off)
		if err != nil && err != errAIOUnavailable {
			name := "write"
			if op == iocbCmdPread {
				name = "read"
			}
			return n, &os.PathError{Op: name, Path: d.path, Err: err}
		}
		if err == nil && n == len(p) {
			return n, nil
		}
		if err == nil && op == iocbCmdPread && n == 0 {
			return 0, io.EOF
		}
		// A short transfer is redone whole: what is left of it may not
		// be aligned for O_DIRECT, and reading or writing the same
		// bytes again is harmless.
	}
	if op == iocbCmdPwrite {
		return d.direct.WriteAt(p, off)
	}
	return d.direct.ReadAt(p, off)
}

// Sync flushes completed writes to stable storage with fdatasync. For a
// block device that also flushes the device's volatile write cache.
func (d *FileDevice) Sync() error {
	fd := d.buffered.Fd()
	if fd == ^uintptr(0) {
		return ErrClosed
	}
	if err := unix.Fdatasync(int(fd)); err != nil {
		return fmt.Errorf("fdatasync %s: %w", d.path, err)
	}
	return nil
}

// StartWriteback starts the writeback of the page-cache pages in
// [off, off+length) with sync_file_range(SYNC_FILE_RANGE_WRITE) and
// returns without waiting. Direct I/O devices have nothing cached.
func (d *FileDevice) StartWriteback(off, length int64) error {
	if d.direct != nil {
		return nil
	}
	if err := checkRange(off, length, d.size); err != nil {
		return err
	}
	if err := unix.SyncFileRange(int(d.buffered.Fd()), off, length, unix.SYNC_FILE_RANGE_WRITE); err != nil {
		return fmt.Errorf("sync_file_range %s: %w", d.path, err)
	}
	return nil
}

// Trim discards a range: BLKDISCARD on block devices (followed by a zeroing
// fallback, because discard does not promise zeroes), a punched hole in
// regular files.
func (d *FileDevice) Trim(off, length int64) error {
	if err := checkRange(off, length, d.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if d.isBlock {
		return d.WriteZeroes(off, length)
	}
	err := unix.Fallocate(int(d.buffered.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil {
		return d.writeZeroBuffers(off, length)
	}
	return nil
}

// WriteZeroes zeroes a range: BLKZEROOUT on block devices, FALLOC_FL_ZERO_RANGE
// on files, and plain zero writes where neither is supported.
func (d *FileDevice) WriteZeroes(off, length int64) error {
	if err := checkRange(off, length, d.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	fd := int(d.buffered.Fd())
	if d.isBlock {
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0]))); e == 0 {
			return nil
		}
		return d.writeZeroBuffers(off, length)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length); err != nil {
		return d.writeZeroBuffers(off, length)
	}
	return nil
}

func (d *FileDevice) writeZeroBuffers(off, length int64) error {
	buf, put := d.alignedBuf(int(min(length, zeroChunk)))
	defer put()
	clear(buf)
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

// Close waits for the AIO requests in flight and closes both descriptors.
func (d *FileDevice) Close() error {
	if d.aio != nil {
		d.aio.close()
	}
	err := d.buffered.Close()
	if d.direct != nil {
		if e := d.direct.Close(); err == nil {
			err = e
		}
	}
	return err
}

// WriteAtFUA writes p at off with RWF_DSYNC, so that only this write is
// forced to stable storage.
func (d *FileDevice) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	f := d.buffered
	buf := p
	if d.direct != nil && aligned(p, off) {
		f = d.direct
		if !addrAligned(p) {
			b, put := d.alignedBuf(len(p))
			defer put()
			copy(b, p)
			buf = b
		}
	}
	n, err := unix.Pwritev2(int(f.Fd()), [][]byte{buf}, off, unix.RWF_DSYNC)
	if err == unix.EOPNOTSUPP || err == unix.ENOSYS {
		if n, err = f.WriteAt(buf, off); err != nil {
			return n, err
		}
		return n, d.Sync()
	}
	if err == nil && n < len(buf) {
		err = fmt.Errorf("short FUA write: %d of %d bytes", n, len(buf))
	}
	return n, err
}

// WriteAtBlocking writes p at off like WriteAt, but with one blocking
// system call where WriteAt would go through AIO: for a caller that would
// only wait for the completion itself, the AIO submission, completion
// event and reaping cost more time than the thread the call holds.
func (d *FileDevice) WriteAtBlocking(p []byte, off int64) (int, error) {
	if d.aio == nil || !aligned(p, off) {
		return d.WriteAt(p, off)
	}
	if err := checkRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	buf := p
	if !addrAligned(p) {
		b, put := d.alignedBuf(len(p))
		defer put()
		copy(b, p)
		buf = b
	}
	return d.direct.WriteAt(buf, off)
}

// PageCacheFile returns the file behind the device when its I/O goes
// through the page cache, so that data can be spliced into and out of it;
// it returns nil when O_DIRECT is in use.
func (d *FileDevice) PageCacheFile() *os.File {
	if d.direct != nil {
		return nil
	}
	return d.buffered
}

// DirectFile returns the file opened with O_DIRECT, so that whole,
// aligned pages can be spliced into it; it returns nil when O_DIRECT is
// not in use.
func (d *FileDevice) DirectFile() *os.File {
	return d.direct
}
