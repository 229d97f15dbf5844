package nbd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"drbdd/netlink"

	"golang.org/x/sys/unix"
)

// fakeNBDKernel plays the kernel's nbd driver: it keeps its own copy of
// each socket it is given and speaks the transmission phase on it through
// the test client.
type fakeNBDKernel struct {
	t *testing.T

	mu           sync.Mutex
	connect      []netlink.NBDConnectParams
	reconfigure  []netlink.NBDReconfigureParams
	clients      []*client
	disconnects  []int
	connectErr   error
	disconnErr   error
	adopt        int // sockets Reconfigure takes; the rest it drops
	status       []netlink.NBDDeviceStatus
	pickedIndex  int
	sentDisc     bool // Disconnect sends NBD_CMD_DISC before closing
	keepOnDiscon bool // Disconnect leaves the sockets open
}

func newFakeNBDKernel(t *testing.T) *fakeNBDKernel {
	f := &fakeNBDKernel{t: t, pickedIndex: 5, sentDisc: true}
	// The fake's devices have no sysfs directories unless a test makes
	// them; the host's /sys/block is never touched.
	if sysBlock == "/sys/block" {
		sysBlock = t.TempDir()
		t.Cleanup(func() { sysBlock = "/sys/block" })
	}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.clients {
			c.c.Close()
		}
	})
	return f
}

// take duplicates fd, as the kernel's sockfd_lookup takes a reference.
func (f *fakeNBDKernel) take(fd int) *client {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		f.t.Fatalf("dup: %v", err)
	}
	file := os.NewFile(uintptr(nfd), "kernel-end")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		f.t.Fatalf("FileConn: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &client{t: f.t, c: c, br: bufio.NewReader(c)}
}

func (f *fakeNBDKernel) Connect(ctx context.Context, p netlink.NBDConnectParams) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connect = append(f.connect, p)
	if f.connectErr != nil {
		return -1, f.connectErr
	}
	for _, fd := range p.Sockets {
		f.clients = append(f.clients, f.take(fd))
	}
	if p.Index == netlink.NBDAnyIndex {
		return f.pickedIndex, nil
	}
	return p.Index, nil
}

func (f *fakeNBDKernel) Disconnect(ctx context.Context, index int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disconnects = append(f.disconnects, index)
	if f.disconnErr != nil {
		return f.disconnErr
	}
	if f.keepOnDiscon {
		return nil
	}
	for _, c := range f.clients {
		if f.sentDisc {
			h := requestHeader{Type: cmdDisc}
			_, _ = c.c.Write(h.appendTo(nil))
		}
		c.c.Close()
	}
	f.clients = nil
	return nil
}

func (f *fakeNBDKernel) Reconfigure(ctx context.Context, p netlink.NBDReconfigureParams) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reconfigure = append(f.reconfigure, p)
	for i, fd := range p.Sockets {
		if i < f.adopt {
			f.clients = append(f.clients, f.take(fd))
		}
	}
	return nil
}

func (f *fakeNBDKernel) Status(ctx context.Context, index int) ([]netlink.NBDDeviceStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, nil
}

func (f *fakeNBDKernel) client(i int) *client {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.clients[i]
}

// releaseCounter counts calls of an Export's Release.
type releaseCounter struct{ n atomic.Int32 }

func (r *releaseCounter) release() { r.n.Add(1) }

