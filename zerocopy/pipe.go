// Package zerocopy moves data blocks between sockets and files with
// splice(2), through a kernel pipe, so that they are not copied into and
// out of user space.
//
// Splicing from a TCP socket into a pipe takes references to the pages
// the data arrived in; splicing from a file takes references to its page
// cache. Splicing out of the pipe into a socket passes those references
// on, and into a file copies once, into the page cache. A block received
// from the peer and written to a page-cache backed disk therefore costs
// one copy instead of two, and a block read from the page cache and sent
// to the peer costs none.
//
// A page spliced from a file is shared, not copied: if the file is
// written before the socket's receiver has taken the data, the receiver
// sees the newer bytes. Callers use it only where a later packet on the
// same stream carries the newer data anyway (resync replies, which are
// followed by the replicated write).
package zerocopy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultPipeSize is the capacity asked of a new pipe: one largest DRBD
// data block, and the default /proc/sys/fs/pipe-max-size. A pipe has one
// slot per page, and each slot takes one fragment of a socket buffer, up
// to a page or more, so what a pipe takes from a socket varies; a Chain
// continues a block in another pipe.
const DefaultPipeSize = 1 << 20

// Pipe is a kernel pipe used as a staging buffer between splice calls. It
// is not safe for concurrent use. Its owner keeps count of the bytes in
// it; after an error the pipe must be closed, since it may hold bytes of
// a half-moved block.
type Pipe struct {
	r, w int
	size int
}

// NewPipe creates a pipe of at least size bytes (rounded by the kernel;
// smaller if /proc/sys/fs/pipe-max-size does not allow it).
func NewPipe(size int) (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	p := &Pipe{r: fds[0], w: fds[1]}
	got, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	for err != nil && size > 64<<10 {
		// Beyond /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE:
		// a smaller pipe still works, in more rounds or with fallbacks.
		size /= 2
		got, err = unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, size)
	}
	if err != nil {
		got, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("pipe size: %w", err)
		}
	}
	p.size = got
	return p, nil
}

// Size returns the pipe's capacity in bytes.
func (p *Pipe) Size() int { return p.size }

// Close releases the pipe and any pages it still references.
func (p *Pipe) Close() error {
	err1 := unix.Close(p.r)
	err2 := unix.Close(p.w)
	return errors.Join(err1, err2)
}

// ErrShortSource reports that a file ended before the bytes asked for.
var ErrShortSource = errors.New("zerocopy: source ended early")

// ErrPipeFull reports that the pipe cannot take more of a block: its
// slots, one per page fragment, ran out before its bytes did.
var ErrPipeFull = errors.New("zerocopy: pipe full")

