package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The header layouts, derived from struct p_header80/95/100: all fields
// big-endian, h100 carries the volume before the command and a zero pad.
func TestHeaderVectors(t *testing.T) {
	tests := []struct {
		name    string
		version int
		cmd     Cmd
		volume  uint16
		length  int
		want    string
	}{
		{"h80 initial", 80, PInitialData, 0, 0, "83740267fff20000"},
		{"h80 features", 80, PConnectionFeatures, 0, 72, "83740267fffe0048"},
		{"h80 below 95", 94, PData, 7, 0x8000 + 24, "8374026700008018"},
		{"h80 at 95 small", 95, PData, 0, 0x8000, "8374026700008000"},
		{"h95 at 95 large", 95, PData, 0, 0x8001, "835a000000008001"},
		{"h95 at 99 1MiB", 99, PRSDataReply, 0, 1<<20 + 24, "835a000200100018"},
		{"h100", 100, PState, 0, 4, "8620ec20" + "0000" + "000e" + "00000004" + "00000000"},
		{"h100 volume", 101, PWriteAck, 3, 24, "8620ec20" + "0003" + "0016" + "00000018" + "00000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendHeader(nil, tt.version, tt.cmd, tt.volume, tt.length)
			if want := mustHex(t, tt.want); !bytes.Equal(got, want) {
				t.Fatalf("AppendHeader = %x, want %x", got, want)
			}
			if len(got) != HeaderKindFor(tt.version, tt.length).Size() {
				t.Fatalf("size %d does not match kind %s", len(got), HeaderKindFor(tt.version, tt.length))
			}
			h, err := ReadHeader(bytes.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			wantVol := tt.volume
			if h.Kind != HeaderH100 {
				wantVol = 0
			}
			if h.Cmd != tt.cmd || int(h.Length) != tt.length || h.Volume != wantVol {
				t.Fatalf("ReadHeader = %v", h)
			}
			h2, n, err := ParseHeader(append(got, 0xaa))
			if err != nil || n != len(got) || h2 != h {
				t.Fatalf("ParseHeader = %v, %d, %v", h2, n, err)
			}
		})
	}
}

func TestHeaderSizes(t *testing.T) {
	if HeaderSize80 != 8 || HeaderSize95 != 8 || HeaderSize100 != 16 {
		t.Fatal("header sizes differ from sizeof(struct p_header*)")
	}
	if HeaderSizeFor(99) != 8 || HeaderSizeFor(100) != 16 || HeaderSizeFor(ProtocolVersionInitial) != 8 {
		t.Fatal("HeaderSizeFor does not follow drbd_header_size()")
	}
}

func TestReadHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", io.EOF},
		{"short h80", "83740267fff2", io.ErrUnexpectedEOF},
		{"short h100", "8620ec200000000e00000004", io.ErrUnexpectedEOF},
		{"bad magic", "0000000000000000", ErrBadMagic},
		{"h100 pad", "8620ec200000000e0000000400000001", ErrBadHeader},
		{"h95 too large", "835a0000ffffffff", ErrTooLarge},
		{"h100 too large", "8620ec20000000000011000100000000", ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadHeader(bytes.NewReader(mustHex(t, tt.in)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if _, _, err := ParseHeader(mustHex(t, "8620ec20000000")); !errors.Is(err, ErrShortPayload) {
		t.Fatalf("ParseHeader short: %v", err)
	}
}

func TestHeaderKindFor(t *testing.T) {
	for v := 80; v <= ProtocolVersionMax; v++ {
		for _, n := range []int{0, 1, MaxSizeH80Packet, MaxSizeH80Packet + 1, 65535, 65536, MaxPayload} {
			k := HeaderKindFor(v, n)
			switch {
			case v >= 100 && k != HeaderH100,
				v < 100 && k == HeaderH100,
				v >= 95 && v < 100 && n > MaxSizeH80Packet && k != HeaderH95,
				v < 95 && n <= 65535 && k != HeaderH80:
				t.Errorf("HeaderKindFor(%d, %d) = %s", v, n, k)
			}
		}
	}
}

func TestAppendHeaderPanicsOnNegative(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	AppendHeader(nil, 101, PData, 0, -1)
}