func (r *releaseCounter) wantOnce(t *testing.T) {
	t.Helper()
	if n := r.n.Load(); n != 1 {
		t.Fatalf("Release called %d times, want once", n)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

func TestAttachKernelServesAndDetaches(t *testing.T) {
	before := openFDs(t)
	f := newFakeNBDKernel(t)
	be := newMemBackend(1 << 20)
	var rel releaseCounter
	e := &Export{Name: "r0", Backend: be, CanTrim: true, CanZeroes: true, MultiConn: true, Release: rel.release}
	var logs logBuffer
	d, err := AttachKernel(context.Background(), f, 3, e, 2, KernelOptions{Logf: logs.logf})
	if err != nil {
		t.Fatal(err)
	}
	if d.Index() != 3 || d.Path() != "/dev/nbd3" || d.Backend() != "drbdd:r0" {
		t.Fatalf("device %d %s %q", d.Index(), d.Path(), d.Backend())
	}
	p := f.connect[0]
	if p.Index != 3 || p.Size != 1<<20 || p.BlockSize != 4096 || p.Backend != "drbdd:r0" || len(p.Sockets) != 2 ||
		p.ServerFlags != uint64(FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagSendTrim|FlagSendWriteZeroes|FlagCanMultiConn) ||
		p.Timeouts != DefaultKernelTimeouts || p.ClientFlags != 0 {
		t.Fatalf("connect params %+v", p)
	}

	// The kernel's requests, on both sockets, reach the backend.
	data := bytes.Repeat([]byte{0x5a}, 8192)
	if errno, _ := f.client(0).do(cmdWrite, cmdFlagFUA, 4096, 8192, data); errno != 0 {
		t.Fatalf("write: %v", errno)
	}
	if errno, _ := f.client(1).do(cmdFlush, 0, 0, 0, nil); errno != 0 {
		t.Fatalf("flush: %v", errno)
	}
	errno, got := f.client(1).do(cmdRead, 0, 4096, 8192, nil)
	if errno != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, %d bytes equal=%v", errno, len(got), bytes.Equal(got, data))
	}

	if err := d.Detach(context.Background()); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	select {
	case <-d.Done():
	default:
		t.Fatal("Done not closed after Detach")
	}
	if d.Err() != nil {
		t.Fatalf("Err after a clean detach: %v", d.Err())
	}
	rel.wantOnce(t)
	if len(f.disconnects) != 1 || f.disconnects[0] != 3 {
		t.Fatalf("disconnects %v", f.disconnects)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d file descriptors open before, %d after", before, after)
	}
	if !strings.Contains(logs.String(), "attached to /dev/nbd3 with 2 socket(s)") {
		t.Errorf("log:\n%s", logs.String())
	}
}

func TestAttachKernelAnyIndexAndOptions(t *testing.T) {
	f := newFakeNBDKernel(t)
	to := netlink.NBDTimeouts{Request: 30 * time.Second, DeadConn: time.Second}
	// 5000 bytes: the kernel device leaves out the 904-byte tail.
	e := &Export{Name: "r1", Backend: newMemBackend(5000), ReadOnly: true}
	d, err := AttachKernel(context.Background(), f, netlink.NBDAnyIndex, e, 1, KernelOptions{Backend: "custom", Timeouts: &to})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Abandon()
	p := f.connect[0]
	if d.Index() != 5 || p.Index != netlink.NBDAnyIndex || p.Size != 4096 || p.Backend != "custom" || p.Timeouts != to ||
		p.ServerFlags != uint64(FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagReadOnly) {
		t.Fatalf("index %d, params %+v", d.Index(), p)
	}
}

func TestAttachKernelRefuses(t *testing.T) {
	f := newFakeNBDKernel(t)
	tests := []struct {
		name   string
		e      *Export
		nconns int
		want   string
	}{
		{"two sockets without MultiConn", &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 2, "MultiConn"},
		{"no sockets", &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 0, "want 1.."},
		{"too many sockets", &Export{Name: "r0", Backend: newMemBackend(1 << 20), MultiConn: true}, MaxKernelConns + 1, "want 1.."},
		{"tiny export", &Export{Name: "r0", Backend: newMemBackend(4095)}, 1, "smaller than one"},
		{"no backend", &Export{Name: "r0"}, 1, "no backend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rel releaseCounter
			tt.e.Release = rel.release
			_, err := AttachKernel(context.Background(), f, 0, tt.e, tt.nconns, KernelOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("AttachKernel = %v, want error containing %q", err, tt.want)
			}
			rel.wantOnce(t)
		})
	}
	if len(f.connect) != 0 {
		t.Fatalf("invalid attaches reached the kernel: %+v", f.connect)
	}
}

func TestAttachKernelConnectError(t *testing.T) {
	before := openFDs(t)
	f := newFakeNBDKernel(t)
	f.connectErr = unix.EBUSY
	var rel releaseCounter
	_, err := AttachKernel(context.Background(), f, 0, &Export{Name: "r0", Backend: newMemBackend(1 << 20), Release: rel.release}, 1, KernelOptions{})
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("AttachKernel = %v, want EBUSY", err)
	}
	rel.wantOnce(t)
	if after := openFDs(t); after != before {
		t.Fatalf("%d file descriptors open before, %d after", before, after)
	}
}

