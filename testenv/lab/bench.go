package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BenchOptions configures RunBench.
type BenchOptions struct {
	// Out receives progress and the results table; nil means io.Discard.
	Out io.Writer
	// Runtime is each fio job's duration; 0 means 15 seconds.
	Runtime time.Duration
	// Size is the region each job writes, in fio's syntax; empty means
	// 128M.
	Size string
	// KernelDRBD adds kernel DRBD 8.4 on /dev/drbd0 (the image must be
	// built with BuildOptions.DRBDUtils).
	KernelDRBD bool
	// Rounds is how many times every target runs every job, the targets
	// taking turns each round; 0 means 1. The table shows medians: the
	// VMs' speed drifts from minute to minute, and interleaved rounds
	// expose each target to the same drift.
	Rounds int
}

// BenchJob is one fio job.
type BenchJob struct {
	Name string
	// Args are fio's job options besides the target and the common ones.
	Args string
	// Bandwidth marks jobs reported in MB/s rather than IOPS.
	Bandwidth bool
}

// BenchJobs are the benchmark's fio jobs (issue 5): O_DIRECT writes with
// libaio.
var BenchJobs = []BenchJob{
	{Name: "4k randwrite QD1", Args: "--rw=randwrite --bs=4k --iodepth=1"},
	{Name: "4k randwrite QD32", Args: "--rw=randwrite --bs=4k --iodepth=32"},
	{Name: "1M seqwrite QD4", Args: "--rw=write --bs=1M --iodepth=4", Bandwidth: true},
}

// BenchResult is one fio job on one target.
type BenchResult struct {
	Target string // "raw", "drbdd" or "drbd"
	Device string
	Job    string
	Round  int // from 1
	IOPS   float64
	// BW is in bytes per second.
	BW float64
	// Lat is the mean completion latency.
	Lat time.Duration
	// Retrans counts the TCP segments the writer retransmitted during
	// the job (-1 if unknown): packets lost on the link between the VMs.
	Retrans int64
}

// Bench targets.
const (
	TargetRaw   = "raw"
	TargetDrbdd = "drbdd"
	// TargetDrbddAlone is drbdd's /dev/nbd0 with the peer disconnected
	// (StandAlone), at queue depth 1 only: what the trip through the
	// kernel's nbd client and drbdd costs without replication.
	TargetDrbddAlone = "drbdd-alone"
	TargetDRBD       = "drbd"
)

// BenchReport is what RunBench measured.
type BenchReport struct {
	Results []BenchResult
	// Setup is how long each replicated target took to be ready.
	Setup map[string]time.Duration
	// Costs is what the writer VM charges for the events every request
	// pays (nil if not measured).
	Costs *VMCosts
}

// VMCosts is what a VM charges for the events that decide latency at
// queue depth 1: a system call, a switch between threads and between
// processes (`labio probe`), and the network's round trip to the peer
// (busybox ping's mean).
type VMCosts struct {
	Syscall, ThreadRTT, ProcessRTT, PingRTT time.Duration
}

// String says what the costs mean for a device served from user space.
func (c VMCosts) String() string {
	short := func(d time.Duration) string {
		if d >= time.Millisecond {
			return fmt.Sprintf("%.2fms", float64(d)/1e6)
		}
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	}
	return fmt.Sprintf("a system call %s; a round trip over a socket pair between two threads %s, between two processes %s "+
		"(drbdd's requests cross between processes twice, kernel DRBD's never); ping to the peer %s",
		short(c.Syscall), short(c.ThreadRTT), short(c.ProcessRTT), short(c.PingRTT))
}

// parseProbe reads `labio probe`'s line into c.
func (c *VMCosts) parseProbe(out string) error {
	fields := map[string]*time.Duration{"syscall_ns": &c.Syscall, "thread_rtt_ns": &c.ThreadRTT, "process_rtt_ns": &c.ProcessRTT}
	seen := 0
	for _, kv := range strings.Fields(out) {
		k, v, ok := strings.Cut(kv, "=")
		d, known := fields[k]
		if !ok || !known {
			continue
		}
		ns, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ns <= 0 {
			return fmt.Errorf("labio probe: bad %s in %q", k, out)
		}
		*d = time.Duration(ns)
		seen++
	}
	if seen != len(fields) {
		return fmt.Errorf("labio probe: want %d figures in %q", len(fields), out)
	}
	return nil
}

