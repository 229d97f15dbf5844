package engine

import (
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
