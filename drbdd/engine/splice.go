package engine

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
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

// directFile returns the O_DIRECT file behind dev, or nil (see
// bdev.FileDevice.DirectFile).
func directFile(dev bdev.Device) *os.File {
	if fd, ok := dev.(*bdev.FileDevice); ok {
		return fd.DirectFile()
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
	// rx and tx hold the pipes for received blocks and for blocks sent;
	// a pipe is taken for one block and put back when the block is
	// written or sent. Teardown closes them.
	rx, tx *zerocopy.Pool
}

func newSpliceState(nc any) spliceState {
	if spliceOff {
		return spliceState{}
	}
	raw, ok := zerocopy.RawConn(nc)
	if !ok {
		return spliceState{}
	}
	z := spliceState{raw: raw, rx: zerocopy.NewPool(rxPipes, zerocopy.DefaultPipeSize), tx: zerocopy.NewPool(txPipes, zerocopy.DefaultPipeSize)}
	if z.rx == nil || z.tx == nil {
		z.close()
		return spliceState{}
	}
	return z
}

// spliceOff turns splicing off (DRBDD_NO_SPLICE set): every block is
// copied through memory, as a fallback if a kernel misbehaves.
var spliceOff = os.Getenv("DRBDD_NO_SPLICE") != ""

// close releases the pipes. The session's goroutines have stopped, so
// every pipe is back.
func (z *spliceState) close() {
	if z.rx != nil {
		z.rx.Close()
	}
	if z.tx != nil {
		z.tx.Close()
	}
}

// rxBlock is the data block of a packet from the peer, consumed in
// order, at most once, by write and skip, and then released. It is
// either wholly in memory, or held in pipes (after its first bytes, in
// memory when the receive buffer had read them), to be spliced into the
// disk's page cache.
type rxBlock struct {
	mem    []byte          // the whole block, or the part before the pipes'
	chain  *zerocopy.Chain // the rest of the block, if held in pipes
	pool   *zerocopy.Pool  // where the chain's pipes go back
	n      int64           // the block's size
	pos    int64           // bytes consumed so far
	pooled bool            // mem came from getBuf
}

func memBlock(p []byte) *rxBlock { return &rxBlock{mem: p, n: int64(len(p))} }

// ownCopy returns the block with its bytes in memory of its own: a block
// read into the receive buffer is copied out of it, since the buffer is
// reused for the next packet. A block held in pipes, and nil, are
// returned as they are.
func (b *rxBlock) ownCopy() *rxBlock {
	if b == nil || b.held() || b.pooled {
		return b
	}
	buf := getBuf(len(b.mem))
	copy(buf, b.mem)
	return &rxBlock{mem: buf, n: b.n, pooled: true}
}

// held reports whether part of the block is in pipes.
func (b *rxBlock) held() bool { return b != nil && b.chain != nil }

// write writes the next length bytes of the block to dev at off; with
// blocking, a block in memory goes in one blocking call where dev would
// use AIO (bdev.WriteBlocking).
func (b *rxBlock) write(dev bdev.Device, off, length int64, fua, blocking bool) error {
	if b.chain == nil {
		p := b.mem[b.pos : b.pos+length]
		b.pos += length
		if blocking && !fua {
			_, err := bdev.WriteBlocking(dev, p, off)
			return err
		}
		return localWrite(dev, writeData, p, off, length, fua)
	}
	var head []byte
	if k := min(int64(len(b.mem))-b.pos, length); k > 0 {
		head = b.mem[b.pos : b.pos+k]
	}
	b.pos += length
	err := writeHeadAndChain(dev, head, b.chain, off, length)
	if err == nil && fua {
		err = dev.Sync()
	}
	return err
}

// skip drops the next length bytes of the block.
func (b *rxBlock) skip(length int64) {
	if b.chain != nil {
		k := min(max(int64(len(b.mem))-b.pos, 0), length)
		b.pos += k
		length -= k
		if length > 0 {
			b.chain.Discard(int(length))
		}
	}
	b.pos += length
}

// intoMemory moves a block whose pipes ran out while it was received
// into a buffer of its own: what the pipes hold, then the rest from the
// socket, read through rd past its buffer (see
// zerocopy.CappedReader.ReadChainThenPast).
func (b *rxBlock) intoMemory(cr *zerocopy.CappedReader, rd *bufio.Reader) error {
	buf := getBuf(int(b.n))
	k := copy(buf, b.mem)
	if err := cr.ReadChainThenPast(rd, b.chain, buf[k:]); err != nil {
		putBuf(buf)
		return err
	}
	b.chain.Release(b.pool.Put)
	b.chain = nil
	if b.pooled {
		putBuf(b.mem)
	}
	b.mem, b.pooled = buf, true
	return nil
}

// release gives back the pipes and buffer; the block is done with. It
// may be called more than once, and on nil.
func (b *rxBlock) release() {
	if b == nil {
		return
	}
	if b.chain != nil {
		b.chain.Release(b.pool.Put)
		b.chain = nil
	}
	if b.pooled {
		putBuf(b.mem)
		b.mem = nil
		b.pooled = false
	}
}

// readBlock reads a large data packet the receiver should not take
// through its receive buffer: its p_data sub-header, and the block either
// into pipes, to be spliced into the disk's page cache, or (for a disk
// opened with O_DIRECT) straight from the socket into a buffer of its
// own, which the disk write then uses as it is. Through the receive
// buffer, such a block would be copied once more: out of the buffer,
// which is reused for the next packet, into an aligned one. ok is false,
// and nothing read, when the packet is to be read whole instead: the
// block is small or already in the receive buffer, or the disk takes it
// neither way.
func (s *session) readBlock(h protocol.Header) (d protocol.DataHeader, b *rxBlock, ok bool, err error) {
	if h.Cmd != protocol.PData && h.Cmd != protocol.PRSDataReply {
		return d, nil, false, nil
	}
	n := int(h.Length) - protocol.DataHeaderSize
	// A block already in the receive buffer gains nothing from either.
	if n < spliceMin || n > protocol.MaxBioSize || s.dataRd.Buffered() >= int(h.Length) {
		return d, nil, false, nil
	}
	ld := s.r.ldev.Load()
	if ld == nil {
		return d, nil, false, nil
	}
	z := &s.splice
	piped := z.raw != nil && pageCacheFile(ld.dev) != nil
	if !piped && !ld.direct() {
		return d, nil, false, nil
	}
	var hb [protocol.DataHeaderSize]byte
	if k := s.dataRd.Buffered(); k < len(hb) {
		// The buffer's fill takes just the rest of the sub-header.
		s.rxLimit.Next = len(hb) - k
	}
	if _, err := io.ReadFull(s.dataRd, hb[:]); err != nil {
		return d, nil, false, fmt.Errorf("reading %s payload: %w", h.Cmd, err)
	}
	var full protocol.Data
	if err := full.Unmarshal(hb[:]); err != nil {
		return d, nil, false, protoErr("%s: %v", h.Cmd, err)
	}
	if piped {
		b = &rxBlock{chain: &zerocopy.Chain{}, pool: z.rx, n: int64(n)}
		// The bytes the receive buffer holds already stay in memory. A
		// short capped read for the sub-header is followed by an
		// uncapped one, so the buffer may hold more than this block.
		if k := min(s.dataRd.Buffered(), n); k > 0 {
			b.mem, b.pooled = getBuf(k), true
			io.ReadFull(s.dataRd, b.mem)
		}
		// Only the receiver takes these pipes, and the writes that hold
		// the others give them back, so waiting for one is safe, unless
		// this block holds all the pool has (a block in small fragments,
		// in pipes smaller than asked for): then the rest goes into
		// memory.
		err = b.chain.FillFromConn(z.raw, n-len(b.mem), z.rx.LoneTaker(s.ctx.Done()))
		if errors.Is(err, zerocopy.ErrNoPipe) && s.ctx.Err() == nil {
			err = b.intoMemory(&s.rxLimit, s.dataRd)
		}
	} else {
		b = &rxBlock{mem: getBuf(n), n: int64(n), pooled: true}
		err = s.rxLimit.ReadFullPast(s.dataRd, b.mem)
	}
	if err != nil {
		b.release()
		return d, nil, false, fmt.Errorf("receiving %s: %w", h.Cmd, err)
	}
	// Blocks come in runs: read only the next packet's head, so that a
	// block behind it can be taken this way too.
	s.rxLimit.Next = protocol.HeaderSize100 + protocol.DataHeaderSize
	return full.DataHeader, b, true, nil
}

// ackBatch bounds the resync acks held back while blocks are written in
// parallel.
const ackBatch = 16
