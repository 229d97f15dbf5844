package invm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"drbdd/nbd"
	"drbdd/netlink"
)

// requireVM skips the test outside a lab VM.
func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("DRBDD_IN_VM") != "1" {
		t.Skip("runs only inside a lab VM (DRBDD_IN_VM=1); the host runs it with DRBDD_LAB=1 go test ./testenv/lab")
	}
}

// fileBackend serves a file and counts flushes and FUA writes.
type fileBackend struct {
	f       *os.File
	size    int64
	flushes atomic.Int64
	fuas    atomic.Int64
	writes  atomic.Int64
}

func (b *fileBackend) Size() int64 { return b.size }

func (b *fileBackend) ReadAt(p []byte, off int64) error {
	_, err := b.f.ReadAt(p, off)
	return err
}

func (b *fileBackend) WriteAt(p []byte, off int64, fua bool) error {
	b.writes.Add(1)
	if _, err := b.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		b.fuas.Add(1)
		return b.f.Sync()
	}
	return nil
}

func (b *fileBackend) Flush() error {
	b.flushes.Add(1)
	return b.f.Sync()
}

func (b *fileBackend) Trim(off, length int64, fua bool) error { return nil }

func (b *fileBackend) WriteZeroes(off, length int64, noHole, fua bool) error {
	_, err := b.f.WriteAt(make([]byte, length), off)
	return err
}

// newBackend creates a size-byte file in /run (tmpfs).
func newBackend(t *testing.T, size int64) *fileBackend {
	t.Helper()
	f, err := os.CreateTemp("/run", "invm-*.img")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return &fileBackend{f: f, size: size}
}

// sh runs a shell command and fails the test unless it exits 0.
func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

