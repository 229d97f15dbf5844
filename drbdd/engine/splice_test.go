package engine

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"testing"

	"drbdd/zerocopy"
)

// tcpPair returns both ends of a TCP connection on loopback.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
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
	return a, b
}

// TestRxBlockIntoMemory receives a block whose pipes run out part way
// (one small pipe, then none), moves it into memory, and checks that the
// block holds the bytes sent, in order, and that the pipe went back.
func TestRxBlockIntoMemory(t *testing.T) {
	const n = 256 << 10
	data := make([]byte, n+100) // the block, then the next packet's first bytes
	for i := range data {
		data[i] = byte(rand.N(256))
	}
	a, b := tcpPair(t)
	go a.Write(data)

	pool := zerocopy.NewPool(1, 4096) // one slot: a few KiB at most
	if pool == nil {
		t.Fatal("no pipes")
	}
	defer pool.Close()
	raw, ok := zerocopy.RawConn(b)
	if !ok {
		t.Fatal("no raw connection")
	}
	cr := &zerocopy.CappedReader{R: b}
	rd := bufio.NewReader(cr)
	head := make([]byte, 1000) // what the receive buffer held already
	cr.Next = len(head)
	if _, err := rd.Read(head); err != nil {
		t.Fatal(err)
	}
	blk := &rxBlock{mem: head, chain: &zerocopy.Chain{}, pool: pool, n: n}
	err := blk.chain.FillFromConn(raw, n-len(head), pool.ChainTaker(nil))
	if !errors.Is(err, zerocopy.ErrNoPipe) {
		t.Fatalf("fill: %v, want ErrNoPipe", err)
	}
	if blk.chain.Len() == 0 {
		t.Fatal("the pipe took nothing")
	}
	if err := blk.intoMemory(cr, rd); err != nil {
		t.Fatal(err)
	}
	if blk.held() || len(blk.mem) != n || !bytes.Equal(blk.mem, data[:n]) {
		t.Fatalf("block in memory: held %v, %d bytes, equal %v", blk.held(), len(blk.mem), bytes.Equal(blk.mem, data[:n]))
	}
	rest := make([]byte, 100)
	if _, err := rd.Read(rest); err != nil || !bytes.Equal(rest, data[n:]) {
		t.Fatalf("the bytes after the block: %v", err)
	}
	blk.release()
	if pool.TryTake() == nil {
		t.Fatal("the pipe did not go back to the pool")
	}
}
