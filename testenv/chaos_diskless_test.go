//go:build chaos

package testenv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file holds an exploratory randomized scenario ("chaos") test with
// real daemons. It is not part of CI: it builds only with the chaos tag.
//
//	DRBDD_CHAOS_SEED=7 go test -tags chaos ./testenv -run TestChaosDiskless -count=1 -v -timeout 20m
//
// DRBDD_CHAOS_SEED is one seed, a list (1,2,5) or a range (0-9); each
// seed is a subtest. DRBDD_CHAOS_STEPS sets the number of random steps
// (default 120). A seed decides the setup (protocol C or A, loopback or
// network namespaces with link cuts, a slow resync) and the random
// choices; the daemons' timing does not replay exactly, so the action log
// printed by each subtest is the reproduction recipe.
//
// The test keeps a model: for each 64 KiB slot of the device, the last
// acknowledged write (a tag) and the writes that may or may not have
// landed (failed, or in flight when something broke; under protocol A
// also writes acknowledged without a later successful flush while
// connected). Every 4 KiB block of a slot carries its write's tag and
// offset, so a block read from the device or a backing file names the
// write it came from.

const (
	chaosSlots    = 96
	chaosSlotSize = 64 << 10
	chaosBlock    = 4096
)

// chaosSlot is the model of one slot: acked is the tag of the last write
// that was acknowledged (0: the initial zeros), maybe the tags of writes
// since then that may or may not be there, block by block.
type chaosSlot struct {
	acked uint64
	maybe map[uint64]bool
}

func (s *chaosSlot) possible() map[uint64]bool {
	m := map[uint64]bool{s.acked: true}
	for t := range s.maybe {
		m[t] = true
	}
	return m
}

func (s *chaosSlot) String() string {
	var ts []string
	for t := range s.maybe {
		ts = append(ts, strconv.FormatUint(t, 10))
	}
	sort.Strings(ts)
	return fmt.Sprintf("acked %d maybe [%s]", s.acked, strings.Join(ts, " "))
}

// chaosWrite is one write of a burst.
type chaosWrite struct {
	slot int
	tag  uint64
}

// chaosBurst is a write burst run by one nbdsh process.
type chaosBurst struct {
	node    *Node
	writes  []chaosWrite
	outPath string
	stop    string
	cmd     *exec.Cmd
	done    chan error
	// output is nbdsh's stdout and stderr.
	output bytes.Buffer
	// disrupted is set when a disruptive action ran during the burst (or
	// the link was down): under protocol A its writes stay uncertain.
	disrupted bool
	// connectedAtStart: the writer was Connected when the burst started.
	connectedAtStart bool
	started          time.Time
	// exited is when the nbdsh process ended (set by its waiter).
	exited time.Time
	// startState is the writer's state when the burst started.
	startState chaosNodeState
}

type chaosNodeState struct {
	running, configured bool
	role, peer          string
	cs, ds, pds         string
}

func (s chaosNodeState) String() string {
	if !s.running {
		return "(not running)"
	}
	if !s.configured {
		return "(unconfigured)"
	}
	return fmt.Sprintf("%s/%s %s %s/%s", s.role, s.peer, s.cs, s.ds, s.pds)
}

type chaos struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	p     *Pair
	np    *NetnsPair
	proto string
	nsIdx map[*Node]int

	slots   []int64
	model   []chaosSlot
	nextTag uint64

	linkDown bool
	bg       *chaosBurst
	steps    []string
	// problems are the anomalies found (reported at the end).
	problems []string
	// splitBrain: the run ended in a split brain (no data check).
	splitBrain bool
	dir        string
	burstSeq   int
	// unshared counts, for each node's disk, the acknowledged writes it
	// may hold alone (written while not connected to the other disk)
	// since both nodes were last seen Connected and UpToDate/UpToDate.
	// A split brain can be resolved without breaking the model only when
	// one side has none, and a disconnected node's reads are checked
	// only when the other side has none.
	unshared map[*Node]int
	// sbMark is each node's log length after the last split brain
	// handled.
	sbMark map[*Node]int
	// resolved counts the split brains resolved with --discard-my-data.
	resolved int
}

func chaosSeeds(t *testing.T) []uint64 {
	s := os.Getenv("DRBDD_CHAOS_SEED")
	if s == "" {
		return []uint64{uint64(time.Now().UnixNano() % 100000)}
	}
	var out []uint64
	for _, part := range strings.Split(s, ",") {
		if a, b, ok := strings.Cut(part, "-"); ok {
			lo, err1 := strconv.ParseUint(a, 10, 64)
			hi, err2 := strconv.ParseUint(b, 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("DRBDD_CHAOS_SEED %q", s)
			}
			for x := lo; x <= hi; x++ {
				out = append(out, x)
			}
			continue
		}
		x, err := strconv.ParseUint(part, 10, 64)
		if err != nil {
			t.Fatalf("DRBDD_CHAOS_SEED %q", s)
		}
		out = append(out, x)
	}
	return out
}

// TestChaosDiskless runs random admin actions, kills, link cuts and write
// bursts against a pair, checking reads against the model as it goes and
// both disks at the end.
func TestChaosDiskless(t *testing.T) {
	RequireTools(t, "nbdsh")
	steps := 120
	if s := os.Getenv("DRBDD_CHAOS_STEPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("DRBDD_CHAOS_STEPS %q", s)
		}
		steps = n
	}
	for _, seed := range chaosSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runChaos(t, seed, steps) })
	}
}