// FillFromConn splices exactly n bytes from the socket behind src into
// the pipe, after what it holds, waiting for them under the socket's read
// deadline. It returns how many bytes the pipe holds; with ErrPipeFull,
// fewer than n, and the rest is still in the socket.
func (p *Pipe) FillFromConn(src syscall.RawConn, n int) (int, error) {
	held := 0
	var serr error
	err := src.Read(func(fd uintptr) bool {
		retried := false
		for held < n {
			m, e := unix.Splice(int(fd), nil, p.w, nil, n-held, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				// Either the socket has nothing yet (wait for it) or the
				// pipe is full; only bytes waiting in the socket tell.
				// They may also have arrived just after the splice found
				// none, so the splice is tried once more before the pipe
				// counts as full.
				if avail, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && avail > 0 {
					if !retried {
						retried = true
						continue
					}
					serr = ErrPipeFull
					return true
				}
				return false
			case e != nil:
				serr = e
				return true
			case m == 0:
				serr = io.ErrUnexpectedEOF
				return true
			}
			held += int(m)
			retried = false
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil && err != ErrPipeFull {
		return held, fmt.Errorf("splice from socket: %w", err)
	}
	return held, err
}

// DrainToFile moves the first n bytes in the pipe to f at offset off.
func (p *Pipe) DrainToFile(f *os.File, off int64, n int) error {
	dst, err := f.SyscallConn()
	if err != nil {
		return err
	}
	_, err = p.drainToFile(dst, off, n)
	return err
}

// ReadFull reads the first len(b) bytes in the pipe into b.
func (p *Pipe) ReadFull(b []byte) error {
	for len(b) > 0 {
		m, err := unix.Read(p.r, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("pipe read: %w", err)
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[m:]
	}
	return nil
}

// FileToConn moves exactly n bytes of f at offset off to the socket
// behind dst, waiting for room under the socket's write deadline. more
// says that another packet follows at once (MSG_MORE for the last
// bytes); the bytes before the last are always sent with it.
func (p *Pipe) FileToConn(f *os.File, off int64, n int, dst syscall.RawConn, more bool) error {
	src, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for n > 0 {
		got, err := p.fillFromFile(src, off, min(n, p.size))
		if err != nil {
			return err
		}
		off += int64(got)
		n -= got
		if err := p.ToConn(dst, got, more || n > 0); err != nil {
			return err
		}
	}
	return nil
}

// fillFromFile splices up to n bytes of the file at off into the empty
// pipe; the pipe's capacity may take fewer.
func (p *Pipe) fillFromFile(src syscall.RawConn, off int64, n int) (int, error) {
	var got int
	var serr error
	err := src.Read(func(fd uintptr) bool {
		for {
			o := off
			m, e := unix.Splice(int(fd), &o, p.w, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if e == unix.EINTR {
				continue
			}
			got, serr = int(m), e
			return true
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("splice from file at %d: %w", off, err)
	}
	if got == 0 {
		return 0, ErrShortSource
	}
	return got, nil
}

// drainToFile moves the n bytes in the pipe to the file at off and
// returns how many it moved.
func (p *Pipe) drainToFile(dst syscall.RawConn, off int64, n int) (int, error) {
	moved := 0
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for moved < n {
			o := off + int64(moved)
			m, e := unix.Splice(p.r, nil, int(fd), &o, n-moved, unix.SPLICE_F_MOVE)
			if e == unix.EINTR {
				continue
			}
			if e != nil {
				serr = e
				return true
			}
			if m == 0 {
				serr = io.ErrShortWrite
				return true
			}
			moved += int(m)
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return moved, fmt.Errorf("splice to file at %d: %w", off+int64(moved), err)
	}
	return moved, nil
}

// ToConn moves the first n bytes in the pipe to the socket behind dst,
// waiting for room under the socket's write deadline; more says another
// packet, or more of this one, follows at once.
func (p *Pipe) ToConn(dst syscall.RawConn, n int, more bool) error {
	flags := unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK
	if more {
		flags |= unix.SPLICE_F_MORE
	}
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for n > 0 {
			m, e := unix.Splice(p.r, nil, int(fd), nil, n, flags)
			switch e {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // the send buffer is full: wait for room
			default:
				serr = e
				return true
			}
			if m == 0 {
				serr = io.ErrShortWrite
				return true
			}
			n -= int(m)
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("splice to socket: %w", err)
	}
	return nil
}

// Discard drops the first n bytes in the pipe.
func (p *Pipe) Discard(n int) error {
	scratch := make([]byte, min(n, 64<<10))
	for n > 0 {
		k := min(n, len(scratch))
		if err := p.ReadFull(scratch[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// RawConn returns the raw connection behind c, or false if c is not a
// socket that splice can use (a wrapped or in-memory connection).
func RawConn(c any) (syscall.RawConn, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	return rc, true
}

// FillFromFile splices up to n bytes of f at offset off into the empty
// pipe, as many as it takes, and returns how many it holds now (at least
// one). The bytes are page-cache pages shared with the file.
func (p *Pipe) FillFromFile(f *os.File, off int64, n int) (int, error) {
	src, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	held := 0
	for held < n {
		got, err := p.fillFromFile(src, off+int64(held), min(n-held, p.size-held))
		if err != nil {
			if held > 0 && errors.Is(err, unix.EAGAIN) {
				break // the pipe is full
			}
			return held, err
		}
		held += got
		if held >= p.size {
			break
		}
	}
	return held, nil
}

// SendMore writes b to the socket behind dst with MSG_MORE: the kernel
// holds it back until the bytes that follow, so that a packet's header
// and its spliced block leave together.
func SendMore(dst syscall.RawConn, b []byte) error {
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			m, e := unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_MORE|unix.MSG_NOSIGNAL)
			switch e {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			default:
				serr = e
				return true
			}
			b = b[m:]
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// ErrShortTee reports that a tee could not duplicate all the bytes asked
// for; the destination pipe then holds some of them.
var ErrShortTee = errors.New("zerocopy: tee duplicated fewer bytes than asked")

// TeeTo duplicates the first n bytes in the pipe into the empty pipe dst
// without consuming them: both pipes then share the same pages.
func (p *Pipe) TeeTo(dst *Pipe, n int) error {
	for {
		m, err := unix.Tee(p.r, dst.w, n, unix.SPLICE_F_NONBLOCK)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("tee: %w", err)
		}
		if int(m) != n {
			return ErrShortTee
		}
		return nil
	}
}

// CappedReader reads from R, each read at most Next bytes when Next is
// positive; a read resets Next. A bufio.Reader over it reads greedily
// from a socket; capping its next fill to the header of the next request
// leaves that request's data in the socket, to be spliced.
type CappedReader struct {
	R    io.Reader
	Next int
}

func (c *CappedReader) Read(p []byte) (int, error) {
	if c.Next > 0 && len(p) > c.Next {
		p = p[:c.Next]
	}
	c.Next = 0
	return c.R.Read(p)
}

// ReadChainThenPast fills p with what chain holds, then with the rest
// from c.R past br (see ReadFullPast): for a block whose pipes ran out
// while it was being received, when br's buffer holds none of it.
func (c *CappedReader) ReadChainThenPast(br *bufio.Reader, chain *Chain, p []byte) error {
	held := chain.Len()
	if err := chain.ReadFull(p[:held]); err != nil {
		return err
	}
	return c.ReadFullPast(br, p[held:])
}

// ReadFullPast reads len(p) bytes for br, a buffered reader over c: what
// br holds first, then the rest from c.R directly, past br's buffer, so
// that a large block is not copied through it. The caller caps br's next
// fill (Next) as its stream needs. A stream that ends after some of the
// bytes is an io.ErrUnexpectedEOF.
func (c *CappedReader) ReadFullPast(br *bufio.Reader, p []byte) error {
	k, _ := io.ReadFull(br, p[:min(br.Buffered(), len(p))])
	_, err := io.ReadFull(c.R, p[k:])
	if err == io.EOF && k > 0 {
		err = io.ErrUnexpectedEOF
	}
	return err
}
