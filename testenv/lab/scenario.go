package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ScenarioOptions configures RunScenario.
type ScenarioOptions struct {
	// Out receives the step log; nil means io.Discard.
	Out io.Writer
	// Files is how many files to write with checksums before the first
	// failover; 0 means 300. A third as many are written after it.
	Files int
	// ConnectTimeout bounds each wait for the nodes to connect; 0 means
	// 30 seconds.
	ConnectTimeout time.Duration
	// SyncTimeout bounds each wait for a sync or resync; 0 means 10
	// minutes.
	SyncTimeout time.Duration
}

// ScenarioReport is what RunScenario found.
type ScenarioReport struct {
	// Passed is false if any step failed.
	Passed bool
	// Err is why the scenario failed.
	Err error
	// BootTimes is each VM's first boot time.
	BootTimes map[string]time.Duration
	// InitialSync is the time the initial full sync took.
	InitialSync time.Duration
	// Failovers lists each change of Primary.
	Failovers []Failover
	// Resyncs lists each resync after a node came back.
	Resyncs []Resync
	// Steps lists each step with its duration.
	Steps []StepResult
}

// Failover is one change of Primary.
type Failover struct {
	// What happened, e.g. "a -> b (a hard-killed)".
	Name string
	// Noticed is how long the survivor took to notice a dead peer (0
	// for a switchover).
	Noticed time.Duration
	// Mounted is the time from the kill (or the start of the
	// switchover) to the filesystem checked and mounted on the new
	// Primary: the failover time.
	Mounted time.Duration
	// Verified adds the verification of every checksum.
	Verified time.Duration
}

// Resync is the resync of a node that came back.
type Resync struct {
	// Node is the node that received the resync; Why says why it was
	// needed.
	Node, Why string
	// ReceivedKiB is what Node received (its status's nr:).
	ReceivedKiB int64
	// DeviceKiB is the size of the disk.
	DeviceKiB int64
	// Took is the time from "drbdadm up" to UpToDate/UpToDate.
	Took time.Duration
}

// StepResult is one step of the scenario.
type StepResult struct {
	Name     string
	Duration time.Duration
	Err      error
}

// Verdict returns the scenario's last line: PASS, or FAIL with the reason.
func (r *ScenarioReport) Verdict() string {
	if r.Passed {
		return "PASS"
	}
	return fmt.Sprintf("FAIL: %v", r.Err)
}

// labALExtents is the activity log size of the scenario's resource: 16
// extents of 4 MiB, a quarter of the 256 MiB lab disk. A crashed Primary
// resyncs every extent in its log, and DRBD's default of 1237 extents
// covers the whole disk many times over.
const labALExtents = 16

// alExtentKiB is the size of an activity log extent.
const alExtentKiB = 4 << 10

// resyncSlackKiB is what a returning node may receive beyond its activity
// log: the survivor's writes while it was away (journal replay, mount).
const resyncSlackKiB = 16 << 10

// scenario carries the state of one run.
type scenario struct {
	ctx context.Context
	l   *Lab
	o   ScenarioOptions
	rep *ScenarioReport
	n   int

	// What was written and must be found again.
	sets    []fileSet
	loads   []loadRun
	flushed []flushFile
}

// fileSet is a directory of files under /mnt/r0 and their checksums.
type fileSet struct {
	dir  string
	sums string // sha256sum output, relative names
	n    int
}

// loadRun is a write load: files DIR/l1..lN, each acknowledged (fsynced).
type loadRun struct {
	dir   string
	acked int
}

// flushFile is a pattern written with sync(1) (flush-TAG.sync) and with
// O_DIRECT|O_DSYNC overwrites (flush-TAG.fua) right before a crash.
type flushFile struct {
	tag, sum string
}

// step runs fn as a numbered, timed step; a failed step ends the scenario.
func (s *scenario) step(name string, fn func() error) error {
	s.n++
	fmt.Fprintf(s.o.Out, "==> [%2d] %s\n", s.n, name)
	start := time.Now()
	err := fn()
	d := time.Since(start)
	s.rep.Steps = append(s.rep.Steps, StepResult{Name: name, Duration: d, Err: err})
	if err != nil {
		fmt.Fprintf(s.o.Out, "    FAILED after %v: %v\n", d.Round(time.Millisecond), err)
		return fmt.Errorf("step %d (%s): %w", s.n, name, err)
	}
	fmt.Fprintf(s.o.Out, "    ok (%v)\n", d.Round(time.Millisecond))
	return nil
}

func (s *scenario) logf(format string, args ...any) {
	fmt.Fprintf(s.o.Out, "    "+format+"\n", args...)
}

// sh runs a command that must succeed.
func (s *scenario) sh(v *VM, cmd string) (string, error) {
	return MustRun(s.ctx, v, cmd)
}

