package engine

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"

	"drbdd/drbdd/bdev"
	"drbdd/protocol"
	"drbdd/zerocopy"
)

// spliceMin is the smallest data block moved with splice(2) instead of
// through a user-space buffer: below it, the extra system calls cost more
// than the copy they save.
const spliceMin = 64 << 10

// txPipes and rxPipes are the pipes a session keeps for resync replies
// it sends and for data blocks it receives. A block that finds no pipe
// free waits for one: the pipes bound the blocks between the socket and
// the disk, and more would only queue for the same file.
const (
	txPipes = 8
	rxPipes = 16
)

// pageCacheFile returns the file behind dev when data can be spliced into
// and out of its page cache, or nil.
func pageCacheFile(dev bdev.Device) *os.File {
	if fd, ok := dev.(*bdev.FileDevice); ok {
		return fd.PageCacheFile()
	}
	return nil
}

// spliceState holds what a session needs to splice data blocks between
// its data socket and the disk. The zero value (no raw socket) splices
// nothing.
type spliceState struct {
	// raw is the data socket's raw connection; nil when the socket cannot
	// be spliced (an in-memory connection in tests) or splicing is off.
	raw syscall.RawConn
	// rx and tx hold idle pipes for received blocks and for resync
	// replies; a pipe is taken for one block and put back when the block
	// is written or sent. Teardown closes them.
	rx, tx pipePool
}

// pipePool holds a fixed set of idle pipes.
type pipePool struct {
	idle chan *zerocopy.Pipe
	// lost counts pipes that could not be replaced; once one is lost,
	// takers no longer wait, since the pipes they wait for may be gone.
	lost *atomic.Int32
}

// newPipePool creates n pipes; it returns a pool of none if the kernel
// refuses them, so that nothing is spliced.
func newPipePool(n int) pipePool {
	pp := pipePool{idle: make(chan *zerocopy.Pipe, n), lost: new(atomic.Int32)}
	for range n {
		p, err := zerocopy.NewPipe(zerocopy.DefaultPipeSize)
		if err != nil {
			pp.close()
			return pipePool{}
		}
		pp.idle <- p
	}
	return pp
}

func newSpliceState(nc any) spliceState {
	if os.Getenv("DRBDD_NO_SPLICE") != "" {
		return spliceState{}
	}
	raw, ok := zerocopy.RawConn(nc)
	if !ok {
		return spliceState{}
	}
	z := spliceState{raw: raw, rx: newPipePool(rxPipes), tx: newPipePool(txPipes)}
	if z.rx.idle == nil || z.tx.idle == nil {
		z.close()
		return spliceState{}
	}
	return z
}

// close releases the idle pipes. The session's goroutines have stopped,
// so every pipe is idle.
func (z *spliceState) close() {
	z.rx.close()
	z.tx.close()
}

func (pp pipePool) close() {
	if pp.idle == nil {
		return
	}
	for {
		select {
		case p := <-pp.idle:
			p.Close()
		default:
			return
		}
	}
}

// take waits for an idle pipe; it returns nil when done is closed first,
// or at once when none is idle after a pipe was lost.
func (pp pipePool) take(done <-chan struct{}) *zerocopy.Pipe {
	if pp.lost.Load() > 0 {
		select {
		case p := <-pp.idle:
			return p
		default:
			return nil
		}
	}
	select {
	case p := <-pp.idle:
		return p
	case <-done:
		return nil
	}
}

// put returns a pipe to the pool. A pipe that may still hold bytes is
// replaced by a new one, so that the pool keeps its size.
func (pp pipePool) put(p *zerocopy.Pipe, empty bool) {
	if !empty {
		p.Close()
		var err error
		if p, err = zerocopy.NewPipe(zerocopy.DefaultPipeSize); err != nil {
			pp.lost.Add(1)
			return
		}
	}
	pp.idle <- p
}

// rxBlock is the data block of a packet from the peer, consumed in
// order, at most once, by write and skip, and then released. It is
// either wholly in memory, or held in a pipe (after its first bytes, in
// memory when the receive buffer had read them), to be spliced into the
// disk's page cache.
type rxBlock struct {
	mem    []byte         // the whole block, or the part before the pipe's
	pipe   *zerocopy.Pipe // the rest of the block, if held in a pipe
	pool   pipePool       // where pipe goes back
	n      int64          // the block's size
	pos    int64          // bytes consumed so far
	bad    bool           // the pipe's contents are no longer in step
	pooled bool           // mem came from getBuf
}

func memBlock(p []byte) *rxBlock { return &rxBlock{mem: p, n: int64(len(p))} }

// held reports whether part of the block is in a pipe.
func (b *rxBlock) held() bool { return b != nil && b.pipe != nil }