// parsePing reads the mean round trip from busybox or iputils ping's
// summary ("round-trip min/avg/max = 1.463/1.872/2.873 ms", or "rtt
// min/avg/max/mdev = ...").
func parsePing(out string) (time.Duration, error) {
	for line := range strings.Lines(out) {
		_, stats, ok := strings.Cut(line, " = ")
		if !ok || !strings.Contains(line, "min/avg/max") {
			continue
		}
		nums, unit, _ := strings.Cut(strings.TrimSpace(stats), " ")
		parts := strings.Split(nums, "/")
		if len(parts) < 3 || unit != "ms" {
			break
		}
		avg, err := strconv.ParseFloat(parts[1], 64)
		if err != nil || avg <= 0 {
			break
		}
		return time.Duration(avg * float64(time.Millisecond)), nil
	}
	return 0, fmt.Errorf("no round-trip summary in ping's output %q", out)
}

// measureCosts runs `labio probe` on the writer and pings the peer.
func (bn *bench) measureCosts() error {
	var c VMCosts
	out, err := MustRun(bn.ctx, bn.a, "labio probe")
	if err != nil {
		return err
	}
	if err := c.parseProbe(out); err != nil {
		return err
	}
	peer, _, _ := strings.Cut(bn.b.Config().IP, "/")
	out, err = MustRun(bn.ctx, bn.a, "ping -q -c 20 -i 0.2 "+peer)
	if err != nil {
		return fmt.Errorf("ping %s: %w", peer, err)
	}
	if c.PingRTT, err = parsePing(out); err != nil {
		return err
	}
	bn.rep.Costs = &c
	return nil
}

// Get returns the result of job on target, if measured: over several
// rounds, the median of each figure (Round is then 0).
func (r *BenchReport) Get(target, job string) (BenchResult, bool) {
	var runs []BenchResult
	for _, x := range r.Results {
		if x.Target == target && x.Job == job {
			runs = append(runs, x)
		}
	}
	switch len(runs) {
	case 0:
		return BenchResult{}, false
	case 1:
		return runs[0], true
	}
	m := runs[0]
	m.Round = 0
	m.IOPS = median(runs, func(x BenchResult) float64 { return x.IOPS })
	m.BW = median(runs, func(x BenchResult) float64 { return x.BW })
	m.Lat = time.Duration(median(runs, func(x BenchResult) float64 { return float64(x.Lat) }))
	return m, true
}