func runChaos(t *testing.T, seed uint64, steps int) {
	c := &chaos{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0xc4a05)), nextTag: 1, dir: t.TempDir(), nsIdx: map[*Node]int{},
		unshared: map[*Node]int{}, sbMark: map[*Node]int{}}
	useNetns := seed%2 == 1
	if seed%4 >= 2 {
		c.proto = "A"
	}
	slowResync := c.rng.IntN(3) == 0
	slowDetect := false
	if useNetns {
		RequireTools(t, "ip")
		c.np = NewNetnsPair(t)
		var netOpts map[string]string
		if c.rng.IntN(2) == 0 {
			// Slow to notice a cut link: actions land in the window
			// where one side still believes it is connected.
			netOpts = map[string]string{"ping-int": "6s", "ping-timeout": "1s", "timeout": "1500ms", "connect-int": "2s"}
			slowDetect = true
		}
		c.p = newNetnsNodes(t, c.np, c.proto, netOpts)
		c.nsIdx[c.p.A], c.nsIdx[c.p.B] = 0, 1
	} else {
		c.p = NewPair(t, PairOptions{Protocol: c.proto})
	}
	p := c.p
	t.Logf("seed %d: protocol %s, netns %v (slow to notice a cut: %v), slow resync %v, %d steps", seed, map[string]string{"": "C", "A": "A"}[c.proto], useNetns, slowDetect, slowResync, steps)
	upSkipInitialSync(t, p)
	if slowResync {
		// Applies to later attaches: resyncs last long enough for
		// actions to land in the middle of them.
		p.Res.Disk = map[string]string{"c-plan-ahead": "0", "resync-rate": "2M"}
		WriteResource(t, p.Res, p.A, p.B)
	}
	p.A.MustAdm("primary", "r0")
	span := p.DataSize(t)
	stride := span / chaosSlots / chaosSlotSize * chaosSlotSize
	for i := range chaosSlots {
		c.slots = append(c.slots, int64(i)*stride)
	}
	c.model = make([]chaosSlot, chaosSlots)
	t.Cleanup(func() {
		if c.bg != nil && c.bg.cmd.Process != nil {
			_ = syscall.Kill(-c.bg.cmd.Process.Pid, syscall.SIGKILL)
		}
	})

	for i := range steps {
		if c.step(i) {
			break
		}
	}
	c.finish()
	t.Logf("seed %d action log:\n  %s", seed, strings.Join(c.steps, "\n  "))
	outcome := "data checked"
	switch {
	case c.splitBrain:
		outcome = "split brain with writes on both sides (no data check)"
	case len(c.problems) > 0:
		outcome = fmt.Sprintf("%d problem(s)", len(c.problems))
	}
	t.Logf("OUTCOME seed %d: protocol %s, netns %v: %s; %d split brain(s) resolved", seed, map[string]string{"": "C", "A": "A"}[c.proto], c.np != nil, outcome, c.resolved)
	if len(c.problems) > 0 {
		t.Errorf("seed %d: %d problem(s):\n  %s", seed, len(c.problems), strings.Join(c.problems, "\n  "))
	}
}

// logStep records one action for the action log.
func (c *chaos) logStep(format string, args ...any) {
	s := fmt.Sprintf("[%s] ", time.Now().Format("15:04:05.000")) + fmt.Sprintf(format, args...)
	c.steps = append(c.steps, s)
	c.t.Log(s)
}

func (c *chaos) problem(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	c.problems = append(c.problems, s)
	c.logStep("PROBLEM: %s", s)
}

// adm runs drbdadm, logs the outcome and reports success.
func (c *chaos) adm(n *Node, args ...string) bool {
	if !n.Running() {
		c.logStep("%s: drbdadm %s: daemon not running", n.Name, strings.Join(args, " "))
		return false
	}
	start := time.Now()
	out, err := n.Adm(append(args, "r0")...)
	d := time.Since(start)
	res := "ok"
	if err != nil {
		res = "refused: " + strings.ReplaceAll(strings.TrimSpace(out), "\n", " | ")
	}
	c.logStep("%s: drbdadm %s -> %s (%v)", n.Name, strings.Join(args, " "), res, d.Round(time.Millisecond))
	if d > 30*time.Second {
		c.problem("%s: drbdadm %s took %v", n.Name, strings.Join(args, " "), d)
	}
	return err == nil
}

func (c *chaos) state(n *Node) chaosNodeState {
	s := chaosNodeState{running: n.Running()}
	if !s.running {
		return s
	}
	role, err := n.Adm("role", "r0")
	if err != nil {
		return s
	}
	s.configured = true
	s.role, s.peer, _ = strings.Cut(strings.TrimSpace(role), "/")
	s.cs = admOut(n, "cstate")
	ds := admOut(n, "dstate")
	s.ds, s.pds, _ = strings.Cut(ds, "/")
	return s
}

func (c *chaos) states() string {
	return fmt.Sprintf("alice %v; bob %v", c.state(c.p.A), c.state(c.p.B))
}

