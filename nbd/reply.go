package nbd

import (
	"fmt"
	"net"
	"runtime"
	"sync"
)

// replyWriter sends the replies of one connection. Replies are queued and
// written by whichever sender finds no write in progress: it takes the
// whole queue and sends it with one vectored write, so that under load
// many replies share a system call, and no goroutine is dedicated to
// writing. A READ's data is only ever queued after it was read
// successfully, so a success header is never followed by anything but the
// full data.
type replyWriter struct {
	c net.Conn
	// done is called for each request once its reply has been written or
	// dropped; it releases what the request holds.
	done func(*request)
	// company, if not nil, reports whether other requests are in flight,
	// whose replies could share the next write.
	company func() bool

	mu       sync.Mutex // guards queue, flushing and err
	queue    []*request // replies waiting to be written
	flushing bool       // a sender is writing; it will also write the queue
	err      error      // first write error; after it nothing more is written

	// Owned by the sender that set flushing.
	batch []*request
	iov   [][]byte    // backing array reused for bufs
	bufs  net.Buffers // the vectored write in progress
}

// send queues the reply to r (header with errno, then r.buf if withData)
// and returns once the reply is written or handed to the sender that is
// writing. r belongs to the replyWriter from then on.
func (w *replyWriter) send(r *request, errno Errno, withData bool) {
	putReplyHeader(r.hdr[:], errno, r.h.Handle)
	r.withData = withData && len(r.buf) > 0
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		w.done(r)
		return
	}
	w.queue = append(w.queue, r)
	if w.flushing {
		w.mu.Unlock()
		return
	}
	w.flushing = true
	if w.company != nil && w.company() {
		// Let the goroutines that are ready to run go first: under load
		// they are mostly workers about to queue their own replies,
		// which then share this write instead of each paying for a
		// system call (and waking the client) on its own. A lone request
		// is answered at once.
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
	}
	for {
		w.batch, w.queue = w.queue, w.batch[:0]
		w.mu.Unlock()

		iov := w.iov[:0]
		for _, r := range w.batch {
			iov = append(iov, r.hdr[:])
			if r.withData {
				iov = append(iov, r.buf)
			}
		}
		w.bufs = iov
		_, err := w.bufs.WriteTo(w.c)
		clear(iov) // WriteTo advanced the entries; drop them
		w.iov, w.bufs = iov[:0], nil
		for _, r := range w.batch {
			w.done(r)
		}
		clear(w.batch)

		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("nbd: writing reply: %w", err)
			// Unblock the reader; the connection is useless now.
			w.c.Close()
		}
		if w.err != nil {
			dropped := w.queue
			w.queue = nil
			w.flushing = false
			w.mu.Unlock()
			for _, r := range dropped {
				w.done(r)
			}
			return
		}
		if len(w.queue) == 0 {
			w.flushing = false
			w.mu.Unlock()
			return
		}
	}
}

// error returns the first error writing a reply, if any.
func (w *replyWriter) error() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
