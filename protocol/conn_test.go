package protocol

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// tcpPair returns the two ends of a loopback TCP connection. DRBD's
// handshake has both sides write before they read, which needs the kernel's
// socket buffers (net.Pipe would deadlock).
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback TCP: %v", err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type rwBuffer struct {
	bytes.Buffer
	writes int
}

func (b *rwBuffer) Write(p []byte) (int, error) {
	b.writes++
	return b.Buffer.Write(p)
}

func TestInitialPackets(t *testing.T) {
	var buf rwBuffer
	c := NewConn(&buf)
	c.SetVersion(101) // initial packets ignore the version
	if err := c.WriteInitial(PInitialMeta); err != nil {
		t.Fatal(err)
	}
	if got := buf.Bytes(); !bytes.Equal(got, mustHex(t, "83740267fff10000")) {
		t.Fatalf("initial packet %x", got)
	}
	cmd, err := NewConn(&buf).ReadInitial()
	if err != nil || cmd != PInitialMeta {
		t.Fatalf("ReadInitial = %s, %v", cmd, err)
	}
	if err := c.WriteInitial(PPing); !errors.Is(err, ErrUnexpectedPacket) {
		t.Fatalf("WriteInitial(P_PING): %v", err)
	}
	buf.Reset()
	NewConn(&buf).WritePacket(PPing)
	if _, err := NewConn(&buf).ReadInitial(); !errors.Is(err, ErrUnexpectedPacket) {
		t.Fatalf("ReadInitial of P_PING: %v", err)
	}
	buf.Reset()
	buf.Write(mustHex(t, "83740267fff2000100"))
	if _, err := NewConn(&buf).ReadInitial(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("initial packet with payload: %v", err)
	}
}

func TestWriteReadPacket(t *testing.T) {
	var buf rwBuffer
	w := NewConn(&buf)
	w.SetVersion(101)
	w.SetVolume(2)
	if err := w.WritePacket(PData, []byte("abc"), nil, []byte("defg")); err != nil {
		t.Fatal(err)
	}
	if buf.writes != 1 {
		t.Fatalf("%d writes for one packet", buf.writes)
	}
	r := NewConn(&buf)
	r.SetVersion(101)
	h, p, err := r.ReadPacket(0)
	if err != nil || h.Cmd != PData || h.Volume != 2 || h.Kind != HeaderH100 || string(p) != "abcdefg" {
		t.Fatalf("ReadPacket = %v %q %v", h, p, err)
	}
	if _, _, err := r.ReadPacket(0); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}

	// Large packets: one vectored write, read back intact.
	big := bytes.Repeat([]byte{0xab}, MaxBioSize)
	d := Data{DataHeader: DataHeader{Sector: 8}, Payload: big}
	if err := w.WritePacket(PData, d.DataHeader.MarshalAppend(nil), d.Payload); err != nil {
		t.Fatal(err)
	}
	h, p, err = r.ReadPacket(MaxPayload)
	if err != nil || int(h.Length) != DataHeaderSize+MaxBioSize {
		t.Fatalf("big packet: %v %v", h, err)
	}
	var got Data
	if err := got.Unmarshal(p); err != nil || got.Sector != 8 || !bytes.Equal(got.Payload, big) {
		t.Fatalf("big payload: %v", err)
	}
}

func TestReadPacketLimits(t *testing.T) {
	var buf rwBuffer
	w := NewConn(&buf)
	w.SetVersion(101)
	w.WritePacket(PState, make([]byte, 100))
	r := NewConn(&buf)
	r.SetVersion(101)
	if _, _, err := r.ReadPacket(99); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("limit: %v", err)
	}

	// Header kind must match the agreed version.
	buf.Reset()
	NewConn(&buf).WritePacket(PPing) // h80
	r = NewConn(&buf)
	r.SetVersion(101)
	if _, _, err := r.ReadPacket(0); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("h80 at 101: %v", err)
	}
	buf.Reset()
	w.WritePacket(PPing) // h100
	if _, _, err := NewConn(&buf).ReadPacket(0); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("h100 at 80: %v", err)
	}

	// Truncated payload.
	buf.Reset()
	buf.Write(AppendHeader(nil, 101, PData, 0, 100))
	buf.Write(make([]byte, 10))
	if _, _, err := r.ReadPacket(0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}

	// Below protocol 95 there is no header for more than 64 KiB.
	w94 := NewConn(&buf)
	w94.SetVersion(94)
	if err := w94.WritePacket(PData, make([]byte, 65536)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("64 KiB at 94: %v", err)
	}
}

