package resync

import (
	"testing"
	"time"
)

var t0 = time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)

func at(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// The expected lines below were worked out by hand from DRBD 8.4's
// drbd_syncer_progress and drbd_get_syncer_progress; each case notes the
// arithmetic.
func TestFormatSyncerProgress(t *testing.T) {
	tests := []struct {
		name  string
		marks func() *Marks
		p     SyncerProgress
		now   time.Time
		want  string
	}{
		{
			// per mille: 1000 - (13000>>10)*1000/(1+25600>>10) =
			// 1000 - 12000/26 = 539; bar: 539/50 = 10 cells.
			// Mark (2+2)%8 = 4 is still the start: dt 7 s,
			// db 12600 bits; finish 7*(13000/127)/100 = 7 s;
			// speed 12600/7*4 = 7200 KiB/s.
			name: "sync target K",
			marks: func() *Marks {
				m := NewMarks(t0, 25600)
				m.Advance(at(3), 20000)
				m.Advance(at(6), 15000)
				return m
			},
			p:    SyncerProgress{Kind: SyncTarget, Total: 25600, Left: 13000, Want: 10240},
			now:  at(7),
			want: "\t[=========>..........] sync'ed: 53.9% (52000/102400)K\n\tfinish: 0:00:07 speed: 7,200 (7,200) want: 10,240 K/sec\n",
		},
		{
			// 5 GiB: over 4 GiB, so MiB. per mille 1000 -
			// 929*1000/1281 = 275, 5 cells. dt 11 s, db 359424;
			// finish 11*(951296/3595)/100 = 29 s; speed
			// 359424/11*4 = 130696.
			name: "sync target M",
			marks: func() *Marks {
				m := NewMarks(t0, 1310720)
				m.Advance(at(3), 1200000)
				m.Advance(at(6), 1100000)
				m.Advance(at(9), 1000000)
				return m
			},
			p:    SyncerProgress{Kind: SyncTarget, Total: 1310720, Left: 951296, Want: 102400},
			now:  at(11),
			want: "\t[====>...............] sync'ed: 27.5% (3716/5120)M\n\tfinish: 0:00:29 speed: 130,696 (130,696) want: 102,400 K/sec\n",
		},
		{
			// Ten marks, so the ring wrapped: the newest is index
			// 2, and index 4 holds (12 s, 88000). dt 19 s, db
			// 19000; finish 19*(69000/191)/100 = 68 s. No "want"
			// on a SyncSource. per mille 1000 - 67000/98 = 317.
			name:  "sync source, ring wrapped",
			marks: wrappedMarks,
			p:     SyncerProgress{Kind: SyncSource, Total: 100000, Left: 69000, Want: 999},
			now:   at(31),
			want:  "\t[=====>..............] sync'ed: 31.7% (276000/400000)K\n\tfinish: 0:01:08 speed: 4,000 (4,000) K/sec\n",
		},
		{
			// proc_details 1: the short-term speed uses the mark
			// before the newest, (27 s, 73000): 4000 bits in 4 s.
			// Position line: 131072/(262144/100+1) = 49%.
			name:  "details",
			marks: wrappedMarks,
			p:     SyncerProgress{Kind: SyncSource, Total: 100000, Left: 69000, Details: 1, BitmapBits: 262144, Position: 131072},
			now:   at(31),
			want:  "\t[=====>..............] sync'ed: 31.7% (276000/400000)K\n\tfinish: 0:01:08 speed: 4,000 (4,000 -- 4,000) K/sec\n\t 49% sector pos: 1048576/2097152\n",
		},
		{
			// The mark is 181 s old: stalled. Below 5% the bar is
			// '>' and 20 '.'. finish 181*25600/100 s = 12:52:16.
			name:  "stalled",
			marks: func() *Marks { return NewMarks(t0, 25600) },
			p:     SyncerProgress{Kind: SyncTarget, Total: 25600, Left: 25600, Want: 250},
			now:   at(181),
			want:  "\t[>....................] sync'ed:  3.9% (102400/102400)K\n\tfinish: 12:52:16 speed: 0 (0) want: 250 K/sec (stalled)\n",
		},
		{
			name:  "no marks yet",
			marks: func() *Marks { return nil },
			p:     SyncerProgress{Kind: SyncTarget, Total: 256, Left: 256, Want: 250},
			now:   at(0),
			// Under 1024 bits DRBD's shift hides all progress:
			// 100% from the start.
			want: "\t[===================>] sync'ed:100.0% (1024/1024)K\n\tfinish: 0:00:02 speed: 0 (0) want: 250 K/sec\n",
		},
		{
			// Verify of 1 GiB, a quarter done: dt 4 s, db 65536;
			// finish 4*(196608/656)/100 = 11 s. per mille 1000 -
			// 192000/257 = 253.
			name: "verify source",
			marks: func() *Marks {
				m := NewMarks(t0, 262144)
				m.Advance(at(3), 240000)
				return m
			},
			p:    SyncerProgress{Kind: VerifySource, Total: 262144, Left: 196608, Want: 4000},
			now:  at(4),
			want: "\t[====>...............] verified: 25.3% (786432/1048576)K\n\tfinish: 0:00:11 speed: 65,536 (65,536) want: 4,000 K/sec\n",
		},
		{
			name: "verify target with details and stop sector",
			marks: func() *Marks {
				m := NewMarks(t0, 262144)
				m.Advance(at(3), 240000)
				return m
			},
			p:    SyncerProgress{Kind: VerifyTarget, Total: 262144, Left: 196608, Want: 4000, Details: 1, BitmapBits: 262144, StopSector: 1 << 20},
			now:  at(4),
			want: "\t[====>...............] verified: 25.3% (786432/1048576)K\n\tfinish: 0:00:11 speed: 65,536 (65,536 -- 65,536) K/sec\n\t 24% sector pos: 524288/2097152 stop sector: 1048576\n",
		},
		{
			// Paused from 5 s to 15 s: the average leaves the 10 s
			// out (10600 bits in 7 s), the 18 s speed does not
			// (10600 in 17 s). per mille 1000 - 14000/26 = 462.
			name: "after a pause",
			marks: func() *Marks {
				m := NewMarks(t0, 25600)
				m.Advance(at(3), 20000)
				m.Pause(at(5))
				m.Advance(at(12), 19000) // ignored while paused
				m.Resume(at(15))
				return m
			},
			p:    SyncerProgress{Kind: SyncTarget, Total: 25600, Left: 15000, Want: 1000},
			now:  at(17),
			want: "\t[========>...........] sync'ed: 46.2% (60000/102400)K\n\tfinish: 0:00:23 speed: 2,492 (6,056) want: 1,000 K/sec\n",
		},
		{
			name:  "done",
			marks: func() *Marks { return NewMarks(t0, 25600) },
			p:     SyncerProgress{Kind: SyncTarget, Total: 25600, Left: 0},
			now:   at(10),
			want:  "\t[===================>] sync'ed:100.0% (0/102400)K\n\tfinish: 0:00:00 speed: 10,240 (10,240) want: 0 K/sec\n",
		},
		{
			// More left than the total: DRBD shows the total and
			// no progress.
			name:  "left above total",
			marks: func() *Marks { return NewMarks(t0, 100) },
			p:     SyncerProgress{Kind: SyncSource, Total: 100, Left: 150},
			now:   at(1),
			want:  "\t[>....................] sync'ed:  0.0% (400/400)K\n\tfinish: 0:00:01 speed: 0 (0) K/sec\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.Marks = tt.marks()
			got := FormatSyncerProgress(tt.p, tt.now)
			if got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// wrappedMarks advances 1000 bits a second from 100000 for 30 s, a mark
// every 3 s: ten marks, so the ring of eight wrapped.
func wrappedMarks() *Marks {
	m := NewMarks(t0, 100000)
	for s := 1; s <= 30; s++ {
		m.Advance(at(s), uint64(100000-1000*s))
	}
	return m
}

func TestMarksAdvance(t *testing.T) {
	m := NewMarks(t0, 100)
	if m.Advance(at(2), 90) {
		t.Error("mark taken before SyncMarkStep")
	}
	if m.Advance(at(3), 100) {
		t.Error("mark taken without progress")
	}
	if !m.Advance(at(3), 90) {
		t.Error("mark not taken")
	}
	m.Pause(at(4))
	if m.Advance(at(10), 80) {
		t.Error("mark taken while paused")
	}
	m.Resume(at(6))
	m.Resume(at(9)) // not paused: ignored
	if m.Paused() != 2*time.Second || !m.Start().Equal(t0) {
		t.Errorf("paused %v start %v", m.Paused(), m.Start())
	}
	// wrappedMarks: the mark before the newest is (27 s, 73000).
	if r := wrappedMarks().ShortTermRate(at(31), 69000); r != 4000 {
		t.Errorf("short-term rate %d", r)
	}
}

func TestDoneMessage(t *testing.T) {
	m := NewMarks(t0, 25600)
	m.Pause(at(5))
	m.Resume(at(15))
	if got, want := DoneMessage(false, m, at(17), 25600, 0), "Resync done (total 17 sec; paused 10 sec; 14628 K/sec)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	m = NewMarks(t0, 262144)
	if got, want := DoneMessage(true, m, at(0), 262144, 131072), "Online verify done (total 1 sec; paused 0 sec; 524288 K/sec)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestPerMille(t *testing.T) {
	tests := []struct{ total, left, res, clamped uint64 }{
		{0, 0, 1000, 0},
		{0, 5, 1000, 0},
		{100, 200, 0, 100},
		{25600, 13000, 539, 13000},
		{1 << 33, 1 << 32, 501, 1 << 32}, // over 2^32 bits: shift 16
		{1023, 1023, 1000, 1023},         // under 1024 bits the shift hides progress
	}
	for _, tt := range tests {
		res, clamped := PerMille(tt.total, tt.left)
		if res != tt.res || clamped != tt.clamped {
			t.Errorf("PerMille(%d, %d) = %d, %d; want %d, %d", tt.total, tt.left, res, clamped, tt.res, tt.clamped)
		}
	}
}

func TestFormatThousands(t *testing.T) {
	for v, want := range map[int64]string{
		0:          "0",
		999:        "999",
		1000:       "1,000",
		102400:     "102,400",
		999999:     "999,999",
		1000000:    "1,000,000",
		4194304:    "4,194,304",
		1234567890: "1234,567,890",
		-5:         "-5",
	} {
		if got := FormatThousands(v); got != want {
			t.Errorf("FormatThousands(%d) = %q, want %q", v, got, want)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{SyncSource: "SyncSource", SyncTarget: "SyncTarget", VerifySource: "VerifyS", VerifyTarget: "VerifyT", Kind(9): "Kind(9)"} {
		if k.String() != want {
			t.Errorf("%d: %q", int(k), k.String())
		}
	}
}
