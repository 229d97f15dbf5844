package meta

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func testSuperblock(t testing.TB) Superblock {
	l, err := InternalLayout(1<<30, ALExtentsDefault)
	if err != nil {
		t.Fatal(err)
	}
	return Superblock{
		Seq:           42,
		Flags:         MDFConsistent | MDFWasUpToDate | MDFCrashedPrimary,
		UUIDs:         UUIDs{Current: 0xAAAA0001, Bitmap: 0xBBBB0000, History: [2]uint64{0xCCCC, 0xDDDD}},
		DeviceUUID:    0x1234567890abcdef,
		LaSizeSectors: uint64(l.DataBytes / SectorSize),
		Layout:        l,
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	sb := testSuperblock(t)
	b := EncodeSuperblock(sb)
	if len(b) != BlockSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	got, err := DecodeSuperblock(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != sb {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, sb)
	}
}

func TestSuperblockDetectsEveryByteFlip(t *testing.T) {
	b := EncodeSuperblock(testSuperblock(t))
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		if _, err := DecodeSuperblock(c); err == nil {
			t.Fatalf("flip at byte %d not detected", i)
		}
	}
}

func TestSuperblockTornWriteNeverMixes(t *testing.T) {
	a := testSuperblock(t)
	b := a
	b.Seq++
	b.UUIDs.Current = 0x5555
	// Put something in the last sector too, so that tearing matters there.
	old, nw := EncodeSuperblock(a), EncodeSuperblock(b)
	old[BlockSize-100], nw[BlockSize-100] = 1, 2
	old[sbCRC], old[sbCRC+1], old[sbCRC+2], old[sbCRC+3] = 0, 0, 0, 0
	nw[sbCRC], nw[sbCRC+1], nw[sbCRC+2], nw[sbCRC+3] = 0, 0, 0, 0
	putCRC := func(p []byte) {
		c := blockCRC(p, sbCRC)
		p[sbCRC], p[sbCRC+1], p[sbCRC+2], p[sbCRC+3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	}
	putCRC(old)
	putCRC(nw)
	// Any mix of old and new 512-byte sectors decodes to one of the two
	// versions or is rejected; it never yields a mixture.
	for mask := 0; mask < 256; mask++ {
		c := append([]byte(nil), old...)
		for s := range 8 {
			if mask&(1<<s) != 0 {
				copy(c[s*SectorSize:(s+1)*SectorSize], nw[s*SectorSize:])
			}
		}
		got, err := DecodeSuperblock(c)
		isOld, isNew := bytes.Equal(c, old), bytes.Equal(c, nw)
		switch {
		case err != nil:
			if isOld || isNew {
				t.Errorf("mask %08b: pure version rejected: %v", mask, err)
			}
		case isOld && got.UUIDs == a.UUIDs, isNew && got.UUIDs == b.UUIDs:
		default:
			t.Errorf("torn superblock (sector mask %08b) accepted as %+v", mask, got.UUIDs)
		}
	}
}

func TestSuperblockRejects(t *testing.T) {
	sb := testSuperblock(t)
	for name, mut := range map[string]func(*Superblock){
		"la_size too big": func(s *Superblock) { s.LaSizeSectors = uint64(s.Layout.DataBytes/SectorSize) + 1 },
		"bad layout":      func(s *Superblock) { s.Layout.ALOffset += 512 },
		"al-extents":      func(s *Superblock) { s.Layout.ALExtents = 3 },
	} {
		s := sb
		mut(&s)
		if _, err := DecodeSuperblock(EncodeSuperblock(s)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := DecodeSuperblock(make([]byte, 100)); err == nil {
		t.Error("short block accepted")
	}
	if _, err := DecodeSuperblock(make([]byte, BlockSize)); err == nil || !strings.Contains(err.Error(), "magic") {
		t.Errorf("zero block: %v", err)
	}
}

func TestReadSuperblockPicksNewestValid(t *testing.T) {
	sb := testSuperblock(t)
	offs := sb.Layout.SuperblockOffsets
	m := newMemIO(sb.Layout.MetaDevBytes)
	write := func(slot int, s Superblock) {
		if _, err := m.WriteAt(EncodeSuperblock(s), offs[slot]); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := ReadSuperblock(m, offs); !errors.Is(err, ErrNoSuperblock) {
		t.Fatalf("empty device: %v", err)
	}
	a, b := sb, sb
	a.Seq, b.Seq = 7, 8
	b.UUIDs.Current = 0x99
	write(0, a)
	write(1, b)
	got, slot, err := ReadSuperblock(m, offs)
	if err != nil || slot != 1 || got != b {
		t.Fatalf("got slot %d %+v, %v", slot, got.UUIDs, err)
	}
	// Tear slot 1: slot 0 wins.
	bad := EncodeSuperblock(b)
	bad[700] ^= 1
	if _, err := m.WriteAt(bad, offs[1]); err != nil {
		t.Fatal(err)
	}
	got, slot, err = ReadSuperblock(m, offs)
	if err != nil || slot != 0 || got != a {
		t.Fatalf("after tearing slot 1: slot %d, %v", slot, err)
	}
	// Both bad: a clear error naming both slots.
	if _, err := m.WriteAt(bad, offs[0]); err != nil {
		t.Fatal(err)
	}
	_, _, err = ReadSuperblock(m, offs)
	if !errors.Is(err, ErrNoSuperblock) || !strings.Contains(err.Error(), "slot 0") || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("both slots bad: %v", err)
	}
}

func TestFlagsString(t *testing.T) {
	if s := (MDFConsistent | MDFALClean | 1<<20).String(); s != "consistent|al-clean|0x100000" {
		t.Errorf("got %q", s)
	}
	if s := Flags(0).String(); s != "none" {
		t.Errorf("got %q", s)
	}
}

func FuzzDecodeSuperblock(f *testing.F) {
	sb := testSuperblock(f)
	f.Add(EncodeSuperblock(sb))
	ext, _ := ExternalLayout(1<<30, 1<<30, ALExtentsMin)
	sb.Layout, sb.LaSizeSectors, sb.Flags = ext, 0, 0
	f.Add(EncodeSuperblock(sb))
	f.Add(make([]byte, BlockSize))
	f.Add([]byte("DRBM"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := DecodeSuperblock(b)
		if err != nil {
			return
		}
		if err := sb.Layout.Validate(); err != nil {
			t.Fatalf("decoded an invalid layout: %v", err)
		}
		again, err := DecodeSuperblock(EncodeSuperblock(sb))
		if err != nil || again != sb {
			t.Fatalf("re-encode: %v\n got %+v\nwant %+v", err, again, sb)
		}
	})
}