// median is the median of f over runs (the mean of the middle two for
// an even count).
func median(runs []BenchResult, f func(BenchResult) float64) float64 {
	v := make([]float64, len(runs))
	for i, x := range runs {
		v[i] = f(x)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// fioOutput is the part of fio's JSON output the benchmark reads.
type fioOutput struct {
	Jobs []struct {
		Error int `json:"error"`
		Write struct {
			IOPS    float64 `json:"iops"`
			BWBytes float64 `json:"bw_bytes"`
			Lat     struct {
				Mean float64 `json:"mean"`
			} `json:"lat_ns"`
		} `json:"write"`
	} `json:"jobs"`
}

// parseFio reads fio's JSON output (which may follow other lines).
func parseFio(out string) (iops, bw float64, lat time.Duration, err error) {
	i := strings.Index(out, "{")
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("no JSON in fio's output: %q", out)
	}
	var fo fioOutput
	if err := json.Unmarshal([]byte(out[i:]), &fo); err != nil {
		return 0, 0, 0, fmt.Errorf("fio's JSON: %w", err)
	}
	if len(fo.Jobs) != 1 {
		return 0, 0, 0, fmt.Errorf("fio reported %d jobs, want 1", len(fo.Jobs))
	}
	j := fo.Jobs[0]
	if j.Error != 0 {
		return 0, 0, 0, fmt.Errorf("fio job error %d", j.Error)
	}
	return j.Write.IOPS, j.Write.BWBytes, time.Duration(j.Write.Lat.Mean), nil
}

// bench carries the state of one RunBench.
type bench struct {
	ctx   context.Context
	l     *Lab
	o     BenchOptions
	rep   *BenchReport
	a, b  *VM
	round int // the round running, from 1
}

func (bn *bench) logf(format string, args ...any) {
	fmt.Fprintf(bn.o.Out, format+"\n", args...)
}

// fio runs every job against dev on a.
func (bn *bench) fio(target, dev string) error { return bn.fioJobs(target, dev, BenchJobs) }

// fioJobs runs jobs against dev on a.
func (bn *bench) fioJobs(target, dev string, jobs []BenchJob) error {
	for _, j := range jobs {
		cmd := fmt.Sprintf("fio --name=bench --filename=%s --direct=1 --ioengine=libaio --numjobs=1 --size=%s --runtime=%d --time_based --output-format=json %s",
			dev, bn.o.Size, int(bn.o.Runtime/time.Second), j.Args)
		before := bn.retransmits()
		out, err := MustRun(bn.ctx, bn.a, cmd)
		if err != nil {
			return err
		}
		iops, bw, lat, err := parseFio(out)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", j.Name, dev, err)
		}
		r := BenchResult{Target: target, Device: dev, Job: j.Name, Round: bn.round, IOPS: iops, BW: bw, Lat: lat, Retrans: -1}
		if after := bn.retransmits(); before >= 0 && after >= 0 {
			r.Retrans = after - before
		}
		bn.rep.Results = append(bn.rep.Results, r)
		bn.logf("  %-11s %-11s %-18s %s%s", target, dev, j.Name, formatResult(r, j.Bandwidth), formatRetrans(r))
	}
	return nil
}

func formatResult(r BenchResult, bandwidth bool) string {
	if bandwidth {
		return fmt.Sprintf("%8.1f MB/s  lat %v", r.BW/1e6, r.Lat.Round(time.Microsecond))
	}
	return fmt.Sprintf("%8.0f IOPS  lat %v", r.IOPS, r.Lat.Round(time.Microsecond))
}

// formatRetrans says how many TCP segments a job retransmitted, if any.
func formatRetrans(r BenchResult) string {
	if r.Retrans <= 0 {
		return ""
	}
	return fmt.Sprintf("  (%d TCP retransmissions)", r.Retrans)
}

// retransmits returns the writer's count of retransmitted TCP segments
// (RetransSegs in /proc/net/snmp), or -1 if it cannot be read.
func (bn *bench) retransmits() int64 {
	out, err := MustRun(bn.ctx, bn.a, "cat /proc/net/snmp")
	if err != nil {
		return -1
	}
	n, err := parseRetransSegs(out)
	if err != nil {
		return -1
	}
	return n
}

// parseRetransSegs reads RetransSegs from /proc/net/snmp: the "Tcp:"
// line of names, then the "Tcp:" line of values.
func parseRetransSegs(snmp string) (int64, error) {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RetransSegs" && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
		break
	}
	return 0, errors.New("no RetransSegs in /proc/net/snmp")
}

