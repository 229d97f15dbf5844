package resync

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Marks records how many bits were left at rolling points in time during
// a resync or verify run, the way DRBD keeps its rs_mark_left and
// rs_mark_time rings: SyncMarks marks, a new one at most every
// SyncMarkStep. It also remembers when the run started and how long it
// was paused. The progress line's speeds and finish estimate come from
// these marks.
//
// The zero Marks is not ready for use; call Reset or NewMarks.
type Marks struct {
	start    time.Time
	paused   time.Duration
	left     [SyncMarks]uint64
	at       [SyncMarks]time.Time
	last     int
	isPaused bool
}

// NewMarks returns marks for a run that starts at now with left bits to
// go.
func NewMarks(now time.Time, left uint64) *Marks {
	m := new(Marks)
	m.Reset(now, left)
	return m
}

// Reset starts the marks over for a run that starts at now with left bits
// to go: every mark is set to (now, left), as drbd_start_resync does.
func (m *Marks) Reset(now time.Time, left uint64) {
	m.start = now
	m.paused = 0
	m.last = 0
	m.isPaused = false
	for i := range m.left {
		m.left[i] = left
		m.at[i] = now
	}
}

// Advance offers a new mark: left bits to go at now. Like DRBD's
// drbd_advance_rs_marks it records one only when SyncMarkStep has passed
// since the last mark, the count changed, and the run is not paused, and
// it reports whether it did. Call it whenever bits are cleared (for
// verify, DRBD calls it every other megabyte of replies).
func (m *Marks) Advance(now time.Time, left uint64) bool {
	if m.isPaused || now.Sub(m.at[m.last]) < SyncMarkStep || m.left[m.last] == left {
		return false
	}
	next := (m.last + 1) % SyncMarks
	m.at[next] = now
	m.left[next] = left
	m.last = next
	return true
}

// Pause records that the run was paused at now (PausedSyncS/T): as in
// DRBD, the last mark's time moves to now.
func (m *Marks) Pause(now time.Time) {
	if m.isPaused {
		return
	}
	m.isPaused = true
	m.at[m.last] = now
}

// Resume records that the run continues at now; the time since Pause is
// added to the paused time, which the average speed leaves out.
func (m *Marks) Resume(now time.Time) {
	if !m.isPaused {
		return
	}
	m.isPaused = false
	if d := now.Sub(m.at[m.last]); d > 0 {
		m.paused += d
	}
}

// Start returns when the run started.
func (m *Marks) Start() time.Time { return m.start }

// Paused returns the time the run spent paused, up to the last Resume.
func (m *Marks) Paused() time.Duration { return m.paused }

// ShortTermRate returns the resync speed in KiB/s over the two most recent
// mark steps (about 3 to 6 seconds), with left bits to go at now. This is
// the rate DRBD's c-min-rate throttle compares against.
func (m *Marks) ShortTermRate(now time.Time, left uint64) uint64 {
	i := (m.last + SyncMarks - 1) % SyncMarks
	dt := max(wholeSeconds(now.Sub(m.at[i])), 1)
	db := m.left[i] - left
	return bit2KB(db / dt)
}

// wholeSeconds truncates d to whole seconds, as DRBD's jiffies/HZ does.
func wholeSeconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64(d / time.Second)
}

// bit2KB converts bits to KiB (DRBD's Bit2KB), wrapping like C's
// unsigned long.
func bit2KB(bits uint64) uint64 { return bits << (BlockShift - 10) }

// Kind is the connection state a progress line is shown for; /proc/drbd
// shows one only in these four states.
type Kind int

const (
	// SyncSource is the node sending resync data.
	SyncSource Kind = iota
	// SyncTarget is the node receiving resync data; its line shows the
	// controller's "want" rate.
	SyncTarget
	// VerifySource is the node that started online verify; its line
	// shows "want" too.
	VerifySource
	// VerifyTarget is its peer.
	VerifyTarget
)

