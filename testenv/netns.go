package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsPair is two named network namespaces joined by a veth pair, for
// running two drbdd nodes on one host as if on two machines. Index 0 is
// the first node's side, index 1 the second's.
type NetnsPair struct {
	// NS are the namespace names, usable with `ip netns exec` and as
	// Node.NetNS.
	NS [2]string
	// IP are the addresses on the veth ends (10.77.0.1 and 10.77.0.2).
	IP [2]string
	// Veth are the interface names inside each namespace.
	Veth [2]string

	handles [2]*netlink.Handle
	ns      [2]netns.NsHandle
}

// NetnsSubnet is the /24 the veth pair is numbered from.
const NetnsSubnet = "10.77.0.%d"

// ErrNetemUnsupported is returned by SetNetem when the kernel has no
// netem qdisc (CONFIG_NET_SCH_NETEM off and no module).
var ErrNetemUnsupported = errors.New("kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")

// nsSeq makes namespace names unique within the process.
var nsSeq struct {
	sync.Mutex
	n int
}

// NewNetnsPair creates the namespaces and the veth pair, numbers the ends
// 10.77.0.1/24 and 10.77.0.2/24, brings them and lo up, and removes
// everything in t.Cleanup. It skips the test when namespaces cannot be
// created (not root, or no CONFIG_NET_NS).
func NewNetnsPair(t testing.TB) *NetnsPair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	nsSeq.Lock()
	nsSeq.n++
	seq := nsSeq.n
	nsSeq.Unlock()
	// Names must be unique on the host (namespaces are global) and veth
	// names at most 15 bytes.
	tag := fmt.Sprintf("%d%d", os.Getpid()%100000, seq)
	p := &NetnsPair{
		NS:   [2]string{"drbdd-" + tag + "-a", "drbdd-" + tag + "-b"},
		IP:   [2]string{fmt.Sprintf(NetnsSubnet, 1), fmt.Sprintf(NetnsSubnet, 2)},
		Veth: [2]string{"vd" + tag + "a", "vd" + tag + "b"},
	}
	for i := range p.ns {
		p.ns[i] = -1
	}
	t.Cleanup(p.close)
	for i, name := range p.NS {
		h, err := newNamedNS(name)
		if err != nil {
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL) {
				t.Skipf("cannot create network namespace %s: %v", name, err)
			}
			t.Fatalf("create network namespace %s: %v", name, err)
		}
		p.ns[i] = h
		if p.handles[i], err = netlink.NewHandleAt(h); err != nil {
			t.Fatalf("netlink handle in %s: %v", name, err)
		}
	}
	// Create the pair directly in the first namespace, with its peer end
	// in the second: the root namespace never sees it.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.Veth[0], MTU: 1500},
		PeerName:      p.Veth[1],
		PeerNamespace: netlink.NsFd(p.ns[1]),
	}
	if err := p.handles[0].LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", p.Veth[0], p.Veth[1], err)
	}
	for i, h := range p.handles {
		lo, err := h.LinkByName("lo")
		if err != nil {
			t.Fatalf("%s: lo: %v", p.NS[i], err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			t.Fatalf("%s: lo up: %v", p.NS[i], err)
		}
		link, err := h.LinkByName(p.Veth[i])
		if err != nil {
			t.Fatalf("%s: %s: %v", p.NS[i], p.Veth[i], err)
		}
		addr, err := netlink.ParseAddr(p.IP[i] + "/24")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("%s: add %s to %s: %v", p.NS[i], addr, p.Veth[i], err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatalf("%s: %s up: %v", p.NS[i], p.Veth[i], err)
		}
	}
	// The veth is usable once the other end answers; IPv4 on a fresh veth
	// needs no duplicate address detection, but the carrier comes up
	// asynchronously.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", p.NS[0], "ping", "-c", "1", "-W", "1", p.IP[1]).CombinedOutput()
		if err == nil {
			break
		}
		if errors.Is(err, exec.ErrNotFound) {
			break // no ping: trust the links
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s cannot reach %s over the veth pair: %v\n%s", p.NS[0], p.IP[1], err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// newNamedNS creates a named network namespace (a bind mount under
// /var/run/netns, as `ip netns add` makes) and returns a handle to it.
// netns.NewNamed moves the calling thread into the new namespace, so it
// runs on a thread of its own that is never given back to the Go
// scheduler: the thread exits with the goroutine.
func newNamedNS(name string) (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread's namespace is changed.
		h, err := netns.NewNamed(name)
		ch <- result{h, err}
	}()
	r := <-ch
	return r.h, r.err
}

// close removes the namespaces; the veth pair goes with them.
func (p *NetnsPair) close() {
	for i := range p.NS {
		if p.handles[i] != nil {
			p.handles[i].Close()
		}
		if p.ns[i] >= 0 {
			p.ns[i].Close()
			_ = netns.DeleteNamed(p.NS[i])
		}
	}
}

// Command returns a command that runs inside namespace i.
func (p *NetnsPair) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", p.NS[i], name}, args...)...)
}