// write writes the next length bytes of the block to dev at off.
func (b *rxBlock) write(dev bdev.Device, off, length int64, fua bool) error {
	if b.pipe == nil {
		p := b.mem[b.pos : b.pos+length]
		b.pos += length
		return localWrite(dev, writeData, p, off, length, fua)
	}
	var err error
	if k := min(int64(len(b.mem))-b.pos, length); k > 0 {
		_, err = dev.WriteAt(b.mem[b.pos:b.pos+k], off)
		b.pos += k
		off += k
		length -= k
	}
	if length > 0 {
		f := pageCacheFile(dev)
		switch {
		case b.bad:
			err = errors.Join(err, fmt.Errorf("data block lost after an earlier error"))
		case err != nil || f == nil:
			if derr := b.pipe.Discard(int(length)); derr != nil {
				b.bad = true
			}
			if err == nil {
				err = fmt.Errorf("disk cannot be spliced into")
			}
		default:
			if err = b.pipe.DrainToFile(f, off, int(length)); err != nil {
				b.bad = true
			}
		}
		b.pos += length
	}
	if err == nil && fua {
		err = dev.Sync()
	}
	return err
}

// skip drops the next length bytes of the block.
func (b *rxBlock) skip(length int64) {
	if k := min(int64(len(b.mem))-b.pos, length); b.pipe != nil && k > 0 {
		b.pos += k
		length -= k
	}
	if b.pipe != nil && length > 0 && !b.bad {
		if b.pipe.Discard(int(length)) != nil {
			b.bad = true
		}
	}
	b.pos += length
}

// release gives back the pipe and buffer; the block is done with. It may
// be called more than once, and on nil.
func (b *rxBlock) release() {
	if b == nil {
		return
	}
	if b.pipe != nil {
		if b.pos < b.n {
			b.skip(b.n - b.pos)
		}
		b.pool.put(b.pipe, !b.bad)
		b.pipe = nil
	}
	if b.pooled {
		putBuf(b.mem)
		b.mem = nil
	}
}

// readBlock reads a data packet whose block is worth splicing into the
// page cache: its p_data sub-header, and the block into a pipe. ok is
// false, and nothing read, when the packet is to be read whole instead:
// the disk or socket cannot be spliced, the block is small or already in
// the receive buffer, or no pipe is free.
func (s *session) readBlock(h protocol.Header) (d protocol.DataHeader, b *rxBlock, ok bool, err error) {
	z := &s.splice
	if z.raw == nil || (h.Cmd != protocol.PData && h.Cmd != protocol.PRSDataReply) {
		return d, nil, false, nil
	}
	n := int(h.Length) - protocol.DataHeaderSize
	// A block already in the receive buffer gains nothing from splicing.
	if n < spliceMin || n > protocol.MaxBioSize || s.dataRd.Buffered() >= int(h.Length) {
		return d, nil, false, nil
	}
	ld := s.r.ldev.Load()
	if ld == nil || pageCacheFile(ld.dev) == nil {
		return d, nil, false, nil
	}
	p := z.rx.take(s.ctx.Done())
	if p == nil {
		return d, nil, false, s.ctx.Err()
	}
	var hb [protocol.DataHeaderSize]byte
	if k := s.dataRd.Buffered(); k < len(hb) {
		// The buffer's fill takes just the rest of the sub-header.
		s.rxLimit.next = len(hb) - k
	}
	if _, err := io.ReadFull(s.dataRd, hb[:]); err != nil {
		z.rx.put(p, true)
		return d, nil, false, fmt.Errorf("reading %s payload: %w", h.Cmd, err)
	}
	var full protocol.Data
	if err := full.Unmarshal(hb[:]); err != nil {
		z.rx.put(p, true)
		return d, nil, false, protoErr("%s: %v", h.Cmd, err)
	}
	b = &rxBlock{pipe: p, pool: z.rx, n: int64(n)}
	// The bytes the receive buffer holds already stay in memory.
	if k := s.dataRd.Buffered(); k > 0 {
		b.mem, b.pooled = getBuf(k), true
		io.ReadFull(s.dataRd, b.mem)
	}
	rest := n - len(b.mem)
	got, err := p.FillFromConn(z.raw, rest)
	if errors.Is(err, zerocopy.ErrPipeFull) {
		// Too many fragments for the pipe: read the block into memory.
		mem := getBuf(n)
		k := copy(mem, b.mem)
		err = p.ReadFull(mem[k : k+got])
		if err == nil {
			_, err = io.ReadFull(s.dataRd, mem[k+got:])
		}
		b.release()
		b = &rxBlock{mem: mem, n: int64(n), pooled: true}
	}
	if err != nil {
		b.bad = true
		b.release()
		return d, nil, false, fmt.Errorf("receiving %s: %w", h.Cmd, err)
	}
	// Blocks come in runs: read only the next packet's head, so that a
	// block behind it can be spliced too.
	s.rxLimit.next = protocol.HeaderSize100 + protocol.DataHeaderSize
	return full.DataHeader, b, true, nil
}

// rxLimiter is the data socket as the receive buffer reads it. The buffer
// reads greedily; after a block read into a pipe, and before the
// sub-header of a block to splice, the receiver caps the buffer's next
// fill so that the following block stays in the socket. Only the
// receiver goroutine (and the handshake before it) reads through it.
type rxLimiter struct {
	nc net.Conn
	// next, when positive, caps the next read.
	next int
}

func (l *rxLimiter) Read(p []byte) (int, error) {
	if l.next > 0 && len(p) > l.next {
		p = p[:l.next]
	}
	l.next = 0
	return l.nc.Read(p)
}

// ackBatch bounds the resync acks held back while blocks are written in
// parallel.
const ackBatch = 16
