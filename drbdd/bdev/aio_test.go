//go:build amd64 || arm64 || riscv64 || loong64 || ppc64le

package bdev

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestFileDeviceAsyncIO writes and reads a direct-I/O device from many
// goroutines at once, so that the AIO context has many requests in
// flight, and checks every block through the device and in the file.
func TestFileDeviceAsyncIO(t *testing.T) {
	const blocks = 512
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, blocks*BlockSize), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenFile(path, DirectOn)
	if err != nil {
		t.Skipf("open with O_DIRECT: %v (tmpfs has no O_DIRECT)", err)
	}
	defer d.Close()
	if d.aio == nil {
		if aioOff {
			t.Skip("DRBDD_NO_AIO is set")
		}
		t.Fatal("O_DIRECT device has no AIO context")
	}
	want := make([][]byte, blocks)
	for i := range want {
		b, _ := d.alignedBuf(BlockSize)
		for j := range b {
			b[j] = byte(rand.IntN(256))
		}
		want[i] = b
	}
	// Each goroutine owns every eighth block, in a random order, and
	// writes each twice (the second time its final contents), reading
	// it back in between.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rd, _ := d.alignedBuf(BlockSize)
			for _, k := range rand.Perm(blocks / 8) {
				i := k*8 + g
				off := int64(i) * BlockSize
				junk := bytes.Repeat([]byte{byte(i)}, BlockSize)
				if _, err := d.WriteAt(junk, off); err != nil {
					errs <- err
					return
				}
				if _, err := d.ReadAt(rd, off); err != nil || !bytes.Equal(rd, junk) {
					errs <- fmt.Errorf("block %d reads back wrong (err %v)", i, err)
					return
				}
				if n, err := d.WriteAt(want[i], off); err != nil || n != BlockSize {
					errs <- fmt.Errorf("block %d: wrote %d bytes, %v", i, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("I/O through AIO: %v", err)
	}
	got := make([]byte, BlockSize)
	for i := range want {
		if _, err := d.ReadAt(got, int64(i)*BlockSize); err != nil || !bytes.Equal(got, want[i]) {
			t.Fatalf("block %d reads back wrong through the device (err %v)", i, err)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(raw[i*BlockSize:(i+1)*BlockSize], want[i]) {
			t.Fatalf("block %d is wrong in the file", i)
		}
	}

	// Once the context is closed, I/O goes the blocking way.
	d.aio.close()
	if _, err := d.WriteAt(want[0], BlockSize); err != nil {
		t.Fatalf("write after the AIO context closed: %v", err)
	}
	if _, err := d.ReadAt(got, BlockSize); err != nil || !bytes.Equal(got, want[0]) {
		t.Fatalf("read after the AIO context closed: %v", err)
	}
}

// TestAsyncIOReportsErrors checks both ways a request can fail: one the
// kernel refuses at submission (a write to a read-only descriptor) comes
// back as errAIOUnavailable, for the caller to redo blocking, and one that
// fails once submitted (a direct write from a misaligned buffer) comes
// back as its errno.
func TestAsyncIOReportsErrors(t *testing.T) {
	path, a := openAsyncIO(t, os.O_RDONLY)
	buf := make([]byte, 2*BlockSize)
	if _, err := a.do(iocbCmdPwrite, buf[:BlockSize], 0); err != errAIOUnavailable {
		t.Fatalf("write to a read-only descriptor: %v, want errAIOUnavailable", err)
	}
	if n, err := a.do(iocbCmdPread, buf[:BlockSize], 1<<20); err != nil || n != 0 {
		t.Fatalf("read at the end of the file: %d, %v; want 0, nil", n, err)
	}
	a.close()

	d, err := OpenFile(path, DirectOn)
	if err != nil {
		t.Skipf("open with O_DIRECT: %v (tmpfs has no O_DIRECT)", err)
	}
	defer d.Close()
	b, _ := d.alignedBuf(2 * BlockSize)
	if _, err := d.aio.do(iocbCmdPwrite, b[1:BlockSize+1], 0); err != unix.EINVAL {
		t.Fatalf("direct write from a misaligned buffer: %v, want EINVAL", err)
	}
	if _, err := d.WriteAt(b[1:BlockSize+1], 0); err != nil {
		t.Fatalf("the device bounces a misaligned buffer: %v", err)
	}
}

// TestIocbLayout checks the control block against the kernel's 64-byte
// struct iocb.
func TestIocbLayout(t *testing.T) {
	var cb iocb
	if got := unsafe.Sizeof(cb); got != 64 {
		t.Fatalf("iocb is %d bytes, want 64", got)
	}
	for _, f := range []struct {
		name      string
		off, want uintptr
	}{
		{"aio_lio_opcode", unsafe.Offsetof(cb.opcode), 16},
		{"aio_fildes", unsafe.Offsetof(cb.fildes), 20},
		{"aio_buf", unsafe.Offsetof(cb.buf), 24},
		{"aio_nbytes", unsafe.Offsetof(cb.nbytes), 32},
		{"aio_offset", unsafe.Offsetof(cb.offset), 40},
		{"aio_flags", unsafe.Offsetof(cb.flags), 56},
		{"aio_resfd", unsafe.Offsetof(cb.resfd), 60},
	} {
		if f.off != f.want {
			t.Errorf("%s at offset %d, want %d", f.name, f.off, f.want)
		}
	}
	if got := unsafe.Sizeof(ioEvent{}); got != 32 {
		t.Errorf("io_event is %d bytes, want 32", got)
	}
}

// TestAsyncIOCloseUnderLoad closes a context twice at once while more
// goroutines than it has slots keep submitting: both closes return only
// when nothing is in flight, every request ends (done or refused), and
// later requests are refused.
func TestAsyncIOCloseUnderLoad(t *testing.T) {
	_, a := openAsyncIO(t, os.O_RDWR)
	var done, refused sync.WaitGroup
	stop := make(chan struct{})
	for g := range aioDepth + 44 {
		done.Add(1)
		go func() {
			defer done.Done()
			buf := make([]byte, 512)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := a.do(iocbCmdPwrite, buf, int64(g%2048)*512); err == errAIOUnavailable {
					return
				} else if err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		}()
	}
	for range 2 {
		refused.Add(1)
		go func() {
			defer refused.Done()
			a.close()
			a.mu.Lock()
			closed := a.closed
			a.mu.Unlock()
			select {
			case <-a.destroyed:
			default:
				t.Error("close returned before the context was destroyed")
			}
			if !closed {
				t.Error("close returned with the context open")
			}
		}()
	}
	refused.Wait()
	close(stop)
	done.Wait()
	if _, err := a.do(iocbCmdPwrite, make([]byte, 512), 0); err != errAIOUnavailable {
		t.Fatalf("write after close: %v, want errAIOUnavailable", err)
	}
}

// openAsyncIO makes a zeroed 1 MiB file, opens it with flag (closed when
// the test ends) and sets up an AIO context on it.
func openAsyncIO(t *testing.T, flag int) (string, *asyncIO) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	a, err := newAsyncIO(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return path, a
}

// TestAsyncIOBatchesSubmissions releases 32 writers at once on one P.
// The first, with nothing else in flight, submits alone; the next leads a
// batch, yields, and the others queue behind it, so that far fewer
// io_submit calls than writes carry them all. Every write lands.
func TestAsyncIOBatchesSubmissions(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	path, a := openAsyncIO(t, os.O_RDWR)
	defer a.close()
	const writers = 32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			buf := bytes.Repeat([]byte{byte(g + 1)}, 512)
			if n, err := a.do(iocbCmdPwrite, buf, int64(g)*512); err != nil || n != 512 {
				t.Errorf("writer %d: %d, %v", g, n, err)
			}
		}()
	}
	runtime.Gosched() // let the writers reach the start line (a late one still queues)
	before := a.submits.Load()
	close(start)
	wg.Wait()
	if n := a.submits.Load() - before; n > writers/4 {
		t.Errorf("%d writers released together took %d io_submit calls, want at most %d", writers, n, writers/4)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for g := range writers {
		if want := bytes.Repeat([]byte{byte(g + 1)}, 512); !bytes.Equal(got[g*512:(g+1)*512], want) {
			t.Errorf("sector %d does not hold writer %d's data", g, g)
		}
	}
}

// TestAsyncIOBatchRefusesOne queues three requests, the middle one with
// an opcode the kernel refuses at submission: it alone is refused (and
// would be redone blocking), and the ones on either side complete.
func TestAsyncIOBatchRefusesOne(t *testing.T) {
	_, a := openAsyncIO(t, os.O_RDWR)
	defer a.close()
	bufs := [3][]byte{make([]byte, 512), make([]byte, 512), make([]byte, 512)}
	var idx [3]int
	for k := range 3 {
		i := <-a.free
		idx[k] = i
		s := &a.slots[i]
		s.buf = bufs[k]
		op := uint16(iocbCmdPwrite)
		if k == 1 {
			op = 0xff // no such IOCB_CMD
		}
		s.cb = iocb{data: uint64(i), opcode: op, fildes: uint32(a.fd),
			buf: uint64(uintptr(unsafe.Pointer(&bufs[k][0]))), nbytes: 512, offset: int64(k) * 512,
			flags: iocbFlagResfd, resfd: uint32(a.efd)}
		a.queued = append(a.queued, &s.cb)
	}
	a.submitQueued()
	for k, i := range idx {
		res := <-a.slots[i].done
		a.slots[i].buf = nil
		a.free <- i
		switch {
		case k == 1 && res != resRefused:
			t.Errorf("request with a bad opcode: result %d, want refused", res)
		case k != 1 && res != 512:
			t.Errorf("request %d beside the refused one: result %d, want 512", k, res)
		}
	}
	if a.submits.Load() != 3 {
		t.Errorf("%d io_submit calls, want 3 (one taking the first, one refusing the second, one taking the third)", a.submits.Load())
	}
}

// TestWriteAtBlocking writes through the blocking path of a device that
// has AIO, from an aligned and from a misaligned buffer, and an unaligned
// range (which takes WriteAt's path), and reads each back: no AIO
// submission may happen for the blocking writes.
func TestWriteAtBlocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 64*BlockSize), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenFile(path, DirectOn)
	if err != nil {
		t.Skipf("open with O_DIRECT: %v (tmpfs has no O_DIRECT)", err)
	}
	defer d.Close()
	if d.aio == nil {
		t.Skip("no AIO context")
	}
	raw := make([]byte, 2*BlockSize+1)
	for i := range raw {
		raw[i] = byte(i*7 + 1)
	}
	aligned, _ := d.alignedBuf(BlockSize)
	copy(aligned, raw)
	before := d.aio.submits.Load()
	for _, c := range []struct {
		p   []byte
		off int64
	}{{aligned, 0}, {raw[1 : 1+BlockSize], 3 * BlockSize}, {raw[:100], 10*BlockSize + 7}} {
		if n, err := WriteBlocking(d, c.p, c.off); err != nil || n != len(c.p) {
			t.Fatalf("WriteBlocking at %d: %d, %v", c.off, n, err)
		}
		got := make([]byte, len(c.p))
		if _, err := d.buffered.ReadAt(got, c.off); err != nil || !bytes.Equal(got, c.p) {
			t.Fatalf("read back at %d: %v, equal %v", c.off, err, bytes.Equal(got, c.p))
		}
	}
	if n := d.aio.submits.Load() - before; n != 0 {
		t.Errorf("%d AIO submissions for blocking writes", n)
	}
}
