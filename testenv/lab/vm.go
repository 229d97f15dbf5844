package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"drbdd/testenv/lab/agentproto"
)

// VMConfig describes one VM.
type VMConfig struct {
	// Name is the node name: the VM's hostname and its name in resource
	// files.
	Name string `json:"name"`
	// Dir holds the VM's files: disk image, sockets, logs, pid file.
	Dir string `json:"dir"`
	// IP is the address of eth0 in CIDR form, e.g. 10.99.0.1/24.
	IP string `json:"ip"`
	// MAC is eth0's hardware address.
	MAC string `json:"mac"`
	// Memory is qemu's -m; empty means 512M.
	Memory string `json:"memory,omitempty"`
	// CPUs is qemu's -smp; 0 means 1.
	CPUs int `json:"cpus,omitempty"`
	// CPU is qemu's -cpu; empty means DefaultCPU.
	CPU string `json:"cpu,omitempty"`
	// DiskSize is the size of the virtio disk (/dev/vda) created when the
	// image file does not exist yet; 0 means 256 MiB.
	DiskSize int64 `json:"disk_size,omitempty"`
	// ScratchSize, if not 0, adds a second virtio disk of that size
	// (/dev/vdb, file scratch.img), which drbdd does not use: the
	// benchmark's raw-disk baseline.
	ScratchSize int64 `json:"scratch_size,omitempty"`
	// DiskCache is qemu's cache mode for the disks; empty means writeback.
	// Killing qemu loses nothing the guest wrote to it in any mode except
	// what the guest itself had not written yet.
	DiskCache string `json:"disk_cache,omitempty"`
	// NetLocal and NetPeer are the UDP ports on 127.0.0.1 of this VM's
	// end of the private link and of the peer's; 0 means no network.
	NetLocal int `json:"net_local,omitempty"`
	NetPeer  int `json:"net_peer,omitempty"`
	// Append is added to the kernel command line.
	Append string `json:"append,omitempty"`
}

// DefaultCPU is the emulated CPU. A plain model rather than "max": with
// "max" (which enables newer features such as protection keys) a 6.12
// guest once died of a double fault under TCG during an initial sync.
const DefaultCPU = "qemu64"

// Paths of a VM's files, relative to its Dir.
const (
	agentSocket   = "agent.sock"   // the agent's virtio-serial port
	consoleSocket = "console.sock" // the serial console (ttyS0)
	consoleLog    = "console.log"  // everything the console printed
	qemuLog       = "qemu.log"     // qemu's own output
	pidFile       = "qemu.pid"
	diskFile      = "disk.img"
	scratchFile   = "scratch.img" // the optional second disk (/dev/vdb)
	stateFile     = "vm.json"
)

// vmState is what a VM records in its Dir, so that another process (the
// lab command) can talk to it.
type vmState struct {
	Config VMConfig `json:"config"`
	Image  Image    `json:"image"`
}

// VM is one qemu virtual machine. Its methods may be called concurrently.
type VM struct {
	cfg VMConfig
	img Image

	// dialMu serializes connecting to the agent (see agent).
	dialMu sync.Mutex

	// mu guards the fields below.
	mu       sync.Mutex
	cmd      *exec.Cmd     // qemu, if this process started it
	exited   chan struct{} // closed when cmd has exited
	ag       *agentClient
	bootTime time.Duration
}

