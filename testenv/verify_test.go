package testenv

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// corruptBlock overwrites one 4 KiB block of a backing file behind the
// daemon's back and returns what was there.
func corruptBlock(t testing.TB, path string, off int64) []byte {
	t.Helper()
	old := readBacking(t, path, off, 4096)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bad := bytes.Repeat([]byte("corrupted behind drbdd's back "), 4096/30+1)[:4096]
	if bytes.Equal(bad, old) {
		t.Fatal("test bug: corruption equals the old data")
	}
	if _, err := f.WriteAt(bad, off); err != nil {
		t.Fatal(err)
	}
	return old
}

// TestOnlineVerifyRepairs: online verify finds a block corrupted directly
// in the Secondary's backing file, marks it out of sync, and a
// disconnect/connect resyncs exactly that block.
func TestOnlineVerifyRepairs(t *testing.T) {
	RequireTools(t, "nbdsh")
	for _, alg := range []string{"crc32c", "sha256"} {
		t.Run(alg, func(t *testing.T) {
			p := NewPair(t, PairOptions{Net: map[string]string{"verify-alg": alg}})
			p.Up(t)
			p.InitialSync(t, p.A)
			chunks := scatterChunks(0x5a, 8, 64<<10, p.DataSize(t))
			nbdshWrite(t, p.URI[p.A], chunks)

			// A block inside the third wchunk, not on a wchunk boundary.
			bad := chunks[2].off + 3*4096
			good := corruptBlock(t, p.Disk[p.B], bad)
			if oos := p.A.Counter("oos"); oos != 0 {
				t.Fatalf("alice oos:%d before verify", oos)
			}

			markA := logLen(p.A)
			p.A.MustAdm("verify", "r0")
			waitLogAfter(t, p.A, markA, `Online verify done`, 40*time.Second)
			p.A.WaitState("cstate", "r0", "Connected", 10*time.Second)
			p.B.WaitState("cstate", "r0", "Connected", 10*time.Second)
			l := logAfter(p.A, markA)
			m := regexp.MustCompile(`Out of sync: start=(\d+), size=(\d+) \(sectors\)`).FindAllStringSubmatch(l, -1)
			if len(m) != 1 {
				t.Fatalf("verify reported %d out-of-sync ranges, want 1:\n%s", len(m), l)
			}
			start, _ := strconv.ParseInt(m[0][1], 10, 64)
			size, _ := strconv.ParseInt(m[0][2], 10, 64)
			if start*512 > bad || (start+size)*512 < bad+4096 {
				t.Errorf("verify reported sectors %d+%d, which do not cover the corrupted block at byte %d", start, size, bad)
			}
			oos := settledCounter(t, p.A, "oos")
			t.Logf("verify with %s: out of sync sectors %d+%d, alice oos:%d", alg, start, size, oos)
			if oos < 4 || oos > size/2 {
				t.Errorf("alice oos:%d KiB after verify found %d sectors", oos, size)
			}

			ns0 := settledCounter(t, p.A, "ns")
			mark := map[*Node]int{p.A: logLen(p.A), p.B: logLen(p.B)}
			p.A.MustAdm("disconnect", "r0")
			p.A.MustAdm("connect", "r0")
			p.waitSyncedStrict(t, time.Minute)
			if !regexp.MustCompile(`Began resync as SyncTarget`).MatchString(logAfter(p.B, mark[p.B])) {
				t.Errorf("bob did not resync after the reconnect:\nalice:\n%s\nbob:\n%s", logAfter(p.A, mark[p.A]), logAfter(p.B, mark[p.B]))
			}
			sent := settledCounter(t, p.A, "ns") - ns0
			if sent < oos || sent > oos+64 {
				t.Errorf("repair sent %d KiB for %d KiB out of sync", sent, oos)
			}
			if oos := settledCounter(t, p.A, "oos"); oos != 0 {
				t.Errorf("alice oos:%d after the repair", oos)
			}
			p.downBoth(t)
			p.CompareDisks(t)
			if got := readBacking(t, p.Disk[p.B], bad, 4096); !bytes.Equal(got, good) {
				t.Fatal("bob's corrupted block was not repaired")
			}
		})
	}
}

// TestOnlineVerifyClean: a verify of identical disks finds nothing and
// marks nothing.
func TestOnlineVerifyClean(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Net: map[string]string{"verify-alg": "crc32c"}})
	p.Up(t)
	p.InitialSync(t, p.A)
	nbdshWrite(t, p.URI[p.A], scatterChunks(0x11, 8, 64<<10, p.DataSize(t)))
	mark := logLen(p.A)
	p.A.MustAdm("verify", "r0")
	waitLogAfter(t, p.A, mark, `Online verify done`, 40*time.Second)
	p.A.WaitState("cstate", "r0", "Connected", 10*time.Second)
	if l := logAfter(p.A, mark); regexp.MustCompile(`Out of sync`).MatchString(l) {
		t.Errorf("verify of identical disks reported differences:\n%s", l)
	}
	if oos := settledCounter(t, p.A, "oos"); oos != 0 {
		t.Errorf("alice oos:%d after a clean verify", oos)
	}
}

