package engine

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"drbdd/protocol"
)

// TestSockWriterCorkFlushesEveryFewPackets checks that a corked writer
// holds back fewer than flushPackets packets, sends them once that many
// are buffered (so that a burst of acks does not wait for the whole
// burst), and sends the rest at uncork.
func TestSockWriterCorkFlushesEveryFewPackets(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, _ := newSockWriter(a, bufio.NewReader(a), 101, 5*time.Second)
	rd := protocol.NewConn(struct {
		*bufio.Reader
		io.Writer
	}{bufio.NewReader(b), b})
	rd.SetVersion(101)

	// received counts the packets that reach the other end.
	received := make(chan protocol.Cmd, 2*flushPackets)
	go func() {
		for {
			h, err := rd.ReadHeader(protocol.MaxPayload)
			if err != nil {
				close(received)
				return
			}
			if _, err := rd.ReadBody(h); err != nil {
				close(received)
				return
			}
			received <- h.Cmd
		}
	}()
	ack := (&protocol.BlockAck{Sector: 8, BlockID: 1, BlkSize: 4096, SeqNum: 1}).MarshalAppend(nil)

	w.cork()
	for i := 0; i < flushPackets-1; i++ {
		if err := w.send(protocol.PWriteAck, ack); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case c := <-received:
		t.Fatalf("%s arrived while corked with %d packets buffered", c, flushPackets-1)
	case <-time.After(50 * time.Millisecond):
	}
	// One more packet fills the batch: all of them leave, still corked.
	if err := w.send(protocol.PWriteAck, ack); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < flushPackets; i++ {
		select {
		case c := <-received:
			if c != protocol.PWriteAck {
				t.Fatalf("packet %d is %s, want P_WRITE_ACK", i, c)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d packets arrived after the batch filled", i, flushPackets)
		}
	}
	// A packet after the batch waits for uncork.
	if err := w.send(protocol.PWriteAck, ack); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-received:
		t.Fatalf("%s arrived while corked with 1 packet buffered", c)
	case <-time.After(50 * time.Millisecond):
	}
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-received:
	case <-time.After(5 * time.Second):
		t.Fatal("the packet buffered while corked did not arrive at uncork")
	}
}

// TestSockWriterKeepalivePassesCork checks that a ping ack sent while the
// socket is corked leaves at once, together with the packets buffered
// before it and in their order: keepalives must not wait for the
// receiver's work.
func TestSockWriterKeepalivePassesCork(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, _ := newSockWriter(a, bufio.NewReader(a), 101, 5*time.Second)
	rd := protocol.NewConn(struct {
		*bufio.Reader
		io.Writer
	}{bufio.NewReader(b), b})
	rd.SetVersion(101)
	received := make(chan protocol.Cmd, 4)
	go func() {
		defer close(received)
		for {
			h, err := rd.ReadHeader(protocol.MaxPayload)
			if err != nil {
				return
			}
			if _, err := rd.ReadBody(h); err != nil {
				return
			}
			received <- h.Cmd
		}
	}()
	ack := (&protocol.BlockAck{Sector: 8, BlockID: 1, BlkSize: 4096, SeqNum: 1}).MarshalAppend(nil)

	w.cork()
	if err := w.send(protocol.PWriteAck, ack); err != nil {
		t.Fatal(err)
	}
	// net.Pipe's writes return once read: when sendPastCork returns, both
	// packets have reached the other end.
	if err := w.sendPastCork(protocol.PPingAck); err != nil {
		t.Fatal(err)
	}
	for _, want := range []protocol.Cmd{protocol.PWriteAck, protocol.PPingAck} {
		select {
		case c := <-received:
			if c != want {
				t.Fatalf("got %s, want %s", c, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not arrive while corked", want)
		}
	}
	if err := w.uncork(); err != nil {
		t.Fatal(err)
	}
}