// chaosConnected are the connection states with a live peer.
var chaosConnected = map[string]bool{"Connected": true, "SyncSource": true, "SyncTarget": true, "PausedSyncS": true, "PausedSyncT": true,
	"StartingSyncS": true, "StartingSyncT": true, "WFBitMapS": true, "WFBitMapT": true, "WFSyncUUID": true}

var chaosTransient = map[string]bool{
	"WFReportParams": true, "Disconnecting": true, "StartingSyncS": true, "StartingSyncT": true,
	"WFBitMapS": true, "WFBitMapT": true, "WFSyncUUID": true, "SyncSource": true, "SyncTarget": true,
	"Unconnected": true, "Timeout": true, "BrokenPipe": true, "NetworkFailure": true, "ProtocolError": true, "TearDown": true,
}

// settle waits up to max for both nodes to leave transient states (never
// failing).
func (c *chaos) settle(max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		quiet := true
		for _, n := range c.p.Nodes() {
			s := c.state(n)
			if !s.configured {
				continue
			}
			if chaosTransient[s.cs] || s.ds == "Negotiating" || s.ds == "Attaching" {
				quiet = false
			}
			// Connected to a peer: wait for the peer to be seen
			// connected too (unless the link is down).
			if s.cs == "WFConnection" && !c.linkDown && c.state(c.p.Peer(n)).cs == "WFConnection" {
				quiet = false
			}
		}
		if quiet {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// nbdshCmd returns an nbdsh command against n's export (inside n's
// namespace when the pair runs in namespaces).
func (c *chaos) nbdshCmd(n *Node, script string) *exec.Cmd {
	var cmd *exec.Cmd
	if c.np != nil {
		cmd = exec.Command("ip", "netns", "exec", c.np.NS[c.nsIdx[n]], "nbdsh", "-u", c.p.URI[n], "-c", script)
	} else {
		cmd = exec.Command("nbdsh", "-u", c.p.URI[n], "-c", script)
	}
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

const chaosPy = `import struct, os, time
def blk(tag, o):
    return b'CHAOSBLK' + struct.pack('<QQ', tag, o) + bytes([(tag + (o >> 12)) & 0xff]) * 4072
def slotdata(tag, off):
    return b''.join(blk(tag, off + i * 4096) for i in range(16))
`

// blockTag parses one 4 KiB block: its write's tag (0 for zeros) or ok
// false for anything else (torn, misplaced, garbage).
func chaosBlockTag(b []byte, off int64) (uint64, bool) {
	if bytes.Count(b, []byte{0}) == len(b) {
		return 0, true
	}
	if string(b[:8]) != "CHAOSBLK" {
		return 0, false
	}
	tag := binary.LittleEndian.Uint64(b[8:16])
	if int64(binary.LittleEndian.Uint64(b[16:24])) != off {
		return tag, false
	}
	fill := byte(tag + uint64(off>>12))
	for _, x := range b[24:] {
		if x != fill {
			return tag, false
		}
	}
	return tag, true
}

// startBurst starts a write burst through n's export. delay is the pause
// between writes (a background burst overlaps the next actions).
func (c *chaos) startBurst(n *Node, nwrites int, delay time.Duration, flushEvery int) *chaosBurst {
	c.burstSeq++
	b := &chaosBurst{node: n, outPath: filepath.Join(c.dir, fmt.Sprintf("burst%d.out", c.burstSeq)),
		stop: filepath.Join(c.dir, fmt.Sprintf("burst%d.stop", c.burstSeq)), done: make(chan error, 1), started: time.Now()}
	hot := c.rng.IntN(3) == 0
	var list []string
	for range nwrites {
		slot := c.rng.IntN(chaosSlots)
		if hot {
			slot = c.rng.IntN(8)
		}
		w := chaosWrite{slot: slot, tag: c.nextTag}
		c.nextTag++
		b.writes = append(b.writes, w)
		list = append(list, fmt.Sprintf("(%d, %d)", w.tag, c.slots[slot]))
	}
	s := c.state(n)
	b.startState = s
	b.connectedAtStart = s.cs == "Connected" || s.cs == "SyncSource" || s.cs == "SyncTarget" || s.cs == "PausedSyncS" || s.cs == "PausedSyncT"
	b.disrupted = c.linkDown
	script := chaosPy + fmt.Sprintf(`out = open(%q, 'w', buffering=1)
stop = %q
ws = [%s]
for i, (tag, off) in enumerate(ws):
    if os.path.exists(stop):
        out.write('stopped\n')
        break
    if h.aio_is_dead() or h.aio_is_closed():
        out.write('dead\n')
        break
    out.write('s %%d\n' %% tag)
    try:
        h.pwrite(slotdata(tag, off), off)
        out.write('ok %%d\n' %% tag)
    except nbd.Error as e:
        out.write('err %%d %%s\n' %% (tag, str(e).replace('\n', ' ')))
    if %d > 0 and (i + 1) %% %d == 0 and not h.aio_is_dead():
        try:
            h.flush()
            out.write('midflush ok\n')
        except nbd.Error as e:
            out.write('midflush err %%s\n' %% str(e).replace('\n', ' '))
    if %f > 0:
        time.sleep(%f)
if not h.aio_is_dead():
    try:
        h.flush()
        out.write('flush ok\n')
    except nbd.Error as e:
        out.write('flush err %%s\n' %% str(e).replace('\n', ' '))
out.write('end\n')
`, b.outPath, b.stop, strings.Join(list, ", "), flushEvery, flushEvery, delay.Seconds(), delay.Seconds())
	b.cmd = c.nbdshCmd(n, script)
	b.cmd.Stdout, b.cmd.Stderr = &b.output, &b.output
	if err := b.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		err := b.cmd.Wait()
		b.exited = time.Now()
		b.done <- err
	}()
	// Let the writer connect and start, so that a background burst
	// overlaps the next action.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if out, _ := os.ReadFile(b.outPath); len(out) > 0 {
			break
		}
		select {
		case err := <-b.done:
			b.done <- err
			return b
		case <-time.After(10 * time.Millisecond):
		}
	}
	return b
}

