package engine

import (
	"sync"

	"drbdd/protocol"
)

// recvEpoch counts the peer's writes between two of its barriers.
type recvEpoch struct {
	writes, done int
	barrier      uint32
	closed       bool
	// flush is set when the Primary's client flushed in this epoch: the
	// barrier ack must then follow a flush of our disk.
	flush bool
}

// recvEpochs is the receiving side's list of the peer's epochs, in
// arrival order, and the acknowledging of finished ones. It is safe for
// concurrent use.
//
// One goroutine at a time acknowledges: it takes the finished epochs off
// the list, flushes the disk when one of them needs it, and sends their
// barrier acks, in order. The Primary takes a barrier ack as the ack of
// every older epoch too, so a later epoch's ack must not leave while an
// earlier epoch's flush is still running. A goroutine that finishes an
// epoch meanwhile does not wait: it leaves the epoch to the one at work,
// which looks again before it stops.
type recvEpochs struct {
	// mu guards list, acking and again.
	mu   sync.Mutex
	list []*recvEpoch
	// acking is set while a goroutine acknowledges; again tells it that
	// more epochs may have finished since it last looked. acking stays
	// set after a failed flush or send: the session is over, and no
	// later epoch may be acknowledged past the one that failed.
	acking, again bool
}

// openLocked returns the open epoch, starting one if needed. Caller
// holds mu.
func (q *recvEpochs) openLocked() *recvEpoch {
	n := len(q.list)
	if n == 0 || q.list[n-1].closed {
		q.list = append(q.list, &recvEpoch{})
		n++
	}
	return q.list[n-1]
}

// write counts a write into the open epoch and returns the epoch, for
// done once the write is on disk.
func (q *recvEpochs) write() *recvEpoch {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.openLocked()
	e.writes++
	return e
}

// flushRequested marks the open epoch as needing a disk flush before its
// barrier ack.
func (q *recvEpochs) flushRequested() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.openLocked().flush = true
}

// barrier closes the open epoch with the peer's barrier number nr (an
// epoch without writes, possible after a reconnect, is closed too).
func (q *recvEpochs) barrier(nr uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.openLocked()
	e.closed, e.barrier = true, nr
}

// done records that a write of e is on disk (e nil: nothing finished,
// an epoch may have closed) and acknowledges every finished epoch in
// order, unless another goroutine is at it. Finished epochs need flush
// first when alwaysFlush is set (disk-flushes) or one of them asked for
// it; send sends one barrier ack. After an error from either, nothing
// more is acknowledged.
func (q *recvEpochs) done(e *recvEpoch, alwaysFlush bool, flush func() error, send func(protocol.BarrierAck) error) {
	q.mu.Lock()
	if e != nil {
		e.done++
	}
	q.again = true
	if q.acking {
		q.mu.Unlock()
		return
	}
	q.acking = true
	for q.again {
		q.again = false
		var acks []protocol.BarrierAck
		needFlush := alwaysFlush
		for len(q.list) > 0 {
			f := q.list[0]
			if !f.closed || f.done < f.writes {
				break
			}
			acks = append(acks, protocol.BarrierAck{Barrier: f.barrier, SetSize: uint32(f.writes)})
			needFlush = needFlush || f.flush
			q.list = q.list[1:]
		}
		if len(acks) == 0 {
			continue
		}
		q.mu.Unlock()
		if needFlush {
			if flush() != nil {
				return
			}
		}
		for _, a := range acks {
			if send(a) != nil {
				return
			}
		}
		q.mu.Lock()
	}
	q.acking = false
	q.mu.Unlock()
}
