package engine

import (
	"os"
	"path/filepath"
	"syscall"

	"drbdd/drbdd/bdev"
)

// diskFaultEnv names the environment variable that injects disk errors
// for testing (like DRBD's fault-injection module parameters): when it
// names a directory, I/O on the data area of a backing device fails with
// EIO while that directory holds a file named like the device's base
// name. Metadata I/O is not affected.
const diskFaultEnv = "DRBDD_FAULT_DISK_DIR"

// faultyDevice fails data I/O while its trigger file exists. It hides the
// optional interfaces of the device it wraps (direct I/O, splicing into
// the page cache, native trim, zeroing and FUA), so a disk under fault
// injection takes the plain read and write paths.
type faultyDevice struct {
	bdev.Device
	trigger string
}

// withDiskFaults wraps the data device of the backing device at path when
// diskFaultEnv asks for it.
func withDiskFaults(dev bdev.Device, path string) bdev.Device {
	dir := os.Getenv(diskFaultEnv)
	if dir == "" {
		return dev
	}
	return &faultyDevice{Device: dev, trigger: filepath.Join(dir, filepath.Base(path))}
}

// unwrapFaults returns the device under a faultyDevice, or dev itself.
func unwrapFaults(dev bdev.Device) bdev.Device {
	if f, ok := dev.(*faultyDevice); ok {
		return f.Device
	}
	return dev
}

// failing reports whether the fault is on.
func (d *faultyDevice) failing() bool {
	_, err := os.Stat(d.trigger)
	return err == nil
}

func (d *faultyDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.failing() {
		return 0, &os.PathError{Op: "read (injected)", Path: d.trigger, Err: syscall.EIO}
	}
	return d.Device.ReadAt(p, off)
}

func (d *faultyDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.failing() {
		return 0, &os.PathError{Op: "write (injected)", Path: d.trigger, Err: syscall.EIO}
	}
	return d.Device.WriteAt(p, off)
}

func (d *faultyDevice) Sync() error {
	if d.failing() {
		return &os.PathError{Op: "sync (injected)", Path: d.trigger, Err: syscall.EIO}
	}
	return d.Device.Sync()
}
