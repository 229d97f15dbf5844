package zerocopy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

func raw(t *testing.T, c any) syscall.RawConn {
	t.Helper()
	rc, ok := RawConn(c)
	if !ok {
		t.Fatal("no raw connection")
	}
	return rc
}

// tempFile returns a file of size bytes holding data (random when nil).
func tempFile(t *testing.T, size int, data []byte) (*os.File, []byte) {
	t.Helper()
	if data == nil {
		data = make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(size), 7))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, data
}

func newPipe(t *testing.T) *Pipe {
	t.Helper()
	p, err := NewPipe(DefaultPipeSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestFileToFileOverTCP sends blocks of a file over a socket as the
// resync does (a header with MSG_MORE, then the block spliced from the
// page cache) and receives them into another file through a pipe, and
// checks every byte.
func TestFileToFileOverTCP(t *testing.T) {
	const size = 6 << 20
	src, want := tempFile(t, size, nil)
	dst, _ := tempFile(t, size, make([]byte, size))
	a, b := tcpPair(t)
	// Block sizes include odd ones and ones larger than the pipe.
	blocks := []int{64 << 10, 128 << 10, 128<<10 + 512, 1 << 20, 3<<20 - 4096, 512}
	ra, rb := raw(t, a), raw(t, b)
	sent := make(chan error, 1)
	go func() {
		p, err := NewPipe(DefaultPipeSize)
		if err != nil {
			sent <- err
			return
		}
		defer p.Close()
		off := 0
		for _, n := range blocks {
			hdr := []byte{byte(n >> 16), byte(n >> 8), byte(n)}
			if err := SendMore(ra, hdr); err != nil {
				sent <- err
				return
			}
			if err := p.FileToConn(src, int64(off), n, ra, false); err != nil {
				sent <- err
				return
			}
			off += n
		}
		sent <- nil
	}()
	p := newPipe(t)
	off := 0
	for _, n := range blocks {
		var hdr [3]byte
		if _, err := io.ReadFull(b, hdr[:]); err != nil {
			t.Fatal(err)
		}
		if got := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2]); got != n {
			t.Fatalf("header says %d bytes, want %d", got, n)
		}
		for done := 0; done < n; {
			got, err := p.FillFromConn(rb, min(n-done, p.Size()))
			if err != nil && !errors.Is(err, ErrPipeFull) {
				t.Fatal(err)
			}
			if err := p.DrainToFile(dst, int64(off+done), got); err != nil {
				t.Fatal(err)
			}
			done += got
		}
		off += n
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	got := make([]byte, off)
	if _, err := dst.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:off]) {
		t.Fatal("received file differs from the sent one")
	}
}

// TestFillFromConnWaitsAndEnds checks that a fill waits for bytes still
// to come, and reports a connection closed early.
func TestFillFromConnWaitsAndEnds(t *testing.T) {
	a, b := tcpPair(t)
	p := newPipe(t)
	go func() {
		a.Write(bytes.Repeat([]byte{1}, 1000))
		time.Sleep(20 * time.Millisecond)
		a.Write(bytes.Repeat([]byte{2}, 1000))
		a.Close()
	}()
	got, err := p.FillFromConn(raw(t, b), 2000)
	if err != nil || got != 2000 {
		t.Fatalf("FillFromConn = %d, %v; want 2000 bytes", got, err)
	}
	buf := make([]byte, 2000)
	if err := p.ReadFull(buf); err != nil {
		t.Fatal(err)
	}
	if buf[0] != 1 || buf[999] != 1 || buf[1000] != 2 || buf[1999] != 2 {
		t.Fatal("bytes out of order")
	}
	if _, err := p.FillFromConn(raw(t, b), 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("fill after close: %v, want unexpected EOF", err)
	}
}

// TestFillFromConnDeadline checks that a fill gives up at the socket's
// read deadline.
func TestFillFromConnDeadline(t *testing.T) {
	_, b := tcpPair(t)
	p := newPipe(t)
	b.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := p.FillFromConn(raw(t, b), 10); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("fill: %v, want deadline exceeded", err)
	}
}

// TestDiscard checks that dropped bytes leave the rest in order.
func TestDiscard(t *testing.T) {
	src, data := tempFile(t, 300<<10, nil)
	p := newPipe(t)
	held, err := p.FillFromFile(src, 0, len(data))
	if err != nil || held != len(data) {
		t.Fatalf("FillFromFile = %d, %v", held, err)
	}
	if err := p.Discard(100 << 10); err != nil {
		t.Fatal(err)
	}
	rest := make([]byte, 200<<10)
	if err := p.ReadFull(rest); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, data[100<<10:]) {
		t.Fatal("bytes after the discarded ones differ")
	}
}

// TestFillFromFileShort checks that reading past the end of a file is an
// error, not a short block.
func TestFillFromFileShort(t *testing.T) {
	src, _ := tempFile(t, 4096, nil)
	p := newPipe(t)
	if _, err := p.FillFromFile(src, 4096, 4096); !errors.Is(err, ErrShortSource) {
		t.Fatalf("fill past the end: %v, want ErrShortSource", err)
	}
}

// TestRawConnRefusesPipes checks that connections without a socket
// behind them are not spliced.
func TestRawConnRefusesPipes(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := RawConn(a); ok {
		t.Fatal("net.Pipe has a raw connection")
	}
}

// TestReadFullPast reads blocks through a small buffered reader over a
// capped one: a block partly buffered, one the buffer holds more than
// (the rest stays buffered for the next read), and a stream that ends
// in the middle of a block.
func TestReadFullPast(t *testing.T) {
	data := make([]byte, 300)
	for i := range data {
		data[i] = byte(i)
	}
	c := &CappedReader{R: bytes.NewReader(data)}
	br := bufio.NewReaderSize(c, 16)
	head := make([]byte, 4)
	if _, err := io.ReadFull(br, head); err != nil || br.Buffered() != 12 {
		t.Fatalf("head: %v, %d buffered, want 12", err, br.Buffered())
	}
	blk := make([]byte, 100)
	if err := c.ReadFullPast(br, blk); err != nil || !bytes.Equal(blk, data[4:104]) {
		t.Fatalf("block past the buffer: %v", err)
	}
	if br.Buffered() != 0 {
		t.Fatalf("%d bytes left in the buffer, want 0", br.Buffered())
	}
	if _, err := io.ReadFull(br, head); err != nil || !bytes.Equal(head, data[104:108]) {
		t.Fatalf("next head: %v", err)
	}
	small := make([]byte, 5)
	if err := c.ReadFullPast(br, small); err != nil || !bytes.Equal(small, data[108:113]) {
		t.Fatalf("block within the buffer: %v", err)
	}
	if want := 16 - 4 - 5; br.Buffered() != want {
		t.Fatalf("%d bytes left in the buffer, want %d", br.Buffered(), want)
	}
	rest := make([]byte, 300)
	if err := c.ReadFullPast(br, rest); err != io.ErrUnexpectedEOF {
		t.Fatalf("stream ending mid-block: %v, want io.ErrUnexpectedEOF", err)
	}
}
