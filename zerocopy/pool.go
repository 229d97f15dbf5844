package zerocopy

import "sync/atomic"

// Pool keeps a fixed set of pipes for reuse. A pipe taken for a block is
// put back when the block has been moved; one that may still hold bytes
// is replaced by a new pipe. It is safe for concurrent use.
type Pool struct {
	idle chan *Pipe
	// live counts the pipes, idle or taken; it drops when a pipe cannot
	// be replaced.
	live atomic.Int32
}

// NewPool creates a pool of n pipes of DefaultPipeSize. It returns nil if
// the kernel refuses them.
func NewPool(n int) *Pool {
	pl := &Pool{idle: make(chan *Pipe, n)}
	for range n {
		p, err := NewPipe(DefaultPipeSize)
		if err != nil {
			pl.Close()
			return nil
		}
		pl.idle <- p
	}
	pl.live.Store(int32(n))
	return pl
}

// Take waits for an idle pipe. It returns nil when done is closed first,
// or at once when no pipe is left at all.
func (pl *Pool) Take(done <-chan struct{}) *Pipe {
	select {
	case p := <-pl.idle:
		return p
	default:
	}
	if pl.live.Load() <= 0 {
		return nil
	}
	select {
	case p := <-pl.idle:
		return p
	case <-done:
		return nil
	}
}

// Put gives a pipe back; empty says it holds no bytes and can be reused.
func (pl *Pool) Put(p *Pipe, empty bool) {
	if !empty {
		p.Close()
		np, err := NewPipe(DefaultPipeSize)
		if err != nil {
			pl.live.Add(-1)
			return
		}
		p = np
	}
	pl.idle <- p
}

// Close closes the idle pipes; call it once every pipe is back.
func (pl *Pool) Close() {
	for {
		select {
		case p := <-pl.idle:
			p.Close()
		default:
			return
		}
	}
}
