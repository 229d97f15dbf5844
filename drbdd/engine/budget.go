package engine

import (
	"context"
	"sync"
)

// byteBudget bounds the bytes of peer writes held in memory at once
// (DRBD's max-buffers, counted in 4 KiB pages). A request larger than the
// whole budget is admitted alone, so it cannot wait forever.
type byteBudget struct {
	// mu guards used and inFlight; freed is signalled on every release.
	mu       sync.Mutex
	freed    *sync.Cond
	limit    int64
	used     int64
	inFlight int
}

func newByteBudget(limit int64) *byteBudget {
	b := &byteBudget{limit: limit}
	b.freed = sync.NewCond(&b.mu)
	return b
}

// acquire takes n bytes, waiting while they do not fit; it fails when ctx
// ends first.
func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	n = min(max(n, 1), b.limit)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		stop := context.AfterFunc(ctx, func() {
			b.mu.Lock()
			b.freed.Broadcast()
			b.mu.Unlock()
		})
		defer stop()
		for b.used+n > b.limit {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.freed.Wait()
		}
	}
	b.used += n
	b.inFlight++
	return nil
}

// release returns n bytes taken by acquire.
func (b *byteBudget) release(n int64) {
	n = min(max(n, 1), b.limit)
	b.mu.Lock()
	b.used -= n
	b.inFlight--
	b.mu.Unlock()
	b.freed.Broadcast()
}

// idle reports whether nothing is in flight.
func (b *byteBudget) idle() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inFlight == 0
}