// RunBench boots the lab's two VMs (each with a scratch disk /dev/vdb,
// VMConfig.ScratchSize, and fio in the image) and runs BenchJobs on a:
// on the raw scratch disk, on drbdd's /dev/nbd0 (protocol C, connected
// to b), and optionally on kernel DRBD 8.4's /dev/drbd0 with the same
// disks, then prints the ratios. Both replicated setups skip the initial
// sync (new-current-uuid --clear-bitmap on fresh, zeroed disks).
func RunBench(ctx context.Context, l *Lab, o BenchOptions) (*BenchReport, error) {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Runtime == 0 {
		o.Runtime = 15 * time.Second
	}
	if o.Size == "" {
		o.Size = "128M"
	}
	if o.Rounds <= 0 {
		o.Rounds = 1
	}
	if len(l.VMs) != 2 {
		return nil, fmt.Errorf("the benchmark needs two VMs, not %d", len(l.VMs))
	}
	bn := &bench{ctx: ctx, l: l, o: o, rep: &BenchReport{Setup: map[string]time.Duration{}}, a: l.VMs[0], b: l.VMs[1]}
	if err := l.Boot(ctx); err != nil {
		return nil, err
	}
	for _, v := range l.VMs {
		bn.logf("%s booted in %v", v.Name(), v.BootTime().Round(time.Millisecond))
		if _, err := MustRun(ctx, v, "command -v fio >/dev/null || { echo the image has no fio; exit 1; }; test -b /dev/vdb || { echo no scratch disk /dev/vdb; exit 1; }"); err != nil {
			return nil, err
		}
	}
	if err := bn.measureCosts(); err != nil {
		return nil, fmt.Errorf("measuring the VM's costs: %w", err)
	}
	bn.logf("%s: %v", bn.a.Name(), bn.rep.Costs)
	bn.logf("fio: O_DIRECT, libaio, %s region, %v per job, %d round(s); writer %s, peer %s", o.Size, o.Runtime, o.Rounds, bn.a.Name(), bn.b.Name())
	for bn.round = 1; bn.round <= o.Rounds; bn.round++ {
		if o.Rounds > 1 {
			bn.logf("round %d of %d", bn.round, o.Rounds)
		}
		if err := bn.fio(TargetRaw, "/dev/vdb"); err != nil {
			return bn.rep, err
		}
		if err := bn.drbdd(); err != nil {
			return bn.rep, fmt.Errorf("drbdd: %w", err)
		}
		if o.KernelDRBD {
			if err := bn.kernelDRBD(); err != nil {
				return bn.rep, fmt.Errorf("kernel DRBD: %w", err)
			}
		}
	}
	bn.table()
	return bn.rep, nil
}

// drbdd sets up r0 with drbdd, runs the jobs on /dev/nbd0 and takes r0
// down again.
func (bn *bench) drbdd() error {
	start := time.Now()
	s := &scenario{ctx: bn.ctx, l: bn.l, o: ScenarioOptions{Out: io.Discard, ConnectTimeout: 30 * time.Second, SyncTimeout: 10 * time.Minute}, rep: &ScenarioReport{}}
	for _, v := range bn.l.VMs {
		// drbdd's default activity log, as for kernel DRBD.
		if err := writeResource(bn.ctx, bn.l, v, 0); err != nil {
			return err
		}
		if err := startDrbdd(bn.ctx, v); err != nil {
			return err
		}
		if _, err := MustRun(bn.ctx, v, "drbdadm create-md --force r0 && drbdadm up r0"); err != nil {
			return err
		}
	}
	if err := s.waitConnected(bn.a); err != nil {
		return err
	}
	if _, err := MustRun(bn.ctx, bn.a, "drbdadm new-current-uuid --clear-bitmap r0"); err != nil {
		return err
	}
	if err := s.waitDstate(bn.a, "UpToDate/UpToDate"); err != nil {
		return err
	}
	if _, err := MustRun(bn.ctx, bn.a, "drbdadm primary r0"); err != nil {
		return err
	}
	if err := s.waitAttached(bn.a, true); err != nil {
		return err
	}
	bn.rep.Setup[TargetDrbdd] = time.Since(start)
	st, _ := MustRun(bn.ctx, bn.a, "cat /run/drbdd/status")
	bn.logf("drbdd ready in %v:\n%s", time.Since(start).Round(time.Millisecond), indent(st, "    "))
	if err := bn.fio(TargetDrbdd, "/dev/nbd0"); err != nil {
		return err
	}
	st, _ = MustRun(bn.ctx, bn.a, "cat /run/drbdd/status")
	bn.logf("drbdd after the jobs:\n%s", indent(st, "    "))
	if _, err := MustRun(bn.ctx, bn.a, "drbdadm disconnect r0 && drbdadm cstate r0 | grep -qx StandAlone"); err != nil {
		return err
	}
	if err := bn.fioJobs(TargetDrbddAlone, "/dev/nbd0", BenchJobs[:1]); err != nil {
		return err
	}
	if _, err := MustRun(bn.ctx, bn.a, "drbdadm secondary r0"); err != nil {
		return err
	}
	for _, v := range bn.l.VMs {
		if _, err := MustRun(bn.ctx, v, "drbdadm down r0 && kill $(pidof drbdd); for i in $(seq 100); do pidof drbdd >/dev/null || exit 0; sleep 0.1; done; exit 1"); err != nil {
			return err
		}
	}
	return nil
}

