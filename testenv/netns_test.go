package testenv

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// replPort is the replication port in the namespaces (each has its own
// port space, so a fixed port is free).
const replPort = 7789

// newNetnsNodes starts alice in np's first namespace and bob in its
// second, with resource r0 on 10.77.0.1/2 and the NBD export listening
// inside each node's namespace. proto is the wire protocol ("" for C)
// and net overrides net: options.
func newNetnsNodes(t *testing.T, np *NetnsPair, proto string, net map[string]string) *Pair {
	t.Helper()
	a, b := NewNode(t, "alice"), NewNode(t, "bob")
	p := &Pair{A: a, B: b, URI: map[*Node]string{}, Disk: map[*Node]string{}, Size: 64 << 20}
	var hosts []Host
	for i, n := range []*Node{a, b} {
		n.NetNS = np.NS[i]
		disk := MakeDisk(t, filepath.Join(n.Dir, n.Name+".img"), p.Size)
		hosts = append(hosts, Host{Name: n.Name, Address: fmt.Sprintf("%s:%d", np.IP[i], replPort), Disk: disk,
			NBDListen: np.IP[i] + ":10809"})
		p.URI[n] = fmt.Sprintf("nbd://%s:10809/r0", np.IP[i])
		p.Disk[n] = disk
	}
	opts := map[string]string{"connect-int": "1s", "ping-int": "1s", "ping-timeout": "500ms", "timeout": "600ms"}
	for k, v := range net {
		opts[k] = v
	}
	p.Res = Resource{Name: "r0", Protocol: proto, Net: opts, Hosts: hosts}
	WriteResource(t, p.Res, a, b)
	a.Start()
	b.Start()
	return p
}

// fioVerify runs a fio write load with crc32c verification against uri
// from inside namespace i.
func fioVerify(t *testing.T, np *NetnsPair, i int, uri, name, rw, size string, qd int) {
	t.Helper()
	cmd := np.Command(i, "fio", "--name="+name, "--ioengine=nbd", "--uri="+uri, "--rw="+rw, "--bs=4k",
		"--iodepth="+strconv.Itoa(qd), "--size="+size, "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--verify_state_save=0", "--output-format=terse")
	cmd.Dir = t.TempDir()
	timer := time.AfterFunc(2*time.Minute, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fio %s in %s: %v\n%s", name, np.NS[i], err, out)
	}
	if strings.Contains(string(out), "verify") && strings.Contains(string(out), "bad") {
		t.Fatalf("fio %s: verify failed:\n%s", name, out)
	}
}

