// Package workers runs work that one goroutine hands out on long-lived
// goroutines, started as they are needed.
//
// A fresh goroutine per piece of work grows its stack again each time
// (the NBD server's requests, the replication receiver's disk writes),
// and a fixed number of workers either idles or bounds the work in
// flight. A Pool starts a worker only when none is idle, so it has at
// most as many as pieces of work ever ran at once, a bound the caller
// keeps by its own budget.
package workers

import (
	"sync"
	"sync/atomic"
)

// Pool hands values to workers that call handle on each. One goroutine
// dispatches with Run and, after its last Run, ends the pool with Close.
type Pool[T any] struct {
	work    chan T          // values for the workers; closed by Close
	handle  func(T)         // called by a worker for each value
	idle    atomic.Int32    // workers waiting for work; taken only by Run
	maxIdle int32           // workers kept waiting at most; 0: all
	wg      *sync.WaitGroup // counts the workers (the owner's group)
}

// New returns a pool whose workers call handle. queue is the work
// channel's capacity: 0 makes Run wait until a worker takes the value.
// A worker that finishes while maxIdle others wait ends (0 keeps every
// worker until Close). wg counts the workers, so that waiting on it
// after Close waits for them to end.
func New[T any](handle func(T), queue, maxIdle int, wg *sync.WaitGroup) *Pool[T] {
	return &Pool[T]{work: make(chan T, queue), handle: handle, maxIdle: int32(maxIdle), wg: wg}
}

// Run hands x to an idle worker, starting one if none is idle. Only the
// dispatching goroutine calls it, so an idle worker it sees stays idle
// until it hands it x.
func (p *Pool[T]) Run(x T) {
	if p.idle.Load() > 0 {
		p.idle.Add(-1)
	} else {
		p.wg.Add(1)
		go p.worker()
	}
	p.work <- x
}

func (p *Pool[T]) worker() {
	defer p.wg.Done()
	for x := range p.work {
		p.handle(x)
		if p.maxIdle > 0 && p.idle.Load() >= p.maxIdle {
			return
		}
		p.idle.Add(1)
	}
}

// Idle returns how many workers wait for work.
func (p *Pool[T]) Idle() int { return int(p.idle.Load()) }

// Close lets the workers finish what they were handed and end; called by
// the dispatching goroutine, after its last Run.
func (p *Pool[T]) Close() { close(p.work) }
