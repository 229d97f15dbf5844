package protocol

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// fuzzSeeds returns the seed inputs of each fuzz target; TestFuzzSeedFiles
// writes them to testdata/fuzz/<Target>/ with -update.
func fuzzSeeds() map[string][][]byte {
	var headers, payloads [][]byte
	samples := samplePayloads()
	for i, c := range knownCmds {
		p, ok := samples[c]
		if !ok {
			continue
		}
		headers = append(headers, goldenPacket(c, p))
		payloads = append(payloads, append([]byte{byte(i)}, p.MarshalAppend(nil)...))
	}
	headers = append(headers,
		[]byte{0x83, 0x5a, 0, 0, 0, 0, 0x80, 0x01},       // h95
		[]byte{0x86, 0x20, 0xec, 0x20, 0, 0, 0, 0x0e, 0}, // short h100
		[]byte{0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0},       // bad magic
	)
	bitmaps := [][]byte{
		{0x12, 0x99, 0x17},       // hand-built: 20 bits, bits 3-9 set
		{0x82, 0x01},             // overflow
		{0x52, 0x03},             // truncated code word
		{0x02, 0xff, 0xff, 0xff}, // long code words
		append([]byte{0x82}, bytes.Repeat([]byte{0x55}, 64)...),
	}
	// A real sender's packets for a dirty bitmap.
	src := make([]uint64, BitmapWords(5000))
	setBitRange(src, 100, 1999)
	setBitRange(src, 4000, 4096)
	s, _ := NewBitmapSender(src, 5000, 101, true)
	if _, p, ok := s.Next(nil); ok {
		bitmaps = append(bitmaps, p)
	}
	return map[string][][]byte{
		"FuzzReadHeader":        headers,
		"FuzzPayloads":          payloads,
		"FuzzCompressedBitmap":  bitmaps,
		"FuzzBitmapPlainPacket": {make([]byte, 8), make([]byte, 16), nil},
	}
}

// TestFuzzSeedFiles keeps the checked-in seed corpora in sync with
// fuzzSeeds (rewrite them with -update).
func TestFuzzSeedFiles(t *testing.T) {
	for target, seeds := range fuzzSeeds() {
		dir := filepath.Join("testdata", "fuzz", target)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for i, seed := range seeds {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
			path := filepath.Join(dir, fmt.Sprintf("seed-%03d", i))
			if *update {
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create)", err)
			}
			if string(got) != content {
				t.Errorf("%s is stale (run go test -update)", path)
			}
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	for _, s := range fuzzSeeds()["FuzzReadHeader"] {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ReadHeader(bytes.NewReader(data))
		h2, n, err2 := ParseHeader(data)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("ReadHeader and ParseHeader disagree: %v / %v", err, err2)
		}
		if err != nil {
			return
		}
		if h != h2 || n != h.Kind.Size() {
			t.Fatalf("%v vs %v (%d)", h, h2, n)
		}
		if h.Length > MaxPayload {
			t.Fatalf("accepted length %d", h.Length)
		}
		// Re-encoding with the same kind reproduces the bytes.
		enc := appendHeaderKind(nil, h.Kind, h.Cmd, h.Volume, h.Length)
		if !bytes.Equal(enc, data[:n]) {
			t.Fatalf("re-encoded %x, input %x", enc, data[:n])
		}
		// A Conn at a matching version reads the same header.
		v := 80
		if h.Kind == HeaderH100 {
			v = 101
		}
		c := NewConn(bytes.NewBuffer(append([]byte(nil), data...)))
		c.SetVersion(v)
		ch, p, err := c.ReadPacket(0)
		if err == nil && (ch != h || len(p) != int(h.Length)) {
			t.Fatalf("Conn read %v, %d bytes", ch, len(p))
		}
	})
}

func FuzzPayloads(f *testing.F) {
	for _, s := range fuzzSeeds()["FuzzPayloads"] {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		cmd := knownCmds[int(data[0])%len(knownCmds)]
		payload := data[1:]
		p, err := DecodePayload(cmd, payload)
		if err != nil {
			return
		}
		enc := p.MarshalAppend(nil)
		p2, err := DecodePayload(cmd, enc)
		if err != nil {
			t.Fatalf("%s: re-encoded payload %x does not decode: %v", cmd, enc, err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("%s: round trip\n%#v\n%#v", cmd, p, p2)
		}
		if enc2 := p2.MarshalAppend(nil); !bytes.Equal(enc, enc2) {
			t.Fatalf("%s: encoding not stable", cmd)
		}
		if s, ok := p.(*State); ok {
			_ = s.Validate()
			_ = s.FromPeer()
		}
	})
}

func FuzzCompressedBitmap(f *testing.F) {
	for _, s := range fuzzSeeds()["FuzzCompressedBitmap"] {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, nbits := range []uint64{20, 5000, 1 << 16} {
			words := make([]uint64, BitmapWords(nbits))
			r, _ := NewBitmapReceiver(words, nbits, 101)
			if _, err := r.Receive(PCompressedBitmap, data); err != nil {
				continue
			}
			if tail := nbits % 64; tail != 0 && words[len(words)-1]>>tail != 0 {
				t.Fatal("bits set past the end of the bitmap")
			}
			// Whatever was decoded survives a full transfer both ways.
			dst := make([]uint64, len(words))
			receiveAll(t, dst, nbits, 101, words, true)
			if !reflect.DeepEqual(dst, words) {
				t.Fatal("re-transfer differs")
			}
		}
		// The run decoder and the VLI encoder agree.
		var c CompressedBitmap
		if c.Unmarshal(data) != nil {
			return
		}
		w := bitWriter{buf: make([]byte, len(c.Code)+8)}
		var runs []uint64
		if c.Runs(func(rl uint64) error {
			code, n, err := VLIEncode(rl)
			if err != nil {
				t.Fatalf("decoded run %d does not encode: %v", rl, err)
			}
			if !w.put(code, uint(n)) {
				t.Fatal("re-encoding grew")
			}
			runs = append(runs, rl)
			return nil
		}) != nil {
			return
		}
		c2 := CompressedBitmap{Start: c.Start, PadBits: w.padBits(), Code: w.buf[:w.bytesUsed()]}
		var runs2 []uint64
		if err := c2.Runs(func(rl uint64) error { runs2 = append(runs2, rl); return nil }); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(runs, runs2) {
			t.Fatalf("runs %v re-decode as %v", runs, runs2)
		}
		// The code is canonical: re-encoding reproduces the input bits.
		in := bytes.Clone(c.Code)
		in[len(in)-1] &= byte(lowMask(uint(8 - c.PadBits)))
		if c2.PadBits != c.PadBits || !bytes.Equal(c2.Code, in) {
			t.Fatalf("re-encoded %x pad %d, input %x pad %d", c2.Code, c2.PadBits, in, c.PadBits)
		}
	})
}

func FuzzBitmapPlainPacket(f *testing.F) {
	for _, s := range fuzzSeeds()["FuzzBitmapPlainPacket"] {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		words := make([]uint64, 3)
		r, _ := NewBitmapReceiver(words, 130, 101)
		if _, err := r.Receive(PBitmap, data); err != nil {
			return
		}
		if words[2]>>2 != 0 {
			t.Fatal("surplus bits kept")
		}
	})
}
