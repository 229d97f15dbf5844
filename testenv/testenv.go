// Package testenv runs real drbdd daemons for tests and for the lab: it
// builds the binaries, writes resource files, starts and kills daemons,
// drives them with the real drbdadm and (in netns.go) joins them with
// network namespaces. Tests that use it are integration tests: they talk
// to drbdd only through its public interfaces, the way a user would.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds drbdd and drbdadm once per test process and returns the
// directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		binDir, buildErr = os.MkdirTemp("", "drbdd-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./drbdd", "./drbdadm")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// RequireTools skips the test unless every named program is installed. The
// README's test command installs them; a skip names what is missing.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test.sh installs it)", tool)
		}
	}
}

// Node is one drbdd daemon with its own control socket, status file and
// config directory.
type Node struct {
	Name      string
	Dir       string
	Control   string
	Status    string
	ConfigDir string
	LogPath   string
	// NetNS, when set, is the network namespace the daemon runs in.
	NetNS string

	t   testing.TB
	bin string
	// mu guards cmd and waited.
	mu     sync.Mutex
	cmd    *exec.Cmd
	waited chan struct{}
}

// NewNode prepares a node in a fresh directory; Start runs its daemon.
func NewNode(t testing.TB, name string) *Node {
	t.Helper()
	dir := t.TempDir()
	n := &Node{
		Name:      name,
		Dir:       dir,
		Control:   filepath.Join(dir, "drbdd.sock"),
		Status:    filepath.Join(dir, "status"),
		ConfigDir: filepath.Join(dir, "etc"),
		LogPath:   filepath.Join(dir, "drbdd.log"),
		t:         t,
		bin:       Binaries(t),
	}
	if err := os.MkdirAll(n.ConfigDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(n.LogPath); err == nil {
				t.Logf("--- drbdd log of %s ---\n%s", n.Name, b)
			}
		}
	})
	return n
}

// Start launches the daemon and waits for its control socket.
func (n *Node) Start() {
	n.t.Helper()
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	args := []string{filepath.Join(n.bin, "drbdd"), "--control", n.Control, "--status-file", n.Status}
	if n.NetNS != "" {
		args = append([]string{"ip", "netns", "exec", n.NetNS}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	logf.Close()
	waited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(waited)
	}()
	n.mu.Lock()
	n.cmd, n.waited = cmd, waited
	n.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", n.Control); err == nil {
			c.Close()
			return
		}
		select {
		case <-waited:
			b, _ := os.ReadFile(n.LogPath)
			n.t.Fatalf("drbdd %s exited at start:\n%s", n.Name, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
	n.t.Fatalf("drbdd %s: control socket %s did not appear", n.Name, n.Control)
}

// Pid is the daemon's process ID (0 before Start).
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// signal sends sig to the daemon's process group and waits for it to exit
// (up to timeout). It reports whether the daemon exited.
func (n *Node) signal(sig syscall.Signal, timeout time.Duration) bool {
	n.mu.Lock()
	cmd, waited := n.cmd, n.waited
	n.mu.Unlock()
	if cmd == nil {
		return true
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-waited:
		n.mu.Lock()
		n.cmd = nil
		n.mu.Unlock()
		return true
	case <-time.After(timeout):
		return false
	}
}

// Kill SIGKILLs the daemon, as a crash would.
func (n *Node) Kill() { n.signal(syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM and waits for a clean exit.
func (n *Node) Stop() {
	n.t.Helper()
	if !n.signal(syscall.SIGTERM, 40*time.Second) {
		n.t.Errorf("drbdd %s did not exit within 40s of SIGTERM", n.Name)
		n.Kill()
	}
}

// Running reports whether the daemon process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.waited:
		return false
	default:
		return true
	}
}

// Adm runs drbdadm against this node and returns its combined output.
func (n *Node) Adm(args ...string) (string, error) {
	full := append([]string{"--control", n.Control, "--config-dir", n.ConfigDir, "--node", n.Name}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.bin, "drbdadm"), full...)
	if n.NetNS != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NetNS, filepath.Join(n.bin, "drbdadm")}, full...)...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// MustAdm runs drbdadm and fails the test if it fails.