// String returns DRBD's name for the connection state.
func (k Kind) String() string {
	switch k {
	case SyncSource:
		return "SyncSource"
	case SyncTarget:
		return "SyncTarget"
	case VerifySource:
		return "VerifyS"
	case VerifyTarget:
		return "VerifyT"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

func (k Kind) verify() bool { return k == VerifySource || k == VerifyTarget }

// SyncerProgress is what FormatSyncerProgress needs to know about a run.
type SyncerProgress struct {
	Kind Kind
	// Total is the number of bits the run began with (rs_total).
	Total uint64
	// Left is the number of bits to go: the bitmap weight minus failed
	// bits for a resync, ov_left for a verify.
	Left uint64
	// Marks are the run's rolling marks; nil means a run that starts now.
	Marks *Marks
	// Want is the controller's target rate in KiB/s (Controller.Want),
	// shown on a SyncTarget or VerifySource.
	Want uint64
	// Details is DRBD's proc_details module parameter: at 1 or more the
	// line adds the short-term speed and a sector position line.
	Details int
	// BitmapBits is the bitmap's size in bits, for the position line.
	BitmapBits uint64
	// Position is the resync's cursor in bits (bm_resync_fo), for the
	// position line of a resync; a verify's position is BitmapBits-Left.
	Position uint64
	// StopSector is a verify's stop sector, shown on the position line
	// unless it is 0 or math.MaxUint64.
	StopSector uint64
}

// PerMille returns how much of a run is done, in tenths of a percent, and
// the bits left clamped to total, computed exactly as DRBD's
// drbd_get_syncer_progress does (with its shifts against overflow).
func PerMille(total, left uint64) (perMille uint64, clampedLeft uint64) {
	if left > total {
		// A race between a state change and rs_total, or bits set
		// again: DRBD shows no progress.
		if total == 0 {
			return 1000, total
		}
		return 0, total
	}
	shift := uint(10)
	if total > math.MaxUint32 {
		shift = 16
	}
	l := left >> shift
	t := 1 + total>>shift
	return 1000 - l*1000/t, left
}

// FormatSyncerProgress returns the progress lines /proc/drbd shows under a
// device in SyncSource, SyncTarget, VerifyS or VerifyT, byte for byte as
// DRBD 8.4's drbd_syncer_progress prints them at time now, for example
//
//	\t[====>...............] sync'ed: 27.5% (3716/5120)M\n
//	\tfinish: 0:00:29 speed: 130,696 (130,696) want: 102,400 K/sec\n
//
// The bar has 20 cells: res/50 of them (res in tenths of a percent) are
// drawn as '='s ending in '>', the rest as '.'; below 5% DRBD draws '>'
// followed by 20 '.'. Sizes are in KiB, or in MiB once the run is over
// 4 GiB. "finish" and "speed" use the mark about 18 s back, the figure in
// parentheses is the average since the start without paused time, and
// " (stalled)" follows when that mark is over 180 s old. Speeds are KiB/s
// with ',' between thousands.
func FormatSyncerProgress(p SyncerProgress, now time.Time) string {
	m := p.Marks
	if m == nil {
		m = NewMarks(now, p.Total)
	}
	res, left := PerMille(p.Total, p.Left)
	var b strings.Builder

	x := int(res / 50)
	b.WriteString("\t[")
	for i := 1; i < x; i++ {
		b.WriteByte('=')
	}
	b.WriteByte('>')
	for i := 0; i < 20-x; i++ {
		b.WriteByte('.')
	}
	b.WriteString("] ")
	if p.Kind.verify() {
		b.WriteString("verified:")
	} else {
		b.WriteString("sync'ed:")
	}
	fmt.Fprintf(&b, "%3d.%d%% ", res/10, res%10)
	// More than 4 GiB: show MiB.
	if p.Total > 4<<(30-BlockShift) {
		fmt.Fprintf(&b, "(%d/%d)M", bit2KB(left>>10), bit2KB(p.Total>>10))
	} else {
		fmt.Fprintf(&b, "(%d/%d)K", bit2KB(left), bit2KB(p.Total))
	}
	b.WriteString("\n\t")

	// The mark two after the newest is the oldest that cannot be
	// replaced right now: about 18 s back.
	i := (m.last + 2) % SyncMarks
	dt := wholeSeconds(now.Sub(m.at[i]))
	stalled := dt > 180
	dt = max(dt, 1)
	db := m.left[i] - left
	rt := (dt * (left / (db/100 + 1))) / 100
	fmt.Fprintf(&b, "finish: %d:%02d:%02d", rt/3600, (rt%3600)/60, rt%60)
	b.WriteString(" speed: ")
	writeThousands(&b, int64(bit2KB(db/dt)))
	b.WriteString(" (")

	if p.Details >= 1 {
		writeThousands(&b, int64(m.ShortTermRate(now, left)))
		b.WriteString(" -- ")
	}

	dt = max(wholeSeconds(now.Sub(m.start)-m.paused), 1)
	writeThousands(&b, int64(bit2KB((p.Total-left)/dt)))
	b.WriteByte(')')

	if p.Kind == SyncTarget || p.Kind == VerifySource {
		b.WriteString(" want: ")
		writeThousands(&b, int64(p.Want))
	}
	b.WriteString(" K/sec")
	if stalled {
		b.WriteString(" (stalled)")
	}
	b.WriteByte('\n')

	if p.Details >= 1 {
		bmBits := p.BitmapBits
		pos := p.Position
		var stop uint64
		if p.Kind.verify() {
			pos = bmBits - p.Left
			stop = p.StopSector
		}
		fmt.Fprintf(&b, "\t%3d%% sector pos: %d/%d", int(pos/(bmBits/100+1)), pos*SectorsPerBit, bmBits*SectorsPerBit)
		if stop != 0 && stop != math.MaxUint64 {
			fmt.Fprintf(&b, " stop sector: %d", stop)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// FormatThousands formats v with ',' between groups of three digits, the
// way /proc/drbd prints KiB/s (DRBD groups at most three levels).
func FormatThousands(v int64) string {
	var b strings.Builder
	writeThousands(&b, v)
	return b.String()
}

func writeThousands(b *strings.Builder, v int64) {
	switch {
	case v >= 1000000:
		fmt.Fprintf(b, "%d,", v/1000000)
		v %= 1000000
		fmt.Fprintf(b, "%03d,%03d", v/1000, v%1000)
	case v >= 1000:
		fmt.Fprintf(b, "%d,%03d", v/1000, v%1000)
	default:
		fmt.Fprintf(b, "%d", v)
	}
}

// DoneMessage returns the line DRBD logs when a resync or verify run
// ends at now, for example "Resync done (total 12 sec; paused 0 sec;
// 34132 K/sec)". total is the run's rs_total; ovLeft is a verify's
// ov_left at the end (ignored for a resync).
func DoneMessage(verify bool, m *Marks, now time.Time, total, ovLeft uint64) string {
	dt := max(wholeSeconds(now.Sub(m.start)-m.paused), 1)
	db := total
	what := "Resync"
	if verify {
		db -= ovLeft
		what = "Online verify"
	}
	paused := wholeSeconds(m.paused)
	return fmt.Sprintf("%s done (total %d sec; paused %d sec; %d K/sec)", what, dt+paused, paused, bit2KB(db/dt))
}
