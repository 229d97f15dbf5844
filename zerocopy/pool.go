package zerocopy

import "sync"

// Pool keeps a fixed set of pipes for reuse. A pipe taken for a block is
// put back when the block has been moved; one that may still hold bytes
// is replaced by a new pipe. It is safe for concurrent use.
type Pool struct {
	idle chan *Pipe
	// size is the size asked for each pipe, replacements too.
	size int

	// mu guards closed, live and shrunk, and orders Put against Close: a
	// pipe put back after Close is closed, not left in idle for nobody.
	mu     sync.Mutex
	closed bool
	// live counts the pipes, idle or taken; it drops when a pipe cannot
	// be replaced.
	live int
	// shrunk is closed, and replaced, whenever live drops or the pool is
	// closed, so that a waiting TakeBelow looks again whether a pipe can
	// still come.
	shrunk chan struct{}
}

// NewPool creates a pool of n pipes of size bytes each (DefaultPipeSize
// unless a test wants a block to span several). It returns nil if the
// kernel refuses them.
func NewPool(n, size int) *Pool {
	pl := &Pool{idle: make(chan *Pipe, n), shrunk: make(chan struct{}), size: size}
	for range n {
		p, err := NewPipe(size)
		if err != nil {
			pl.Close()
			return nil
		}
		pl.idle <- p
		pl.live++
	}
	return pl
}

// Take waits for an idle pipe. It returns nil when done is closed first,
// or when the pool is closed or has no pipe left.
func (pl *Pool) Take(done <-chan struct{}) *Pipe { return pl.TakeBelow(done, 0) }

// TakeBelow is Take for a taker that already holds held of the pool's
// pipes and is the only one taking: the other holders give theirs back
// without waiting for it. It waits for an idle pipe only while the pool
// has more than held pipes; once held reaches that (the pool cannot
// replace a pipe, or the taker's block needs them all), it returns nil
// rather than wait for itself.
func (pl *Pool) TakeBelow(done <-chan struct{}, held int) *Pipe {
	for {
		select {
		case p := <-pl.idle:
			return p
		default:
		}
		pl.mu.Lock()
		if pl.closed || held >= pl.live {
			pl.mu.Unlock()
			return nil
		}
		shrunk := pl.shrunk
		pl.mu.Unlock()
		select {
		case p := <-pl.idle:
			return p
		case <-done:
			return nil
		case <-shrunk:
		}
	}
}

// TryTake returns an idle pipe, or nil at once if none is idle.
func (pl *Pool) TryTake() *Pipe {
	select {
	case p := <-pl.idle:
		return p
	default:
		return nil
	}
}

// ChainTaker returns the take function for one chain (Chain.FillFromConn
// or Chain.TeeTo): it waits for the chain's first pipe and takes each
// further one only if it is idle, returning nil (ErrNoPipe) otherwise.
// So a chain never waits for a pipe while it holds one. Chains that each
// held part of the pool and waited for more could wait for each other
// for ever.
func (pl *Pool) ChainTaker(done <-chan struct{}) func() *Pipe {
	first := true
	return func() *Pipe {
		if first {
			first = false
			return pl.Take(done)
		}
		return pl.TryTake()
	}
}

// LoneTaker returns the take function for one chain whose taker is the
// pool's only one (see TakeBelow): it counts the pipes the chain has
// taken, so that it never waits for a pipe the chain itself holds.
func (pl *Pool) LoneTaker(done <-chan struct{}) func() *Pipe {
	taken := 0
	return func() *Pipe {
		p := pl.TakeBelow(done, taken)
		if p != nil {
			taken++
		}
		return p
	}
}

// Put gives a pipe back; empty says it holds no bytes and can be reused.
func (pl *Pool) Put(p *Pipe, empty bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		p.Close()
		return
	}
	if !empty {
		p.Close()
		np, err := NewPipe(pl.size)
		if err != nil {
			pl.live--
			pl.shrinkLocked()
			return
		}
		p = np
	}
	pl.idle <- p // never blocks: idle has room for every live pipe
}

// shrinkLocked wakes the waiting takers to look again. Caller holds mu.
func (pl *Pool) shrinkLocked() {
	close(pl.shrunk)
	pl.shrunk = make(chan struct{})
}

// Close closes the idle pipes and ends the pool: pipes still taken are
// closed when they are put back, and waiting Takes return nil.
func (pl *Pool) Close() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if !pl.closed {
		pl.closed = true
		pl.shrinkLocked()
	}
	for {
		select {
		case p := <-pl.idle:
			p.Close()
		default:
			return
		}
	}
}