func TestKernelDeviceAbandonAndReattach(t *testing.T) {
	dir := t.TempDir()
	defer func(old string) { sysBlock = old }(sysBlock)
	sysBlock = dir
	if err := os.MkdirAll(filepath.Join(dir, "nbd2"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "nbd2", "size"), []byte("2048\n"), 0o644) // 1 MiB
	os.WriteFile(filepath.Join(dir, "nbd2", "backend"), []byte("drbdd:r0\n"), 0o644)

	f := newFakeNBDKernel(t)
	be := newMemBackend(1 << 20)
	var rel1 releaseCounter
	d, err := AttachKernel(context.Background(), f, 2, &Export{Name: "r0", Backend: be, Release: rel1.release}, 1, KernelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := f.client(0)
	d.Abandon()
	rel1.wantOnce(t)
	if len(f.disconnects) != 0 {
		t.Fatal("Abandon sent a disconnect")
	}
	// The kernel's end sees the server go away, as when drbdd dies.
	old.expectEOF()

	// A new process finds the device and takes it over.
	f.status = []netlink.NBDDeviceStatus{{Index: 0, Connected: false}, {Index: 2, Connected: true}}
	idx, ok, err := FindByBackend(context.Background(), f, "drbdd:r0")
	if err != nil || !ok || idx != 2 {
		t.Fatalf("FindByBackend = %d, %v, %v", idx, ok, err)
	}
	if _, ok, _ := FindByBackend(context.Background(), f, "drbdd:other"); ok {
		t.Fatal("FindByBackend found an unknown backend")
	}
	f.adopt = 1
	var rel2 releaseCounter
	d2, err := ReattachKernel(context.Background(), f, 2, &Export{Name: "r0", Backend: be, Release: rel2.release}, 1, KernelOptions{})
	if err != nil {
		t.Fatalf("ReattachKernel: %v", err)
	}
	rp := f.reconfigure[0]
	if rp.Index != 2 || rp.Backend != "drbdd:r0" || len(rp.Sockets) != 1 || rp.Timeouts == nil || *rp.Timeouts != DefaultKernelTimeouts {
		t.Fatalf("reconfigure params %+v", rp)
	}
	if errno, _ := f.client(1).do(cmdWrite, 0, 0, 4096, make([]byte, 4096)); errno != 0 {
		t.Fatalf("write after re-attach: %v", errno)
	}
	if err := d2.Detach(context.Background()); err != nil {
		t.Fatal(err)
	}
	rel2.wantOnce(t)
}

func TestReattachKernelRefuses(t *testing.T) {
	dir := t.TempDir()
	defer func(old string) { sysBlock = old }(sysBlock)
	sysBlock = dir
	os.MkdirAll(filepath.Join(dir, "nbd1"), 0o755)
	os.WriteFile(filepath.Join(dir, "nbd1", "size"), []byte("4096\n"), 0o644) // 2 MiB

	before := openFDs(t)
	f := newFakeNBDKernel(t)
	var rel releaseCounter
	_, err := ReattachKernel(context.Background(), f, 1, &Export{Name: "r0", Backend: newMemBackend(1 << 20), Release: rel.release}, 1, KernelOptions{})
	if err == nil || !strings.Contains(err.Error(), "refusing to re-attach") {
		t.Fatalf("size mismatch: %v", err)
	}
	rel.wantOnce(t)

	// The kernel takes no socket: nothing was dead.
	f.adopt = 0
	var rel2 releaseCounter
	_, err = ReattachKernel(context.Background(), f, 1, &Export{Name: "r0", Backend: newMemBackend(2 << 20), Release: rel2.release}, 1, KernelOptions{})
	if !errors.Is(err, ErrNotReattached) {
		t.Fatalf("nothing adopted: %v", err)
	}
	rel2.wantOnce(t)
	if after := openFDs(t); after != before {
		t.Fatalf("%d file descriptors open before, %d after", before, after)
	}
}

func TestKernelDeviceKernelCloses(t *testing.T) {
	f := newFakeNBDKernel(t)
	var rel releaseCounter
	var logs logBuffer
	d, err := AttachKernel(context.Background(), f, 0, &Export{Name: "r0", Backend: newMemBackend(1 << 20), Release: rel.release}, 1, KernelOptions{Logf: logs.logf})
	if err != nil {
		t.Fatal(err)
	}
	// The kernel gives up on the socket by itself (a request timeout).
	f.client(0).c.Close()
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the kernel closed its socket")
	}
	if err := d.Err(); err == nil || !strings.Contains(err.Error(), "the kernel closed socket 0") {
		t.Fatalf("Err = %v", err)
	}
	rel.wantOnce(t)
}

