package meta

import (
	"errors"
	"testing"
)

func TestInternalLayout(t *testing.T) {
	for _, dev := range []int64{
		(ALRingBlocks+SuperblockSlots+2)*BlockSize + 1234,
		1 << 20, 64<<20 + 512, 1 << 30, 1<<30 + 4096*7 + 100,
		128<<20 + 77*4096, 1 << 40, 16 << 40,
	} {
		l, err := InternalLayout(dev, ALExtentsDefault)
		if err != nil {
			t.Fatalf("InternalLayout(%d): %v", dev, err)
		}
		total := dev &^ (BlockSize - 1)
		if l.DataBytes+l.MetaBytes != total || l.MetaOffset != l.DataBytes || l.MetaDevBytes != total {
			t.Errorf("dev %d: data %d + meta %d != %d", dev, l.DataBytes, l.MetaBytes, total)
		}
		if l.SuperblockOffsets[1] != total-BlockSize || l.SuperblockOffsets[0] != total-2*BlockSize {
			t.Errorf("dev %d: superblocks at %v, want the last two blocks", dev, l.SuperblockOffsets)
		}
		if l.BitmapOffset != l.DataBytes || l.ALOffset != l.BitmapOffset+l.BitmapBytes {
			t.Errorf("dev %d: bitmap at %d, AL at %d", dev, l.BitmapOffset, l.ALOffset)
		}
		// The bitmap covers the data, with at most one page to spare
		// (which rounding can leave over).
		if got, want := l.BitmapBytes, pagesFor(l.BitmapBits())*BlockSize; got < want || got > want+BlockSize {
			t.Errorf("dev %d: bitmap %d bytes, want %d", dev, got, want)
		}
		// No more than one bitmap page of slack in the data area.
		if l.DataBytes+BitsPerPage*BMBlockSize < total-l.MetaBytes {
			t.Errorf("dev %d: data %d wastes space", dev, l.DataBytes)
		}
		if l.ALBlocks != ALRingBlocks || l.ALExtents != ALExtentsDefault {
			t.Errorf("dev %d: AL %d blocks %d extents", dev, l.ALBlocks, l.ALExtents)
		}
	}
}

func TestInternalLayoutOneTiBBitmap(t *testing.T) {
	l, err := InternalLayout(1<<40, ALExtentsDefault)
	if err != nil {
		t.Fatal(err)
	}
	if l.BitmapBytes > 32<<20 {
		t.Errorf("1 TiB device: bitmap %d bytes, want <= 32 MiB", l.BitmapBytes)
	}
}

func TestLayoutErrors(t *testing.T) {
	if _, err := InternalLayout((ALRingBlocks+SuperblockSlots)*BlockSize+100, ALExtentsDefault); !errors.Is(err, ErrDeviceTooSmall) {
		t.Errorf("tiny device: %v", err)
	}
	if _, err := InternalLayout(1<<30, ALExtentsMin-1); err == nil {
		t.Error("al-extents 6 accepted")
	}
	if _, err := InternalLayout(1<<30, ALExtentsMax+1); err == nil {
		t.Error("al-extents 65535 accepted")
	}
	if _, err := ExternalLayout(1<<30, 80*BlockSize, ALExtentsDefault); !errors.Is(err, ErrDeviceTooSmall) {
		t.Errorf("small meta device: %v", err)
	}
	if _, err := ExternalLayout(100, 1<<20, ALExtentsDefault); !errors.Is(err, ErrDeviceTooSmall) {
		t.Errorf("tiny data device: %v", err)
	}
}

func TestExternalLayout(t *testing.T) {
	l, err := ExternalLayout(10<<30+123, 1<<30, 7)
	if err != nil {
		t.Fatal(err)
	}
	if l.Internal || l.DataBytes != 10<<30 || l.SuperblockOffsets != [2]int64{0, BlockSize} ||
		l.ALOffset != 2*BlockSize || l.BitmapOffset != l.ALOffset+ALRingBlocks*BlockSize {
		t.Errorf("layout %+v", l)
	}
	if l.BitmapBytes != pagesFor(bitsFor(10<<30))*BlockSize || l.MetaBytes != l.BitmapOffset+l.BitmapBytes {
		t.Errorf("bitmap %d, meta %d", l.BitmapBytes, l.MetaBytes)
	}
}

func TestLayoutValidateRejectsOverlap(t *testing.T) {
	l, _ := InternalLayout(1<<30, ALExtentsDefault)
	for name, mut := range map[string]func(*Layout){
		"sb overlap":      func(l *Layout) { l.SuperblockOffsets[1] = l.SuperblockOffsets[0] },
		"al into bitmap":  func(l *Layout) { l.ALOffset -= BlockSize },
		"unaligned":       func(l *Layout) { l.BitmapOffset += 512 },
		"data into meta":  func(l *Layout) { l.DataBytes += BMBlockSize },
		"small bitmap":    func(l *Layout) { l.BitmapBytes = 0 },
		"ring too small":  func(l *Layout) { l.ALBlocks = 3 },
		"past device end": func(l *Layout) { l.MetaBytes += BlockSize },
	} {
		m := l
		mut(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