func sysfs(t *testing.T, index int, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", "nbd"+strconv.Itoa(index), name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func openKernel(t *testing.T) *netlink.KernelNBD {
	t.Helper()
	k, err := netlink.Open()
	if err != nil {
		t.Fatalf("netlink.Open: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// writeFiles writes n files of random sizes under dir and returns their
// checksums.
func writeFiles(t *testing.T, dir string, n int) map[string][32]byte {
	t.Helper()
	sums := make(map[string][32]byte)
	for i := range n {
		b := make([]byte, 1000+i*517%60000)
		rand.Read(b)
		name := filepath.Join(dir, fmt.Sprintf("f%03d", i))
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(b)
	}
	return sums
}

func checkFiles(t *testing.T, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != want {
			t.Fatalf("%s: checksum mismatch", name)
		}
	}
}

func TestKernelAttachFilesystem(t *testing.T) {
	requireVM(t)
	ctx := context.Background()
	k := openKernel(t)
	const index = 1
	be := newBackend(t, 96<<20)
	released := make(chan struct{})
	e := &nbd.Export{Name: "invm", Backend: be, CanTrim: true, CanZeroes: true, MultiConn: true,
		Release: func() { close(released) }}
	d, err := nbd.AttachKernel(ctx, k, index, e, 2, nbd.KernelOptions{Logf: t.Logf})
	if err != nil {
		t.Fatalf("AttachKernel: %v", err)
	}
	if got := sysfs(t, index, "queue/logical_block_size"); got != "4096" {
		t.Errorf("logical block size %s, want 4096", got)
	}
	if got := sysfs(t, index, "size"); got != strconv.Itoa(96<<20/512) {
		t.Errorf("size %s sectors, want %d", got, 96<<20/512)
	}
	if got := sysfs(t, index, "backend"); got != "drbdd:invm" {
		t.Errorf("backend %q", got)
	}
	// 1 MiB writes reach drbdd whole instead of in the block layer's
	// default 128 KiB pieces.
	if got, want := sysfs(t, index, "queue/max_sectors_kb"), strconv.Itoa(nbd.KernelMaxRequest>>10); got != want {
		t.Errorf("max_sectors_kb %s, want %s", got, want)
	}
	st, err := k.Status(ctx, index)
	if err != nil || len(st) != 1 || !st[0].Connected {
		t.Fatalf("Status(%d) = %v, %v", index, st, err)
	}
	if i, ok, err := nbd.FindByBackend(ctx, k, "drbdd:invm"); err != nil || !ok || i != index {
		t.Fatalf("FindByBackend = %d, %v, %v", i, ok, err)
	}

	sh(t, "mkfs.ext4 -q -F /dev/nbd1")
	sh(t, "mkdir -p /mnt/invm && mount -t ext4 /dev/nbd1 /mnt/invm")
	sums := writeFiles(t, "/mnt/invm", 200)
	if busy, err := d.InUse(); err != nil || !busy {
		t.Fatalf("mounted: InUse = %v, %v", busy, err)
	}
	flushes := be.flushes.Load()
	sh(t, "sync")
	if be.flushes.Load() == flushes && be.fuas.Load() == 0 {
		t.Errorf("sync sent neither FLUSH nor FUA (flushes %d, fua writes %d)", be.flushes.Load(), be.fuas.Load())
	}
	t.Logf("after sync: %d writes, %d flushes, %d FUA writes", be.writes.Load(), be.flushes.Load(), be.fuas.Load())
	sh(t, "umount /mnt/invm")
	if busy, err := d.InUse(); err != nil || busy {
		t.Fatalf("unmounted: InUse = %v, %v", busy, err)
	}
	sh(t, "e2fsck -fn /dev/nbd1")
	if err := d.Detach(ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	<-released
	if d.Err() != nil {
		t.Fatalf("Err: %v", d.Err())
	}
	st, err = k.Status(ctx, index)
	if err != nil || len(st) != 1 || st[0].Connected {
		t.Fatalf("Status(%d) after Detach = %v, %v", index, st, err)
	}

	// The data is in the backend: attach it again and read it back.
	e2 := &nbd.Export{Name: "invm", Backend: be}
	d2, err := nbd.AttachKernel(ctx, k, netlink.NBDAnyIndex, e2, 1, nbd.KernelOptions{Logf: t.Logf})
	if err != nil {
		t.Fatalf("second AttachKernel: %v", err)
	}
	sh(t, "mount -t ext4 "+d2.Path()+" /mnt/invm")
	checkFiles(t, sums)
	sh(t, "umount /mnt/invm")
	if err := d2.Detach(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKernelReattachWhileMounted is a daemon restart under a mounted
// filesystem: the serving side vanishes (Abandon), the kernel reports the
// dead link and holds new I/O, a new server takes the device over with
// ReattachKernel and the held I/O completes.
func TestKernelReattachWhileMounted(t *testing.T) {
	requireVM(t)
	ctx := context.Background()
	k := openKernel(t)
	const index = 2
	be := newBackend(t, 64<<20)
	opts := nbd.KernelOptions{Logf: t.Logf, Backend: "drbdd:restart"}
	d, err := nbd.AttachKernel(ctx, k, index, &nbd.Export{Name: "restart", Backend: be, MultiConn: true}, 2, opts)
	if err != nil {
		t.Fatal(err)
	}
	sh(t, "mkfs.ext4 -q -F /dev/nbd2")
	sh(t, "mkdir -p /mnt/restart && mount -t ext4 /dev/nbd2 /mnt/restart")
	sums := writeFiles(t, "/mnt/restart", 50)
	sh(t, "sync")

	wctx, stopWatch := context.WithCancel(ctx)
	var (
		watchMu sync.Mutex
		dead    []int
		watchWG sync.WaitGroup
	)
	watchWG.Add(1)
	go func() {
		defer watchWG.Done()
		if err := k.WatchLinkDead(wctx, func(i int) {
			watchMu.Lock()
			dead = append(dead, i)
			watchMu.Unlock()
		}); err != nil {
			t.Errorf("WatchLinkDead: %v", err)
		}
	}()
	defer func() { stopWatch(); watchWG.Wait() }()
	time.Sleep(200 * time.Millisecond) // let the watcher join the group

	d.Abandon()
	deadline := time.Now().Add(10 * time.Second)
	for {
		watchMu.Lock()
		n := len(dead)
		got := append([]int(nil), dead...)
		watchMu.Unlock()
		if n > 0 {
			for _, i := range got {
				if i != index {
					t.Fatalf("LINK_DEAD for nbd%d, want nbd%d", i, index)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no LINK_DEAD notification within 10s of the server going away")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// I/O issued now waits for a new connection instead of failing.
	payload := bytes.Repeat([]byte("after-restart "), 70000)
	wrote := make(chan error, 1)
	go func() {
		f, err := os.Create("/mnt/restart/late")
		if err == nil {
			_, err = f.Write(payload)
		}
		if err == nil {
			err = f.Sync()
		}
		if f != nil {
			f.Close()
		}
		wrote <- err
	}()
	select {
	case err := <-wrote:
		t.Fatalf("a synced write completed without a server: %v", err)
	case <-time.After(2 * time.Second):
	}

	i, ok, err := nbd.FindByBackend(ctx, k, "drbdd:restart")
	if err != nil || !ok || i != index {
		t.Fatalf("FindByBackend = %d, %v, %v", i, ok, err)
	}
	d2, err := nbd.ReattachKernel(ctx, k, i, &nbd.Export{Name: "restart", Backend: be, MultiConn: true}, 2, opts)
	if err != nil {
		t.Fatalf("ReattachKernel: %v", err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("held write failed after the re-attach: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("held write did not complete within 90s of the re-attach")
	}
	checkFiles(t, sums)
	b, err := os.ReadFile("/mnt/restart/late")
	if err != nil || !bytes.Equal(b, payload) {
		t.Fatalf("late file: %v, equal=%v", err, bytes.Equal(b, payload))
	}

	// A second re-attach while the sockets are alive takes nothing.
	if _, err := nbd.ReattachKernel(ctx, k, index, &nbd.Export{Name: "restart", Backend: be, MultiConn: true}, 1, opts); err == nil {
		t.Fatal("ReattachKernel succeeded while the device was being served")
	}

	sh(t, "umount /mnt/restart")
	sh(t, "e2fsck -fn /dev/nbd2")
	if err := d2.Detach(ctx); err != nil {
		t.Fatal(err)
	}
}