func TestKernelDeviceDetachErrors(t *testing.T) {
	f := newFakeNBDKernel(t)
	f.disconnErr = unix.EINVAL
	d, err := AttachKernel(context.Background(), f, 0, &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 1, KernelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Detach(context.Background()); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Detach = %v, want EINVAL", err)
	}
	select {
	case <-d.Done():
	default:
		t.Fatal("sockets still served after a failed disconnect")
	}

	// A kernel that never closes the sockets: the context ends the wait.
	f2 := newFakeNBDKernel(t)
	f2.keepOnDiscon = true
	d2, err := AttachKernel(context.Background(), f2, 0, &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 1, KernelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := d2.Detach(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Detach = %v, want DeadlineExceeded", err)
	}
	if d2.Err() != nil {
		t.Fatalf("Err after Detach: %v", d2.Err())
	}
}

func TestInUse(t *testing.T) {
	if _, err := InUse("/dev/null"); err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Fatalf("InUse(/dev/null) = %v", err)
	}
	if _, err := InUse(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("InUse(missing) = %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("a loop device needs root")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup not installed")
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()

	if busy, err := InUse(dev); err != nil || busy {
		t.Fatalf("idle %s: InUse = %v, %v", dev, busy, err)
	}
	// An exclusive holder (as mount or mkfs would be).
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if busy, err := InUse(dev); err != nil || !busy {
		t.Fatalf("exclusively open %s: InUse = %v, %v", dev, busy, err)
	}
	unix.Close(fd)
	// A plain opener in another process.
	cmd := exec.Command("sleep", "30")
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if busy, err := InUse(dev); err != nil || !busy {
		t.Fatalf("%s open by pid %d: InUse = %v, %v", dev, cmd.Process.Pid, busy, err)
	}
}

// fakeQueue creates sysfs's queue directory of nbd<index> under sysBlock
// with the given max_hw_sectors_kb and the block layer's default request
// size limit, and returns the path of its max_sectors_kb.
func fakeQueue(t *testing.T, index, hwKB int) string {
	t.Helper()
	q := filepath.Join(sysBlock, "nbd"+strconv.Itoa(index), "queue")
	if err := os.MkdirAll(q, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(q, "max_hw_sectors_kb"), []byte(strconv.Itoa(hwKB)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(q, "max_sectors_kb")
	if err := os.WriteFile(p, []byte("128\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAttachKernelRaisesMaxRequest(t *testing.T) {
	for _, tc := range []struct {
		hwKB int
		want string
	}{
		{32768, "1024\n"}, // the driver's limit: 1 MiB requests
		{512, "512\n"},    // a device that takes less keeps its limit
	} {
		f := newFakeNBDKernel(t)
		maxKB := fakeQueue(t, 3, tc.hwKB)
		d, err := AttachKernel(context.Background(), f, 3, &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 1, KernelOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(maxKB)
		d.Abandon()
		if err != nil || string(got) != tc.want {
			t.Errorf("max_hw_sectors_kb %d: max_sectors_kb %q (%v), want %q", tc.hwKB, got, err, tc.want)
		}
	}

	// Without the queue's sysfs files the device is attached all the
	// same, and the log says why the limit stayed.
	f := newFakeNBDKernel(t)
	var logs logBuffer
	d, err := AttachKernel(context.Background(), f, 4, &Export{Name: "r0", Backend: newMemBackend(1 << 20)}, 1, KernelOptions{Logf: logs.logf})
	if err != nil {
		t.Fatal(err)
	}
	d.Abandon()
	if !strings.Contains(logs.String(), "nbd4: keeping the kernel's request size limit") {
		t.Errorf("log:\n%s", logs.String())
	}
}