// TestReplicationInNetns runs two daemons in two network namespaces joined
// by a veth pair: initial sync, a verified write load, then the same with
// 5 ms of one-way delay on the link; the backing files end identical.
func TestReplicationInNetns(t *testing.T) {
	RequireTools(t, "fio", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodes(t, np, "", nil)
	p.Up(t)
	p.InitialSync(t, p.A)
	fioVerify(t, np, 0, p.URI[p.A], "netns-randwrite", "randwrite", "16M", 16)
	fioVerify(t, np, 0, p.URI[p.A], "netns-seq", "write", "8M", 4)

	// 5 ms each way: netem on both veth ends, or, on kernels without
	// netem, a user-space relay that delays each direction by 5 ms.
	const delay = 5 * time.Millisecond
	var relay *DelayRelay
	err := np.SetNetem(0, delay, 0)
	if err == nil {
		err = np.SetNetem(1, delay, 0)
	}
	switch {
	case err == nil:
		t.Logf("netem: %v one-way delay on %s and %s", delay, np.Veth[0], np.Veth[1])
	case errors.Is(err, ErrNetemUnsupported):
		t.Logf("%v: emulating %v one-way delay with a user-space relay", err, delay)
		relay = relayThroughDelay(t, np, p, delay)
	default:
		t.Fatal(err)
	}
	p.A.WaitState("cstate", "r0", "Connected", 20*time.Second)
	fioVerify(t, np, 0, p.URI[p.A], "netns-delayed", "randwrite", "4M", 8)
	if got := admOut(p.B, "dstate"); got != "UpToDate/UpToDate" {
		t.Fatalf("bob dstate %q after the delayed load", got)
	}
	if relay != nil {
		if n := relay.Bytes.Load(); n < 4<<20 {
			t.Fatalf("the delay relay carried only %d bytes of a 4 MiB replicated load", n)
		}
	}

	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}

// relayThroughDelay reconnects the pair through DelayRelays. Alice dials
// bob through a relay in her namespace (10.77.0.1:7780 -> 10.77.0.2:7789);
// bob's view of alice goes through a relay in his (10.77.0.2:7790 ->
// 10.77.0.1:7789). The addresses are chosen so that only alice dials
// (drbdd dials when its own address sorts above the peer's). Alice is
// demoted for the reconnect, so that no new data generation starts and
// the reconnect needs no resync; she is promoted again afterwards. It
// returns the relay alice dials, which carries the replication traffic.
func relayThroughDelay(t *testing.T, np *NetnsPair, p *Pair, delay time.Duration) *DelayRelay {
	t.Helper()
	relayA := fmt.Sprintf("%s:%d", np.IP[0], replPort-9)
	relayB := fmt.Sprintf("%s:%d", np.IP[1], replPort+1)
	dialled := np.StartDelayRelay(t, 0, relayA, 1, fmt.Sprintf("%s:%d", np.IP[1], replPort), delay)
	np.StartDelayRelay(t, 1, relayB, 0, fmt.Sprintf("%s:%d", np.IP[0], replPort), delay)

	demote(t, p.A)
	p.A.MustAdm("disconnect", "r0")
	p.B.MustAdm("disconnect", "r0")
	for _, side := range []struct {
		n     *Node
		peer  int
		relay string
	}{{p.A, 1, relayA}, {p.B, 0, relayB}} {
		r := p.Res
		r.Hosts = append([]Host(nil), p.Res.Hosts...)
		r.Hosts[side.peer].Address = side.relay
		WriteResource(t, r, side.n)
	}
	p.A.MustAdm("connect", "r0")
	p.B.MustAdm("connect", "r0")
	p.waitSyncedStrict(t, 30*time.Second)
	p.A.MustAdm("primary", "r0")
	return dialled
}

// TestNetnsPair checks the helper itself: the two ends reach each other,
// the root namespace sees neither the veth pair nor the addresses, and
// cleanup removes the namespaces.
func TestNetnsPair(t *testing.T) {
	RequireTools(t, "ip")
	var names [2]string
	t.Run("pair", func(t *testing.T) {
		np := NewNetnsPair(t)
		names = np.NS
		for i := range 2 {
			out, err := np.Command(i, "ip", "-4", "-o", "addr", "show", "dev", np.Veth[i]).CombinedOutput()
			if err != nil || !strings.Contains(string(out), np.IP[i]+"/24") {
				t.Fatalf("%s: %s lacks %s/24: %v %s", np.NS[i], np.Veth[i], np.IP[i], err, out)
			}
			if out, err := np.Command(i, "ping", "-c", "1", "-W", "2", np.IP[1-i]).CombinedOutput(); err != nil {
				t.Fatalf("%s cannot ping %s: %v\n%s", np.NS[i], np.IP[1-i], err, out)
			}
		}
		if out, err := Run(10*time.Second, "ip", "link", "show", np.Veth[0]); err == nil {
			t.Fatalf("the root namespace sees %s:\n%s", np.Veth[0], out)
		}
	})
	out := MustRun(t, 10*time.Second, "ip", "netns", "list")
	for _, n := range names {
		if n != "" && strings.Contains(out, n) {
			t.Errorf("namespace %s left behind:\n%s", n, out)
		}
	}
}

// TestSplitBrainAfterNetworkCut: the split brain comes from a cut link,
// not from drbdadm: alice keeps running as Primary, bob is promoted while
// he cannot reach her, both write, and the link comes back. The
// connector's own reconnect must detect the split brain, leave both
// StandAlone (default policies) and merge nothing.
func TestSplitBrainAfterNetworkCut(t *testing.T) {
	RequireTools(t, "nbdsh", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodes(t, np, "", nil)
	p.Up(t)
	p.InitialSync(t, p.A)

	if err := np.SetLink(0, false); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes() {
		WaitFor(t, 20*time.Second, n.Name+" to notice the cut", func() bool {
			cs := admOut(n, "cstate")
			return cs == "WFConnection" || cs == "Unconnected"
		})
	}
	p.B.MustAdm("primary", "r0")
	span := p.DataSize(t) / 2
	a := scatterChunks(0xa1, 8, 64<<10, span)
	b := scatterChunks(0xb1, 4, 64<<10, span)
	for i := range b {
		b[i].off += 4096
		b[i].data = tagPattern(0xb1, b[i].off, len(b[i].data))
	}
	nbdshWriteIn(t, np.NS[0], p.URI[p.A], a)
	nbdshWriteIn(t, np.NS[1], p.URI[p.B], b)
	demote(t, p.A)
	demote(t, p.B)
	hash := map[*Node][32]byte{p.A: p.dataHash(t, p.A), p.B: p.dataHash(t, p.B)}
	mark := map[*Node]int{p.A: logLen(p.A), p.B: logLen(p.B)}

	if err := np.SetLink(0, true); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes() {
		n.WaitState("cstate", "r0", "StandAlone", 30*time.Second)
	}
	for _, n := range p.Nodes() {
		if l := logAfter(n, mark[n]); !strings.Contains(l, "Split-Brain detected") {
			t.Errorf("%s did not detect the split brain:\n%s", n.Name, l)
		}
		if p.dataHash(t, n) != hash[n] {
			t.Errorf("%s's data changed: merged", n.Name)
		}
	}
	if !diskHolds(t, p.Disk[p.A], a) || diskHolds(t, p.Disk[p.A], b) || !diskHolds(t, p.Disk[p.B], b) || diskHolds(t, p.Disk[p.B], a) {
		t.Error("each side does not hold exactly its own writes")
	}
}

// TestNetworkCutResyncsOnlyDirty: the link between a Primary and its
// Secondary is cut while the Primary writes; when it comes back the
// nodes reconnect by themselves (no split brain: only one side wrote)
// and resync exactly what was written.
func TestNetworkCutResyncsOnlyDirty(t *testing.T) {
	RequireTools(t, "nbdsh", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodes(t, np, "", nil)
	p.Up(t)
	p.InitialSync(t, p.A)

	if err := np.SetLink(1, false); err != nil {
		t.Fatal(err)
	}
	waitDegraded(t, p.A)
	chunks := scatterChunks(0xc7, 64, 64<<10, p.DataSize(t))
	nbdshWriteIn(t, np.NS[0], p.URI[p.A], chunks)
	const dirtyKiB = 64 * 64
	if oos := settledCounter(t, p.A, "oos"); oos != dirtyKiB {
		t.Fatalf("alice oos:%d, want %d", oos, dirtyKiB)
	}
	ns0 := settledCounter(t, p.A, "ns")
	if err := np.SetLink(1, true); err != nil {
		t.Fatal(err)
	}
	p.waitSyncedStrict(t, time.Minute)
	checkResyncSent(t, p.A, ns0, dirtyKiB)
	demote(t, p.A)
	p.downBoth(t)
	p.CompareDisks(t)
}