// SetNetem puts a netem qdisc with the given one-way delay and loss
// (percent) on namespace i's veth end, replacing any previous one; it
// returns ErrNetemUnsupported when the kernel lacks netem.
func (p *NetnsPair) SetNetem(i int, delay time.Duration, lossPct float32) error {
	h := p.handles[i]
	link, err := h.LinkByName(p.Veth[i])
	if err != nil {
		return err
	}
	q := netlink.NewNetem(netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(1, 0),
		Parent:    netlink.HANDLE_ROOT,
	}, netlink.NetemQdiscAttrs{Latency: uint32(delay.Microseconds()), Loss: lossPct})
	if err := h.QdiscReplace(q); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w: %v", ErrNetemUnsupported, err)
		}
		return fmt.Errorf("netem on %s in %s: %w", p.Veth[i], p.NS[i], err)
	}
	return nil
}

// ClearNetem removes namespace i's netem qdisc.
func (p *NetnsPair) ClearNetem(i int) error {
	h := p.handles[i]
	link, err := h.LinkByName(p.Veth[i])
	if err != nil {
		return err
	}
	qs, err := h.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Type() == "netem" {
			if err := h.QdiscDel(q); err != nil {
				return err
			}
		}
	}
	return nil
}

// inNS runs fn on a thread switched into namespace h. If the thread
// cannot be switched back it is discarded (left locked).
func inNS(h netns.NsHandle, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			ch <- err
			runtime.UnlockOSThread()
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// DelayRelay is a user-space TCP relay that adds a fixed one-way delay in
// each direction: the stand-in for netem on kernels without it. It
// listens in one namespace and connects to a target in another.
type DelayRelay struct {
	// Addr is where it listens.
	Addr  string
	l     net.Listener
	delay time.Duration
	wg    sync.WaitGroup
	// Bytes counts the bytes relayed in both directions.
	Bytes atomic.Int64
	// mu guards conns.
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartDelayRelay listens on listen inside namespace from, and relays
// every connection to target, dialled from namespace to, delaying each
// byte by delay in each direction (so a round trip gains 2*delay). It
// stops in t.Cleanup.
func (p *NetnsPair) StartDelayRelay(t testing.TB, from int, listen string, to int, target string, delay time.Duration) *DelayRelay {
	t.Helper()
	r := &DelayRelay{Addr: listen, delay: delay, conns: map[net.Conn]struct{}{}}
	if err := inNS(p.ns[from], func() (err error) {
		r.l, err = net.Listen("tcp", listen)
		return err
	}); err != nil {
		t.Fatalf("relay listen %s in %s: %v", listen, p.NS[from], err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := r.l.Accept()
			if err != nil {
				return
			}
			var up net.Conn
			err = inNS(p.ns[to], func() (err error) {
				up, err = net.DialTimeout("tcp", target, 5*time.Second)
				return err
			})
			if err != nil {
				c.Close()
				continue
			}
			if !r.track(c, up) {
				return
			}
			r.wg.Add(2)
			go r.pipe(c, up)
			go r.pipe(up, c)
		}
	}()
	t.Cleanup(r.Close)
	return r
}

func (r *DelayRelay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

// pipe copies src to dst, releasing each chunk delay after it was read.
// Order is kept; a closed side closes both.
func (r *DelayRelay) pipe(src, dst net.Conn) {
	defer r.wg.Done()
	type seg struct {
		at time.Time
		b  []byte
	}
	q := make(chan seg, 1024)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- seg{time.Now().Add(r.delay), b[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for s := range q {
		time.Sleep(time.Until(s.at))
		if _, err := dst.Write(s.b); err != nil {
			break
		}
		r.Bytes.Add(int64(len(s.b)))
	}
	src.Close()
	dst.Close()
	// Let the reader see the closed socket and finish.
	for s := range q {
		_ = s
	}
}

// Close stops the relay and drops its connections.
func (r *DelayRelay) Close() {
	r.l.Close()
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	r.wg.Wait()
}

// SetLink brings namespace i's veth end down or up again: down cuts the
// link between the namespaces (both ends lose the carrier), as a pulled
// cable would.
func (p *NetnsPair) SetLink(i int, up bool) error {
	h := p.handles[i]
	link, err := h.LinkByName(p.Veth[i])
	if err != nil {
		return err
	}
	if up {
		return h.LinkSetUp(link)
	}
	return h.LinkSetDown(link)
}