// drbdConf renders /etc/drbd.conf for kernel DRBD 8.4: r0 on /dev/drbd0
// over the same disks and addresses as drbdd's r0, protocol C, with the
// same ping settings as ResourceYAML.
func drbdConf(nodes []string) string {
	var b strings.Builder
	b.WriteString("global { usage-count no; }\nresource r0 {\n  protocol C;\n  net { ping-int 3; ping-timeout 10; timeout 25; connect-int 3; }\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, "  on %s {\n    device /dev/drbd0 minor 0;\n    disk /dev/vda;\n    address 10.99.0.%d:7789;\n    meta-disk internal;\n  }\n", n, i+1)
	}
	b.WriteString("}\n")
	return b.String()
}

// drbdadm84 is kernel DRBD's drbdadm in the VMs (see BuildOptions.DRBDUtils).
const drbdadm84 = "/lib/drbd/drbdadm-84"

// kernelDRBD sets up r0 with the kernel's DRBD 8.4 and runs the jobs on
// /dev/drbd0.
func (bn *bench) kernelDRBD() error {
	start := time.Now()
	var nodes []string
	for _, v := range bn.l.VMs {
		nodes = append(nodes, v.Name())
	}
	for _, v := range bn.l.VMs {
		if _, err := MustRun(bn.ctx, v, "test -x "+drbdadm84+" || { echo the image has no drbd-utils; exit 1; }; mkdir -p /var/run/drbd /var/lib/drbd /run/drbd /var/lock; grep -q '^version: 8.4' /proc/drbd"); err != nil {
			return err
		}
		r, err := v.Exec(bn.ctx, "cat >/etc/drbd.conf", []byte(drbdConf(nodes)))
		if err == nil && r.Code != 0 {
			err = fmt.Errorf("writing /etc/drbd.conf: %s", r.Stderr)
		}
		if err != nil {
			return err
		}
		// drbdd's metadata is in the way: wipe the end of the disk.
		if _, err := MustRun(bn.ctx, v, "yes yes | "+drbdadm84+" -- --force create-md r0 && "+drbdadm84+" up r0"); err != nil {
			return err
		}
	}
	if !WaitFor(bn.ctx, 60*time.Second, 500*time.Millisecond, func() bool {
		out, _, _ := bn.a.Run(bn.ctx, drbdadm84+" cstate r0")
		return strings.TrimSpace(out) == "Connected"
	}) {
		out, _, _ := bn.a.Run(bn.ctx, "cat /proc/drbd; dmesg | grep -i drbd | tail -20")
		return fmt.Errorf("kernel DRBD did not connect:\n%s", out)
	}
	if _, err := MustRun(bn.ctx, bn.a, drbdadm84+" -- --clear-bitmap new-current-uuid r0 && "+drbdadm84+" primary r0"); err != nil {
		return err
	}
	if !WaitFor(bn.ctx, 60*time.Second, 500*time.Millisecond, func() bool {
		out, _, _ := bn.a.Run(bn.ctx, drbdadm84+" dstate r0")
		return strings.TrimSpace(out) == "UpToDate/UpToDate"
	}) {
		out, _, _ := bn.a.Run(bn.ctx, "cat /proc/drbd")
		return fmt.Errorf("kernel DRBD not UpToDate/UpToDate:\n%s", out)
	}
	bn.rep.Setup[TargetDRBD] = time.Since(start)
	st, _ := MustRun(bn.ctx, bn.a, "cat /proc/drbd")
	bn.logf("kernel DRBD ready in %v:\n%s", time.Since(start).Round(time.Millisecond), indent(st, "    "))
	if err := bn.fio(TargetDRBD, "/dev/drbd0"); err != nil {
		return err
	}
	st, _ = MustRun(bn.ctx, bn.a, "cat /proc/drbd")
	bn.logf("kernel DRBD after the jobs:\n%s", indent(st, "    "))
	for _, v := range []*VM{bn.a, bn.b} {
		if _, err := MustRun(bn.ctx, v, drbdadm84+" down r0"); err != nil {
			return err
		}
	}
	return nil
}

