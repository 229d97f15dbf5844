package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// fakeConn is a net.Conn whose reads come from a fixed byte stream and
// whose writes are counted and dropped. Reads never block, so a server
// reading from it always reaches EOF.
type fakeConn struct {
	r       io.Reader
	written atomic.Int64
	closed  atomic.Bool
}

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fake" }
func (fakeAddr) String() string  { return "fake" }

func (c *fakeConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.written.Add(int64(len(p)))
	return len(p), nil
}

func (c *fakeConn) Close() error                     { c.closed.Store(true); return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return fakeAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return fakeAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// within runs f and fails the test if it does not return in time.
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("did not finish within %v", d)
	}
}

func req(typ, flags uint16, handle, off uint64, length uint32, payload ...byte) []byte {
	h := requestHeader{Flags: flags, Type: typ, Handle: handle, Offset: off, Length: length}
	return append(h.appendTo(nil), payload...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// requestSeeds are transmission streams: valid, invalid and truncated.
func requestSeeds() [][]byte {
	return [][]byte{
		req(cmdRead, 0, 1, 0, 4096),
		req(cmdWrite, cmdFlagFUA, 2, 512, 8, 1, 2, 3, 4, 5, 6, 7, 8),
		req(cmdFlush, 0, 3, 0, 0),
		req(cmdTrim, cmdFlagFUA, 4, 4096, 4096),
		req(cmdWriteZeroes, cmdFlagNoHole, 5, 0, 65536),
		req(cmdDisc, 0, 6, 0, 0),
		req(cmdRead, 0, 7, 1<<20, 512),             // out of range
		req(cmdWrite, 0, 8, 1<<20-1, 2, 9, 9),      // past the end
		req(42, 0, 9, 0, 0),                        // unknown command
		req(cmdRead, 0xffff, 10, 0, 512),           // unknown flags
		req(cmdWrite, 0, 11, 0, MaxWritePayload+1), // dropped
		req(cmdRead, 0, 12, 0, 0xffffffff),
		req(cmdRead, 0, 13, 0, 100)[:20], // truncated header
		bytes.Repeat([]byte{0x25, 0x60, 0x95, 0x13}, 7),
		cat(req(cmdWrite, 0, 1, 0, 4, 'd', 'a', 't', 'a'), req(cmdRead, 0, 2, 0, 4), req(cmdFlush, 0, 3, 0, 0), req(cmdDisc, 0, 4, 0, 0)),
	}
}

func opt(o uint32, data ...byte) []byte { return optBytes(o, data) }

func flags(f uint32) []byte { return binary.BigEndian.AppendUint32(nil, f) }

// handshakeSeeds are client streams after the server's greeting.
func handshakeSeeds() [][]byte {
	fixed := flags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	return [][]byte{
		cat(fixed, opt(optGo, infoData("r0", infoName, infoBlockSize)...), req(cmdRead, 0, 1, 0, 512), req(cmdDisc, 0, 2, 0, 0)),
		cat(fixed, opt(optInfo, infoData("")...), opt(optList), opt(optAbort)),
		cat(flags(0), opt(optExportName, 'r', '0'), req(cmdWrite, 0, 1, 0, 3, 1, 2, 3)),
		cat(fixed, opt(99, 1, 2, 3), opt(optStructuredReply), opt(optStartTLS), opt(optGo, infoData("r0")...)),
		cat(fixed, opt(optGo, infoData("nope")...), opt(optGo, 0, 0, 0, 9)),
		cat(flags(0xff)),
		cat(fixed, binary.BigEndian.AppendUint64(nil, magicIHaveOpt), flags(optGo), flags(maxOptionLength+1)),
		cat(fixed, []byte("garbage garbage garbage")),
		cat(fixed, opt(optList, 1), opt(optExportName)),
	}
}

// fuzzExport is a small export with every feature on.
func fuzzExport() *Export {
	return &Export{Name: "r0", Backend: newMemBackend(64 << 10), CanTrim: true, CanZeroes: true}
}

func FuzzRequestHeader(f *testing.F) {
	for _, s := range requestSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) >= requestHeaderSize {
			h, err := parseRequestHeader(data[:requestHeaderSize])
			if err == nil {
				if got := h.appendTo(nil); !bytes.Equal(got, data[:requestHeaderSize]) {
					t.Fatalf("round trip: %x became %x", data[:requestHeaderSize], got)
				}
				const size = 64 << 10
				tflags := fuzzExport().TransmissionFlags()
				if errno := checkRequest(h, size, tflags); errno == 0 && h.Type != cmdFlush {
					if h.Offset+uint64(h.Length) > size || h.Offset+uint64(h.Length) < h.Offset {
						t.Fatalf("accepted out-of-range request %+v", h)
					}
					if (h.Type == cmdRead || h.Type == cmdWrite) && h.Length > MaxBlockSize {
						t.Fatalf("accepted oversized request %+v", h)
					}
				}
			}
		}
		// The whole input as a transmission stream: the server must end
		// (at EOF at the latest) without panicking or hanging.
		c := &fakeConn{r: bytes.NewReader(data)}
		released := 0
		e := fuzzExport()
		e.Release = func() { released++ }
		within(t, 10*time.Second, func() {
			_ = ServeTransmission(context.Background(), c, e, TransmissionOptions{MaxInFlight: 4})
		})
		if released != 1 {
			t.Fatalf("released %d times", released)
		}
	})
}

func FuzzHandshakeOptions(f *testing.F) {
	for _, s := range handshakeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		prov := newTestProvider()
		e := fuzzExport()
		prov.add(*e)
		prov.refuse["bad"] = fmt.Errorf("bad: refused")
		srv := &Server{Provider: prov, MaxInFlight: 4}
		c := &fakeConn{r: bytes.NewReader(data)}
		within(t, 10*time.Second, func() {
			_ = srv.ServeConn(context.Background(), c)
		})
		if o, r := prov.opens.Load(), prov.releases.Load(); o != r {
			t.Fatalf("opened %d exports, released %d", o, r)
		}
		if c.written.Load() < 18 {
			t.Fatalf("greeting not sent")
		}
		if !c.closed.Load() {
			t.Fatalf("connection not closed")
		}
	})
}

// TestWriteFuzzSeeds regenerates the checked-in seed corpora under
// testdata/fuzz when NBD_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("NBD_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set NBD_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz")
	}
	for name, seeds := range map[string][][]byte{
		"FuzzRequestHeader":    requestSeeds(),
		"FuzzHandshakeOptions": handshakeSeeds(),
	} {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
