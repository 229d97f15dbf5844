package engine

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWorkPool runs a burst of functions that all wait for one another,
// so that the pool needs a worker for each, then a second round on the
// workers left: every function runs, at most maxIdleWorkers (plus a
// race's few) stay waiting after the burst, and close ends them all.
func TestWorkPool(t *testing.T) {
	var wg sync.WaitGroup
	p := newWorkPool(&wg)
	const burst = 200
	var ran atomic.Int32
	var done sync.WaitGroup
	release := make(chan struct{})
	for range burst {
		done.Add(1)
		p.run(func() {
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
	for p.idle.Load() < maxIdleWorkers && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := p.idle.Load(); n < maxIdleWorkers || n > maxIdleWorkers+int32(runtime.GOMAXPROCS(0)) {
		t.Fatalf("%d workers idle after the burst, want about %d", n, maxIdleWorkers)
	}
	for range 3 * burst {
		done.Add(1)
		p.run(func() { defer done.Done(); ran.Add(1) })
	}
	done.Wait()
	p.close()
	ended := make(chan struct{})
	go func() { wg.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("workers still running after close")
	}
	if ran.Load() != 4*burst {
		t.Fatalf("%d of %d functions ran", ran.Load(), 4*burst)
	}
}
