package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHandshakeGo(t *testing.T) {
	prov, be := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle|clientFlagNoZeroes)
	res := cl.info(optGo, "r0", infoName, infoDescription, infoBlockSize, 0x7777)
	if res.final.typ != repAck {
		t.Fatalf("final reply %#x %q", res.final.typ, res.final.data)
	}
	if res.size != uint64(len(be.data)) {
		t.Errorf("size %d, want %d", res.size, len(be.data))
	}
	want := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn
	if res.flags != want {
		t.Errorf("flags %#x, want %#x", res.flags, want)
	}
	if !res.hasName || res.name != "r0" || !res.hasDesc || res.desc != "test export" {
		t.Errorf("name %q (%v) description %q (%v)", res.name, res.hasName, res.desc, res.hasDesc)
	}
	if res.minB != 1 || res.prefB != 4096 || res.maxB != 32<<20 {
		t.Errorf("block sizes %d/%d/%d", res.minB, res.prefB, res.maxB)
	}
	if errno, _ := cl.do(cmdRead, 0, 0, 512, nil); errno != 0 {
		t.Fatalf("read: %v", errno)
	}
	cl.disconnect()
	prov.waitReleased(t)
	if n := prov.opens.Load(); n != 1 {
		t.Errorf("%d opens, want 1", n)
	}
}

func TestHandshakeReadOnlyFlags(t *testing.T) {
	p := newTestProvider()
	p.add(Export{Name: "ro", Backend: newMemBackend(4096), ReadOnly: true})
	ts := startServer(t, p, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	res := cl.goExport("ro")
	if want := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagReadOnly; res.flags != want {
		t.Errorf("flags %#x, want %#x", res.flags, want)
	}
}

func TestHandshakeInfoThenGo(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	info := cl.info(optInfo, "r0")
	if info.final.typ != repAck {
		t.Fatalf("INFO: %#x %q", info.final.typ, info.final.data)
	}
	if info.hasName || info.hasDesc {
		t.Errorf("name or description sent without being asked for")
	}
	// INFO opens the export only to describe it.
	prov.waitReleased(t)
	res := cl.goExport("r0")
	if res.size != info.size || res.flags != info.flags {
		t.Errorf("GO said %d/%#x, INFO said %d/%#x", res.size, res.flags, info.size, info.flags)
	}
	if errno, _ := cl.do(cmdFlush, 0, 0, 0, nil); errno != 0 {
		t.Fatal(errno)
	}
	cl.disconnect()
	prov.waitReleased(t)
	if n := prov.opens.Load(); n != 2 {
		t.Errorf("%d opens, want 2", n)
	}
}

func TestHandshakeList(t *testing.T) {
	prov, _ := defaultProvider()
	prov.add(Export{Name: "r1", Backend: newMemBackend(512)})
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	cl.sendOpt(optList, nil)
	var names []string
	for {
		r := cl.readOptReply()
		if r.opt != optList {
			t.Fatalf("reply to option %d", r.opt)
		}
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("reply type %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if strings.Join(names, ",") != "r0,r1" {
		t.Errorf("names %q", names)
	}
	// LIST with data is invalid, and the stream stays in sync.
	cl.sendOpt(optList, []byte("junk"))
	if r := cl.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("LIST with data: reply %#x", r.typ)
	}
	cl.goExport("r1")
	cl.disconnect()
}

func TestHandshakeExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		prov, be := defaultProvider()
		ts := startServer(t, prov, nil)
		flags := uint32(clientFlagFixedNewstyle)
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		cl := dial(t, ts.addr, flags)
		cl.sendOpt(optExportName, []byte("r0"))
		var b [10]byte
		cl.readFull(b[:])
		if size := binary.BigEndian.Uint64(b[:]); size != uint64(len(be.data)) {
			t.Errorf("size %d", size)
		}
		if f := binary.BigEndian.Uint16(b[8:]); f&FlagHasFlags == 0 {
			t.Errorf("flags %#x", f)
		}
		if !noZeroes {
			var z [124]byte
			cl.readFull(z[:])
			if z != [124]byte{} {
				t.Errorf("padding not zero")
			}
		}
		payload := bytes.Repeat([]byte{7}, 1000)
		if errno, _ := cl.do(cmdWrite, 0, 10, 1000, payload); errno != 0 {
			t.Fatal(errno)
		}
		if _, data := cl.do(cmdRead, 0, 10, 1000, nil); !bytes.Equal(data, payload) {
			t.Errorf("read back differs")
		}
		cl.disconnect()
	}
}

func TestHandshakeExportNameUnknownDrops(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	cl.sendOpt(optExportName, []byte("nope"))
	cl.expectEOF()
}

func TestHandshakeAbort(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	cl.sendOpt(optAbort, []byte("ignored"))
	if r := cl.readOptReply(); r.opt != optAbort || r.typ != repAck {
		t.Errorf("ABORT reply %d/%#x", r.opt, r.typ)
	}
	cl.expectEOF()
}