// ResourceYAML renders the lab's resource r0 for the given nodes: protocol
// C, /dev/nbd0, each node's /dev/vda with internal metadata, replication on
// 10.99.0.N:7789 and an NBD export on 127.0.0.1:10809 inside each VM, and
// an activity log of alExtents extents (0: drbdd's default).
func ResourceYAML(nodes []string, alExtents int) string {
	var b strings.Builder
	// Short pings, so that the survivor notices a dead peer within
	// seconds (DRBD's defaults take over 10).
	b.WriteString("resource: r0\nprotocol: C\ndevice: /dev/nbd0\nnet:\n  ping-int: 3s\n  ping-timeout: 1s\n  timeout: 2500ms\n  connect-int: 3s\n")
	if alExtents > 0 {
		fmt.Fprintf(&b, "disk:\n  al-extents: %d\n", alExtents)
	}
	b.WriteString("on:\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, "  %s:\n    address: 10.99.0.%d:7789\n    disk: /dev/vda\n    meta-disk: internal\n    nbd-listen: 127.0.0.1:10809\n", n, i+1)
	}
	return b.String()
}

// startDrbdd starts the daemon in v and waits for its control socket.
func startDrbdd(ctx context.Context, v *VM) error { return startDrbddEnv(ctx, v, "") }

// startDrbddEnv is startDrbdd with environment assignments (NAME=value
// words) for the daemon. The host's DRBDD_LAB_DRBDD_ENV comes first, so
// that a user can try the daemon's knobs (DRBDD_NO_AIO=1, GOMAXPROCS=2)
// in the lab.
func startDrbddEnv(ctx context.Context, v *VM, env string) error {
	env = strings.TrimSpace(os.Getenv("DRBDD_LAB_DRBDD_ENV") + " " + env)
	// A killed daemon leaves its control socket behind; it goes first, so
	// that the wait below is for the new daemon's socket.
	_, err := MustRun(ctx, v, `if pidof drbdd >/dev/null; then echo "drbdd is already running"; exit 1; fi
rm -f /run/drbdd/drbdd.sock
`+env+` setsid drbdd </dev/null >>/var/log/drbdd.log 2>&1 &
for i in $(seq 100); do [ -S /run/drbdd/drbdd.sock ] && exit 0; sleep 0.1; done
echo "drbdd did not create its control socket:"; cat /var/log/drbdd.log; exit 1`)
	return err
}

// writeResource writes /etc/drbdd/r0.yaml in v (the VMs' root is in
// RAM: a restarted VM needs it again).
func writeResource(ctx context.Context, l *Lab, v *VM, alExtents int) error {
	nodes := make([]string, 0, len(l.VMs))
	for _, vm := range l.VMs {
		nodes = append(nodes, vm.Name())
	}
	r, err := v.Exec(ctx, "cat >/etc/drbdd/r0.yaml", []byte(ResourceYAML(nodes, alExtents)))
	if err == nil && r.Code != 0 {
		err = fmt.Errorf("exit %d: %s", r.Code, r.Stderr)
	}
	if err != nil {
		return fmt.Errorf("%s: writing the resource file: %w", v.Name(), err)
	}
	return nil
}

// startNode writes the resource file and starts drbdd in v.
func (s *scenario) startNode(v *VM) error {
	if err := writeResource(s.ctx, s.l, v, labALExtents); err != nil {
		return err
	}
	return startDrbdd(s.ctx, v)
}

// restartNode boots v again (after a kill), starts drbdd and brings r0 up.
func (s *scenario) restartNode(v *VM) error {
	if err := v.Boot(s.ctx); err != nil {
		return err
	}
	s.logf("%s booted in %v", v.Name(), v.BootTime().Round(time.Millisecond))
	if err := s.startNode(v); err != nil {
		return err
	}
	_, err := s.adm(v, "up r0")
	return err
}

// adm runs drbdadm in v.
func (s *scenario) adm(v *VM, args string) (string, error) {
	return s.sh(v, "drbdadm "+args)
}

// attachedCheck succeeds when /dev/nbd0 shows drbdd's r0.
const attachedCheck = `[ "$(cat /sys/block/nbd0/backend 2>/dev/null)" = drbdd:r0 ] && [ "$(cat /sys/block/nbd0/size)" != 0 ]`

// waitAttached waits until drbdd has attached (or, with !want, detached)
// /dev/nbd0 in v.
func (s *scenario) waitAttached(v *VM, want bool) error {
	if WaitFor(s.ctx, 10*time.Second, 100*time.Millisecond, func() bool {
		_, code, err := v.Run(s.ctx, attachedCheck)
		return err == nil && (code == 0) == want
	}) {
		return nil
	}
	state, _, _ := v.Run(s.ctx, "echo backend=$(cat /sys/block/nbd0/backend 2>/dev/null) size=$(cat /sys/block/nbd0/size)")
	if want {
		return fmt.Errorf("%s: drbdd did not attach /dev/nbd0 (%s)", v.Name(), strings.TrimSpace(state))
	}
	return fmt.Errorf("%s: /dev/nbd0 still attached after demotion (%s)", v.Name(), strings.TrimSpace(state))
}

// isConnected reports whether a DRBD connection state means the peers
// talk: Connected, or one of the resync and verify states.
func isConnected(cstate string) bool {
	for _, p := range []string{"Connected", "StartingSync", "WFBitMap", "WFSyncUUID", "Sync", "PausedSync", "Verify"} {
		if strings.HasPrefix(cstate, p) {
			return true
		}
	}
	return false
}

