package engine

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"drbdd/protocol"
)

// ackLog records the barrier acks sent.
type ackLog struct {
	mu   sync.Mutex
	acks []uint32
}

func (l *ackLog) send(a protocol.BarrierAck) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acks = append(l.acks, a.Barrier)
	return nil
}

func (l *ackLog) sent() []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acks)
}

func noFlush() error { return nil }

// TestRecvEpochsAckWaitsForEarlierFlush finishes epoch 2 while epoch 1's
// flush (the Primary's client flushed in it) is still running. Epoch 2's
// ack must not leave before that flush is done: the Primary would take it
// as the ack of epoch 1 as well, and answer the client's flush.
func TestRecvEpochsAckWaitsForEarlierFlush(t *testing.T) {
	var q recvEpochs
	var log ackLog
	e1 := q.write()
	q.flushRequested()
	q.barrier(1)
	e2 := q.write()
	q.barrier(2)

	flushing, release := make(chan struct{}), make(chan struct{})
	first := make(chan struct{})
	go func() {
		defer close(first)
		q.done(e1, false, func() error {
			close(flushing)
			<-release
			return nil
		}, log.send)
	}()
	<-flushing
	flushed := false
	q.done(e2, false, func() error { flushed = true; return nil }, log.send)
	if got := log.sent(); len(got) != 0 {
		t.Fatalf("acks %v sent while epoch 1's flush runs, want none", got)
	}
	close(release)
	<-first
	if got := log.sent(); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("acks %v, want [1 2]", got)
	}
	if flushed {
		t.Fatal("the second caller flushed: the goroutine at work should have done all")
	}
}

// TestRecvEpochsOrder checks that an epoch is acknowledged only when it
// is closed and all its writes are done, and that a later finished epoch
// waits for an earlier unfinished one.
func TestRecvEpochsOrder(t *testing.T) {
	var q recvEpochs
	var log ackLog
	a := q.write()
	b := q.write()
	q.barrier(7)
	c := q.write()
	q.barrier(8)
	q.done(c, false, noFlush, log.send)
	q.done(a, false, noFlush, log.send)
	if got := log.sent(); len(got) != 0 {
		t.Fatalf("acks %v before epoch 7's last write, want none", got)
	}
	q.done(b, false, noFlush, log.send)
	if got := log.sent(); !slices.Equal(got, []uint32{7, 8}) {
		t.Fatalf("acks %v, want [7 8]", got)
	}
	// An open epoch is not acknowledged however many writes are done.
	d := q.write()
	q.done(d, false, noFlush, log.send)
	if got := log.sent(); len(got) != 2 {
		t.Fatalf("acks %v after a write in an open epoch, want still [7 8]", got)
	}
	// An epoch without writes is acknowledged when it closes.
	q.barrier(9)
	q.barrier(10)
	q.done(nil, false, noFlush, log.send)
	if got := log.sent(); !slices.Equal(got, []uint32{7, 8, 9, 10}) {
		t.Fatalf("acks %v, want [7 8 9 10]", got)
	}
}

// TestRecvEpochsFlushFailureStopsAcks checks that after a failed flush
// neither that epoch nor any later one is acknowledged.
func TestRecvEpochsFlushFailureStopsAcks(t *testing.T) {
	var q recvEpochs
	var log ackLog
	e1 := q.write()
	q.barrier(1)
	q.done(e1, true, func() error { return errors.New("disk gone") }, log.send)
	e2 := q.write()
	q.barrier(2)
	q.done(e2, true, noFlush, log.send)
	if got := log.sent(); len(got) != 0 {
		t.Fatalf("acks %v after a failed flush, want none", got)
	}
}
