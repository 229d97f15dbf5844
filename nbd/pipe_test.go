package nbd

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"drbdd/zerocopy"
)

// pipeBackend is a memBackend that takes large writes from pipes, as the
// engine's backend does; piped counts the writes that came that way.
type pipeBackend struct {
	*memBackend
	piped atomic.Int64
	// fail makes WriteFromPipe fail after consuming the data.
	fail atomic.Bool
}

func (b *pipeBackend) TakesPipe(off int64, n int, _ bool) bool { return n%512 == 0 }

func (b *pipeBackend) WriteFromPipe(head []byte, c *zerocopy.Chain, n int, off int64, fua bool) error {
	b.piped.Add(1)
	buf := make([]byte, n)
	k := copy(buf, head)
	if c.Len() != n-k {
		return errors.New("chain holds the wrong number of bytes")
	}
	if err := c.ReadFull(buf[k:]); err != nil {
		return err
	}
	if b.fail.Load() {
		return errors.New("injected write error")
	}
	return b.WriteAt(buf, off, fua)
}

// TestWritesThroughPipes sends large writes, alone and pipelined behind
// small ones (so that some of a payload is already in the server's read
// buffer), and checks that they went through pipes and that every byte
// reads back; a failing piped write gets EIO and leaves the stream in
// step.
func TestWritesThroughPipes(t *testing.T) {
	be := &pipeBackend{memBackend: newMemBackend(8 << 20)}
	prov := newTestProvider()
	prov.add(Export{Name: "r0", Backend: be})
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")

	want := make([]byte, 8<<20)
	rnd := rand.New(rand.NewPCG(1, 2))
	fill := func(off, n int) []byte {
		for i := off; i < off+n; i++ {
			want[i] = byte(rnd.Uint32())
		}
		return want[off : off+n]
	}
	// One at a time.
	for i, n := range []int{64 << 10, 1 << 20, 300<<10 + 512} {
		off := i * (1 << 20)
		if errno, _ := cl.do(cmdWrite, 0, uint64(off), uint32(n), fill(off, n)); errno != 0 {
			t.Fatalf("write %d bytes: %v", n, errno)
		}
	}
	// Pipelined: small and large requests in one burst.
	var burst []byte
	handles := 0
	for i := range 8 {
		off := 4<<20 + i*(512<<10)
		burst = append(burst, req(cmdWrite, 0, uint64(100+i), uint64(off), 4096, fill(off, 4096)...)...)
		burst = append(burst, req(cmdWrite, 0, uint64(200+i), uint64(off+4096), 256<<10, fill(off+4096, 256<<10)...)...)
		handles += 2
	}
	cl.write(burst)
	for range handles {
		if errno, h := cl.readReply(); errno != 0 {
			t.Fatalf("pipelined write %d: %v", h, errno)
		}
	}
	if got := be.piped.Load(); got < 3 {
		t.Fatalf("%d writes came through pipes, want at least the 3 sent alone", got)
	}
	// A piped write that fails.
	be.fail.Store(true)
	if errno, _ := cl.do(cmdWrite, 0, 7<<20, 128<<10, make([]byte, 128<<10)); errno != EIO {
		t.Fatalf("failing piped write: %v, want EIO", errno)
	}
	be.fail.Store(false)
	errno, got := cl.do(cmdRead, 0, 0, 7<<20, nil)
	if errno != 0 || !bytes.Equal(got, want[:7<<20]) {
		t.Fatalf("read back: %v, data equal %v", errno, bytes.Equal(got, want[:7<<20]))
	}
}

// TestWritesThroughTooFewPipes gives each connection pipes of one page
// slot, so that a 1 MiB write over TCP needs more pipes than the
// connection has. The reader must not wait for pipes it holds itself: the
// rest of such a write goes into memory, and every byte reads back.
func TestWritesThroughTooFewPipes(t *testing.T) {
	saved := pipeSize
	pipeSize = 4096
	// Restored after the server's own cleanup has stopped it.
	t.Cleanup(func() { pipeSize = saved })
	be := &pipeBackend{memBackend: newMemBackend(4 << 20)}
	prov := newTestProvider()
	prov.add(Export{Name: "r0", Backend: be})
	ts := startServer(t, prov, nil)
	cl := connect(t, ts.addr, "r0")

	want := make([]byte, 4<<20)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range want {
		want[i] = byte(rnd.Uint32())
	}
	const n = 1 << 20
	for off := 0; off < len(want); off += n {
		if errno, _ := cl.do(cmdWrite, 0, uint64(off), n, want[off:off+n]); errno != 0 {
			t.Fatalf("write at %d: %v", off, errno)
		}
	}
	errno, got := cl.do(cmdRead, 0, 0, uint32(len(want)), nil)
	if errno != 0 || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v, data equal %v", errno, bytes.Equal(got, want))
	}
	t.Logf("%d of 4 writes came through pipes alone", be.piped.Load())
}
