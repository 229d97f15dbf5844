package bdev

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func testDevice(t *testing.T, d Device) {
	t.Helper()
	p := bytes.Repeat([]byte{0xab}, 8192)
	if _, err := d.WriteAt(p, 4096); err != nil {
		t.Fatalf("aligned write: %v", err)
	}
	if _, err := d.WriteAt([]byte("hello"), 100); err != nil {
		t.Fatalf("unaligned write: %v", err)
	}
	got := make([]byte, 8192)
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("aligned read back: %v equal=%v", err, bytes.Equal(got, p))
	}
	small := make([]byte, 5)
	if _, err := d.ReadAt(small, 100); err != nil || string(small) != "hello" {
		t.Fatalf("unaligned read back %q: %v", small, err)
	}
	if _, err := d.WriteAt(p, d.Size()-4096); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past end: got %v, want ErrOutOfRange", err)
	}
	if err := Trim(d, 4096, 4096); err != nil {
		t.Fatalf("trim: %v", err)
	}
	if err := WriteZeroes(d, 8192, 4096); err != nil {
		t.Fatalf("zeroes: %v", err)
	}
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatalf("trimmed/zeroed range does not read as zeroes: %v", err)
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func TestFileDevice(t *testing.T) {
	for _, mode := range []DirectIO{DirectOff, DirectOn} {
		t.Run(string(mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := OpenFile(path, mode)
			if err != nil {
				t.Skipf("open with %s: %v (tmpfs has no O_DIRECT)", mode, err)
			}
			defer d.Close()
			if d.Size() != 1<<20 {
				t.Fatalf("size %d", d.Size())
			}
			testDevice(t, d)
			// Unaligned memory with an aligned offset exercises the bounce buffer.
			buf := make([]byte, 4096+1)[1:]
			buf[0] = 7
			if _, err := d.WriteAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			raw, _ := os.ReadFile(path)
			if raw[0] != 7 {
				t.Fatalf("bounce-buffered write did not reach the file")
			}
		})
	}
}

func TestMemDevice(t *testing.T) {
	testDevice(t, NewMemDevice(1<<20))
}

func TestMemDeviceCrashLosesUnsynced(t *testing.T) {
	m := NewMemDevice(1 << 16)
	m.WriteAt([]byte{1}, 0)
	m.Sync()
	m.WriteAt([]byte{2}, 0)
	m.WriteAt([]byte{3}, 4096)
	m.Crash(0)
	b := m.Bytes()
	if b[0] != 1 || b[4096] != 0 {
		t.Fatalf("after crash got %d %d, want synced 1 and lost 0", b[0], b[4096])
	}
}

func TestMemDeviceCrashSubsetIsPrefixFree(t *testing.T) {
	// With a seed, surviving bytes are always either old or new data.
	for seed := uint64(1); seed < 50; seed++ {
		m := NewMemDevice(1 << 14)
		m.WriteAt(bytes.Repeat([]byte{9}, 4096), 0)
		m.Crash(seed)
		for i, c := range m.Bytes()[:4096] {
			if c != 0 && c != 9 {
				t.Fatalf("seed %d byte %d = %d", seed, i, c)
			}
		}
	}
}

func TestMemDeviceFaults(t *testing.T) {
	m := NewMemDevice(1 << 14)
	boom := errors.New("injected")
	m.FailWrite = func(off, n int64) error { return boom }
	if _, err := m.WriteAt([]byte{1}, 0); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	m.FailRead = func(off, n int64) error { return boom }
	if _, err := m.ReadAt(make([]byte, 1), 0); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}

func TestWriteFUA(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(path, make([]byte, 1<<16), 0o600)
	d, err := OpenFile(path, DirectAuto)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := WriteFUA(d, []byte("fua"), 10); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if string(raw[10:13]) != "fua" {
		t.Fatalf("FUA write not visible")
	}
	m := NewMemDevice(1 << 16)
	WriteFUA(m, []byte("x"), 0)
	m.Crash(0)
	if m.Bytes()[0] != 'x' {
		t.Fatalf("FUA write on MemDevice lost by crash")
	}
}

// TestStartWriteback: a file's dirty pages can be pushed toward the disk
// without waiting, ranges are checked, and devices without a page cache
// accept the call as a no-op.
func TestStartWriteback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenFile(path, DirectAuto)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := StartWriteback(d, 128<<10, 64<<10); err != nil {
		t.Fatalf("StartWriteback: %v", err)
	}
	if err := StartWriteback(d, 1<<20-4096, 8192); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("StartWriteback past the end = %v, want ErrOutOfRange", err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[128<<10:192<<10], bytes.Repeat([]byte{7}, 64<<10)) {
		t.Fatal("data changed by StartWriteback")
	}
	if err := StartWriteback(NewMemDevice(1<<16), 0, 1<<16); err != nil {
		t.Fatalf("StartWriteback on a MemDevice: %v", err)
	}
}

// TestFileDeviceSyncAfterClose checks that flushing a closed device says
// so (ErrClosed) rather than calling fdatasync on a stale descriptor: a
// barrier ack racing a detach counts such a disk as synced by its close.
func TestFileDeviceSyncAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenFile(path, DirectOff)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("sync while open: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); !errors.Is(err, ErrClosed) {
		t.Fatalf("sync after close: %v, want ErrClosed", err)
	}
}
