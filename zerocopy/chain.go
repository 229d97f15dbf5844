package zerocopy

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Chain is a data block held in a sequence of pipes, consumed from the
// front. A block that does not fit one pipe's page slots continues in
// the next one. It is not safe for concurrent use.
type Chain struct {
	parts []chainPart
	// broken is set when a pipe may hold bytes out of step with the
	// counts: the chain's pipes are then not to be reused.
	broken bool
}

type chainPart struct {
	p *Pipe
	n int // bytes still in p
}

// ErrNoPipe reports that no pipe was to be had for the rest of a block.
var ErrNoPipe = errors.New("zerocopy: no pipe free")

// Len returns the bytes held.
func (c *Chain) Len() int {
	n := 0
	for _, pt := range c.parts {
		n += pt.n
	}
	return n
}

// FillFromConn reads exactly n bytes from the socket behind src into the
// chain, taking a new pipe from take for the first bytes and whenever the
// last pipe is full. take returns nil when no pipe is to be had.
func (c *Chain) FillFromConn(src syscall.RawConn, n int, take func() *Pipe) error {
	full := true
	for n > 0 {
		if full {
			p := take()
			if p == nil {
				return ErrNoPipe
			}
			c.parts = append(c.parts, chainPart{p: p})
		}
		last := &c.parts[len(c.parts)-1]
		got, err := last.p.FillFromConn(src, n)
		last.n += got
		n -= got
		full = errors.Is(err, ErrPipeFull)
		if err != nil && !full {
			c.broken = true
			return err
		}
	}
	return nil
}

// DrainToFile moves the first n bytes held to f at offset off.
func (c *Chain) DrainToFile(f *os.File, off int64, n int) error {
	_, err := c.consume(n, func(p *Pipe, k int) (int, error) {
		err := p.DrainToFile(f, off, k)
		off += int64(k)
		return k, err
	})
	return err
}

// ErrUnaligned reports that a file opened with O_DIRECT refused the
// pages held (the kernel's EINVAL): a page does not start or end on a
// sector boundary. The chain is left holding the bytes not moved.
var ErrUnaligned = errors.New("zerocopy: pages not aligned for direct I/O")

// DrainToDirectFile moves the first n bytes held to f, opened with
// O_DIRECT, at offset off, and returns how many it moved. Direct I/O
// takes the pipes' pages as they are, so it works only when each page
// piece starts and ends on a sector boundary, as when the sender wrote
// whole pages one at a time into a Unix socket. Otherwise the error is
// ErrUnaligned, and the chain still holds the n-moved bytes not
// moved, for the caller to write another way; any other error breaks
// the chain.
func (c *Chain) DrainToDirectFile(f *os.File, off int64, n int) (int, error) {
	dst, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	return c.consume(n, func(p *Pipe, k int) (int, error) {
		m, err := p.drainToFile(dst, off, k)
		off += int64(m)
		if errors.Is(err, syscall.EINVAL) {
			// A refused splice takes nothing from the pipe, so the
			// pipe still holds what this call did not count as
			// written. (A filesystem that checks alignment extent by
			// extent may have written the first extents before it
			// refused; the caller then writes the same bytes again.)
			err = fmt.Errorf("%w: %w", ErrUnaligned, err)
		}
		return m, err
	})
}

// Discard drops the first n bytes held.
func (c *Chain) Discard(n int) error {
	_, err := c.consume(n, func(p *Pipe, k int) (int, error) { return k, p.Discard(k) })
	return err
}

// ReadFull reads the first len(b) bytes held into b.
func (c *Chain) ReadFull(b []byte) error {
	_, err := c.consume(len(b), func(p *Pipe, k int) (int, error) {
		err := p.ReadFull(b[:k])
		b = b[k:]
		return k, err
	})
	return err
}

// consume hands the first n bytes to move, pipe by pipe, and returns
// how many were moved. move returns how many of the k bytes it was given
// left the pipe. An error stops the walk and breaks the chain, except
// ErrUnaligned, after which the pipe holds exactly the bytes not moved.
func (c *Chain) consume(n int, move func(p *Pipe, k int) (int, error)) (int, error) {
	if c.broken {
		return 0, errors.New("zerocopy: chain broken by an earlier error")
	}
	moved := 0
	for i := range c.parts {
		if moved == n {
			break
		}
		pt := &c.parts[i]
		k := min(n-moved, pt.n)
		if k == 0 {
			continue
		}
		m, err := move(pt.p, k)
		if err != nil && !errors.Is(err, ErrUnaligned) {
			c.broken = true
			return moved, err
		}
		pt.n -= m
		moved += m
		if err != nil {
			return moved, err
		}
	}
	if moved < n {
		return moved, fmt.Errorf("zerocopy: %d bytes asked beyond the chain", n-moved)
	}
	return moved, nil
}

// TeeTo duplicates everything held into a new chain of pipes from take,
// without consuming it: both chains then share the same pages.
func (c *Chain) TeeTo(take func() *Pipe) (*Chain, error) {
	d := &Chain{}
	for _, pt := range c.parts {
		if pt.n == 0 {
			continue
		}
		p := take()
		if p == nil {
			return d, ErrNoPipe
		}
		d.parts = append(d.parts, chainPart{p: p})
		if err := pt.p.TeeTo(p, pt.n); err != nil {
			d.broken = true
			return d, err
		}
		d.parts[len(d.parts)-1].n = pt.n
	}
	return d, nil
}

// ToConn moves everything held to the socket behind dst; more says
// another packet follows at once.
func (c *Chain) ToConn(dst syscall.RawConn, more bool) error {
	last := len(c.parts) - 1
	for last >= 0 && c.parts[last].n == 0 {
		last--
	}
	for i := 0; i <= last; i++ {
		pt := &c.parts[i]
		if pt.n == 0 {
			continue
		}
		if err := pt.p.ToConn(dst, pt.n, more || i < last); err != nil {
			c.broken = true
			return err
		}
		pt.n = 0
	}
	return nil
}

// Release gives every pipe back through put, saying whether it is empty
// (and so fit for reuse), and leaves the chain empty.
func (c *Chain) Release(put func(p *Pipe, empty bool)) {
	for _, pt := range c.parts {
		put(pt.p, pt.n == 0 && !c.broken)
	}
	c.parts = nil
	c.broken = false
}