// TestVerifyNeedsAlg: without verify-alg, verify is refused with DRBD's
// reason and the connection stays up.
func TestVerifyNeedsAlg(t *testing.T) {
	p := NewPair(t, PairOptions{})
	p.Up(t)
	p.InitialSync(t, p.A)
	out, err := p.A.Adm("verify", "r0")
	if err == nil {
		t.Fatalf("verify without verify-alg succeeded: %s", out)
	}
	t.Logf("verify without verify-alg: %s", out)
	if got := admOut(p.A, "cstate"); got != "Connected" {
		t.Fatalf("cstate %q after a refused verify", got)
	}
}

// TestChecksumResync: with csums-alg, blocks rewritten with the same data
// while disconnected are compared by digest and not sent again.
func TestChecksumResync(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Net: map[string]string{"csums-alg": "sha256"}})
	p.Up(t)
	p.InitialSync(t, p.A)
	span := p.DataSize(t) / 2
	same := scatterChunks(0x3c, 64, 64<<10, span) // 4 MiB, replicated now
	nbdshWrite(t, p.URI[p.A], same)

	p.B.MustAdm("disconnect", "r0")
	waitDegraded(t, p.A)
	var fresh []wchunk // 2 MiB of new data in the other half
	for _, c := range scatterChunks(0xc3, 32, 64<<10, span) {
		off := c.off + span
		fresh = append(fresh, wchunk{off, tagPattern(0xc3, off, len(c.data))})
	}
	nbdshWrite(t, p.URI[p.A], append(append([]wchunk{}, same...), fresh...))
	const sameKiB, freshKiB = 64 * 64, 32 * 64
	oos := settledCounter(t, p.A, "oos")
	if oos != sameKiB+freshKiB {
		t.Fatalf("alice oos:%d, want %d (every written block is out of sync)", oos, sameKiB+freshKiB)
	}

	ns0 := settledCounter(t, p.A, "ns")
	markB := logLen(p.B)
	p.B.MustAdm("connect", "r0")
	p.waitSyncedStrict(t, time.Minute)
	sent := settledCounter(t, p.A, "ns") - ns0
	t.Logf("checksum resync: %d KiB dirty, %d KiB new, alice sent %d KiB", oos, freshKiB, sent)
	if sent < freshKiB || sent > freshKiB*105/100+64 {
		t.Errorf("alice sent %d KiB; want about the %d KiB of new data, not the %d KiB dirty", sent, freshKiB, oos)
	}
	want := fmt.Sprintf("eliminated: %dK; transferred %dK total %dK", sameKiB, freshKiB, sameKiB+freshKiB)
	if l := logAfter(p.B, markB); !regexp.MustCompile(`had equal checksums, ` + regexp.QuoteMeta(want)).MatchString(l) {
		t.Errorf("bob did not log %q:\n%s", want, l)
	}
	p.downBoth(t)
	p.CompareDisks(t)
	if !diskHolds(t, p.Disk[p.B], fresh) || !diskHolds(t, p.Disk[p.B], same) {
		t.Fatal("bob lacks data after the checksum resync")
	}
}

// TestOnlineVerifyUnderWriteLoad: an online verify of identical disks
// while the Primary's clients keep writing must not report blocks that
// were merely being written (DRBD keeps application writes out of the
// extents a verify request covers until the answer is in). Both disks
// are identical at every moment a write is acknowledged under protocol C.
func TestOnlineVerifyUnderWriteLoad(t *testing.T) {
	RequireTools(t, "fio")
	p := NewPair(t, PairOptions{Net: map[string]string{"verify-alg": "crc32c"}, Disk: map[string]string{"c-plan-ahead": "0", "resync-rate": "16M"}})
	upSkipInitialSync(t, p)
	p.A.MustAdm("primary", "r0")
	stopFio := startFio(t, "--name=hot", "--ioengine=nbd", "--uri="+p.URI[p.A], "--rw=randwrite",
		"--bs=4k", "--iodepth=16", "--size=64M", "--time_based", "--runtime=40")
	WaitFor(t, 20*time.Second, "writes to flow", func() bool { return p.A.Counter("dw") > 1024 })

	mark := logLen(p.A)
	p.A.MustAdm("verify", "r0")
	waitLogAfter(t, p.A, mark, `Online verify done`, 50*time.Second)
	stopFio()
	l := logAfter(p.A, mark)
	if oos := regexp.MustCompile(`Out of sync: .*`).FindAllString(l, -1); len(oos) > 0 {
		t.Errorf("verify of disks that only differ by writes in flight reported %d ranges, e.g. %s", len(oos), oos[0])
	}
	t.Log(regexp.MustCompile(`Online verify done.*`).FindString(l))
	p.waitSyncedStrict(t, time.Minute)
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}
