package meta

import (
	"errors"
	"fmt"
	"math/rand/v2"
)

// errPowerLoss is what memIO returns once its simulated power failed.
var errPowerLoss = errors.New("simulated power loss")

// memIO is a sparse in-memory BlockIO that simulates crashes: writes are
// visible to reads at once but durable only after Sync. After failAfter
// further I/O operations the power fails: every later operation returns
// errPowerLoss. crashImage then builds what the disk holds after the
// crash: the durable state plus, for each unsynced write, nothing, all of
// it, or an arbitrary subset of its 512-byte sectors.
type memIO struct {
	size      int64
	cur       map[int64][]byte // sector -> content, what reads see
	durable   map[int64][]byte
	pending   []pendingWrite
	failAfter int // operations left before power loss; < 0 never
	dead      bool
	writes    int
	syncs     int
}

type pendingWrite struct {
	off  int64
	data []byte
}

func newMemIO(size int64) *memIO {
	return &memIO{size: size, cur: map[int64][]byte{}, durable: map[int64][]byte{}, failAfter: -1}
}

func (m *memIO) op() error {
	if m.dead {
		return errPowerLoss
	}
	if m.failAfter == 0 {
		m.dead = true
		return errPowerLoss
	}
	if m.failAfter > 0 {
		m.failAfter--
	}
	return nil
}

func (m *memIO) check(p []byte, off int64) error {
	if off < 0 || off%SectorSize != 0 || len(p)%SectorSize != 0 || off+int64(len(p)) > m.size {
		return fmt.Errorf("memIO: bad I/O [%d, +%d) on %d bytes", off, len(p), m.size)
	}
	return nil
}

func (m *memIO) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check(p, off); err != nil {
		return 0, err
	}
	if err := m.op(); err != nil {
		return 0, err
	}
	for i := 0; i < len(p); i += SectorSize {
		if s, ok := m.cur[(off+int64(i))/SectorSize]; ok {
			copy(p[i:], s)
		} else {
			clear(p[i : i+SectorSize])
		}
	}
	return len(p), nil
}

func (m *memIO) WriteAt(p []byte, off int64) (int, error) {
	if err := m.check(p, off); err != nil {
		return 0, err
	}
	if err := m.op(); err != nil {
		return 0, err
	}
	m.writes++
	putSectors(m.cur, p, off, nil)
	m.pending = append(m.pending, pendingWrite{off, append([]byte(nil), p...)})
	return len(p), nil
}

func (m *memIO) Sync() error {
	if err := m.op(); err != nil {
		return err
	}
	m.syncs++
	for _, w := range m.pending {
		putSectors(m.durable, w.data, w.off, nil)
	}
	m.pending = nil
	return nil
}

// putSectors stores p at off sector by sector; keep, when not nil, says
// which sectors to store.
func putSectors(dst map[int64][]byte, p []byte, off int64, keep func() bool) {
	for i := 0; i < len(p); i += SectorSize {
		if keep != nil && !keep() {
			continue
		}
		dst[(off+int64(i))/SectorSize] = append([]byte(nil), p[i:i+SectorSize]...)
	}
}

// crashImage returns a new memIO holding what survives a crash now.
func (m *memIO) crashImage(rng *rand.Rand) *memIO {
	out := newMemIO(m.size)
	for k, v := range m.durable {
		out.durable[k] = v
	}
	for _, w := range m.pending {
		switch rng.IntN(3) {
		case 0: // lost
		case 1: // complete
			putSectors(out.durable, w.data, w.off, nil)
		default: // torn at 512-byte granularity
			putSectors(out.durable, w.data, w.off, func() bool { return rng.IntN(2) == 0 })
		}
	}
	for k, v := range out.durable {
		out.cur[k] = v
	}
	return out
}