// waitConnected waits until v's connection is up.
func (s *scenario) waitConnected(v *VM) error {
	var last string
	if WaitFor(s.ctx, s.o.ConnectTimeout, 250*time.Millisecond, func() bool {
		out, _, _ := v.Run(s.ctx, "drbdadm cstate r0")
		last = strings.TrimSpace(out)
		return isConnected(last)
	}) {
		return nil
	}
	log, _, _ := v.Run(s.ctx, "tail -n 20 /var/log/drbdd.log")
	return fmt.Errorf("%s: cstate still %q after %v; drbdd.log:\n%s", v.Name(), last, s.o.ConnectTimeout, log)
}

// waitDstate waits until drbdadm dstate r0 prints want on v.
func (s *scenario) waitDstate(v *VM, want string) error {
	var last string
	if WaitFor(s.ctx, s.o.SyncTimeout, time.Second, func() bool {
		out, _, _ := v.Run(s.ctx, "drbdadm dstate r0")
		last = strings.TrimSpace(out)
		return last == want
	}) {
		return nil
	}
	return fmt.Errorf("%s: dstate %q, want %q after %v", v.Name(), last, want, s.o.SyncTimeout)
}

// writeFilesCmd writes n files of varied sizes (512 B to 60 KiB) into
// /mnt/r0/DIR and prints their checksums.
func writeFilesCmd(dir string, n int) string {
	return fmt.Sprintf(`set -e
mkdir -p /mnt/r0/%[1]s
i=0
while [ $i -lt %[2]d ]; do
	dd if=/dev/urandom of=/mnt/r0/%[1]s/f$i bs=$((512 + (i * 7919) %% 60000)) count=1 2>/dev/null
	i=$((i+1))
done
cd /mnt/r0/%[1]s && sha256sum f*`, dir, n)
}

// writeFiles writes a file set in v and records its checksums.
func (s *scenario) writeFiles(v *VM, dir string, n int) error {
	out, err := s.sh(v, writeFilesCmd(dir, n))
	if err != nil {
		return err
	}
	if got := strings.Count(out, "\n"); got != n {
		return fmt.Errorf("%d checksums for %d files", got, n)
	}
	s.sets = append(s.sets, fileSet{dir: dir, sums: out, n: n})
	return nil
}

// loadCmd starts a write load in the background: file DIR/lN holds N's
// pattern and is fsynced before N is appended to /root/load.acked. It
// stops when /root/load.stop exists, then creates /root/load.stopped.
func loadCmd(dir string) string {
	return fmt.Sprintf(`rm -f /root/load.stop /root/load.stopped; : >/root/load.acked
mkdir -p /mnt/r0/%[1]s
setsid sh -c 'n=0; while [ ! -e /root/load.stop ]; do n=$((n+1)); yes "%[1]s $n" | head -c 65536 | dd of=/mnt/r0/%[1]s/l$n bs=64k conv=fsync 2>/dev/null || break; echo $n >>/root/load.acked; done; touch /root/load.stopped' </dev/null >/dev/null 2>&1 &`, dir)
}

// verifyLoadCmd checks load files DIR/l1..lN.
func verifyLoadCmd(dir string, n int) string {
	return fmt.Sprintf(`i=1; bad=0
while [ $i -le %[2]d ]; do
	if [ "$(yes "%[1]s $i" | head -c 65536 | sha256sum)" != "$(sha256sum </mnt/r0/%[1]s/l$i)" ]; then echo "%[1]s/l$i differs"; bad=1; fi
	i=$((i+1))
done
exit $bad`, dir, n)
}

// startLoad starts a write load into dir on v and waits for 5
// acknowledged writes.
func (s *scenario) startLoad(v *VM, dir string) error {
	if _, err := s.sh(v, loadCmd(dir)); err != nil {
		return err
	}
	if !WaitFor(s.ctx, 60*time.Second, 250*time.Millisecond, func() bool {
		return s.acked(v) >= 5
	}) {
		return fmt.Errorf("the write load acknowledged fewer than 5 writes in 60s")
	}
	return nil
}