func TestExchangeFeatures(t *testing.T) {
	a, b := tcpPair(t)
	ca, cb := NewConn(a), NewConn(b)
	type result struct {
		v   int
		f   FeatureFlags
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, f, err := cb.ExchangeFeatures(ConnectionFeatures{ProtocolMin: 86, ProtocolMax: 100, FeatureFlags: FeatureTrim | FeatureWZeroes})
		ch <- result{v, f, err}
	}()
	v, f, err := ca.ExchangeFeatures(LocalFeatures(SupportedFeatures))
	rb := <-ch
	if err != nil || rb.err != nil {
		t.Fatal(err, rb.err)
	}
	if v != 100 || rb.v != 100 || f != FeatureTrim|FeatureWZeroes || rb.f != f {
		t.Fatalf("agreed %d/%s and %d/%s", v, f, rb.v, rb.f)
	}
	if ca.Version() != 100 || cb.Version() != 100 {
		t.Fatal("versions not set")
	}
	// Both now frame with h100.
	go cb.WritePacket(PPing)
	if h, _, err := ca.ReadPacket(0); err != nil || h.Kind != HeaderH100 || h.Cmd != PPing {
		t.Fatalf("after handshake: %v %v", h, err)
	}
}

func TestExchangeFeaturesIncompatible(t *testing.T) {
	a, b := tcpPair(t)
	go NewConn(b).ExchangeFeatures(ConnectionFeatures{ProtocolMin: 80, ProtocolMax: 85})
	_, _, err := NewConn(a).ExchangeFeatures(LocalFeatures(0))
	if err == nil || err.Error() != "incompatible DRBD dialects: I support 86-101, peer supports 80-85" {
		t.Fatalf("err = %v", err)
	}
}

func TestExchangeFeaturesWrongPacket(t *testing.T) {
	var in rwBuffer
	NewConn(&in).WritePacket(PConnectionFeatures, make([]byte, 64))
	c := NewConn(struct {
		io.Reader
		io.Writer
	}{&in, io.Discard})
	if _, _, err := c.ExchangeFeatures(LocalFeatures(0)); !errors.Is(err, ErrShortPayload) {
		t.Fatalf("64-byte features: %v", err)
	}
	in.Reset()
	NewConn(&in).WritePacket(PPing)
	if _, _, err := c.ExchangeFeatures(LocalFeatures(0)); !errors.Is(err, ErrUnexpectedPacket) {
		t.Fatalf("P_PING instead of features: %v", err)
	}
}

func TestNegotiateVersion(t *testing.T) {
	tests := []struct {
		lmin, lmax, pmin, pmax int
		want                   int
		ok                     bool
	}{
		{86, 101, 86, 101, 101, true},
		{86, 101, 86, 96, 96, true},
		{86, 101, 100, 110, 101, true},
		{86, 101, 90, 0, 90, true}, // protocol_max 0 means "only protocol_min"
		{86, 101, 80, 85, 0, false},
		{86, 101, 102, 110, 0, false},
		{86, 101, 110, 0, 0, false},
	}
	for _, tt := range tests {
		v, err := NegotiateVersion(tt.lmin, tt.lmax, tt.pmin, tt.pmax)
		if (err == nil) != tt.ok || v != tt.want {
			t.Errorf("NegotiateVersion(%d,%d,%d,%d) = %d, %v", tt.lmin, tt.lmax, tt.pmin, tt.pmax, v, err)
		}
	}
	if NegotiateFeatures(FeatureTrim|FeatureWSame, FeatureWSame|FeatureWZeroes) != FeatureWSame {
		t.Error("NegotiateFeatures")
	}
	if s := (FeatureTrim | FeatureWZeroes | 0x20).String(); s != "TRIM WRITE_ZEROES 0x20" {
		t.Errorf("FeatureFlags.String() = %q", s)
	}
	if FeatureFlags(0).String() != "none" {
		t.Error("none")
	}
}