// finishBurst waits for the burst (stopping it after timeout) and applies
// its outcome to the model.
func (c *chaos) finishBurst(b *chaosBurst, timeout time.Duration) {
	var err error
	select {
	case err = <-b.done:
	case <-time.After(timeout):
		os.WriteFile(b.stop, nil, 0o644)
		select {
		case err = <-b.done:
		case <-time.After(60 * time.Second):
			c.problem("write burst to %s hung for %v (killed); %s", b.node.Name, timeout+60*time.Second, c.states())
			_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
			err = <-b.done
		}
	}
	out, _ := os.ReadFile(b.outPath)
	status := map[uint64]string{}
	flushOK := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && (f[0] == "s" || f[0] == "ok" || f[0] == "err"):
			tag, _ := strconv.ParseUint(f[1], 10, 64)
			status[tag] = f[0]
		case len(f) >= 2 && f[0] == "flush" && f[1] == "ok":
			flushOK = true
		}
	}
	// Under protocol A an acknowledged write may exist on the writer's disk
	// only; it is certain only once a flush succeeded while connected and
	// nothing disruptive happened in between.
	weak := c.proto == "A" && (!flushOK || b.disrupted || !b.connectedAtStart)
	var nok, nerr, nunk, nnot int
	defer func() {
		// Acknowledged writes that only one disk may hold: the writer's
		// (or, for a diskless writer, the peer's) when the burst did not
		// run connected to a peer disk from start to end, or under
		// protocol A without a confirming flush.
		if nok == 0 {
			return
		}
		end := c.state(b.node)
		st := b.startState
		linked := func(s chaosNodeState) bool {
			return chaosConnected[s.cs] && s.ds != "Diskless" && s.pds != "Diskless"
		}
		if !weak && !b.disrupted && linked(st) && linked(end) {
			return
		}
		if st.ds != "Diskless" || end.ds != "Diskless" {
			c.unshared[b.node] += nok
		}
		if st.ds == "Diskless" || end.ds == "Diskless" || chaosConnected[st.cs] || chaosConnected[end.cs] {
			c.unshared[c.p.Peer(b.node)] += nok
		}
	}()
	for _, w := range b.writes {
		m := &c.model[w.slot]
		switch status[w.tag] {
		case "ok":
			nok++
			if weak {
				if m.maybe == nil {
					m.maybe = map[uint64]bool{}
				}
				m.maybe[w.tag] = true
			} else {
				m.acked, m.maybe = w.tag, nil
			}
		case "err", "s":
			if status[w.tag] == "err" {
				nerr++
			} else {
				nunk++
			}
			if m.maybe == nil {
				m.maybe = map[uint64]bool{}
			}
			m.maybe[w.tag] = true
		default:
			nnot++
		}
	}
	msg := strings.TrimSpace(b.output.String())
	if i := strings.LastIndex(msg, "\n"); i >= 0 {
		msg = msg[i+1:]
	}
	c.logStep("burst to %s (tags %d..%d) ended after %v: %d acked%s, %d failed, %d unknown, %d not sent, flush ok %v, exit %v %s",
		b.node.Name, b.writes[0].tag, b.writes[len(b.writes)-1].tag, b.exited.Sub(b.started).Round(time.Millisecond),
		nok, map[bool]string{true: " (weak)", false: ""}[weak && nok > 0], nerr, nunk, nnot, flushOK, err, msg)
	var errs []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "err ") || strings.HasPrefix(line, "flush err") || strings.HasPrefix(line, "midflush err") {
			errs = append(errs, line)
		}
	}
	if len(errs) > 0 {
		if len(errs) > 4 {
			errs = append(errs[:4], "...")
		}
		c.logStep("  burst errors: %s", strings.Join(errs, "; "))
	}
}

// waitBG finishes the background burst, if any.
func (c *chaos) waitBG() {
	if c.bg != nil {
		c.finishBurst(c.bg, 60*time.Second)
		c.bg = nil
	}
}

// disrupt marks the background burst as having seen a disruptive action.
func (c *chaos) disrupt() {
	if c.bg != nil {
		c.bg.disrupted = true
	}
}