// acked returns how many writes v's load has acknowledged.
func (s *scenario) acked(v *VM) int {
	out, _, _ := v.Run(s.ctx, "tail -n 1 /root/load.acked")
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

// stopLoad stops v's load and records what it acknowledged.
func (s *scenario) stopLoad(v *VM, dir string) error {
	if _, err := s.sh(v, "touch /root/load.stop; for i in $(seq 300); do [ -e /root/load.stopped ] && exit 0; sleep 0.1; done; echo the load did not stop; exit 1"); err != nil {
		return err
	}
	n := s.acked(v)
	s.loads = append(s.loads, loadRun{dir: dir, acked: n})
	s.logf("%s: load stopped after %d acknowledged writes", v.Name(), n)
	return nil
}

// flushCmd writes a 1 MiB random pattern as /mnt/r0/flush-TAG.sync
// through the page cache followed by sync(1) (FLUSH), and over the
// allocated file /mnt/r0/flush-TAG.fua with O_DIRECT|O_DSYNC overwrites
// (FUA writes), then prints the pattern's checksum.
func flushCmd(tag string) string {
	return fmt.Sprintf(`set -e
head -c 1048576 /dev/urandom >/root/flush-%[1]s
head -c 1048576 /dev/zero >/mnt/r0/flush-%[1]s.fua
sync
cp /root/flush-%[1]s /mnt/r0/flush-%[1]s.sync
sync
labio -direct -dsync -bs 65536 /root/flush-%[1]s /mnt/r0/flush-%[1]s.fua
sha256sum </root/flush-%[1]s | cut -d' ' -f1`, tag)
}

// writeFlush runs flushCmd in v and records the pattern.
func (s *scenario) writeFlush(v *VM, tag string) error {
	out, err := s.sh(v, flushCmd(tag))
	if err != nil {
		return err
	}
	sum := strings.TrimSpace(out)
	if len(sum) != 64 {
		return fmt.Errorf("flush pattern: bad checksum %q", sum)
	}
	s.flushed = append(s.flushed, flushFile{tag: tag, sum: sum})
	return nil
}

// verifyAll checks, on v with /mnt/r0 mounted, every file set, every
// acknowledged load write and every flushed pattern written so far.
func (s *scenario) verifyAll(v *VM) error {
	files := 0
	for _, fs := range s.sets {
		r, err := v.Exec(s.ctx, fmt.Sprintf("cd /mnt/r0/%s && sha256sum -c - | grep -v ': OK$'; [ $(ls | wc -l) = %d ]", fs.dir, fs.n), []byte(fs.sums))
		if err != nil {
			return err
		}
		if r.Code != 0 || strings.TrimSpace(r.Stdout) != "" {
			return fmt.Errorf("%s: checksums in /mnt/r0/%s: %s%s", v.Name(), fs.dir, r.Stdout, r.Stderr)
		}
		files += fs.n
	}
	writes := 0
	for _, ld := range s.loads {
		if _, err := s.sh(v, verifyLoadCmd(ld.dir, ld.acked)); err != nil {
			return fmt.Errorf("acknowledged load writes: %w", err)
		}
		writes += ld.acked
	}
	for _, f := range s.flushed {
		for _, suffix := range []string{"sync", "fua"} {
			out, err := s.sh(v, fmt.Sprintf("sha256sum </mnt/r0/flush-%s.%s", f.tag, suffix))
			if err != nil {
				return err
			}
			if got := strings.Fields(out); len(got) == 0 || got[0] != f.sum {
				return fmt.Errorf("%s: /mnt/r0/flush-%s.%s differs from the pattern written before the crash", v.Name(), f.tag, suffix)
			}
		}
	}
	s.logf("%s: %d files in %d sets, %d acknowledged load writes, %d flushed patterns: all intact",
		v.Name(), files, len(s.sets), writes, len(s.flushed))
	return nil
}

// fsckAndMount checks the filesystem on v's /dev/nbd0 and mounts it. The
// filesystem may have been mounted when its node died: mounting replays
// the journal (and orphans), then e2fsck must find it clean.
func (s *scenario) fsckAndMount(v *VM) error {
	if _, err := s.sh(v, "mkdir -p /mnt/r0 && mount -t ext4 /dev/nbd0 /mnt/r0 && umount /mnt/r0"); err != nil {
		return err
	}
	if _, err := s.sh(v, "e2fsck -fn /dev/nbd0"); err != nil {
		return err
	}
	_, err := s.sh(v, "mount -t ext4 /dev/nbd0 /mnt/r0")
	return err
}

// checkResync records v's resync and fails if it received more than the
// activity log can cover plus what the survivor wrote meanwhile.
func (s *scenario) checkResync(v *VM, why string, took time.Duration) error {
	// The status file follows the counters within a second.
	time.Sleep(1100 * time.Millisecond)
	status, err := s.sh(v, "cat /run/drbdd/status")
	if err != nil {
		return err
	}
	s.logf("%s after the resync:\n%s", v.Name(), indent(status, "      "))
	size, err := s.sh(v, "cat /sys/block/vda/size")
	if err != nil {
		return err
	}
	sectors, _ := strconv.ParseInt(strings.TrimSpace(size), 10, 64)
	r := Resync{Node: v.Name(), Why: why, ReceivedKiB: fieldInt(status, "nr:"), DeviceKiB: sectors / 2, Took: took}
	s.rep.Resyncs = append(s.rep.Resyncs, r)
	limit := int64(labALExtents*alExtentKiB + resyncSlackKiB)
	s.logf("resync: %s received %d KiB of a %d KiB disk (%.1f%%; limit %d KiB = %d activity log extents + %d KiB) in %v",
		r.Node, r.ReceivedKiB, r.DeviceKiB, 100*float64(r.ReceivedKiB)/float64(r.DeviceKiB), limit, labALExtents, resyncSlackKiB, took.Round(time.Millisecond))
	if r.ReceivedKiB < 0 {
		return fmt.Errorf("no nr: field in the status")
	}
	if r.ReceivedKiB > limit {
		return fmt.Errorf("the resync copied %d KiB, more than the %d KiB the activity log and the peer's writes can explain", r.ReceivedKiB, limit)
	}
	return nil
}

// disklessPrimary replaces the disk under the Primary v's mounted
// filesystem, as a DRBD user would: detach, go on writing (v serves its
// peer's disk), attach, and v resyncs only the blocks written meanwhile.
func (s *scenario) disklessPrimary(v, peer *VM) error {
	return s.step("on "+v.Name()+": detach its disk under the mounted filesystem, write files through "+peer.Name()+"'s disk, attach: it resyncs only what it missed", func() error {
		nr := func() (int64, error) {
			time.Sleep(1100 * time.Millisecond) // the status file's refresh
			st, err := s.sh(v, "cat /run/drbdd/status")
			return fieldInt(st, "nr:"), err
		}
		nr0, err := nr()
		if err != nil {
			return err
		}
		if _, err := s.adm(v, "detach r0"); err != nil {
			return err
		}
		if err := s.waitDstate(v, "Diskless/UpToDate"); err != nil {
			return err
		}
		if err := s.writeFiles(v, "files-diskless", s.o.Files/3); err != nil {
			return err
		}
		if _, err := s.sh(v, "sync"); err != nil {
			return err
		}
		start := time.Now()
		if _, err := s.adm(v, "attach r0"); err != nil {
			return err
		}
		if err := s.waitDstate(v, "UpToDate/UpToDate"); err != nil {
			return err
		}
		took := time.Since(start)
		nr1, err := nr()
		if err != nil {
			return err
		}
		// nr also counts the reads v sent to its peer while diskless,
		// so this bounds the resync from above.
		got := nr1 - nr0
		size, err := s.sh(v, "cat /sys/block/vda/size")
		if err != nil {
			return err
		}
		sectors, _ := strconv.ParseInt(strings.TrimSpace(size), 10, 64)
		r := Resync{Node: v.Name(), Why: "re-attached its disk as Primary", ReceivedKiB: got, DeviceKiB: sectors / 2, Took: took}
		s.rep.Resyncs = append(s.rep.Resyncs, r)
		limit := int64(labALExtents*alExtentKiB + resyncSlackKiB)
		s.logf("resync: %s received %d KiB (limit %d KiB) in %v", v.Name(), got, limit, took.Round(time.Millisecond))
		if got > limit {
			return fmt.Errorf("the resync after the attach copied %d KiB, more than the %d KiB the diskless writes can explain", got, limit)
		}
		return s.verifyAll(v)
	})
}

// RunScenario is the lab's main job (scripts/lab.sh). With two nodes a
// and b it sets up resource r0, makes a Primary, puts ext4 on /dev/nbd0
// with checksummed files and a running write load, writes a pattern with
// sync(1) and with FUA writes and at once hard-kills a; b takes over and
// checks every acknowledged write; a comes back as Secondary and resyncs
// only what it missed; b's disk is detached and attached again under its
// mounted filesystem (b serves a's disk meanwhile) and b resyncs only
// what it missed; after more writes on b a planned switchover makes
// a Primary again; then a pattern is flushed and both nodes lose power at
// once, and both disks must hold it; both come back and resync. With one
// node it runs the single-node part: kill and restart with the checks.
//
// It prints each step and its time, then a summary; the caller prints
// the report's Verdict as the last line.
func RunScenario(ctx context.Context, l *Lab, o ScenarioOptions) (*ScenarioReport, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Files == 0 {
		o.Files = 300
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 30 * time.Second
	}
	if o.SyncTimeout == 0 {
		o.SyncTimeout = 10 * time.Minute
	}
	rep := &ScenarioReport{BootTimes: map[string]time.Duration{}}
	s := &scenario{ctx: ctx, l: l, o: o, rep: rep}
	var err error
	switch len(l.VMs) {
	case 1:
		err = s.runSingle()
	case 2:
		err = s.runPair()
	default:
		err = fmt.Errorf("the scenario needs one or two VMs, not %d", len(l.VMs))
	}
	rep.Passed, rep.Err = err == nil, err
	s.summary()
	return rep, err
}

// summary prints the steps and the measurements.
func (s *scenario) summary() {
	w := s.o.Out
	fmt.Fprintln(w, "\nsteps:")
	width := 0
	for _, st := range s.rep.Steps {
		width = max(width, len(st.Name))
	}
	for i, st := range s.rep.Steps {
		mark := "ok"
		if st.Err != nil {
			mark = "FAILED"
		}
		fmt.Fprintf(w, "  %2d %-*s %9v  %s\n", i+1, width, st.Name, st.Duration.Round(10*time.Millisecond), mark)
	}
	fmt.Fprintln(w, "measured:")
	for _, v := range s.l.VMs {
		if d, ok := s.rep.BootTimes[v.Name()]; ok {
			fmt.Fprintf(w, "  boot %-8s %v\n", v.Name(), d.Round(time.Millisecond))
		}
	}
	if s.rep.InitialSync > 0 {
		fmt.Fprintf(w, "  initial sync  %v\n", s.rep.InitialSync.Round(time.Millisecond))
	}
	for _, f := range s.rep.Failovers {
		fmt.Fprintf(w, "  failover %s: %v to mounted, %v to every checksum verified", f.Name, f.Mounted.Round(time.Millisecond), f.Verified.Round(time.Millisecond))
		if f.Noticed > 0 {
			fmt.Fprintf(w, " (peer loss noticed after %v)", f.Noticed.Round(time.Millisecond))
		}
		fmt.Fprintln(w)
	}
	for _, r := range s.rep.Resyncs {
		fmt.Fprintf(w, "  resync to %s (%s): %d KiB of %d KiB (%.1f%%) in %v\n", r.Node, r.Why, r.ReceivedKiB, r.DeviceKiB,
			100*float64(r.ReceivedKiB)/float64(r.DeviceKiB), r.Took.Round(time.Millisecond))
	}
}

// setup runs the first steps on every node: boot, resource file, drbdd,
// create-md, up.
func (s *scenario) setup() error {
	var names []string
	for _, v := range s.l.VMs {
		names = append(names, v.Name())
	}
	if err := s.step("boot "+strings.Join(names, ", "), func() error {
		if err := s.l.Boot(s.ctx); err != nil {
			return err
		}
		for _, v := range s.l.VMs {
			s.rep.BootTimes[v.Name()] = v.BootTime()
			s.logf("%s booted in %v", v.Name(), v.BootTime().Round(time.Millisecond))
		}
		return nil
	}); err != nil {
		return err
	}
	return s.step("write /etc/drbdd/r0.yaml, start drbdd, create-md, up", func() error {
		for _, v := range s.l.VMs {
			if err := s.startNode(v); err != nil {
				return err
			}
			if _, err := s.adm(v, "create-md --force r0"); err != nil {
				return err
			}
			if _, err := s.adm(v, "up r0"); err != nil {
				return err
			}
		}
		return nil
	})
}

// fill runs the steps on the new Primary a: filesystem, files, the
// refused demotion, a running load and the status of every node.
func (s *scenario) fill(a *VM) error {
	if err := s.step("mkfs.ext4 /dev/nbd0 and mount /mnt/r0 on "+a.Name(), func() error {
		// drbdd offers FLUSH and FUA: the kernel must pass both on
		// rather than emulate FUA with flushes or drop them.
		q, err := s.sh(a, "cat /sys/block/nbd0/queue/write_cache /sys/block/nbd0/queue/fua")
		if err != nil {
			return err
		}
		if f := strings.Split(strings.TrimSpace(q), "\n"); len(f) != 2 || f[0] != "write back" || f[1] != "1" {
			return fmt.Errorf("/dev/nbd0: write_cache, fua = %q, want \"write back\", 1", f)
		}
		_, err = s.sh(a, "mkfs.ext4 -q -F /dev/nbd0 && mkdir -p /mnt/r0 && mount -t ext4 /dev/nbd0 /mnt/r0")
		return err
	}); err != nil {
		return err
	}
	if err := s.step(fmt.Sprintf("write %d files with checksums", s.o.Files), func() error {
		return s.writeFiles(a, "files", s.o.Files)
	}); err != nil {
		return err
	}
	if err := s.step("drbdadm secondary refused while mounted", func() error {
		r, err := a.Exec(s.ctx, "drbdadm secondary r0", nil)
		if err != nil {
			return err
		}
		if r.Code == 0 {
			return fmt.Errorf("drbdadm secondary succeeded under a mounted filesystem")
		}
		s.logf("refused: %s", strings.TrimSpace(r.Stderr+r.Stdout))
		return s.waitAttached(a, true)
	}); err != nil {
		return err
	}
	return s.step("running write load (64 KiB files, each fsynced), status on every node", func() error {
		if err := s.startLoad(a, "load"); err != nil {
			return err
		}
		for _, v := range s.l.VMs {
			out, _ := s.sh(v, "cat /run/drbdd/status")
			s.logf("%s: /run/drbdd/status:\n%s", v.Name(), indent(out, "      "))
		}
		return nil
	})
}

// flushAndKill writes flush pattern tag on v and hard-kills v at once,
// recording the load's acknowledged writes; it returns the time of the
// kill.
func (s *scenario) flushAndKill(v *VM, tag string) (time.Time, error) {
	var killedAt time.Time
	err := s.step("sync and FUA-write a pattern, then at once hard-kill "+v.Name()+" (qemu SIGKILL) under load", func() error {
		if err := s.writeFlush(v, tag); err != nil {
			return err
		}
		n := s.acked(v)
		killedAt = time.Now()
		v.Kill()
		s.loads = append(s.loads, loadRun{dir: "load", acked: n})
		s.logf("%d load writes acknowledged before the kill", n)
		return nil
	})
	return killedAt, err
}

func (s *scenario) runSingle() error {
	a := s.l.VMs[0]
	if err := s.setup(); err != nil {
		return err
	}
	if err := s.step("primary --force r0 on "+a.Name()+": drbdd attaches /dev/nbd0", func() error {
		if _, err := s.adm(a, "primary --force r0"); err != nil {
			return err
		}
		return s.waitAttached(a, true)
	}); err != nil {
		return err
	}
	if err := s.fill(a); err != nil {
		return err
	}
	if _, err := s.flushAndKill(a, "1"); err != nil {
		return err
	}
	return s.step("restart "+a.Name()+" alone: up, primary, fsck, mount, verify", func() error {
		if err := s.restartNode(a); err != nil {
			return err
		}
		ds, _ := s.adm(a, "dstate r0")
		s.logf("dstate after the crash: %s", strings.TrimSpace(ds))
		if _, err := s.adm(a, "primary r0"); err != nil {
			s.logf("primary refused (%v); using --force", err)
			if _, err := s.adm(a, "primary --force r0"); err != nil {
				return err
			}
		}
		if err := s.waitAttached(a, true); err != nil {
			return err
		}
		if err := s.fsckAndMount(a); err != nil {
			return err
		}
		return s.verifyAll(a)
	})
}

func (s *scenario) runPair() error {
	a, b := s.l.VMs[0], s.l.VMs[1]
	if err := s.setup(); err != nil {
		return err
	}
	if err := s.step("wait for "+a.Name()+" and "+b.Name()+" to connect", func() error {
		return s.waitConnected(a)
	}); err != nil {
		return err
	}
	var syncStart time.Time
	if err := s.step("primary --force r0 on "+a.Name()+": drbdd attaches /dev/nbd0", func() error {
		syncStart = time.Now()
		if _, err := s.adm(a, "primary --force r0"); err != nil {
			return err
		}
		return s.waitAttached(a, true)
	}); err != nil {
		return err
	}
	if err := s.step("initial sync "+a.Name()+" -> "+b.Name(), func() error {
		if err := s.waitDstate(a, "UpToDate/UpToDate"); err != nil {
			return err
		}
		s.rep.InitialSync = time.Since(syncStart)
		time.Sleep(1100 * time.Millisecond) // the status file's refresh
		st, _ := s.sh(b, "cat /run/drbdd/status")
		s.logf("%s received %d KiB in %v (since primary --force)", b.Name(), fieldInt(st, "nr:"), s.rep.InitialSync.Round(time.Millisecond))
		return nil
	}); err != nil {
		return err
	}
	if err := s.fill(a); err != nil {
		return err
	}

	// Failover 1: a dies.
	killedAt, err := s.flushAndKill(a, "1")
	if err != nil {
		return err
	}
	if err := s.step("failover: "+b.Name()+" notices, primary, fsck, mount, verify", func() error {
		f := Failover{Name: a.Name() + " -> " + b.Name() + " (" + a.Name() + " hard-killed)"}
		var cs string
		if !WaitFor(s.ctx, time.Minute, 100*time.Millisecond, func() bool {
			out, _, _ := b.Run(s.ctx, "drbdadm cstate r0")
			cs = strings.TrimSpace(out)
			return !isConnected(cs)
		}) {
			return fmt.Errorf("%s still %s a minute after the peer died", b.Name(), cs)
		}
		f.Noticed = time.Since(killedAt)
		s.logf("%s noticed the loss after %v (cstate %s)", b.Name(), f.Noticed.Round(time.Millisecond), cs)
		if _, err := s.adm(b, "primary r0"); err != nil {
			return err
		}
		if err := s.waitAttached(b, true); err != nil {
			return err
		}
		if err := s.fsckAndMount(b); err != nil {
			return err
		}
		f.Mounted = time.Since(killedAt)
		if err := s.verifyAll(b); err != nil {
			return err
		}
		f.Verified = time.Since(killedAt)
		s.rep.Failovers = append(s.rep.Failovers, f)
		s.logf("failover time (kill to mounted on %s): %v; to verified: %v", b.Name(), f.Mounted.Round(time.Millisecond), f.Verified.Round(time.Millisecond))
		return nil
	}); err != nil {
		return err
	}
	if err := s.step("restart "+a.Name()+": it comes back Secondary and resyncs only what it missed", func() error {
		start := time.Now()
		if err := s.restartNode(a); err != nil {
			return err
		}
		if err := s.waitDstate(a, "UpToDate/UpToDate"); err != nil {
			return err
		}
		took := time.Since(start)
		role, _ := s.adm(a, "role r0")
		if !strings.HasPrefix(strings.TrimSpace(role), "Secondary/") {
			return fmt.Errorf("%s came back as %q, want Secondary", a.Name(), strings.TrimSpace(role))
		}
		return s.checkResync(a, "returned after a crash", took)
	}); err != nil {
		return err
	}

	if err := s.disklessPrimary(b, a); err != nil {
		return err
	}

	// Failover 2: a planned switchover back to a.
	if err := s.step(fmt.Sprintf("on %s: write %d more files, start a write load", b.Name(), s.o.Files/3), func() error {
		if err := s.writeFiles(b, "files-"+b.Name(), s.o.Files/3); err != nil {
			return err
		}
		return s.startLoad(b, "load-"+b.Name())
	}); err != nil {
		return err
	}
	if err := s.step("switchover back to "+a.Name()+": stop load, umount and secondary on "+b.Name()+", primary, fsck, mount, verify on "+a.Name(), func() error {
		f := Failover{Name: b.Name() + " -> " + a.Name() + " (switchover)"}
		start := time.Now()
		mark := func(what string) { s.logf("%-34s +%v", what, time.Since(start).Round(time.Millisecond)) }
		if err := s.stopLoad(b, "load-"+b.Name()); err != nil {
			return err
		}
		mark("load stopped on " + b.Name())
		if _, err := s.sh(b, "umount /mnt/r0"); err != nil {
			return err
		}
		mark("unmounted on " + b.Name())
		if _, err := s.adm(b, "secondary r0"); err != nil {
			return err
		}
		if err := s.waitAttached(b, false); err != nil {
			return err
		}
		mark(b.Name() + " Secondary, /dev/nbd0 detached")
		if _, err := s.adm(a, "primary r0"); err != nil {
			return err
		}
		if err := s.waitAttached(a, true); err != nil {
			return err
		}
		mark(a.Name() + " Primary, /dev/nbd0 attached")
		if err := s.fsckAndMount(a); err != nil {
			return err
		}
		f.Mounted = time.Since(start)
		mark("fsck clean, mounted on " + a.Name())
		if err := s.verifyAll(a); err != nil {
			return err
		}
		f.Verified = time.Since(start)
		mark("verified on " + a.Name())
		s.rep.Failovers = append(s.rep.Failovers, f)
		return nil
	}); err != nil {
		return err
	}

	// Power loss of both nodes right after a flush.
	if err := s.step("sync and FUA-write a pattern on "+a.Name()+", then at once kill both "+a.Name()+" and "+b.Name(), func() error {
		if err := s.writeFlush(a, "2"); err != nil {
			return err
		}
		a.Kill()
		b.Kill()
		return nil
	}); err != nil {
		return err
	}
	if err := s.step("on the host: both disks hold the pattern (e2fsck and debugfs on a copy of each disk image)", func() error {
		for _, v := range []*VM{a, b} {
			if err := s.checkImage(v, s.flushed[len(s.flushed)-1]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return s.step("restart "+a.Name()+" and "+b.Name()+": connect, resync, primary on "+a.Name()+", fsck, mount, verify", func() error {
		start := time.Now()
		errs := make(chan error, 2)
		for _, v := range []*VM{a, b} {
			go func() { errs <- v.Boot(s.ctx) }()
		}
		if err := errors.Join(<-errs, <-errs); err != nil {
			return err
		}
		for _, v := range []*VM{a, b} {
			s.logf("%s booted in %v", v.Name(), v.BootTime().Round(time.Millisecond))
			if err := s.startNode(v); err != nil {
				return err
			}
			if _, err := s.adm(v, "up r0"); err != nil {
				return err
			}
		}
		if err := s.waitConnected(a); err != nil {
			return err
		}
		for _, v := range []*VM{a, b} {
			if err := s.waitDstate(v, "UpToDate/UpToDate"); err != nil {
				return err
			}
		}
		took := time.Since(start)
		// The target is whichever received more.
		target := a
		sa, _ := s.sh(a, "cat /run/drbdd/status")
		sb, _ := s.sh(b, "cat /run/drbdd/status")
		if fieldInt(sb, "nr:") > fieldInt(sa, "nr:") {
			target = b
		}
		if err := s.checkResync(target, "both nodes lost power", took); err != nil {
			return err
		}
		if _, err := s.adm(a, "primary r0"); err != nil {
			return err
		}
		if err := s.waitAttached(a, true); err != nil {
			return err
		}
		if err := s.fsckAndMount(a); err != nil {
			return err
		}
		return s.verifyAll(a)
	})
}

// checkImage checks, on the host, that the disk image of the stopped VM v
// holds pattern f: it replays the journal of a copy of the image (drbdd's
// metadata is at the end, the filesystem at offset 0), requires e2fsck to
// find it clean and compares both files with the pattern.
func (s *scenario) checkImage(v *VM, f flushFile) error {
	if v.Running() {
		return fmt.Errorf("%s is running", v.Name())
	}
	dir, err := os.MkdirTemp(v.Dir(), "check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "disk.img")
	if _, err := run(s.ctx, "", nil, "cp", "--sparse=always", v.DiskPath(), img); err != nil {
		return err
	}
	// Exit 1 means the journal was replayed.
	if err := exec.CommandContext(s.ctx, "e2fsck", "-E", "journal_only", "-y", img).Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			return fmt.Errorf("%s's disk: e2fsck -E journal_only: %w", v.Name(), err)
		}
	}
	if out, err := exec.CommandContext(s.ctx, "e2fsck", "-fn", img).CombinedOutput(); err != nil {
		return fmt.Errorf("%s's disk: e2fsck -fn: %w\n%s", v.Name(), err, out)
	}
	for _, suffix := range []string{"sync", "fua"} {
		name := fmt.Sprintf("flush-%s.%s", f.tag, suffix)
		out := filepath.Join(dir, name)
		if _, err := run(s.ctx, "", nil, "debugfs", "-R", "dump /"+name+" "+out, img); err != nil {
			return err
		}
		sum, err := fileSHA256(out)
		if err != nil {
			return fmt.Errorf("%s's disk has no %s: %w", v.Name(), name, err)
		}
		if sum != f.sum {
			return fmt.Errorf("%s's disk: %s differs from the pattern flushed before the power loss", v.Name(), name)
		}
	}
	s.logf("%s's disk image: journal replayed, e2fsck clean, flush-%s.sync and flush-%s.fua intact", v.Name(), f.tag, f.tag)
	return nil
}

// fieldInt returns the number after the first occurrence of key, or -1.
func fieldInt(s, key string) int64 {
	i := strings.Index(s, key)
	if i < 0 {
		return -1
	}
	rest := s[i+len(key):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseInt(rest[:j], 10, 64)
	return n
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}
