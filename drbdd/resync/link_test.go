package resync

// link is a deterministic model of a resync connection for controller
// tests: requests queue at the peer, which serves bw sectors per tick, and
// the data arrives delay ticks after it was served.
type link struct {
	bw    int64
	queue int64
	pipe  []int64 // pipe[0] arrives at the next step
}

func newLink(bw int64, delay int) *link {
	return &link{bw: bw, pipe: make([]int64, delay+1)}
}

// send queues requests for sectors at the peer.
func (l *link) send(sectors int64) { l.queue += sectors }

// step advances one tick and returns the sectors that arrived.
func (l *link) step() int64 {
	served := min(l.queue, l.bw)
	l.queue -= served
	arrived := l.pipe[0]
	copy(l.pipe, l.pipe[1:])
	l.pipe[len(l.pipe)-1] = served
	return arrived
}

// inFlight returns the sectors requested and not yet arrived.
func (l *link) inFlight() int64 {
	n := l.queue
	for _, s := range l.pipe {
		n += s
	}
	return n
}
