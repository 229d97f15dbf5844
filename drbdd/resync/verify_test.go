package resync

import (
	"errors"
	"fmt"
	"testing"
)

func mustVerifier(t *testing.T, cfg VerifyConfig) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sectors(rs []Request) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r.Sector)
	}
	return out
}

func TestVerifierWalk(t *testing.T) {
	// 100 sectors: 13 bits, the last one covering 4 sectors. A start at
	// sector 20 rounds down to 16, so 11 blocks are verified.
	v := mustVerifier(t, VerifyConfig{DeviceSectors: 100, StartSector: 20})
	if v.StartSector() != 16 {
		t.Fatalf("start sector %d", v.StartSector())
	}
	if pr := v.Progress(); pr.Total != 11 || pr.Left != 11 {
		t.Fatalf("progress = %+v", pr)
	}
	var all []Request
	for i := 0; i < 10 && !v.Finished(); i++ {
		rs := v.Next(4)
		if len(rs) > 4 {
			t.Fatalf("Next(4) returned %d", len(rs))
		}
		all = append(all, rs...)
		for _, r := range rs {
			if _, err := v.OVResult(r.Sector, r.Size, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := fmt.Sprint(sectors(all)), "[16 24 32 40 48 56 64 72 80 88 96]"; got != want {
		t.Fatalf("walk = %s, want %s", got, want)
	}
	if last := all[len(all)-1]; last.Size != 4*512 {
		t.Errorf("last request %+v, want 2048 bytes", last)
	}
	for _, r := range all[:len(all)-1] {
		if r.Size != BlockSize {
			t.Errorf("request %+v is not one block", r)
		}
	}
	if !v.Finished() || v.Summary() != "" || len(v.OutOfSync()) != 0 {
		t.Fatalf("finished=%v summary=%q", v.Finished(), v.Summary())
	}
	if pr := v.Progress(); pr.Left != 0 || pr.Done != 11 || pr.Cursor != 13 {
		t.Errorf("progress = %+v", pr)
	}
}

func TestVerifierMismatches(t *testing.T) {
	v := mustVerifier(t, VerifyConfig{DeviceSectors: 1 << 10, MaxInFlight: 8})
	rs := v.Next(100)
	if len(rs) != 8 {
		t.Fatalf("Next returned %d requests with MaxInFlight 8", len(rs))
	}
	if v.Next(100) != nil {
		t.Fatal("Next beyond the in-flight bound")
	}
	bad := map[uint64]bool{24: true, 32: true, 56: true}
	// Answer out of order: ranges still merge.
	for i := len(rs) - 1; i >= 0; i-- {
		r := rs[i]
		fin, err := v.OVResult(r.Sector, r.Size, !bad[r.Sector])
		if err != nil || fin {
			t.Fatalf("OVResult(%d) = %v, %v", r.Sector, fin, err)
		}
	}
	got := v.OutOfSync()
	want := []Range{{24, 16}, {56, 8}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("out of sync = %v, want %v", got, want)
	}
	if s := got[0].String(); s != "Out of sync: start=24, size=16 (sectors)" {
		t.Errorf("range line = %q", s)
	}
	if v.OutOfSyncBlocks() != 3 || v.Summary() != "Online verify found 3 4k block out of sync!" {
		t.Errorf("blocks=%d summary=%q", v.OutOfSyncBlocks(), v.Summary())
	}
	if _, err := v.OVResult(24, BlockSize, false); !errors.Is(err, ErrUnknownRequest) {
		t.Errorf("duplicate result: %v", err)
	}
	if _, err := v.OVResult(64, 512, false); !errors.Is(err, ErrUnknownRequest) {
		t.Errorf("result for a request never sent: %v", err)
	}
}

func TestVerifierStopSector(t *testing.T) {
	tests := []struct {
		start, stop uint64
		want        string
	}{
		{0, 40, "[0 8 16 24 32]"},
		{0, 41, "[0 8 16 24 32 40]"},
		// At least one request goes out, as in DRBD.
		{16, 1, "[16]"},
		{0, 0, "[0 8 16 24 32 40 48 56]"},
	}
	for _, tt := range tests {
		v := mustVerifier(t, VerifyConfig{DeviceSectors: 64, StartSector: tt.start, StopSector: tt.stop})
		var all []Request
		for i := 0; i < 20 && !v.Finished(); i++ {
			rs := v.Next(3)
			all = append(all, rs...)
			for _, r := range rs {
				if _, err := v.OVResult(r.Sector, r.Size, true); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got := fmt.Sprint(sectors(all)); got != tt.want {
			t.Errorf("start %d stop %d: walk %s, want %s", tt.start, tt.stop, got, tt.want)
		}
	}
}

func TestVerifierBusy(t *testing.T) {
	busy := uint64(2)
	v := mustVerifier(t, VerifyConfig{DeviceSectors: 64, Busy: func(b, n uint64) bool { return b <= busy && busy < b+n }})
	if got := fmt.Sprint(sectors(v.Next(10))); got != "[0 8]" {
		t.Fatalf("Next = %s", got)
	}
	if v.Next(10) != nil {
		t.Fatal("Next went past a busy block")
	}
	busy = 100
	if got := fmt.Sprint(sectors(v.Next(2))); got != "[16 24]" {
		t.Fatalf("Next after the write = %s", got)
	}
}

func TestNewVerifierErrors(t *testing.T) {
	for _, cfg := range []VerifyConfig{
		{},
		{DeviceSectors: 64, StartSector: 64},
		{DeviceSectors: 64, MaxInFlight: -2},
		{DeviceSectors: ^uint64(0)},
	} {
		if _, err := NewVerifier(cfg); err == nil {
			t.Errorf("NewVerifier(%+v) accepted", cfg)
		}
	}
}

func TestVerifySummary(t *testing.T) {
	if VerifySummary(0) != "" || VerifySummary(1) != "Online verify found 1 4k block out of sync!" {
		t.Error(VerifySummary(1))
	}
}
