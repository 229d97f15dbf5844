package testenv

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"drbdd/drbdd/meta"
)

// Pair is two nodes, alice and bob, replicating resource r0 over loopback
// (127.0.0.1 and 127.0.0.2), each exporting NBD on its own address.
type Pair struct {
	A, B *Node
	Res  Resource
	// URI is each node's NBD export, indexed like Nodes().
	URI map[*Node]string
	// Disk is each node's backing file.
	Disk map[*Node]string
	Size int64
}

// PairOptions tune NewPair.
type PairOptions struct {
	// Size is each backing file's size (default 64 MiB).
	Size int64
	// Protocol is A, B or C (default C).
	Protocol string
	// Net and Disk are extra net: and disk: options.
	Net, Disk map[string]string
	Secret    string
}

// NewPair writes the resource file for two nodes and starts both daemons.
func NewPair(t *testing.T, o PairOptions) *Pair {
	t.Helper()
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	a, b := NewNode(t, "alice"), NewNode(t, "bob")
	p := &Pair{A: a, B: b, URI: map[*Node]string{}, Disk: map[*Node]string{}, Size: o.Size}
	hosts := []Host{}
	for i, n := range []*Node{a, b} {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		disk := MakeDisk(t, filepath.Join(n.Dir, n.Name+".img"), o.Size)
		nbdPort := FreePort(t, ip)
		h := Host{Name: n.Name, Address: fmt.Sprintf("%s:%d", ip, FreePort(t, ip)), Disk: disk, NBDListen: fmt.Sprintf("%s:%d", ip, nbdPort)}
		hosts = append(hosts, h)
		p.URI[n] = fmt.Sprintf("nbd://%s:%d/r0", ip, nbdPort)
		p.Disk[n] = disk
	}
	net := map[string]string{"connect-int": "1s", "ping-int": "1s", "ping-timeout": "500ms", "timeout": "600ms"}
	for k, v := range o.Net {
		net[k] = v
	}
	p.Res = Resource{Name: "r0", Protocol: o.Protocol, Secret: o.Secret, Net: net, Disk: o.Disk, Hosts: hosts}
	WriteResource(t, p.Res, a, b)
	a.Start()
	b.Start()
	return p
}

// Nodes returns both nodes.
func (p *Pair) Nodes() []*Node { return []*Node{p.A, p.B} }

// Peer returns the other node.
func (p *Pair) Peer(n *Node) *Node {
	if n == p.A {
		return p.B
	}
	return p.A
}

// Up runs create-md and up on both nodes and waits until they connect.
func (p *Pair) Up(t *testing.T) {
	t.Helper()
	for _, n := range p.Nodes() {
		n.MustAdm("create-md", "r0")
		n.MustAdm("up", "r0")
	}
	for _, n := range p.Nodes() {
		n.WaitState("cstate", "r0", "Connected", 20*time.Second)
	}
}

// InitialSync promotes primary with --force and waits for the initial
// full sync to finish.
func (p *Pair) InitialSync(t *testing.T, primary *Node) {
	t.Helper()
	primary.MustAdm("primary", "--force", "r0")
	p.WaitSynced(t, 2*time.Minute)
}

// WaitSynced waits until both nodes are Connected and UpToDate/UpToDate.
func (p *Pair) WaitSynced(t *testing.T, timeout time.Duration) {
	t.Helper()
	for _, n := range p.Nodes() {
		n.WaitState("dstate", "r0", "UpToDate/UpToDate", timeout)
		n.WaitState("cstate", "r0", "Connected", timeout)
	}
}

// DataSize is the replicated data size of each backing file (the file
// minus internal metadata).
func (p *Pair) DataSize(t testing.TB) int64 {
	t.Helper()
	l, err := meta.InternalLayout(p.Size, meta.ALExtentsDefault)
	if err != nil {
		t.Fatal(err)
	}
	return l.DataBytes
}

// CompareDisks checks that both backing files hold identical data in the
// replicated area. Call it with both resources down (or idle).
func (p *Pair) CompareDisks(t testing.TB) {
	t.Helper()
	n := p.DataSize(t)
	fa, err := os.Open(p.Disk[p.A])
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(p.Disk[p.B])
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(ba)) {
		k := min(int64(len(ba)), n-off)
		if _, err := io.ReadFull(io.NewSectionReader(fa, off, k), ba[:k]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(io.NewSectionReader(fb, off, k), bb[:k]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ba[:k], bb[:k]) {
			for i := range k {
				if ba[i] != bb[i] {
					t.Fatalf("backing files differ at byte %d (block %d)", off+i, (off+i)/4096)
				}
			}
		}
	}
}

// Counter reads one /proc/drbd counter (e.g. "ns", "oos") of minor 0.
func (n *Node) Counter(name string) int64 {
	m := regexp.MustCompile(`\b` + name + `:(\d+)`).FindStringSubmatch(n.ReadStatus())
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseInt(m[1], 10, 64)
	return v
}

// LogContains reports whether the daemon log contains s.
func (n *Node) LogContains(s string) bool {
	b, _ := os.ReadFile(n.LogPath)
	return strings.Contains(string(b), s)
}
