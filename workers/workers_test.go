package workers

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPool runs a burst of functions that all wait for one another, so
// that the pool needs a worker for each, then a second round on the
// workers left: every function runs, at most maxIdle (plus a race's few)
// stay waiting after the burst, and Close ends them all.
func TestPool(t *testing.T) {
	const maxIdle = 64
	var wg sync.WaitGroup
	p := New(func(fn func()) { fn() }, 0, maxIdle, &wg)
	const burst = 200
	var ran atomic.Int32
	var done sync.WaitGroup
	release := make(chan struct{})
	for range burst {
		done.Add(1)
		p.Run(func() {
			defer done.Done()
			<-release // held until the whole burst is running
			ran.Add(1)
		})
	}
	close(release)
	done.Wait()
	if ran.Load() != burst {
		t.Fatalf("%d of %d functions ran", ran.Load(), burst)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Idle() < maxIdle && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := p.Idle(); n < maxIdle || n > maxIdle+runtime.GOMAXPROCS(0) {
		t.Fatalf("%d workers idle after the burst, want about %d", n, maxIdle)
	}
	for range 3 * burst {
		done.Add(1)
		p.Run(func() { defer done.Done(); ran.Add(1) })
	}
	done.Wait()
	p.Close()
	ended := make(chan struct{})
	go func() { wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("workers still running after Close")
	}
	if ran.Load() != 4*burst {
		t.Fatalf("%d of %d functions ran", ran.Load(), 4*burst)
	}
}

// TestPoolUnbounded keeps every worker with maxIdle 0: after a burst of
// 50 held functions, all 50 workers wait.
func TestPoolUnbounded(t *testing.T) {
	var wg sync.WaitGroup
	var done sync.WaitGroup
	release := make(chan struct{})
	p := New(func(int) { <-release; done.Done() }, 50, 0, &wg)
	for i := range 50 {
		done.Add(1)
		p.Run(i)
	}
	close(release)
	done.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for p.Idle() < 50 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := p.Idle(); n != 50 {
		t.Fatalf("%d workers idle, want all 50", n)
	}
	p.Close()
	wg.Wait()
}