// NewVM prepares a VM; Boot starts it.
func NewVM(img *Image, cfg VMConfig) (*VM, error) {
	if cfg.Name == "" || cfg.Dir == "" {
		return nil, errors.New("lab: a VM needs a name and a directory")
	}
	if cfg.Memory == "" {
		cfg.Memory = "512M"
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.CPU == "" {
		cfg.CPU = DefaultCPU
	}
	if cfg.DiskSize == 0 {
		cfg.DiskSize = 256 << 20
	}
	if cfg.DiskCache == "" {
		cfg.DiskCache = "writeback"
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	return &VM{cfg: cfg, img: *img}, nil
}

// OpenVM returns the VM whose directory is dir, as recorded by the Boot of
// another process. It does not connect until the first Run.
func OpenVM(dir string) (*VM, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("lab: %w (is the VM booted?)", err)
	}
	var st vmState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("lab: %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &VM{cfg: st.Config, img: st.Image}, nil
}

// Name returns the node name.
func (v *VM) Name() string { return v.cfg.Name }

// Config returns the VM's configuration.
func (v *VM) Config() VMConfig { return v.cfg }

// Dir returns the VM's directory.
func (v *VM) Dir() string { return v.cfg.Dir }

// DiskPath returns the host path of the VM's virtio disk image.
func (v *VM) DiskPath() string { return filepath.Join(v.cfg.Dir, diskFile) }

// ScratchPath returns the host path of the image of the second disk
// (VMConfig.ScratchSize).
func (v *VM) ScratchPath() string { return filepath.Join(v.cfg.Dir, scratchFile) }

// ConsoleSocket returns the Unix socket of the serial console, on which a
// shell runs (see the lab command's "console").
func (v *VM) ConsoleSocket() string { return filepath.Join(v.cfg.Dir, consoleSocket) }

// BootTime returns how long the last Boot took from starting qemu to the
// agent's first answer.
func (v *VM) BootTime() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.bootTime
}

// ConsoleTail returns the last n bytes of the console log.
func (v *VM) ConsoleTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(v.cfg.Dir, consoleLog))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// qemuArgs returns qemu's command line. linkFD says that qemu finds the
// link's socket (see linkSocket) at file descriptor linkFDNumber;
// otherwise qemu opens the link's socket itself.
func (v *VM) qemuArgs(linkFD bool) []string {
	c := v.cfg
	dir := c.Dir
	appendLine := "console=ttyS0 panic=-1 quiet mitigations=off drbdd.node=" + c.Name
	if c.IP != "" {
		appendLine += " drbdd.ip=" + c.IP
	}
	if c.Append != "" {
		appendLine += " " + c.Append
	}
	args := []string{
		"-name", "drbdd-lab-" + c.Name,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-accel", "tcg", "-cpu", c.CPU,
		"-m", c.Memory, "-smp", strconv.Itoa(c.CPUs),
		"-kernel", v.img.Kernel, "-initrd", v.img.Initrd, "-append", appendLine,
		"-pidfile", filepath.Join(dir, pidFile),
		"-chardev", "socket,id=con,path=" + filepath.Join(dir, consoleSocket) + ",server=on,wait=off,logfile=" + filepath.Join(dir, consoleLog) + ",logappend=on",
		"-serial", "chardev:con",
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path=" + filepath.Join(dir, agentSocket) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentproto.PortName,
		"-drive", "file=" + v.DiskPath() + ",format=raw,if=none,id=disk0,cache=" + c.DiskCache + ",aio=threads",
		"-device", "virtio-blk-pci,drive=disk0,serial=drbdd-" + c.Name,
	}
	if c.ScratchSize > 0 {
		// Added after disk0, so that the guest names it vdb.
		args = append(args,
			"-drive", "file="+v.ScratchPath()+",format=raw,if=none,id=disk1,cache="+c.DiskCache+",aio=threads",
			"-device", "virtio-blk-pci,drive=disk1,serial=scratch-"+c.Name)
	}
	if c.NetLocal != 0 {
		netdev := fmt.Sprintf("socket,id=net0,udp=127.0.0.1:%d,localaddr=127.0.0.1:%d", c.NetPeer, c.NetLocal)
		if linkFD {
			netdev = fmt.Sprintf("dgram,id=net0,local.type=fd,local.str=%d", linkFDNumber)
		}
		args = append(args,
			"-netdev", netdev,
			"-device", "virtio-net-pci,netdev=net0,mac="+c.MAC)
	}
	return args
}