// readVerify reads every slot through n's export and checks each block
// against the model. It reports whether a stale or wrong read was found.
func (c *chaos) readVerify(n *Node, why string) bool {
	if st := c.state(n); !chaosConnected[st.cs] && c.unshared[c.p.Peer(n)] > 0 {
		c.logStep("read-verify (%s) through %s skipped: disconnected, and %s may hold %d acknowledged writes alone", why, n.Name, c.p.Peer(n).Name, c.unshared[c.p.Peer(n)])
		return false
	}
	outPath := filepath.Join(c.dir, "read.out")
	var offs []string
	for _, o := range c.slots {
		offs = append(offs, strconv.FormatInt(o, 10))
	}
	script := fmt.Sprintf(`out = open(%q, 'wb')
bad = []
for i, off in enumerate([%s]):
    try:
        b = h.pread(65536, off)
    except nbd.Error as e:
        bad.append(i)
        b = b'\0' * 65536
    out.write(b)
out.close()
print('readfail', ','.join(map(str, bad)) or '-')
`, outPath, strings.Join(offs, ", "))
	cmd := c.nbdshCmd(n, script)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	timer := time.AfterFunc(90*time.Second, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	start := time.Now()
	err := cmd.Run()
	timer.Stop()
	if err != nil {
		c.logStep("read-verify (%s) through %s: nbdsh %v: %s", why, n.Name, err, lastLine(buf.String()))
		if time.Since(start) > 80*time.Second {
			c.problem("read-verify through %s hung; %s", n.Name, c.states())
		}
		return false
	}
	failed := map[int]bool{}
	if f := strings.Fields(lastLine(buf.String())); len(f) == 2 && f[0] == "readfail" && f[1] != "-" {
		for _, x := range strings.Split(f[1], ",") {
			i, _ := strconv.Atoi(x)
			failed[i] = true
		}
	}
	data, _ := os.ReadFile(outPath)
	if len(data) != chaosSlots*chaosSlotSize {
		c.logStep("read-verify (%s) through %s: short output (%d bytes): %s", why, n.Name, len(data), lastLine(buf.String()))
		return false
	}
	bad := 0
	for i := range c.slots {
		if failed[i] {
			continue
		}
		if msg := c.checkSlot(i, data[i*chaosSlotSize:(i+1)*chaosSlotSize]); msg != "" {
			bad++
			if bad <= 5 {
				c.problem("read through %s (%s): slot %d @%d: %s", n.Name, why, i, c.slots[i], msg)
			}
		}
	}
	c.logStep("read-verify (%s) through %s: %d slots read, %d failed, %d wrong (%v)", why, n.Name, chaosSlots-len(failed), len(failed), bad, time.Since(start).Round(time.Millisecond))
	if bad > 0 {
		c.logStep("  states at the wrong read: %s", c.states())
		for _, d := range c.p.Nodes() {
			c.logStep("  %s's disk: %s", d.Name, c.diskSummary(d, 5))
		}
	}
	return bad > 0
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, "\n"); i >= 0 {
		return s[i+1:]
	}
	return s
}

// checkSlot checks one slot's content against the model; "" when fine.
func (c *chaos) checkSlot(i int, data []byte) string {
	poss := c.model[i].possible()
	var bad []string
	for k := range chaosSlotSize / chaosBlock {
		off := c.slots[i] + int64(k*chaosBlock)
		tag, ok := chaosBlockTag(data[k*chaosBlock:(k+1)*chaosBlock], off)
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("block %d garbage (tag %d?)", k, tag))
		case !poss[tag]:
			bad = append(bad, fmt.Sprintf("block %d has tag %d", k, tag))
		}
	}
	if len(bad) == 0 {
		return ""
	}
	if len(bad) > 3 {
		bad = append(bad[:3], fmt.Sprintf("... (%d blocks)", len(bad)))
	}
	return fmt.Sprintf("%s; model: %v", strings.Join(bad, ", "), &c.model[i])
}

// slotTags returns the tag of each block of slot i on a backing file
// ("?" for garbage).
func (c *chaos) slotTags(path string, i int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b := make([]byte, chaosSlotSize)
	if _, err := io.ReadFull(io.NewSectionReader(f, c.slots[i], chaosSlotSize), b); err != nil {
		return err.Error()
	}
	var ts []string
	for k := range chaosSlotSize / chaosBlock {
		tag, ok := chaosBlockTag(b[k*chaosBlock:(k+1)*chaosBlock], c.slots[i]+int64(k*chaosBlock))
		if !ok {
			ts = append(ts, "?")
		} else {
			ts = append(ts, strconv.FormatUint(tag, 10))
		}
	}
	// Collapse identical blocks.
	all := true
	for _, x := range ts {
		if x != ts[0] {
			all = false
		}
	}
	if all {
		return ts[0]
	}
	return strings.Join(ts, ",")
}

// diskSummary lists the slots of n's backing file that do not fit the
// model (at most max).
func (c *chaos) diskSummary(n *Node, max int) string {
	data := c.readSlots(c.p.Disk[n])
	var out []string
	for i := range c.slots {
		if msg := c.checkSlot(i, data[i*chaosSlotSize:(i+1)*chaosSlotSize]); msg != "" {
			out = append(out, fmt.Sprintf("slot %d: %s", i, msg))
		}
	}
	if len(out) == 0 {
		return "fits the model"
	}
	if len(out) > max {
		out = append(out[:max], fmt.Sprintf("... %d slots", len(out)))
	}
	return strings.Join(out, "; ")
}