func TestHandshakeUnsupportedOptionsThenGo(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{99, bytes.Repeat([]byte("x"), 1000)},
		{optStructuredReply, nil},
		{optExtendedHeaders, nil},
		{optStartTLS, nil},
		{optSetMetaContext, infoData("r0")},
		{optListMetaContext, nil},
		{4, []byte{1, 2, 3}},
		{0xffffffff, nil},
	} {
		cl.sendOpt(o.opt, o.data)
		r := cl.readOptReply()
		if r.opt != o.opt || r.typ != repErrUnsup {
			t.Errorf("option %d: reply %d/%#x", o.opt, r.opt, r.typ)
		}
	}
	cl.goExport("r0")
	if errno, _ := cl.do(cmdRead, 0, 0, 4096, nil); errno != 0 {
		t.Fatal(errno)
	}
	cl.disconnect()
}

func TestHandshakeOptionErrors(t *testing.T) {
	prov, _ := defaultProvider()
	prov.refuse["r9"] = errors.New("r9: not Primary (role Secondary), refusing I/O")
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)

	res := cl.info(optGo, "nope")
	if res.final.typ != repErrUnknown || !strings.Contains(string(res.final.data), "unknown export") {
		t.Errorf("unknown export: %#x %q", res.final.typ, res.final.data)
	}
	res = cl.info(optInfo, "r9")
	if res.final.typ != repErrPolicy || string(res.final.data) != "r9: not Primary (role Secondary), refusing I/O" {
		t.Errorf("refused export: %#x %q", res.final.typ, res.final.data)
	}
	for _, bad := range [][]byte{
		nil,
		{0, 0, 0},
		{0, 0, 0, 9, 'r', '0', 0, 0},       // name longer than data
		{0, 0, 0, 2, 'r', '0', 0, 2, 0, 1}, // 2 infos, 1 present
		{0, 0, 0, 2, 'r', '0', 0, 0, 9},    // trailing byte
		{0xff, 0xff, 0xff, 0xff, 'r', '0', 0, 0, 0, 0, 0}, // huge name length
	} {
		cl.sendOpt(optGo, bad)
		if r := cl.readOptReply(); r.typ != repErrInvalid {
			t.Errorf("GO with %x: reply %#x", bad, r.typ)
		}
	}
	cl.goExport("r0")
	cl.disconnect()
	if !strings.Contains(ts.logs.String(), "not Primary") {
		t.Errorf("refusal not logged: %s", ts.logs)
	}
}

func TestHandshakeDefaultExport(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	res := cl.info(optGo, "", infoName)
	if res.final.typ != repAck || res.name != "r0" {
		t.Fatalf("default export: %#x %q name %q", res.final.typ, res.final.data, res.name)
	}
	cl.disconnect()

	// With two exports, the empty name is passed to the provider, which
	// does not know it.
	prov.add(Export{Name: "r1", Backend: newMemBackend(512)})
	cl = dial(t, ts.addr, clientFlagFixedNewstyle)
	if res := cl.info(optGo, ""); res.final.typ != repErrUnknown {
		t.Errorf("empty name with two exports: %#x", res.final.typ)
	}
}

func TestHandshakeTooBigOption(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	b = binary.BigEndian.AppendUint32(b, maxOptionLength+1)
	cl.write(b)
	if r := cl.readOptReply(); r.typ != repErrTooBig {
		t.Errorf("reply %#x", r.typ)
	}
	cl.expectEOF()
}

func TestHandshakeProtocolViolationsDrop(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, nil)

	cl := dial(t, ts.addr, 1<<7) // unknown client flag
	cl.expectEOF()

	cl = dial(t, ts.addr, clientFlagFixedNewstyle)
	cl.write(bytes.Repeat([]byte{0x55}, 16)) // bad option magic
	cl.expectEOF()

	// The server still serves new connections.
	cl = connect(t, ts.addr, "r0")
	cl.disconnect()
}

func TestHandshakeTimeout(t *testing.T) {
	prov, _ := defaultProvider()
	ts := startServer(t, prov, func(s *Server) { s.HandshakeTimeout = 100 * time.Millisecond })
	cl := dial(t, ts.addr, clientFlagFixedNewstyle)
	cl.expectEOF()
}

func TestParseInfoRequest(t *testing.T) {
	req, err := parseInfoRequest(infoData("abc", 1, 3))
	if err != nil || req.name != "abc" || len(req.infos) != 2 || req.infos[1] != 3 {
		t.Fatalf("%+v %v", req, err)
	}
}

func TestProtoString(t *testing.T) {
	long := strings.Repeat("é", 3000) // 6000 bytes
	s := protoString(long)
	if len(s) > maxStringLength || !strings.HasPrefix(long, s) {
		t.Errorf("cut to %d bytes", len(s))
	}
	if got := protoString("a\x00b\xff"); got != "a?b?" {
		t.Errorf("got %q", got)
	}
}
