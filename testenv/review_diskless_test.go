package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Reproductions for the review of the diskless-Primary change.

// newNetnsNodesWith is newNetnsNodes with a wire protocol and extra net
// options.
func newNetnsNodesWith(t *testing.T, np *NetnsPair, proto string, netOpts map[string]string) *Pair {
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
	net := map[string]string{"connect-int": "1s", "ping-int": "1s", "ping-timeout": "500ms", "timeout": "600ms"}
	for k, v := range netOpts {
		net[k] = v
	}
	p.Res = Resource{Name: "r0", Protocol: proto, Net: net, Hosts: hosts}
	WriteResource(t, p.Res, a, b)
	a.Start()
	b.Start()
	return p
}

// nbdshIn runs an nbdsh script inside network namespace ns.
func nbdshIn(t testing.TB, ns, uri, script string) string {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nbdsh", "-u", uri, "-c", script)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh in %s: %v\n%s", ns, err, b)
	}
	return string(b)
}

// TestReviewDisklessProtocolALosesAckedWrite: under protocol A a diskless
// Primary acknowledges a write once it is handed to the socket; the peer's
// disk is the only one, so a network cut (no crash anywhere) loses the
// acknowledged write, and after the reconnect the Primary serves the old
// data.
func TestReviewDisklessProtocolALosesAckedWrite(t *testing.T) {
	RequireTools(t, "nbdsh", "ip")
	np := NewNetnsPair(t)
	p := newNetnsNodesWith(t, np, "A", map[string]string{"ping-int": "2s", "ping-timeout": "1s", "timeout": "1s"})
	p.Up(t)
	p.InitialSync(t, p.A)
	span := p.DataSize(t)
	old := scatterChunks(0x11, 4, 4096, span)
	nbdshWriteIn(t, np.NS[0], p.URI[p.A], old)

	p.A.MustAdm("detach", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	p.B.WaitState("dstate", "r0", "UpToDate/Diskless", 20*time.Second)
	time.Sleep(time.Second) // let bob's new UUIDs reach alice

	if err := np.SetLink(0, false); err != nil {
		t.Fatal(err)
	}
	newer := make([]wchunk, len(old))
	for i, c := range old {
		newer[i] = wchunk{c.off, tagPattern(0x22, c.off, len(c.data))}
	}
	f, layout := chunkFile(t, t.TempDir(), "newer", newer)
	out := nbdshIn(t, np.NS[0], p.URI[p.A], fmt.Sprintf(`f = open(%q, 'rb')
for off, n in %s:
    h.pwrite(f.read(n), off)
print('acked')
`, f, layout))
	if !strings.Contains(out, "acked") {
		t.Fatalf("writes not acknowledged: %s", out)
	}
	t.Logf("alice acknowledged %d writes while the link was down", len(newer))
	for _, n := range p.Nodes() {
		WaitFor(t, 20*time.Second, n.Name+" to notice the cut", func() bool {
			cs := admOut(n, "cstate")
			return cs == "WFConnection" || cs == "Unconnected" || cs == "NetworkFailure" || cs == "Timeout"
		})
	}
	if err := np.SetLink(0, true); err != nil {
		t.Fatal(err)
	}
	p.A.WaitState("cstate", "r0", "Connected", 30*time.Second)
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	got := nbdshIn(t, np.NS[0], p.URI[p.A], fmt.Sprintf(`f = open(%q, 'rb')
bad = [off for off, n in %s if h.pread(n, off) != f.read(n)]
print('bad', bad)
`, f, layout))
	if strings.TrimSpace(got) != "bad []" {
		t.Errorf("acknowledged writes lost (read back through alice after the reconnect): %s", strings.TrimSpace(got))
	}
}

// TestReviewDisklessAfterSyncTargetDetach: a Primary that is SyncTarget
// when its disk goes away (detach --force here, on-io-error in the field)
// shows its peer's data, but records the disk's current UUID (the sync
// UUID) as the exposed UUID; the peer starts no new generation (its bitmap
// UUID is set), so the diskless Primary can never reconnect after a blip.
func TestReviewDisklessAfterSyncTargetDetach(t *testing.T) {
	RequireTools(t, "nbdsh")
	p := NewPair(t, PairOptions{Disk: map[string]string{"c-plan-ahead": "0", "resync-rate": "1M"}})
	upSkipInitialSync(t, p)
	span := p.DataSize(t)

	p.A.MustAdm("disconnect", "r0")
	p.B.MustAdm("primary", "r0")
	nbdshWrite(t, p.URI[p.B], scatterChunks(0x33, 64, 256<<10, span))
	demote(t, p.B)
	p.A.MustAdm("connect", "r0")
	p.A.WaitState("cstate", "r0", "SyncTarget", 20*time.Second)
	p.A.MustAdm("primary", "r0")
	p.A.MustAdm("detach", "--force", "r0")
	p.A.WaitState("dstate", "r0", "Diskless/UpToDate", 20*time.Second)
	t.Logf("alice: %s %s %s; bob: %s %s %s", admOut(p.A, "role"), admOut(p.A, "cstate"), admOut(p.A, "dstate"),
		admOut(p.B, "role"), admOut(p.B, "cstate"), admOut(p.B, "dstate"))
	// Written while diskless, away from bob's chunks: alice's disk has
	// these blocks in sync in its own bitmap.
	chunks := scatterChunks(0x44, 8, 64<<10, span)
	for i := range chunks {
		chunks[i].off += 512 << 10
		chunks[i].data = tagPattern(0x44, chunks[i].off, len(chunks[i].data))
	}
	nbdshWrite(t, p.URI[p.A], chunks)

	mark := logLen(p.A)
	p.B.MustAdm("disconnect", "r0")
	p.B.MustAdm("connect", "r0")
	deadline := time.Now().Add(20 * time.Second)
	for admOut(p.A, "cstate") != "Connected" {
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if cs := admOut(p.A, "cstate"); cs == "Connected" {
		t.Logf("alice reconnected: no bug here")
		return
	}
	t.Errorf("diskless Primary alice did not reconnect after a blip (cstate %s):\n%s", admOut(p.A, "cstate"), logAfter(p.A, mark))

	// While disconnected, the exposed UUID (the stale sync UUID) lets the
	// old disk in again.
	p.A.MustAdm("disconnect", "r0")
	out, err := p.A.Adm("attach", "r0")
	if err != nil {
		t.Logf("attach refused: %v %s", err, out)
		return
	}
	t.Logf("alice after attaching while disconnected: %s %s %s", admOut(p.A, "role"), admOut(p.A, "cstate"), admOut(p.A, "dstate"))
	f, layout := chunkFile(t, t.TempDir(), "chunks", chunks)
	got := Nbdsh(t, time.Minute, p.URI[p.A], fmt.Sprintf(`f = open(%q, 'rb')
bad = []
for off, n in %s:
    want = f.read(n)
    try:
        if h.pread(n, off) != want:
            bad.append(off)
    except nbd.Error as e:
        print('error', off, e)
print('bad', bad)
`, f, layout))
	if !strings.HasSuffix(strings.TrimSpace(got), "bad []") {
		t.Errorf("alice serves stale data for writes she acknowledged while diskless: %s", strings.TrimSpace(got))
	}
}
