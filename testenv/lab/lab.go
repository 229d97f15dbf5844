package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// DefaultDir is where a lab keeps its VMs (disk images, sockets, logs)
// unless LabOptions.Dir or $DRBDD_LAB_DIR says otherwise. It is on disk,
// not in /run: the disk images fill up as the VMs write.
const DefaultDir = "/var/tmp/drbdd-lab"

// LabOptions configures New.
type LabOptions struct {
	// Dir holds one directory per VM and the lab's state; empty means
	// $DRBDD_LAB_DIR or DefaultDir.
	Dir string
	// Nodes are the VM names, one or two; nil means a and b. Node i
	// (from 1) gets 10.99.0.i/24.
	Nodes []string
	// Fresh deletes the VMs' disk images first.
	Fresh bool
	// Image, if not nil, is used instead of building one.
	Image *Image
	// Build configures the image built when Image is nil.
	Build BuildOptions
	// VM is a template for every VM (Memory, CPUs, DiskSize, DiskCache,
	// Append); names, directories, addresses and ports are filled in.
	VM VMConfig
}

// Lab is a set of VMs joined by a private network.
type Lab struct {
	Dir   string
	Image *Image
	VMs   []*VM
}

// labState is the lab's record in Dir: the UDP ports of the private link,
// kept so that a VM restarted later (by this or another process) joins
// the same link.
type labState struct {
	Ports map[string]int `json:"ports"`
}

// New builds the image and prepares the VMs without booting them.
func New(ctx context.Context, o LabOptions) (*Lab, error) {
	if o.Dir == "" {
		o.Dir = os.Getenv("DRBDD_LAB_DIR")
	}
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"a", "b"}
	}
	if len(o.Nodes) > 2 {
		return nil, errors.New("lab: at most two nodes (the private link is point to point)")
	}
	for i, n := range o.Nodes {
		if n == "" || filepath.Base(n) != n || slices.Contains(o.Nodes[:i], n) {
			return nil, fmt.Errorf("lab: bad node name %q", n)
		}
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	img := o.Image
	if img == nil {
		var err error
		if img, err = Build(ctx, o.Build); err != nil {
			return nil, err
		}
	}
	ports, err := linkPorts(o.Dir, o.Nodes)
	if err != nil {
		return nil, err
	}
	l := &Lab{Dir: o.Dir, Image: img}
	for i, name := range o.Nodes {
		cfg := o.VM
		cfg.Name = name
		cfg.Dir = filepath.Join(o.Dir, name)
		cfg.IP = fmt.Sprintf("10.99.0.%d/24", i+1)
		cfg.MAC = fmt.Sprintf("52:54:00:99:00:%02x", i+1)
		if len(o.Nodes) == 2 {
			cfg.NetLocal = ports[name]
			cfg.NetPeer = ports[o.Nodes[1-i]]
		}
		if o.Fresh {
			os.Remove(filepath.Join(cfg.Dir, diskFile))
			os.Remove(filepath.Join(cfg.Dir, scratchFile))
		}
		vm, err := NewVM(img, cfg)
		if err != nil {
			return nil, err
		}
		l.VMs = append(l.VMs, vm)
	}
	return l, nil
}

// linkPorts returns the UDP port of each node's end of the link: the ones
// recorded in dir if any, else free ones (then recorded).
func linkPorts(dir string, nodes []string) (map[string]int, error) {
	path := filepath.Join(dir, "lab.json")
	var st labState
	if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &st) == nil {
		ok := true
		for _, n := range nodes {
			ok = ok && st.Ports[n] != 0
		}
		if ok {
			return st.Ports, nil
		}
	}
	st.Ports = map[string]int{}
	for _, n := range nodes {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		st.Ports[n] = c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	return st.Ports, os.WriteFile(path, b, 0o644)
}

// VM returns the VM called name, or nil.
func (l *Lab) VM(name string) *VM {
	for _, v := range l.VMs {
		if v.Name() == name {
			return v
		}
	}
	return nil
}

// Boot boots every VM at once and waits for all. On failure the VMs that
// did boot keep running; call Kill.
func (l *Lab) Boot(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(l.VMs))
	for i, v := range l.VMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.Boot(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Kill kills every VM.
func (l *Lab) Kill() {
	for _, v := range l.VMs {
		v.Kill()
	}
}

// Close disconnects from every VM and leaves them running.
func (l *Lab) Close() {
	for _, v := range l.VMs {
		v.Close()
	}
}

// MustRun is a helper for scripts and tests: it runs cmd in v and fails
// unless it exits 0, returning the standard output.
func MustRun(ctx context.Context, v *VM, cmd string) (string, error) {
	r, err := v.Exec(ctx, cmd, nil)
	if err != nil {
		return r.Stdout, err
	}
	if r.Code != 0 {
		return r.Stdout, fmt.Errorf("%s: %q exited %d:\n%s%s", v.Name(), cmd, r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout, nil
}

// WaitFor polls cond every interval until it returns true, ctx ends or
// timeout passes.
func WaitFor(ctx context.Context, timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(interval):
		}
	}
}
