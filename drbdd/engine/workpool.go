package engine

import (
	"sync"
	"sync/atomic"
)

// workPool runs the receiver's parallel disk writes on long-lived
// goroutines. A fresh goroutine for each of the peer's writes grew its
// stack on the way into the disk write every time: in the lab's
// Secondary at queue depth 32, copying stacks took 4.5% of the daemon's
// CPU.
//
// One goroutine dispatches (the session's receiver) and the same
// goroutine closes the pool when it ends. A worker is started when no
// idle one is left, so the workers are at most the most functions that
// ever ran at once (which the session's max-buffers budget bounds), and
// a worker that finishes while maxIdleWorkers others wait ends, so that
// a burst does not leave thousands of goroutines behind for the rest of
// the session.
type workPool struct {
	work chan func()     // unbuffered: a send hands a function to a worker
	idle atomic.Int32    // workers waiting for work; taken only by dispatch
	wg   *sync.WaitGroup // counts the workers (the session's group)
}

func newWorkPool(wg *sync.WaitGroup) *workPool {
	return &workPool{work: make(chan func()), wg: wg}
}

// run hands fn to an idle worker, starting one if none is idle. Only the
// dispatching goroutine calls it, so an idle worker it sees stays idle
// until it hands it fn.
func (p *workPool) run(fn func()) {
	if p.idle.Load() > 0 {
		p.idle.Add(-1)
	} else {
		p.wg.Add(1)
		go p.worker()
	}
	p.work <- fn
}

// maxIdleWorkers bounds the workers a pool keeps waiting.
const maxIdleWorkers = 64

func (p *workPool) worker() {
	defer p.wg.Done()
	for fn := range p.work {
		fn()
		if p.idle.Load() >= maxIdleWorkers {
			return
		}
		p.idle.Add(1)
	}
}

// close lets the workers finish and end; called by the dispatching
// goroutine, after its last run.
func (p *workPool) close() { close(p.work) }
