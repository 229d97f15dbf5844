package zerocopy

import (
	"errors"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// closedFD reports whether fd is no longer open in this process.
func closedFD(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return errors.Is(err, unix.EBADF)
}

// TestPoolChainsDoNotWaitForEachOther has two writers tee a two-pipe
// chain each from a pool of two pipes, in the order that used to hang:
// each takes its first pipe, and only then do both ask for a second
// (and neither gives a pipe back before both have asked). With
// ChainTaker neither waits while it holds a pipe: both tees fail with
// ErrNoPipe (their writers then go through memory), and every pipe comes
// back.
func TestPoolChainsDoNotWaitForEachOther(t *testing.T) {
	pl := NewPool(2, DefaultPipeSize)
	if pl == nil {
		t.Fatal("no pool")
	}
	defer pl.Close()
	chains := make([]*Chain, 2)
	for i := range chains {
		a, b := tcpPair(t)
		go a.Write(make([]byte, 6000))
		take, _ := smallPipes(t)
		chains[i] = &Chain{}
		if err := chains[i].FillFromConn(raw(t, b), 6000, take); err != nil {
			t.Fatal(err)
		}
		if len(chains[i].parts) < 2 {
			t.Fatalf("chain %d has %d parts, want two or more", i, len(chains[i].parts))
		}
	}

	var firstTaken, secondAsked sync.WaitGroup
	firstTaken.Add(2)
	secondAsked.Add(2)
	errs := make([]error, 2)
	var done sync.WaitGroup
	for i := range chains {
		done.Add(1)
		go func() {
			defer done.Done()
			take := pl.ChainTaker(nil)
			first := true
			tee, err := chains[i].TeeTo(func() *Pipe {
				if !first {
					p := take()
					// Neither gives its pipes back before both asked.
					secondAsked.Done()
					secondAsked.Wait()
					return p
				}
				first = false
				p := take()
				// Both writers hold their first pipe before either asks
				// for a second.
				firstTaken.Done()
				firstTaken.Wait()
				return p
			})
			errs[i] = err
			tee.Release(pl.Put)
		}()
	}
	done.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrNoPipe) {
			t.Errorf("tee %d: %v, want ErrNoPipe", i, err)
		}
	}
	got := 0
	for pl.TryTake() != nil {
		got++
	}
	if got != 2 {
		t.Fatalf("%d pipes idle after both tees, want 2", got)
	}
}

// TestPoolPutAfterClose checks that a pipe put back after Close is
// closed rather than kept, and that Take on a closed pool returns nil
// instead of waiting.
func TestPoolPutAfterClose(t *testing.T) {
	pl := NewPool(2, DefaultPipeSize)
	if pl == nil {
		t.Fatal("no pool")
	}
	held := pl.Take(nil)
	if held == nil {
		t.Fatal("no pipe from a new pool")
	}
	other := pl.TryTake()
	if other == nil {
		t.Fatal("the second pipe was not idle")
	}
	waiting := make(chan *Pipe)
	go func() { waiting <- pl.Take(nil) }()
	pl.Close()
	if p := <-waiting; p != nil {
		t.Fatal("Take on a closed pool returned a pipe")
	}
	pl.Put(held, true)
	pl.Put(other, false)
	if !closedFD(held.r) || !closedFD(held.w) {
		t.Fatal("an empty pipe put back after Close is still open")
	}
	if !closedFD(other.r) || !closedFD(other.w) {
		t.Fatal("a dirty pipe put back after Close is still open")
	}
	if p := pl.TryTake(); p != nil {
		t.Fatal("a closed pool handed out a pipe")
	}
}

// TestPoolTakeBelow checks that a taker holding as many pipes as the pool
// has gets nil at once instead of waiting for itself, that one holding
// fewer waits for a pipe another holder gives back, and that Close wakes
// a waiting taker.
func TestPoolTakeBelow(t *testing.T) {
	pl := NewPool(2, DefaultPipeSize)
	if pl == nil {
		t.Fatal("no pool")
	}
	a, b := pl.TakeBelow(nil, 0), pl.TakeBelow(nil, 1)
	if a == nil || b == nil {
		t.Fatal("the pool's two pipes were not handed out")
	}
	if p := pl.TakeBelow(nil, 2); p != nil {
		t.Fatal("a taker holding the whole pool got a pipe")
	}
	// Holding one, the taker waits for the other holder's pipe.
	got := make(chan *Pipe)
	go func() { got <- pl.TakeBelow(nil, 1) }()
	pl.Put(b, true)
	if p := <-got; p != b {
		t.Fatal("the waiting taker did not get the pipe given back")
	}
	// Close wakes a waiting taker.
	go func() { got <- pl.TakeBelow(nil, 1) }()
	pl.Close()
	if p := <-got; p != nil {
		t.Fatal("a taker woken by Close got a pipe")
	}
	pl.Put(a, true)
	pl.Put(b, true)
}
