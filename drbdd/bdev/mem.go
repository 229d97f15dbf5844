package bdev

import (
	"math/rand/v2"
	"sync"
)

// MemDevice is an in-memory Device for tests. It can fail I/O on demand and
// simulate a crash: every write that was not followed by a successful Sync
// may be lost (all of them, or a random subset when a seed is given, which
// is what a real disk with a volatile write cache can do).
type MemDevice struct {
	// mu guards every field below.
	mu      sync.Mutex
	durable []byte
	current []byte
	// pending lists writes since the last Sync, oldest first; Crash replays
	// a subset of them onto durable.
	pending []memWrite
	closed  bool

	// FailRead and FailWrite, when set, are consulted before each I/O; a
	// non-nil result is returned as the I/O error and the I/O is not done.
	FailRead  func(off, n int64) error
	FailWrite func(off, n int64) error
	// FailSync, when set, makes Sync return its error without persisting.
	FailSync func() error

	syncs int
}

type memWrite struct {
	off  int64
	data []byte
}

// NewMemDevice returns a zero-filled device of size bytes.
func NewMemDevice(size int64) *MemDevice {
	return &MemDevice{durable: make([]byte, size), current: make([]byte, size)}
}

// Size returns the device size.
func (m *MemDevice) Size() int64 { return int64(len(m.current)) }

// ReadAt reads the latest written data, durable or not.
func (m *MemDevice) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := checkRange(off, int64(len(p)), int64(len(m.current))); err != nil {
		return 0, err
	}
	if m.FailRead != nil {
		if err := m.FailRead(off, int64(len(p))); err != nil {
			return 0, err
		}
	}
	return copy(p, m.current[off:]), nil
}

// WriteAt records a write; it becomes durable at the next Sync.
func (m *MemDevice) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	if err := checkRange(off, int64(len(p)), int64(len(m.current))); err != nil {
		return 0, err
	}
	if m.FailWrite != nil {
		if err := m.FailWrite(off, int64(len(p))); err != nil {
			return 0, err
		}
	}
	copy(m.current[off:], p)
	m.pending = append(m.pending, memWrite{off: off, data: append([]byte(nil), p...)})
	return len(p), nil
}

// Sync makes all completed writes durable.
func (m *MemDevice) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if m.FailSync != nil {
		if err := m.FailSync(); err != nil {
			return err
		}
	}
	copy(m.durable, m.current)
	m.pending = m.pending[:0]
	m.syncs++
	return nil
}

// Syncs returns how many Sync calls succeeded.
func (m *MemDevice) Syncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.syncs
}

// Crash simulates a power failure. With seed 0 every unsynced write is lost.
// Otherwise a seeded random subset of the unsynced writes survives, and a
// surviving write may be torn at 512-byte granularity, which is what disks
// with volatile caches are allowed to do. The device stays usable and holds
// exactly the surviving bytes afterwards.
func (m *MemDevice) Crash(seed uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if seed != 0 {
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		for _, w := range m.pending {
			switch r.IntN(3) {
			case 0: // lost
			case 1: // survived whole
				copy(m.durable[w.off:], w.data)
			case 2: // torn: a random subset of its sectors survived
				for s := 0; s < len(w.data); s += SectorSize {
					if r.IntN(2) == 0 {
						e := min(s+SectorSize, len(w.data))
						copy(m.durable[w.off+int64(s):], w.data[s:e])
					}
				}
			}
		}
	}
	copy(m.current, m.durable)
	m.pending = m.pending[:0]
}

// Close marks the device closed; later I/O fails with ErrClosed.
func (m *MemDevice) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Bytes returns a copy of the current contents.
func (m *MemDevice) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.current...)
}
