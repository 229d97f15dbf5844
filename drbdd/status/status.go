// Package status renders drbdd's status file in the format of DRBD 8.4's
// /proc/drbd, field for field, so that scripts and monitoring written for
// DRBD keep working, and writes it atomically.
package status

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Version is the DRBD release whose protocol and /proc/drbd format drbdd
// follows; API and protocol range match it.
const (
	Version      = "8.4.11"
	APIVersion   = 1
	ProtocolMin  = 86
	ProtocolMax  = 101
	BuildTagLine = "srcversion: drbdd"
)

// Minor is one device's line pair in the status file.
type Minor struct {
	Minor int
	// Unconfigured is true for a minor that is StandAlone, Diskless and
	// Secondary: DRBD prints only "cs:Unconfigured" for those.
	Unconfigured bool

	ConnState, Role, PeerRole, Disk, PeerDisk string
	// Protocol is 'A', 'B' or 'C', or ' ' when there is no net config.
	Protocol byte
	// The six flag characters: suspended, after-sync-dependency,
	// peer-isp, user-isp, congestion reason, activity log suspended.
	Suspended, AftrIsp, PeerIsp, UserIsp bool
	Congestion                           byte
	ALSuspended                          bool

	// NetSend .. DiskRead count KiB; ALWrites and BMWrites count metadata
	// transactions; the rest are requests in flight.
	NetSend, NetRecv, DiskWrite, DiskRead, ALWrites, BMWrites uint64
	LocalCount, Pending, Unacked, AppPending, Epochs          int64
	// WriteOrdering is 'f' (flush), 'd' (drain) or 'n' (none).
	WriteOrdering byte
	// OutOfSync is the known out-of-sync data in KiB.
	OutOfSync uint64
	// Progress holds the resync/verify progress lines, already formatted,
	// each starting with a tab and ending with a newline; empty otherwise.
	Progress string
}

// Flags returns the six-character flag field ("r-----").
func (m *Minor) Flags() string {
	b := []byte("r-----")
	if m.Suspended {
		b[0] = 's'
	}
	if m.AftrIsp {
		b[1] = 'a'
	}
	if m.PeerIsp {
		b[2] = 'p'
	}
	if m.UserIsp {
		b[3] = 'u'
	}
	if m.Congestion != 0 {
		b[4] = m.Congestion
	}
	if m.ALSuspended {
		b[5] = 's'
	}
	return string(b)
}

// Render produces the whole status file for the given minors.
func Render(minors []Minor) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "version: %s (api:%d/proto:%d-%d)\n%s\n", Version, APIVersion, ProtocolMin, ProtocolMax, BuildTagLine)
	sorted := append([]Minor(nil), minors...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Minor < sorted[j].Minor })
	next := 0
	for i := range sorted {
		m := &sorted[i]
		// DRBD leaves one empty line wherever minor numbers have a gap.
		if m.Minor != next && i > 0 || (i == 0 && m.Minor != 0) {
			b.WriteByte('\n')
		}
		next = m.Minor + 1
		if m.Unconfigured {
			fmt.Fprintf(&b, "%2d: cs:Unconfigured\n", m.Minor)
			continue
		}
		proto := m.Protocol
		if proto == 0 {
			proto = ' '
		}
		wo := m.WriteOrdering
		if wo == 0 {
			wo = 'f'
		}
		fmt.Fprintf(&b, "%2d: cs:%s ro:%s/%s ds:%s/%s %c %s\n", m.Minor, m.ConnState, m.Role, m.PeerRole, m.Disk, m.PeerDisk, proto, m.Flags())
		fmt.Fprintf(&b, "    ns:%d nr:%d dw:%d dr:%d al:%d bm:%d lo:%d pe:%d ua:%d ap:%d ep:%d wo:%c oos:%d\n",
			m.NetSend, m.NetRecv, m.DiskWrite, m.DiskRead, m.ALWrites, m.BMWrites,
			m.LocalCount, m.Pending, m.Unacked, m.AppPending, m.Epochs, wo, m.OutOfSync)
		b.WriteString(m.Progress)
	}
	return b.Bytes()
}

// WriteAtomic replaces path with data so that readers see either the old
// or the new file, never a partial one: write a temporary file in the same
// directory, then rename it over path.
func WriteAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("status file: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("status file: %w", err)
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("status file: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("status file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("status file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("status file: %w", err)
	}
	return nil
}
