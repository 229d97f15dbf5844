package testenv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// blockSize is the unit of the test write loads.
const blockSize = 4096

var crcTable = crc64.MakeTable(crc64.ECMA)

// blockPattern returns the content the load writes to block with sequence
// number seq: a recognizable header (magic, block, seq), pseudo-random
// filler derived from both, and a CRC-64 of everything before it in the
// last 8 bytes. Any two (block, seq) pairs give different blocks, so a
// block read back names exactly which write put it there.
func blockPattern(block int64, seq uint64) []byte {
	b := make([]byte, blockSize)
	copy(b, "DRBDTEST")
	binary.BigEndian.PutUint64(b[8:], uint64(block))
	binary.BigEndian.PutUint64(b[16:], seq)
	x := uint64(block)*0x9e3779b97f4a7c15 ^ seq*0xbf58476d1ce4e5b9 ^ 0x94d049bb133111eb
	for i := 24; i < blockSize-8; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(b[i:], x)
	}
	binary.BigEndian.PutUint64(b[blockSize-8:], crc64.Checksum(b[:blockSize-8], crcTable))
	return b
}

// describeBlock says what a block read back holds, for failure messages.
func describeBlock(b []byte) string {
	switch {
	case bytes.Equal(b, make([]byte, len(b))):
		return "zeros"
	case len(b) == blockSize && string(b[:8]) == "DRBDTEST":
		ok := binary.BigEndian.Uint64(b[blockSize-8:]) == crc64.Checksum(b[:blockSize-8], crcTable)
		return fmt.Sprintf("pattern of block %d seq %d (checksum ok=%v)", binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(b[16:]), ok)
	}
	return fmt.Sprintf("unrecognized data %x...", b[:min(len(b), 32)])
}

// writeLoad runs qd goroutines issuing 4 KiB writes through one pipelined
// NBD connection and keeps a write log: for every block the sequence
// number of the latest write issued and of the latest write the server
// acknowledged. Each block belongs to one goroutine, which writes it
// serially, so the latest acknowledged write of a block is the one its
// content must show (unless a later, unacknowledged write replaced it).
type writeLoad struct {
	c    *NBDClient
	stop chan struct{}
	wg   sync.WaitGroup

	acks atomic.Int64
	seq  *atomic.Uint64

	// mu guards tried, acked and errs.
	mu    sync.Mutex
	tried map[int64]uint64
	acked map[int64]uint64
	errs  []error
}

// startWriteLoad starts the load. Goroutine i writes blocks[j] for every
// j = i mod qd, in order; with repeat it starts over when its share is
// done, otherwise it stops. A goroutine stops at its first error (which
// is recorded). seq numbers the writes across loads.
func startWriteLoad(c *NBDClient, blocks []int64, qd int, repeat bool, seq *atomic.Uint64) *writeLoad {
	l := &writeLoad{c: c, stop: make(chan struct{}), seq: seq, tried: map[int64]uint64{}, acked: map[int64]uint64{}}
	for w := range qd {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				for j := w; j < len(blocks); j += qd {
					select {
					case <-l.stop:
						return
					default:
					}
					b := blocks[j]
					s := l.seq.Add(1)
					l.mu.Lock()
					l.tried[b] = s
					l.mu.Unlock()
					if err := c.WriteAt(blockPattern(b, s), b*blockSize, s%7 == 0); err != nil {
						l.mu.Lock()
						l.errs = append(l.errs, fmt.Errorf("write of block %d seq %d: %w", b, s, err))
						l.mu.Unlock()
						return
					}
					l.mu.Lock()
					l.acked[b] = s
					l.mu.Unlock()
					l.acks.Add(1)
				}
				if !repeat {
					return
				}
			}
		}()
	}
	return l
}

// Stop ends the load and waits for its goroutines. Call it after the
// client's connection is closed or broken, or when writes still succeed.
func (l *writeLoad) Stop() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// Errors returns the errors the writers saw.
func (l *writeLoad) Errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// waitAcks waits until the load has n acknowledged writes in total.
func (l *writeLoad) waitAcks(t testing.TB, n int64, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, fmt.Sprintf("%d acknowledged writes (errors: %v)", n, l.Errors()), func() bool {
		if len(l.Errors()) > 0 {
			t.Fatalf("write load failed: %v", l.Errors())
		}
		return l.acks.Load() >= n
	})
}

// blockCheck is what verifyBlocks found.
type blockCheck struct {
	acked, unackedPresent, unackedAbsent int
}

// verifyBlocks reads every block the load tried from r (a backing file or
// an NBD export) and checks it: an acknowledged block must hold its
// latest acknowledged write, or a later write that was issued (and may
// not have been acknowledged); a block never acknowledged must hold its
// issued write or zeros. It returns counts, and fails the test with up
// to 10 offending blocks.
func (l *writeLoad) verifyBlocks(t testing.TB, what string, r io.ReaderAt) blockCheck {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var res blockCheck
	var bad []string
	buf := make([]byte, blockSize)
	zero := make([]byte, blockSize)
	for b, tried := range l.tried {
		if _, err := r.ReadAt(buf, b*blockSize); err != nil {
			t.Fatalf("%s: reading block %d: %v", what, b, err)
		}
		acked, wasAcked := l.acked[b]
		switch {
		case wasAcked && bytes.Equal(buf, blockPattern(b, acked)):
			res.acked++
		case wasAcked && tried != acked && bytes.Equal(buf, blockPattern(b, tried)):
			res.acked++
		case wasAcked:
			bad = append(bad, fmt.Sprintf("block %d (offset %d): acknowledged write seq %d lost; holds %s", b, b*blockSize, acked, describeBlock(buf)))
		case bytes.Equal(buf, blockPattern(b, tried)):
			res.unackedPresent++
		case bytes.Equal(buf, zero):
			res.unackedAbsent++
		default:
			bad = append(bad, fmt.Sprintf("block %d (offset %d): unacknowledged write seq %d, holds neither it nor zeros but %s", b, b*blockSize, tried, describeBlock(buf)))
		}
	}
	if len(bad) > 0 {
		n := len(bad)
		if len(bad) > 10 {
			bad = bad[:10]
		}
		t.Errorf("%s: %d of %d blocks wrong:\n%s", what, n, len(l.tried), strings.Join(bad, "\n"))
	}
	return res
}

// nbdReaderAt adapts an NBDClient to io.ReaderAt.
type nbdReaderAt struct{ c *NBDClient }

func (r nbdReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := r.c.ReadAt(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// openFile opens a backing file for reading; the caller closes it.
func openFile(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// dialNBD connects to uri, retrying for a while: the export may only
// accept clients once the node is Primary.
func dialNBD(t testing.TB, uri string) *NBDClient {
	t.Helper()
	var c *NBDClient
	var err error
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err = DialNBDURI(uri)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("NBD connect to %s: %v", uri, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
