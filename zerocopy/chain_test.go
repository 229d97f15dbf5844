package zerocopy

import (
	"bytes"
	"errors"
	"io"
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