// Boot starts qemu and waits until the agent answers. qemu runs in a
// session of its own, so that it outlives this process if the caller
// leaves the VM running (Close instead of Kill).
func (v *VM) Boot(ctx context.Context) error {
	v.mu.Lock()
	running := v.cmd != nil
	v.mu.Unlock()
	if running {
		return fmt.Errorf("lab: %s is already running", v.cfg.Name)
	}
	if err := v.ensureDisk(); err != nil {
		return err
	}
	for _, f := range []string{agentSocket, consoleSocket, pidFile} {
		os.Remove(filepath.Join(v.cfg.Dir, f))
	}
	b, err := json.MarshalIndent(vmState{Config: v.cfg, Image: v.img}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(v.cfg.Dir, stateFile), b, 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(v.cfg.Dir, qemuLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	var link *os.File
	if v.cfg.NetLocal != 0 && qemuHasDgram() {
		if link, err = linkSocket(v.cfg.NetLocal, v.cfg.NetPeer); err != nil {
			return err
		}
		// qemu has its own copy once started.
		defer link.Close()
	}
	args := v.qemuArgs(link != nil)
	fmt.Fprintf(logf, "--- %s: qemu-system-x86_64 %s\n", time.Now().Format(time.RFC3339), strings.Join(args, " "))
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if link != nil {
		cmd.ExtraFiles = []*os.File{link} // descriptor 3: linkFDNumber
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: starting qemu for %s: %w", v.cfg.Name, err)
	}
	exited := make(chan struct{})
	// This goroutine belongs to the VM and ends when qemu exits.
	go func() {
		cmd.Wait()
		close(exited)
	}()
	v.mu.Lock()
	v.cmd, v.exited = cmd, exited
	v.mu.Unlock()

	fail := func(err error) error {
		v.Kill()
		return fmt.Errorf("lab: booting %s: %w\n--- qemu log ---\n%s\n--- console (tail) ---\n%s", v.cfg.Name, err,
			tailFile(filepath.Join(v.cfg.Dir, qemuLog), 2000), v.ConsoleTail(4000))
	}
	ag, err := dialAgent(ctx, filepath.Join(v.cfg.Dir, agentSocket), exited)
	if err != nil {
		return fail(err)
	}
	v.mu.Lock()
	v.ag = ag
	v.mu.Unlock()
	// Requests wait in the port until the agent opens it: the first
	// answer marks the end of the boot.
	if err := ag.ping(ctx, exited); err != nil {
		return fail(err)
	}
	v.mu.Lock()
	v.bootTime = time.Since(start)
	v.mu.Unlock()
	return nil
}

// ensureDisk creates the disk images that do not exist.
func (v *VM) ensureDisk() error {
	if err := createImage(v.DiskPath(), v.cfg.DiskSize); err != nil {
		return err
	}
	if v.cfg.ScratchSize > 0 {
		return createImage(v.ScratchPath(), v.cfg.ScratchSize)
	}
	return nil
}

// createImage creates a sparse raw image of size bytes unless path exists.
func createImage(path string, size int64) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// tailFile returns the last n bytes of a file.
func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// agent returns the connection to the agent, connecting to a VM booted by
// another process if needed.
func (v *VM) agent(ctx context.Context) (*agentClient, error) {
	v.mu.Lock()
	ag := v.ag
	v.mu.Unlock()
	if ag != nil {
		return ag, nil
	}
	// One dial at a time: the VM's agent port takes a single connection,
	// so a second concurrent dial would never be served.
	v.dialMu.Lock()
	defer v.dialMu.Unlock()
	v.mu.Lock()
	ag = v.ag
	exited := v.exited
	v.mu.Unlock()
	if ag != nil {
		return ag, nil
	}
	if exited == nil {
		if !v.Running() {
			return nil, fmt.Errorf("lab: %s is not running", v.cfg.Name)
		}
		exited = make(chan struct{}) // not ours to watch
	}
	ag, err := dialAgent(ctx, filepath.Join(v.cfg.Dir, agentSocket), exited)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ag != nil {
		ag.close()
		return v.ag, nil
	}
	v.ag = ag
	return ag, nil
}

// Result is the outcome of one command in a VM.
type Result struct {
	Stdout, Stderr string
	// Code is the exit status; 128+N if killed by signal N.
	Code int
	// Truncated reports output beyond agentproto.MaxOutput that was lost.
	Truncated bool
}

// Run runs a shell command in the VM and returns its standard output and
// exit status. Standard error is appended to the error only when the
// command could not be run; use Exec to see it otherwise. err is non-nil
// if the command could not be run or ctx ended (then the command's process
// group is killed).
func (v *VM) Run(ctx context.Context, cmd string) (stdout string, exitCode int, err error) {
	r, err := v.Exec(ctx, cmd, nil)
	return r.Stdout, r.Code, err
}

// Exec runs a shell command with the given standard input (nil for none).
func (v *VM) Exec(ctx context.Context, cmd string, stdin []byte) (Result, error) {
	ag, err := v.agent(ctx)
	if err != nil {
		return Result{Code: -1}, err
	}
	resp, err := ag.do(ctx, agentproto.Request{Cmd: cmd, Stdin: stdin})
	if err != nil {
		return Result{Code: -1}, fmt.Errorf("lab: %s: %q: %w", v.cfg.Name, cmd, err)
	}
	r := Result{Stdout: string(resp.Stdout), Stderr: string(resp.Stderr), Code: resp.Code, Truncated: resp.Truncated}
	if resp.Code == -1 {
		return r, fmt.Errorf("lab: %s: %q: %s", v.cfg.Name, cmd, resp.Err)
	}
	return r, nil
}

// Running reports whether qemu is alive.
func (v *VM) Running() bool {
	v.mu.Lock()
	exited := v.exited
	v.mu.Unlock()
	if exited != nil {
		select {
		case <-exited:
			return false
		default:
			return true
		}
	}
	pid, err := v.pid()
	return err == nil && syscall.Kill(pid, 0) == nil
}

// pid reads qemu's pid file.
func (v *VM) pid() (int, error) {
	b, err := os.ReadFile(filepath.Join(v.cfg.Dir, pidFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Kill kills qemu with SIGKILL, as pulling the power would (the guest has
// no chance to write anything back), and waits for it to exit.
func (v *VM) Kill() error {
	v.mu.Lock()
	cmd, exited, ag := v.cmd, v.exited, v.ag
	v.cmd, v.ag = nil, nil
	v.mu.Unlock()
	if ag != nil {
		ag.close()
	}
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-exited
		return nil
	}
	// Started by another process: the pid file names it. Make sure the
	// pid is still that qemu before killing it.
	pid, err := v.pid()
	if err != nil {
		return nil
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !strings.Contains(string(comm), "drbdd-lab-"+v.cfg.Name) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return nil
	}
	for i := 0; i < 500 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// Close disconnects from the agent and leaves the VM running.
func (v *VM) Close() {
	v.mu.Lock()
	ag := v.ag
	v.ag = nil
	v.mu.Unlock()
	if ag != nil {
		ag.close()
	}
}

// agentClient multiplexes requests over the agent's socket. A reader
// goroutine, owned by the client, delivers responses until the connection
// closes (close, or qemu exiting).
type agentClient struct {
	conn   net.Conn
	prefix string        // starts every request ID of this connection
	done   chan struct{} // closed when the reader ends

	// mu guards the fields below and serializes writes.
	mu      sync.Mutex
	next    uint64
	pending map[string]chan agentproto.Response
	err     error // why the reader ended
}

// dialAgent connects to the agent socket once qemu has created it.
func dialAgent(ctx context.Context, path string, exited <-chan struct{}) (*agentClient, error) {
	var conn net.Conn
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-exited:
			return nil, errors.New("qemu exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	a := &agentClient{
		conn:    conn,
		prefix:  hex.EncodeToString(rnd[:]) + "-",
		done:    make(chan struct{}),
		pending: make(map[string]chan agentproto.Response),
	}
	go a.read()
	return a, nil
}

// read delivers responses to the waiting requests.
func (a *agentClient) read() {
	defer close(a.done)
	sc := bufio.NewScanner(a.conn)
	sc.Buffer(make([]byte, 64<<10), agentproto.MaxLine)
	for sc.Scan() {
		var resp agentproto.Response
		if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
			continue // not a response line
		}
		a.mu.Lock()
		ch := a.pending[resp.ID]
		delete(a.pending, resp.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- resp // buffered
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("agent connection closed (VM gone?)")
	}
	a.mu.Lock()
	a.err = err
	a.mu.Unlock()
}

// send registers and writes a request.
func (a *agentClient) send(req agentproto.Request) (string, chan agentproto.Response, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return "", nil, a.err
	}
	if req.ID == "" {
		a.next++
		req.ID = a.prefix + strconv.FormatUint(a.next, 10)
	}
	ch := make(chan agentproto.Response, 1)
	if !req.Kill {
		a.pending[req.ID] = ch
	}
	b, err := json.Marshal(req)
	if err != nil {
		delete(a.pending, req.ID)
		return "", nil, err
	}
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		delete(a.pending, req.ID)
		return "", nil, err
	}
	return req.ID, ch, nil
}

// do sends a request and waits for its response. If ctx ends first, the
// command is killed.
func (a *agentClient) do(ctx context.Context, req agentproto.Request) (agentproto.Response, error) {
	id, ch, err := a.send(req)
	if err != nil {
		return agentproto.Response{}, err
	}
	select {
	case resp := <-ch:
		return resp, nil
	case <-a.done:
		a.mu.Lock()
		err := a.err
		a.mu.Unlock()
		return agentproto.Response{}, err
	case <-ctx.Done():
		_, _, _ = a.send(agentproto.Request{ID: id, Kill: true})
		return agentproto.Response{}, ctx.Err()
	}
}

// ping waits for the agent to answer, or qemu to exit.
func (a *agentClient) ping(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := a.do(ctx, agentproto.Request{})
	select {
	case <-exited:
		return errors.New("qemu exited")
	default:
	}
	return err
}

// close closes the connection and waits for the reader.
func (a *agentClient) close() {
	a.conn.Close()
	<-a.done
}