func (n *Node) MustAdm(args ...string) string {
	n.t.Helper()
	out, err := n.Adm(args...)
	if err != nil {
		n.t.Fatalf("%s: drbdadm %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// ReadStatus returns the status file.
func (n *Node) ReadStatus() string {
	b, _ := os.ReadFile(n.Status)
	return string(b)
}

// WaitFor polls cond until it returns true or the timeout passes; desc
// names what was awaited in the failure message.
func WaitFor(t testing.TB, timeout time.Duration, desc string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, desc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitState waits until `drbdadm <what> res` prints want.
func (n *Node) WaitState(what, res, want string, timeout time.Duration) {
	n.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for {
		out, _ := n.Adm(what, res)
		last = strings.TrimSpace(out)
		if last == want {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: %s %s = %q, want %q after %v", n.Name, what, res, last, want, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Resource describes a resource file for tests.
type Resource struct {
	Name     string
	Protocol string
	Device   string
	Secret   string
	// Extra is appended verbatim under the top level (e.g. "disk:\n  ...").
	Net   map[string]string
	Disk  map[string]string
	Hosts []Host
}

// Host is one node of a Resource.
type Host struct {
	Name, Address, Disk, MetaDisk, NBDListen string
}

// YAML renders the resource file.
func (r Resource) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "resource: %s\n", r.Name)
	if r.Protocol != "" {
		fmt.Fprintf(&b, "protocol: %s\n", r.Protocol)
	}
	if r.Device != "" {
		fmt.Fprintf(&b, "device: %s\n", r.Device)
	}
	if len(r.Net) > 0 || r.Secret != "" {
		b.WriteString("net:\n")
		if r.Secret != "" {
			fmt.Fprintf(&b, "  shared-secret: %q\n", r.Secret)
		}
		for k, v := range r.Net {
			fmt.Fprintf(&b, "  %s: %s\n", k, v)
		}
	}
	if len(r.Disk) > 0 {
		b.WriteString("disk:\n")
		for k, v := range r.Disk {
			fmt.Fprintf(&b, "  %s: %s\n", k, v)
		}
	}
	b.WriteString("on:\n")
	for _, h := range r.Hosts {
		fmt.Fprintf(&b, "  %s:\n", h.Name)
		if h.Address != "" {
			fmt.Fprintf(&b, "    address: %s\n", h.Address)
		}
		fmt.Fprintf(&b, "    disk: %s\n", h.Disk)
		if h.MetaDisk != "" {
			fmt.Fprintf(&b, "    meta-disk: %s\n", h.MetaDisk)
		}
		if h.NBDListen != "" {
			fmt.Fprintf(&b, "    nbd-listen: %s\n", h.NBDListen)
		}
	}
	return b.String()
}

// WriteResource writes r into each node's config directory.
func WriteResource(t testing.TB, r Resource, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		if err := os.WriteFile(filepath.Join(n.ConfigDir, r.Name+".yaml"), []byte(r.YAML()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// MakeDisk creates a zero-filled sparse backing file of size bytes.
func MakeDisk(t testing.TB, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// FreePort returns a TCP port that was free on host a moment ago.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Run runs a command and returns its combined output.
func Run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// MustRun runs a command and fails the test on error.
func MustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := Run(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// NbdshCmd returns an nbdsh command. nbdsh runs "python3 -m nbd", so the
// system python (which has Debian's libnbd module) must come first in PATH,
// ahead of any python a version manager put there.
func NbdshCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("nbdsh", args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	return cmd
}

// Nbdsh runs an nbdsh script against uri and returns its output.
func Nbdsh(t testing.TB, timeout time.Duration, uri, script string) string {
	t.Helper()
	cmd := NbdshCmd("-u", uri, "-c", script)
	done := make(chan struct{})
	timer := time.AfterFunc(timeout, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Fatalf("nbdsh %s: %v\n%s\nscript:%s", uri, err, out, script)
	}
	return string(out)
}
