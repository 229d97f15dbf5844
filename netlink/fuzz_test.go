package netlink

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// garbageSeeds are malformed inputs every decoder must refuseConn cleanly.
func garbageSeeds() map[string][]byte {
	return map[string][]byte{
		"empty":       {},
		"http":        []byte("GET / HTTP/1.1\r\nHost: drbdd\r\n\r\n"),
		"zero-header": make([]byte, 28),
		"huge-length": {0xff, 0xff, 0xff, 0xff, 0x1d, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"bad-attr":    {36, 0, 0, 0, 0x1d, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 2, 0x80, 0, 0, 0, 0},
	}
}

// seedMessages returns encoded sample messages by name.
func seedMessages(t testing.TB, requests bool) map[string][]byte {
	seeds := garbageSeeds()
	if requests {
		for i, r := range sampleRequests() {
			b, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			seeds[fmt.Sprintf("req-%02d-%d", i, uint8(r.Command))] = b
		}
	} else {
		for i, r := range sampleReplies() {
			b, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > 4096 {
				continue // huge seeds slow the fuzzer's mutation and minimisation down
			}
			seeds[fmt.Sprintf("reply-%02d-%d", i, uint8(r.Command))] = b
		}
	}
	return seeds
}

func FuzzUnmarshalRequest(f *testing.F) {
	for _, b := range seedMessages(f, true) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalRequest(b)
		if err != nil {
			return
		}
		b2, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded request %+v does not encode: %v", r, err)
		}
		r2, err := UnmarshalRequest(b2)
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("request changed in a round trip:\n%+v\n%+v", r, r2)
		}
	})
}

func FuzzUnmarshalReply(f *testing.F) {
	for _, b := range seedMessages(f, false) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalReply(b)
		if err != nil {
			return
		}
		b2, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded reply %+v does not encode: %v", r, err)
		}
		r2, err := UnmarshalReply(b2)
		if err != nil {
			t.Fatalf("re-encoded reply does not decode: %v", err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("reply changed in a round trip:\n%+v\n%+v", r, r2)
		}
	})
}

// TestWriteFuzzCorpus regenerates testdata/fuzz from the sample messages
// when DRBDD_WRITE_FUZZ_CORPUS=1; the checked-in corpus keeps the seeds
// visible to tools that only read files.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("DRBDD_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set DRBDD_WRITE_FUZZ_CORPUS=1 to regenerate testdata/fuzz")
	}
	for name, requests := range map[string]bool{"FuzzUnmarshalRequest": true, "FuzzUnmarshalReply": false} {
		dir := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for seed, b := range seedMessages(t, requests) {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "seed-"+seed), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