func (c *chaos) readSlots(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, chaosSlots*chaosSlotSize)
	for i, o := range c.slots {
		if _, err := io.ReadFull(io.NewSectionReader(f, o, chaosSlotSize), data[i*chaosSlotSize:(i+1)*chaosSlotSize]); err != nil {
			c.t.Fatal(err)
		}
	}
	return data
}

// idleCompare: with no writer, both nodes Connected and UpToDate/UpToDate,
// the slots of both backing files must be identical.
func (c *chaos) idleCompare() {
	if c.bg != nil || c.linkDown {
		return
	}
	for _, n := range c.p.Nodes() {
		s := c.state(n)
		if s.cs != "Connected" || s.ds != "UpToDate" || s.pds != "UpToDate" {
			return
		}
	}
	var diff []int
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(1500 * time.Millisecond)
		}
		a, b := c.readSlots(c.p.Disk[c.p.A]), c.readSlots(c.p.Disk[c.p.B])
		diff = diff[:0]
		for i := range c.slots {
			if !bytes.Equal(a[i*chaosSlotSize:(i+1)*chaosSlotSize], b[i*chaosSlotSize:(i+1)*chaosSlotSize]) {
				diff = append(diff, i)
			}
		}
		if len(diff) == 0 {
			return
		}
	}
	var msg []string
	for _, i := range diff {
		if len(msg) == 5 {
			msg = append(msg, "...")
			break
		}
		msg = append(msg, fmt.Sprintf("slot %d: alice %s, bob %s (model %v)", i, c.slotTags(c.p.Disk[c.p.A], i), c.slotTags(c.p.Disk[c.p.B], i), &c.model[i]))
	}
	c.problem("silent divergence: both UpToDate/UpToDate and idle, but %d slot(s) differ (oos alice %d, bob %d): %s",
		len(diff), c.p.A.Counter("oos"), c.p.B.Counter("oos"), strings.Join(msg, "; "))
}

