package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"drbdd/protocol"
)

// hostileTarget is the byte offset every hostile P_DATA aims at. No NBD
// client of the test writes there, so it must stay zero on alice's disk.
const hostileTarget = 32 << 20

// hostile is a fake "bob" talking to alice's replication port.
type hostile struct {
	t    *testing.T
	addr string
	// data and meta are the two sockets (meta may be nil).
	data, meta net.Conn
	dc, mc     *protocol.Conn
}

func dialHostile(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("hostile peer: dial %s: %v", addr, err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return nc
}

// connectPair opens the data and meta sockets with their initial packets.
func (h *hostile) connectPair() {
	h.t.Helper()
	h.data = dialHostile(h.t, h.addr)
	h.dc = protocol.NewConn(h.data)
	if err := h.dc.WriteInitial(protocol.PInitialData); err != nil {
		h.t.Fatal(err)
	}
	h.meta = dialHostile(h.t, h.addr)
	h.mc = protocol.NewConn(h.meta)
	if err := h.mc.WriteInitial(protocol.PInitialMeta); err != nil {
		h.t.Fatal(err)
	}
}

// features runs a valid P_CONNECTION_FEATURES exchange on the data socket.
func (h *hostile) features() {
	h.t.Helper()
	v, _, err := h.dc.ExchangeFeatures(protocol.LocalFeatures(protocol.FeatureTrim | protocol.FeatureWZeroes))
	if err != nil {
		h.t.Fatalf("hostile peer: feature exchange: %v", err)
	}
	h.mc.SetVersion(v)
}

// readChallenge reads alice's P_AUTH_CHALLENGE.
func (h *hostile) readChallenge() []byte {
	h.t.Helper()
	var ch protocol.AuthChallenge
	if err := h.dc.ReadPayload(protocol.PAuthChallenge, &ch); err != nil {
		h.t.Fatalf("hostile peer: reading alice's challenge: %v", err)
	}
	return ch.Challenge
}

// sendData sends a P_DATA of 4 KiB of 0xEE at hostileTarget on c.
func sendHostileData(c *protocol.Conn) error {
	hdr := protocol.DataHeader{Sector: hostileTarget / 512, BlockID: 0x4242, SeqNum: 1,
		DPFlags: protocol.DPSendWriteAck | protocol.DPMaySetInSync | protocol.DPFUA}
	return c.WritePacket(protocol.PData, hdr.MarshalAppend(nil), bytes.Repeat([]byte{0xee}, 4096))
}

// raw writes bytes on the data socket.
func (h *hostile) raw(b []byte) {
	h.t.Helper()
	if _, err := h.data.Write(b); err != nil {
		h.t.Fatalf("hostile peer: write: %v", err)
	}
}

// expectDropped waits until alice closes every socket of the hostile peer.
func (h *hostile) expectDropped(name string) {
	h.t.Helper()
	for _, nc := range []net.Conn{h.data, h.meta} {
		if nc == nil {
			continue
		}
		nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.Copy(io.Discard, nc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			h.t.Errorf("%s: alice did not drop the connection", name)
		}
		nc.Close()
	}
}

// h80 and h100 build raw headers.
func h80(cmd uint16, length uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, protocol.MagicH80)
	b = binary.BigEndian.AppendUint16(b, cmd)
	return binary.BigEndian.AppendUint16(b, length)
}

func h100(cmd uint16, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, protocol.MagicH100)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, cmd)
	b = binary.BigEndian.AppendUint32(b, length)
	return binary.BigEndian.AppendUint32(b, 0)
}

