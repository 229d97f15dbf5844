package zerocopy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// smallPipes hands out pipes of one page slot each, so that a block
// spans several. (A slot holds one fragment of a socket buffer, which may
// be larger than a page.)
func smallPipes(t *testing.T) (take func() *Pipe, taken *int) {
	n := 0
	return func() *Pipe {
		p, err := NewPipe(4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		n++
		return p
	}, &n
}

// TestChainAcrossPipes receives a block larger than one pipe into a
// chain, duplicates it with tee, sends the copy over a second socket and
// writes the original to a file, and checks both.
func TestChainAcrossPipes(t *testing.T) {
	const n = 1<<20 + 3000
	_, data := tempFile(t, n, nil)
	a, b := tcpPair(t)
	go func() {
		a.Write(data)
	}()
	take, taken := smallPipes(t)
	var c Chain
	if err := c.FillFromConn(raw(t, b), n, take); err != nil {
		t.Fatal(err)
	}
	if c.Len() != n || *taken < 2 {
		t.Fatalf("chain holds %d bytes in %d pipes, want %d bytes in several", c.Len(), *taken, n)
	}
	tee, err := c.TeeTo(take)
	if err != nil {
		t.Fatal(err)
	}
	if tee.Len() != n || c.Len() != n {
		t.Fatalf("after tee: %d and %d bytes, want %d each", c.Len(), tee.Len(), n)
	}

	// The copy goes over another socket.
	x, y := tcpPair(t)
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, n)
		io.ReadFull(y, buf)
		got <- buf
	}()
	if err := tee.ToConn(raw(t, x), false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, data) {
		t.Fatal("the tee sent over the socket differs")
	}

	// The original: skip a little, read a little, the rest to a file.
	dst, _ := tempFile(t, n, make([]byte, n))
	if err := c.Discard(100); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 70<<10) // crosses a pipe boundary
	if err := c.ReadFull(small); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(small, data[100:100+len(small)]) {
		t.Fatal("bytes read from the chain differ")
	}
	rest := n - 100 - len(small)
	if err := c.DrainToFile(dst, 0, rest); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, rest)
	dst.ReadAt(out, 0)
	if !bytes.Equal(out, data[100+len(small):]) {
		t.Fatal("bytes written from the chain differ")
	}
	if c.Len() != 0 {
		t.Fatalf("%d bytes left", c.Len())
	}
	if err := c.Discard(1); err == nil {
		t.Fatal("discarding beyond the chain succeeded")
	}
	var empties, dirty int
	c.Release(func(p *Pipe, empty bool) {
		if empty {
			empties++
		} else {
			dirty++
		}
	})
	if dirty != 0 || empties != *taken-len(tee.parts) {
		t.Fatalf("released %d empty and %d dirty pipes, want all %d empty", empties, dirty, *taken-len(tee.parts))
	}
}

// TestChainNoPipe checks that a fill without pipes fails cleanly.
func TestChainNoPipe(t *testing.T) {
	a, b := tcpPair(t)
	go a.Write(make([]byte, 200<<10))
	take, _ := smallPipes(t)
	budget := 2
	var c Chain
	err := c.FillFromConn(raw(t, b), 200<<10, func() *Pipe {
		if budget == 0 {
			return nil
		}
		budget--
		return take()
	})
	if !errors.Is(err, ErrNoPipe) {
		t.Fatalf("fill with two one-slot pipes for 200 KiB: %v, want ErrNoPipe", err)
	}
	released := 0
	c.Release(func(*Pipe, bool) { released++ })
	if released != 2 {
		t.Fatalf("released %d pipes, want 2", released)
	}
}

// unixPair returns the two ends of a Unix stream socketpair, the kind
// drbdd hands to the kernel's nbd driver.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "unix")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// directFile opens a new file in the test directory with O_DIRECT, and
// skips the test where the filesystem has no direct I/O.
func directFile(t *testing.T, size int64) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "direct")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_DIRECT, 0o600)
	if err != nil {
		t.Skipf("no O_DIRECT in the test directory: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestChainToDirectFile receives blocks from a Unix socket into pipes
// and writes them to a file opened with O_DIRECT. Sent a page at a time,
// as the kernel's nbd driver sends a write's payload, the pages are
// aligned and the whole block goes to the file from the pipes. Sent with
// a 100-byte lead in the same message, the pieces straddle sectors:
// where the filesystem enforces alignment, the drain stops with
// ErrUnaligned and the chain still holds the rest, which is read and
// written from memory. Either way the file must end up holding the data.
func TestChainToDirectFile(t *testing.T) {
	const n = 1 << 20
	_, data := tempFile(t, n+100, nil)
	for _, tc := range []struct {
		name      string
		lead      int // bytes sent with the block and read from the socket first
		pageSends bool
	}{
		{"page at a time", 0, true},
		{"unaligned pieces", 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := directFile(t, 2*n)
			a, b := unixPair(t)
			go func() {
				if !tc.pageSends {
					a.Write(data[:tc.lead+n])
					return
				}
				for off := 0; off < n; off += 4096 {
					a.Write(data[off : off+4096])
				}
			}()
			if tc.lead > 0 {
				if _, err := io.ReadFull(b, make([]byte, tc.lead)); err != nil {
					t.Fatal(err)
				}
			}
			block := data[tc.lead : tc.lead+n]
			take, _ := smallPipes(t)
			var c Chain
			if err := c.FillFromConn(raw(t, b), n, take); err != nil {
				t.Fatal(err)
			}
			moved, err := c.DrainToDirectFile(f, n, n)
			switch {
			case err == nil && moved == n:
			case errors.Is(err, ErrUnaligned) && !tc.pageSends:
				t.Logf("O_DIRECT refused the pieces after %d bytes; the rest goes through memory", moved)
				rest := make([]byte, n-moved)
				if err := c.ReadFull(rest); err != nil {
					t.Fatalf("reading what the chain still holds: %v", err)
				}
				if !bytes.Equal(rest, block[moved:]) {
					t.Fatal("the chain holds other bytes than the ones not written")
				}
				bf, err := os.OpenFile(f.Name(), os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer bf.Close()
				if _, err := bf.WriteAt(rest, n+int64(moved)); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("drain to direct file: moved %d of %d: %v", moved, n, err)
			}
			if c.Len() != 0 {
				t.Fatalf("chain holds %d bytes after the drain", c.Len())
			}
			got := make([]byte, n)
			rf, err := os.Open(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			defer rf.Close()
			if _, err := rf.ReadAt(got, n); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, block) {
				t.Fatal("file differs from the block sent")
			}
		})
	}
}