// table prints the results side by side with the ratios (medians over
// the rounds), and then each round's drbdd ratio.
func (bn *bench) table() {
	w := bn.o.Out
	if bn.o.Rounds > 1 {
		fmt.Fprintf(w, "\nmedians of %d rounds (each round runs every target in turn)", bn.o.Rounds)
	}
	fmt.Fprintf(w, "\n%-18s %-28s %-28s", "job", "raw /dev/vdb", "drbdd /dev/nbd0")
	if bn.o.KernelDRBD {
		fmt.Fprintf(w, " %-28s", "kernel DRBD /dev/drbd0")
	}
	fmt.Fprintf(w, " %-12s", "drbdd/raw")
	if bn.o.KernelDRBD {
		fmt.Fprintf(w, " %-12s %-12s", "DRBD/raw", "drbdd/DRBD")
	}
	fmt.Fprintln(w)
	for _, j := range BenchJobs {
		fmt.Fprintf(w, "%-18s", j.Name)
		targets := []string{TargetRaw, TargetDrbdd}
		if bn.o.KernelDRBD {
			targets = append(targets, TargetDRBD)
		}
		vals := map[string]float64{}
		for _, t := range targets {
			r, ok := bn.rep.Get(t, j.Name)
			if !ok {
				fmt.Fprintf(w, " %-28s", "-")
				continue
			}
			fmt.Fprintf(w, " %-28s", formatResult(r, j.Bandwidth))
			vals[t] = j.figure(r)
		}
		ratio := func(x, y string) string { return formatRatio(vals[x], vals[y]) }
		fmt.Fprintf(w, " %-12s", ratio(TargetDrbdd, TargetRaw))
		if bn.o.KernelDRBD {
			fmt.Fprintf(w, " %-12s %-12s", ratio(TargetDRBD, TargetRaw), ratio(TargetDrbdd, TargetDRBD))
		}
		fmt.Fprintln(w)
	}
	q1 := BenchJobs[0]
	if alone, ok := bn.rep.Get(TargetDrbddAlone, q1.Name); ok {
		raw, _ := bn.rep.Get(TargetRaw, q1.Name)
		fmt.Fprintf(w, "\ndrbdd without its peer (StandAlone), %s: %s; drbdd alone/raw %s\n",
			q1.Name, strings.TrimSpace(formatResult(alone, false)), formatRatio(q1.figure(alone), q1.figure(raw)))
	}
	if c := bn.rep.Costs; c != nil {
		fmt.Fprintf(w, "\n%s's costs, measured before the jobs: %v\n", bn.a.Name(), c)
	}
	if bn.o.Rounds > 1 {
		ref, name := TargetRaw, "drbdd/raw"
		if bn.o.KernelDRBD {
			ref, name = TargetDRBD, "drbdd/DRBD"
		}
		fmt.Fprintf(w, "\n%s by round\n", name)
		for _, j := range BenchJobs {
			fmt.Fprintf(w, "%-18s", j.Name)
			for round := 1; round <= bn.o.Rounds; round++ {
				fmt.Fprintf(w, " %s", bn.rep.roundRatio(TargetDrbdd, ref, j, round))
			}
			fmt.Fprintln(w)
		}
	}
}

// roundRatio is target's figure over ref's for job in one round, or "-".
func (r *BenchReport) roundRatio(target, ref string, j BenchJob, round int) string {
	var x, y float64
	for _, res := range r.Results {
		if res.Job != j.Name || res.Round != round {
			continue
		}
		switch res.Target {
		case target:
			x = j.figure(res)
		case ref:
			y = j.figure(res)
		}
	}
	return formatRatio(x, y)
}

// figure is the number of r that the job's ratios compare: bandwidth or
// IOPS.
func (j BenchJob) figure(r BenchResult) float64 {
	if j.Bandwidth {
		return r.BW
	}
	return r.IOPS
}

// formatRatio prints x/y, or "-" when either was not measured.
func formatRatio(x, y float64) string {
	if x == 0 || y == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", x/y)
}