func runAuth(t *testing.T, algA, algB string, secretA, secretB []byte) (errA, errB error) {
	t.Helper()
	a, b := tcpPair(t)
	ca, cb := NewConn(a), NewConn(b)
	ca.SetVersion(101)
	cb.SetVersion(101)
	ch := make(chan error, 1)
	go func() { ch <- cb.Authenticate(algB, secretB, nil) }()
	errA = ca.Authenticate(algA, secretA, nil)
	return errA, <-ch
}

func TestAuthenticate(t *testing.T) {
	if a, b := runAuth(t, "sha256", "hmac(sha256)", []byte("change-me"), []byte("change-me")); a != nil || b != nil {
		t.Fatalf("same secret: %v / %v", a, b)
	}
	a, b := runAuth(t, "sha1", "sha1", []byte("secret"), []byte("wrong"))
	if !errors.Is(a, ErrAuthFailed) || !errors.Is(b, ErrAuthFailed) {
		t.Fatalf("wrong secret: %v / %v", a, b)
	}
	// Different algorithms give responses of different sizes.
	a, b = runAuth(t, "sha1", "sha256", []byte("s"), []byte("s"))
	if !errors.Is(a, ErrAuthFailed) || !errors.Is(b, ErrAuthFailed) {
		t.Fatalf("different algorithms: %v / %v", a, b)
	}
}

// A peer that reflects our own challenge back is refused before we answer.
func TestAuthenticateReflection(t *testing.T) {
	a, b := tcpPair(t)
	ca, cb := NewConn(a), NewConn(b)
	ca.SetVersion(101)
	cb.SetVersion(101)
	ch := make(chan error, 1)
	go func() {
		h, p, err := cb.ReadPacket(0)
		if err != nil || h.Cmd != PAuthChallenge {
			ch <- err
			return
		}
		ch <- cb.WritePacket(PAuthChallenge, p)
	}()
	err := ca.Authenticate("sha256", []byte("x"), nil)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("reflection: %v", err)
	}
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
}

// vectorRecorder is a writer with WriteVectors that records how each
// packet reached it.
type vectorRecorder struct {
	bytes.Buffer
	vectored, copied int
}

func (v *vectorRecorder) Write(p []byte) (int, error) {
	v.copied++
	return v.Buffer.Write(p)
}

func (v *vectorRecorder) WriteVectors(bufs [][]byte) error {
	v.vectored++
	for _, b := range bufs {
		v.Buffer.Write(b)
	}
	return nil
}

func (v *vectorRecorder) Read([]byte) (int, error) { return 0, io.EOF }

// TestWritePacketVectors: a packet larger than copyThreshold goes to a
// VectorWriter in one WriteVectors call, a small one in one Write, and
// both frame the same bytes as a plain writer gets.
func TestWritePacketVectors(t *testing.T) {
	head := bytes.Repeat([]byte{1}, 24)
	for _, size := range []int{4096, copyThreshold, 1 << 20} {
		body := bytes.Repeat([]byte{byte(size)}, size)
		var plain bytes.Buffer
		pc := NewConn(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(nil), &plain})
		pc.SetVersion(101)
		if err := pc.WritePacket(PData, head, body); err != nil {
			t.Fatal(err)
		}
		rec := &vectorRecorder{}
		vc := NewConn(rec)
		vc.SetVersion(101)
		if err := vc.WritePacket(PData, head, body); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rec.Bytes(), plain.Bytes()) {
			t.Fatalf("%d-byte body: vectored framing differs from the plain one", size)
		}
		big := HeaderSize100+len(head)+size > copyThreshold
		if big && (rec.vectored != 1 || rec.copied != 0) || !big && (rec.vectored != 0 || rec.copied != 1) {
			t.Errorf("%d-byte body: %d vectored and %d plain writes", size, rec.vectored, rec.copied)
		}
	}
}
