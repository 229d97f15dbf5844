package engine

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRangeLock checks that overlapping ranges wait for each other and
// disjoint ones do not, whatever the order of releases.
func TestRangeLock(t *testing.T) {
	var l rangeLock
	a := l.acquire(0, 4096)
	b := l.acquire(4096, 4096) // adjacent: no overlap
	c := l.acquire(1<<20, 8192)
	if !l.busy(4095, 2) || l.busy(8192, 4096) || !l.busy(1<<20+8191, 1) {
		t.Fatal("busy disagrees with the owned ranges")
	}
	got := make(chan *lockedRange)
	go func() { got <- l.acquire(2048, 4096) }() // overlaps a and b
	select {
	case <-got:
		t.Fatal("overlapping acquire did not wait")
	case <-time.After(20 * time.Millisecond):
	}
	l.release(a)
	select {
	case <-got:
		t.Fatal("acquire went on while b still overlaps")
	case <-time.After(20 * time.Millisecond):
	}
	l.release(c) // moves entries around in the slice
	l.release(b)
	var d *lockedRange
	select {
	case d = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("acquire still waits after both overlapping ranges were released")
	}
	if l.busy(0, 2048) || !l.busy(2048, 1) || len(l.active) != 1 {
		t.Fatalf("after releases: %d active ranges", len(l.active))
	}
	l.release(d)
	if len(l.active) != 0 {
		t.Fatalf("%d ranges left", len(l.active))
	}
}

// TestRangeLockGivesUpWithContext checks that a session's acquire waiting
// for an owned range returns when its context ends, owning nothing, and
// that the range can be had once released.
func TestRangeLockGivesUpWithContext(t *testing.T) {
	var l rangeLock
	held := l.acquire(0, 8192)
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		r   *lockedRange
		err error
	}
	got := make(chan result)
	go func() {
		r, err := l.acquireCtx(ctx, 4096, 4096)
		got <- result{r, err}
	}()
	cancel()
	res := <-got
	if res.r != nil || !errors.Is(res.err, context.Canceled) {
		t.Fatalf("acquireCtx after cancel: %v, %v; want nil, context.Canceled", res.r, res.err)
	}
	if len(l.active) != 1 {
		t.Fatalf("%d active ranges after the cancelled acquire, want 1", len(l.active))
	}
	l.release(held)
	r, err := l.acquireCtx(context.Background(), 4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	l.release(r)
}