// logSize returns the current size of a node's log.
func logSize(n *Node) int64 {
	fi, err := os.Stat(n.LogPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince reports whether the log, from offset off on, contains s.
func logSince(n *Node, off int64, s string) bool {
	b, _ := os.ReadFile(n.LogPath)
	return int64(len(b)) >= off && strings.Contains(string(b[off:]), s)
}

// waitLogSince waits until the log, from offset off on, contains want.
func waitLogSince(t *testing.T, n *Node, off int64, want string, timeout time.Duration) {
	t.Helper()
	var tail string
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(n.LogPath)
		if int64(len(b)) >= off {
			tail = string(b[off:])
		}
		if strings.Contains(tail, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's log does not say %q; new lines:\n%s", n.Name, want, tail)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHostilePeer plays a hostile "bob" against a real alice that has a
// shared secret configured and serves an NBD client (issue 3). For every
// kind of bad input alice logs the reason, drops the connection, keeps
// serving, and never writes a byte an unauthenticated peer sent.
func TestHostilePeer(t *testing.T) {
	const secret = "the-real-secret"
	p := NewPair(t, PairOptions{Secret: secret, Net: map[string]string{"cram-hmac-alg": "sha256"}})
	p.B.Kill() // bob is played by the test
	a := p.A
	a.MustAdm("create-md", "r0")
	a.MustAdm("up", "r0")
	a.MustAdm("primary", "--force", "r0")
	a.WaitState("cstate", "r0", "WFConnection", 10*time.Second)
	aliceAddr := p.Res.Hosts[0].Address

	// A client keeps writing blocks 0..255 throughout.
	c := dialNBD(t, p.URI[a])
	defer c.Close()
	blocks := make([]int64, 256)
	for i := range blocks {
		blocks[i] = int64(i)
	}
	var seq atomic.Uint64
	load := startWriteLoad(c, blocks, 4, true, &seq)
	defer load.Stop()
	load.waitAcks(t, 100, 20*time.Second)

	checkServing := func(name string) {
		t.Helper()
		if !a.Running() {
			t.Fatalf("%s: alice's daemon died", name)
		}
		if errs := load.Errors(); len(errs) > 0 {
			t.Fatalf("%s: the NBD client saw errors: %v", name, errs)
		}
		// A write and a read through a second connection.
		c2 := dialNBD(t, p.URI[a])
		defer c2.Close()
		want := blockPattern(1000, seq.Add(1))
		if err := c2.WriteAt(want, 1000*blockSize, false); err != nil {
			t.Fatalf("%s: write through NBD: %v", name, err)
		}
		got := make([]byte, blockSize)
		if err := c2.ReadAt(got, 1000*blockSize); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: read back through NBD: err=%v, %s", name, err, describeBlock(got))
		}
		before := load.acks.Load()
		load.waitAcks(t, before+20, 20*time.Second)
		if role := strings.TrimSpace(a.MustAdm("role", "r0")); role != "Primary/Unknown" {
			t.Fatalf("%s: alice's role is %s", name, role)
		}
	}

	cases := []struct {
		name string
		want string
		run  func(h *hostile)
	}{
		{name: "garbage", want: "bad header magic 0x74686973", run: func(h *hostile) {
			h.data = dialHostile(t, h.addr)
			h.raw(bytes.Repeat([]byte("this is not DRBD at all, only garbage bytes\n"), 100))
		}},
		{name: "truncated initial header", want: "receiving initial packet: unexpected EOF", run: func(h *hostile) {
			h.data = dialHostile(t, h.addr)
			h.raw(h80(uint16(protocol.PInitialData), 0)[:5])
			h.data.(*net.TCPConn).CloseWrite()
		}},
		{name: "truncated features packet", want: "reading P_CONNECTION_FEATURES payload: unexpected EOF", run: func(h *hostile) {
			h.connectPair()
			f := protocol.LocalFeatures(0)
			pkt := append(h80(uint16(protocol.PConnectionFeatures), protocol.ConnectionFeaturesSize), f.MarshalAppend(nil)...)
			h.raw(pkt[:30])
			h.data.(*net.TCPConn).CloseWrite()
		}},
		{name: "wrong magic", want: "bad header magic 0xdeadbeef", run: func(h *hostile) {
			h.data = dialHostile(t, h.addr)
			h.raw([]byte{0xde, 0xad, 0xbe, 0xef, 0xff, 0xf2, 0, 0})
		}},
		{name: "unknown command as first packet", want: "expected an initial packet, received P_UNKNOWN(0x00ab)", run: func(h *hostile) {
			h.data = dialHostile(t, h.addr)
			h.raw(h80(0xab, 0))
		}},
		{name: "unknown command instead of the auth challenge", want: "expected P_AUTH_CHALLENGE, received P_UNKNOWN(0x00ab)", run: func(h *hostile) {
			h.connectPair()
			h.features()
			h.raw(h100(0xab, 0))
		}},
		{name: "too-large length in the first header", want: "announces 2147483647 bytes", run: func(h *hostile) {
			h.data = dialHostile(t, h.addr)
			b := binary.BigEndian.AppendUint16(nil, protocol.MagicH95)
			b = binary.BigEndian.AppendUint16(b, uint16(protocol.PInitialData))
			b = binary.BigEndian.AppendUint32(b, 0x7fffffff)
			h.raw(b)
		}},
		{name: "too-large auth challenge", want: "announces 16777215 bytes", run: func(h *hostile) {
			h.connectPair()
			h.features()
			h.raw(h100(uint16(protocol.PAuthChallenge), 0xffffff))
		}},
		{name: "features with incompatible header", want: "h100 header on a connection at protocol version", run: func(h *hostile) {
			h.connectPair()
			f := protocol.LocalFeatures(0)
			h.raw(append(h100(uint16(protocol.PConnectionFeatures), protocol.ConnectionFeaturesSize), f.MarshalAppend(nil)...))
		}},
		{name: "incompatible protocol range", want: "incompatible DRBD dialects", run: func(h *hostile) {
			h.connectPair()
			f := protocol.ConnectionFeatures{ProtocolMin: 50, ProtocolMax: 60}
			h.dc.WritePayload(protocol.PConnectionFeatures, &f)
		}},
		{name: "P_DATA without authentication", want: "expected P_AUTH_CHALLENGE, received P_DATA", run: func(h *hostile) {
			h.connectPair()
			h.features()
			if err := sendHostileData(h.dc); err != nil {
				t.Fatal(err)
			}
			// The meta socket gets one too, for good measure.
			sendHostileData(h.mc)
		}},
		{name: "P_DATA right after the peer's challenge", want: "receiving auth response: drbd protocol: payload too large: P_DATA announces", run: func(h *hostile) {
			h.connectPair()
			h.features()
			h.readChallenge()
			mine := make([]byte, protocol.ChallengeLen)
			rand.Read(mine)
			h.dc.WritePacket(protocol.PAuthChallenge, mine)
			if err := sendHostileData(h.dc); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "wrong secret", want: "authentication of peer failed", run: func(h *hostile) {
			h.connectPair()
			h.features()
			theirs := h.readChallenge()
			mine := make([]byte, protocol.ChallengeLen)
			rand.Read(mine)
			h.dc.WritePacket(protocol.PAuthChallenge, mine)
			resp, err := protocol.CRAMResponse("sha256", []byte("not-the-secret"), theirs)
			if err != nil {
				t.Fatal(err)
			}
			h.dc.WritePacket(protocol.PAuthResponse, resp)
			// Pipelined behind the wrong answer: must never be applied.
			sendHostileData(h.dc)
			sendHostileData(h.mc)
		}},
		{name: "reflected challenge", want: "peer presented the same challenge", run: func(h *hostile) {
			h.connectPair()
			h.features()
			theirs := h.readChallenge()
			h.dc.WritePacket(protocol.PAuthChallenge, theirs)
			sendHostileData(h.dc)
		}},
	}
	for _, tc := range cases {
		off := logSize(a)
		h := &hostile{t: t, addr: aliceAddr}
		tc.run(h)
		waitLogSince(t, a, off, tc.want, 20*time.Second)
		h.expectDropped(tc.name)
		// An unauthenticated peer must not be able to switch replication
		// off: alice keeps waiting for the real bob (drbdd deliberately
		// differs from DRBD, which goes StandAlone on a wrong secret).
		a.WaitState("cstate", "r0", "WFConnection", 10*time.Second)
		if logSince(a, off, "-> StandAlone") {
			t.Errorf("%s: alice went StandAlone because of an unauthenticated peer", tc.name)
		}
		checkServing(tc.name)
		t.Logf("%s: alice logged %q, dropped the peer and kept serving", tc.name, tc.want)
	}

	// An authenticated peer that breaks the protocol after the handshake
	// gets ProtocolError and alice keeps trying to connect.
	for _, tc := range []struct {
		name, want string
		pkt        []byte
	}{
		{"unknown command after authentication", "unexpected P_UNKNOWN(0x00ab) during the connection handshake", h100(0xab, 0)},
		{"too-large length after authentication", "announces 2147483647 bytes", h100(uint16(protocol.PProtocol), 0x7fffffff)},
	} {
		off := logSize(a)
		h := &hostile{t: t, addr: aliceAddr}
		h.connectPair()
		h.features()
		if err := h.dc.Authenticate("sha256", []byte(secret), nil); err != nil {
			t.Fatalf("%s: authentication with the right secret failed: %v", tc.name, err)
		}
		h.raw(tc.pkt)
		waitLogSince(t, a, off, tc.want, 20*time.Second)
		waitLogSince(t, a, off, "ProtocolError", 20*time.Second)
		h.expectDropped(tc.name)
		a.WaitState("cstate", "r0", "WFConnection", 10*time.Second)
		checkServing(tc.name)
		t.Logf("%s: alice logged %q and ProtocolError, and kept serving", tc.name, tc.want)
	}

	// No byte of any hostile P_DATA reached alice's disk.
	f := openFile(t, p.Disk[a])
	got := make([]byte, 64<<10)
	if _, err := f.ReadAt(got, hostileTarget-32<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !bytes.Equal(got, make([]byte, len(got))) {
		i := bytes.IndexFunc(got, func(r rune) bool { return r != 0 })
		t.Errorf("alice's disk around the hostile target was written: first non-zero byte at offset %d", hostileTarget-32<<10+i)
	}
	load.Stop()
	if errs := load.Errors(); len(errs) > 0 {
		t.Errorf("the NBD client saw errors: %v", errs)
	}
	load.verifyBlocks(t, "alice's export", nbdReaderAt{c})
}

// TestStalledPeerHandshakeKeepsServing: a peer that authenticates and then
// says nothing (a hung node, a network partition right after connecting)
// must not freeze the Primary's application I/O while alice waits for its
// connection parameters.
func TestStalledPeerHandshakeKeepsServing(t *testing.T) {
	const secret = "the-real-secret"
	p := NewPair(t, PairOptions{Secret: secret, Net: map[string]string{"cram-hmac-alg": "sha256"}})
	p.B.Kill()
	a := p.A
	a.MustAdm("create-md", "r0")
	a.MustAdm("up", "r0")
	a.MustAdm("primary", "--force", "r0")
	a.WaitState("cstate", "r0", "WFConnection", 10*time.Second)

	c := dialNBD(t, p.URI[a])
	defer c.Close()
	blocks := make([]int64, 256)
	for i := range blocks {
		blocks[i] = int64(i)
	}
	var seq atomic.Uint64
	load := startWriteLoad(c, blocks, 4, true, &seq)
	defer load.Stop()
	load.waitAcks(t, 100, 20*time.Second)

	off := logSize(a)
	h := &hostile{t: t, addr: p.Res.Hosts[0].Address}
	h.connectPair()
	h.features()
	if err := h.dc.Authenticate("sha256", []byte(secret), nil); err != nil {
		t.Fatalf("authentication with the right secret failed: %v", err)
	}
	// Read what alice sends, send nothing back.
	h.data.SetDeadline(time.Time{})
	dropped := make(chan struct{})
	go func() {
		io.Copy(io.Discard, h.data)
		close(dropped)
	}()
	defer h.data.Close()
	defer h.meta.Close()
	waitLogSince(t, a, off, "peer authenticated", 10*time.Second)
	start := load.acks.Load()
	for {
		if load.acks.Load() >= start+50 {
			t.Logf("alice served %d writes while the peer stalled in the handshake", load.acks.Load()-start)
			break
		}
		select {
		case <-dropped:
			if n := load.acks.Load() - start; n < 50 {
				b, _ := os.ReadFile(a.LogPath)
				t.Fatalf("alice's NBD writes were frozen (%d completed) for as long as an authenticated peer stalled in the connection handshake; alice's log:\n%s", n, b[off:])
			}
		case <-time.After(50 * time.Millisecond):
			continue
		}
	}
	if errs := load.Errors(); len(errs) > 0 {
		t.Errorf("the NBD client saw errors: %v", errs)
	}
}