// demoteTry runs secondary until it succeeds or 8 s pass.
func (c *chaos) demoteTry(n *Node) bool {
	deadline := time.Now().Add(8 * time.Second)
	for {
		out, err := n.Adm("secondary", "r0")
		if err == nil {
			c.logStep("%s: drbdadm secondary -> ok", n.Name)
			return true
		}
		if time.Now().After(deadline) {
			c.logStep("%s: drbdadm secondary -> refused: %s", n.Name, strings.TrimSpace(out))
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *chaos) primaries() []*Node {
	var ps []*Node
	for _, n := range c.p.Nodes() {
		if c.state(n).role == "Primary" {
			ps = append(ps, n)
		}
	}
	return ps
}

type chaosAction struct {
	name   string
	weight int
	run    func()
}

// step runs one random action; it returns true to end the run early.
func (c *chaos) step(i int) bool {
	p := c.p
	if c.bg != nil {
		// Account for a finished background burst at once, so that its
		// writes are counted before the next sync point.
		select {
		case err := <-c.bg.done:
			c.bg.done <- err
			c.waitBG()
		default:
		}
	}
	st := map[*Node]chaosNodeState{p.A: c.state(p.A), p.B: c.state(p.B)}
	c.logStep("step %d: %s", i, fmt.Sprintf("alice %v; bob %v", st[p.A], st[p.B]))
	var acts []chaosAction
	add := func(name string, w int, run func()) {
		if w > 0 {
			acts = append(acts, chaosAction{name, w, run})
		}
	}
	var prim *Node
	for _, n := range p.Nodes() {
		if st[n].role == "Primary" && (prim == nil || c.rng.IntN(2) == 0) {
			prim = n
		}
	}
	if prim != nil {
		n := prim
		add("write", map[bool]int{true: 30, false: 12}[c.bg == nil], func() {
			if c.bg != nil {
				c.waitBG()
			}
			nw := 1 + c.rng.IntN(40)
			flushEvery := 0
			if c.rng.IntN(3) == 0 {
				flushEvery = 1 + c.rng.IntN(8)
			}
			if c.rng.IntN(2) == 0 {
				delay := time.Duration(5+c.rng.IntN(40)) * time.Millisecond
				c.logStep("%s: background burst of %d writes (tags from %d), %v apart, flush every %d", n.Name, nw, c.nextTag, delay, flushEvery)
				c.bg = c.startBurst(n, nw, delay, flushEvery)
			} else {
				c.logStep("%s: burst of %d writes (tags from %d), flush every %d", n.Name, nw, c.nextTag, flushEvery)
				c.finishBurst(c.startBurst(n, nw, 0, flushEvery), 60*time.Second)
			}
		})
		add("read-verify", 6, func() {
			c.waitBG()
			c.readVerify(n, "step")
		})
	}
	for _, n := range p.Nodes() {
		n := n
		s := st[n]
		peer := st[p.Peer(n)]
		if !s.running || !s.configured {
			add("start+up", 40, func() {
				c.disrupt()
				if !n.Running() {
					n.Start()
				}
				c.adm(n, "up")
			})
			continue
		}
		if s.ds != "Diskless" {
			add("detach", 8, func() {
				c.disrupt()
				if c.rng.IntN(8) == 0 {
					c.adm(n, "detach", "--force")
				} else {
					c.adm(n, "detach")
				}
			})
		} else {
			add("attach", 10, func() { c.disrupt(); c.adm(n, "attach") })
		}
		if s.cs == "StandAlone" {
			add("connect", 10, func() { c.adm(n, "connect") })
		} else {
			add("disconnect", 4, func() { c.disrupt(); c.adm(n, "disconnect") })
		}
		if s.role == "Secondary" {
			w := 8
			if peer.role == "Primary" {
				w = 1
			}
			if s.cs != "Connected" {
				w = w / 3
			}
			if prim == nil {
				w *= 3
			}
			add("primary", w, func() { c.adm(n, "primary") })
		} else {
			add("secondary", 5, func() { c.demoteTry(n) })
		}
		add("kill", 4, func() {
			c.disrupt()
			c.logStep("%s: kill -9", n.Name)
			n.Kill()
			time.Sleep(time.Duration(c.rng.IntN(1500)) * time.Millisecond)
			n.Start()
			c.adm(n, "up")
		})
		add("down+up", 2, func() {
			c.disrupt()
			if c.adm(n, "down") {
				time.Sleep(time.Duration(c.rng.IntN(1000)) * time.Millisecond)
				c.adm(n, "up")
			}
		})
	}
	if c.np != nil {
		if c.linkDown {
			add("link-up", 10, func() {
				c.logStep("link up")
				if err := c.np.SetLink(0, true); err != nil {
					c.t.Fatal(err)
				}
				if err := c.np.SetLink(1, true); err != nil {
					c.t.Fatal(err)
				}
				c.linkDown = false
			})
		} else {
			add("link-cut", 5, func() {
				c.disrupt()
				i := c.rng.IntN(2)
				c.logStep("link cut (veth end %d)", i)
				if err := c.np.SetLink(i, false); err != nil {
					c.t.Fatal(err)
				}
				c.linkDown = true
			})
		}
	}
	add("sleep", 2, func() {
		d := time.Duration(500+c.rng.IntN(2500)) * time.Millisecond
		c.logStep("sleep %v", d)
		time.Sleep(d)
	})
	total := 0
	for _, a := range acts {
		total += a.weight
	}
	x := c.rng.IntN(total)
	for _, a := range acts {
		if x < a.weight {
			a.run()
			break
		}
		x -= a.weight
	}
	if c.rng.IntN(2) == 0 {
		c.settle(10 * time.Second)
	} else {
		c.settle(time.Duration(c.rng.IntN(1500)) * time.Millisecond)
	}
	for _, n := range p.Nodes() {
		if n.Pid() != 0 && !n.Running() {
			c.problem("%s's daemon died", n.Name)
			b, _ := os.ReadFile(n.LogPath)
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			c.logStep("  tail of %s's log:\n%s", n.Name, b)
			return true
		}
	}
	if c.bg == nil {
		c.idleCompare()
	}
	if sa, sb := c.state(p.A), c.state(p.B); sa.cs == "Connected" && sb.cs == "Connected" && sa.ds == "UpToDate" && sa.pds == "UpToDate" && c.bg == nil {
		c.unshared[p.A], c.unshared[p.B] = 0, 0
	}
	if c.splitBrainNow() && !c.resolveSplitBrain() {
		return true
	}
	return len(c.problems) > 0
}

// splitBrainNow reports whether a node logged a split brain since the
// last one handled.
func (c *chaos) splitBrainNow() bool {
	for _, n := range c.p.Nodes() {
		if regexp.MustCompile(`Split-Brain detected.*dropping connection`).MatchString(logAfter(n, c.sbMark[n])) {
			return true
		}
	}
	return false
}

// resolveSplitBrain resolves a split brain the way the model allows:
// the node that acknowledged no writes since the last sync point
// discards its data. It reports false (the run ends, with no data
// check) when both sides wrote or the victim cannot be demoted.
func (c *chaos) resolveSplitBrain() bool {
	p := c.p
	c.waitBG()
	for _, n := range p.Nodes() {
		c.sbMark[n] = logLen(n)
	}
	c.logStep("split brain (%s); acknowledged writes only one side may hold: alice %d, bob %d", c.states(), c.unshared[p.A], c.unshared[p.B])
	for _, n := range p.Nodes() {
		for _, m := range logAllMatches(n, `.*(uuid_compare\(\)=100|Split-Brain).*`) {
			c.logStep("  %s: %s", n.Name, m[0])
		}
	}
	if c.unshared[p.A] > 0 && c.unshared[p.B] > 0 {
		c.splitBrain = true
		c.logStep("split brain with writes on both sides: the model cannot follow; ending the run")
		for _, n := range p.Nodes() {
			ms := logAllMatches(n, `.*(new current UUID|uuid_compare|attached .* UUIDs|role\(|disk\().*`)
			if len(ms) > 30 {
				ms = ms[len(ms)-30:]
			}
			for _, m := range ms {
				c.logStep("  %s: %s", n.Name, m[0])
			}
		}
		return false
	}
	victim := p.B
	if c.unshared[p.B] > 0 || (c.unshared[p.A] == 0 && c.state(p.A).role != "Primary" && c.rng.IntN(2) == 0) {
		victim = p.A
	}
	if c.state(victim).role == "Primary" && !c.demoteTry(victim) {
		c.splitBrain = true
		c.logStep("split brain: victim %s cannot be demoted; ending the run", victim.Name)
		return false
	}
	if c.state(victim).cs != "StandAlone" {
		c.adm(victim, "disconnect")
	}
	c.adm(victim, "connect", "--discard-my-data")
	if c.state(p.Peer(victim)).cs == "StandAlone" {
		c.adm(p.Peer(victim), "connect")
	}
	c.resolved++
	c.settle(15 * time.Second)
	for _, n := range p.Nodes() {
		c.sbMark[n] = logLen(n)
	}
	c.logStep("split brain resolved (victim %s): %s", victim.Name, c.states())
	return true
}

// finish brings both nodes attached, connected and in sync, checks the
// data through the Primary and on both disks.
func (c *chaos) finish() {
	p := c.p
	c.logStep("final: %s", c.states())
	c.waitBG()
	if c.linkDown {
		c.np.SetLink(0, true)
		c.np.SetLink(1, true)
		c.linkDown = false
		c.logStep("final: link up")
	}
	deadline := time.Now().Add(3 * time.Minute)
	synced := false
	lastAction := map[string]time.Time{}
	// act runs a command at most every 3 s per node and command.
	act := func(n *Node, args ...string) {
		k := n.Name + " " + strings.Join(args, " ")
		if time.Since(lastAction[k]) < 3*time.Second {
			return
		}
		lastAction[k] = time.Now()
		c.adm(n, args...)
	}
	for time.Now().Before(deadline) {
		done := true
		for _, n := range p.Nodes() {
			if !n.Running() {
				c.logStep("final: start %s", n.Name)
				n.Start()
			}
			s := c.state(n)
			if !s.configured {
				act(n, "up")
				done = false
				continue
			}
			if s.cs == "StandAlone" {
				if c.splitBrainNow() {
					if !c.resolveSplitBrain() {
						break
					}
				} else {
					act(n, "connect")
				}
			}
			if s.ds == "Diskless" && (s.cs == "Connected" || c.rng.IntN(2) == 0) {
				act(n, "attach")
			}
			if s.cs != "Connected" || s.ds != "UpToDate" || s.pds != "UpToDate" {
				done = false
			}
		}
		if c.splitBrain {
			break
		}
		if done {
			synced = true
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if c.splitBrain {
		c.logStep("final: SPLIT BRAIN (%s): no data check", c.states())
		for _, n := range p.Nodes() {
			for _, m := range logAllMatches(n, `.*(uuid_compare|Split-Brain).*`) {
				c.logStep("  %s: %s", n.Name, m[0])
			}
		}
		return
	}
	if !synced {
		c.problem("final: not synced after 3 minutes: %s", c.states())
		for _, n := range p.Nodes() {
			for _, m := range logAllMatches(n, `.*(uuid_compare|refus|giving up|Split-Brain).*`) {
				c.logStep("  %s: %s", n.Name, m[0])
			}
		}
		return
	}
	c.logStep("final: synced: %s", c.states())
	c.idleCompare()
	ps := c.primaries()
	if len(ps) == 0 {
		if c.adm(p.A, "primary") {
			ps = []*Node{p.A}
		}
	}
	if len(ps) > 0 {
		c.readVerify(ps[0], "final")
		c.demoteTry(ps[0])
	}
	for _, n := range p.Nodes() {
		if !c.adm(n, "down") {
			c.problem("final: %s down refused", n.Name)
		}
	}
	for _, n := range p.Nodes() {
		if s := c.diskSummary(n, 10); s != "fits the model" {
			c.problem("final: %s's disk does not hold the acknowledged data: %s", n.Name, s)
		}
	}
	a, b := c.readSlots(p.Disk[p.A]), c.readSlots(p.Disk[p.B])
	if !bytes.Equal(a, b) {
		for i := range c.slots {
			if !bytes.Equal(a[i*chaosSlotSize:(i+1)*chaosSlotSize], b[i*chaosSlotSize:(i+1)*chaosSlotSize]) {
				c.problem("final: disks differ in slot %d: alice %s, bob %s (model %v)", i, c.slotTags(p.Disk[p.A], i), c.slotTags(p.Disk[p.B], i), &c.model[i])
			}
		}
	}
	if off := c.firstDiff(); off >= 0 {
		c.problem("final: backing files differ at byte %d (block %d)", off, off/4096)
	}
	c.logStep("final: data checked")
}

// firstDiff compares both backing files' data areas and returns the
// first differing offset, or -1.
func (c *chaos) firstDiff() int64 {
	n := c.p.DataSize(c.t)
	fa, err := os.Open(c.p.Disk[c.p.A])
	if err != nil {
		c.t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(c.p.Disk[c.p.B])
	if err != nil {
		c.t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(ba)) {
		k := min(int64(len(ba)), n-off)
		io.ReadFull(io.NewSectionReader(fa, off, k), ba[:k])
		io.ReadFull(io.NewSectionReader(fb, off, k), bb[:k])
		if !bytes.Equal(ba[:k], bb[:k]) {
			for i := range k {
				if ba[i] != bb[i] {
					return off + i
				}
			}
		}
	}
	return -1
}
