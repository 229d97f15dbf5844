package nbd

// Attaching an export to the Linux kernel's nbd driver: the export becomes
// /dev/nbdX on this machine. drbdd creates socket pairs, hands one end of
// each to the kernel with NBD_CMD_CONNECT (package netlink) and serves the
// other end with ServeTransmission; the kernel skips the handshake and
// learns the size and flags from the netlink message instead.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"drbdd/netlink"

	"golang.org/x/sys/unix"
)

// KernelNetlink is the part of the kernel's nbd netlink family that
// AttachKernel and its relatives use. *netlink.KernelNBD implements it.
type KernelNetlink interface {
	Connect(ctx context.Context, p netlink.NBDConnectParams) (int, error)
	Disconnect(ctx context.Context, index int) error
	Reconfigure(ctx context.Context, p netlink.NBDReconfigureParams) error
	Status(ctx context.Context, index int) ([]netlink.NBDDeviceStatus, error)
}

var _ KernelNetlink = (*netlink.KernelNBD)(nil)

// Defaults for KernelOptions.
const (
	// DefaultKernelBlockSize is the block size given to the kernel.
	DefaultKernelBlockSize = 4096
	// DefaultDeadConnTimeout is how long the kernel holds I/O when every
	// socket of a device is dead (drbdd died or is restarting) before it
	// fails the I/O: long enough for a restart to re-attach with
	// ReattachKernel.
	DefaultDeadConnTimeout = 2 * time.Minute
	// MaxKernelConns bounds the sockets of one device.
	MaxKernelConns = 16
	// kernelSocketBuffer is the send and receive buffer asked for on both
	// ends of each socket pair, so that a 1 MiB write fits in flight.
	kernelSocketBuffer = 4 << 20
	// BackendPrefix starts the backend identifier AttachKernel gives the
	// kernel by default: "drbdd:" and the export name.
	BackendPrefix = "drbdd:"
)

// DefaultKernelTimeouts is the timeout policy used when KernelOptions has
// none: the kernel never fails a request because the server is slow (a
// peer that takes long to acknowledge a write shows up as latency, not as
// filesystem errors; the kernel logs "Possible stuck request" every 30
// seconds), and holds I/O for DefaultDeadConnTimeout when drbdd's sockets
// are gone.
var DefaultKernelTimeouts = netlink.NBDTimeouts{Request: 0, DeadConn: DefaultDeadConnTimeout}

// ErrNotReattached reports that NBD_CMD_RECONFIGURE took none of the new
// sockets: the device had no dead socket to replace, so another process
// (an older drbdd still alive?) is serving it.
var ErrNotReattached = errors.New("nbd: the kernel took none of the new sockets (no dead connection to replace; is another process still serving the device?)")

// KernelOptions configures AttachKernel and ReattachKernel.
type KernelOptions struct {
	// Backend is the backend identifier (/sys/block/nbdX/backend) that
	// FindByBackend and ReattachKernel look for. Empty means BackendPrefix
	// followed by the export name.
	Backend string
	// Timeouts are the kernel's timeouts; nil means DefaultKernelTimeouts.
	Timeouts *netlink.NBDTimeouts
	// Transmission configures the serving of each socket.
	Transmission TransmissionOptions
	// Logf, if not nil, receives a line for each notable event.
	Logf func(format string, args ...any)
}

func (o *KernelOptions) backend(e *Export) string {
	if o.Backend != "" {
		return o.Backend
	}
	return BackendPrefix + e.Name
}

func (o *KernelOptions) timeouts() netlink.NBDTimeouts {
	if o.Timeouts != nil {
		return *o.Timeouts
	}
	return DefaultKernelTimeouts
}

func (o *KernelOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// KernelDevice is an export attached to /dev/nbdX. It owns one goroutine
// per socket, serving the kernel's requests, and one that waits for them;
// Detach and Abandon stop them all.
type KernelDevice struct {
	k       KernelNetlink
	index   int
	backend string
	logf    func(format string, args ...any)

	cancel context.CancelFunc // stops serving: closes our socket ends
	done   chan struct{}      // closed once every socket is served out

	// mu guards err and stopping.
	mu       sync.Mutex
	err      error // first serving error
	stopping bool  // Detach or Abandon was called
}

// AttachKernel attaches e to /dev/nbd<index> (index may be
// netlink.NBDAnyIndex) with nconns sockets, and serves the kernel's
// requests until Detach or Abandon. nconns above 1 needs e.MultiConn, since
// the kernel sends a flush on one socket only.
//
// ctx bounds the attach itself, not the serving. AttachKernel calls
// e.Release exactly once: before returning an error, or when the device is
// no longer served.
func AttachKernel(ctx context.Context, k KernelNetlink, index int, e *Export, nconns int, opts KernelOptions) (*KernelDevice, error) {
	size, err := checkKernelExport(e, nconns)
	if err != nil {
		e.release()
		return nil, err
	}
	if r := size % DefaultKernelBlockSize; r != 0 {
		opts.logf("nbd: %s: export size %d is not a multiple of %d; the kernel device leaves out the last %d bytes",
			e.Name, size, DefaultKernelBlockSize, r)
		size -= r
	}
	pairs, err := newSocketPairs(nconns)
	if err != nil {
		e.release()
		return nil, err
	}
	backend := opts.backend(e)
	idx, err := k.Connect(ctx, netlink.NBDConnectParams{
		Index:       index,
		Size:        uint64(size),
		BlockSize:   DefaultKernelBlockSize,
		Timeouts:    opts.timeouts(),
		ServerFlags: uint64(e.TransmissionFlags()),
		Sockets:     pairs.kernelFDs(),
		Backend:     backend,
	})
	// The kernel holds its own reference to each socket it took.
	pairs.closeKernelEnds()
	if err != nil {
		pairs.closeServerEnds()
		e.release()
		return nil, fmt.Errorf("nbd: attaching %s to the kernel: %w", e.Name, err)
	}
	d, err := startKernelDevice(k, idx, backend, e, pairs.server, opts)
	if err != nil {
		// The kernel is attached to sockets nobody serves: take it down.
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if derr := k.Disconnect(dctx, idx); derr != nil {
			opts.logf("nbd: %s: disconnecting nbd%d after a failed attach: %v", e.Name, idx, derr)
		}
		return nil, err
	}
	opts.logf("nbd: %s attached to %s with %d socket(s), backend %q", e.Name, d.Path(), nconns, backend)
	raiseMaxRequest(idx, opts.logf)
	return d, nil
}

// KernelMaxRequest is the largest request drbdd lets the kernel's nbd
// driver send: DRBD's largest bio, one P_DATA packet, and the largest
// write the NBD server splices whole. The driver's own limit is the block
// layer's default (128 KiB on Linux 6.1), so the block layer would split
// a 1 MiB write into eight requests, each paying for its own header,
// reply, peer packet and ack; in the two-VM lab that halved the rate of
// 1 MiB sequential writes.
const KernelMaxRequest = spliceMaxWrite

// raiseMaxRequest lets /dev/nbd<index> send requests of up to
// KernelMaxRequest bytes (the queue's max_sectors_kb, within the driver's
// max_hw_sectors_kb). It is best effort: a device that keeps the smaller
// limit works all the same, only slower, so a failure is logged.
func raiseMaxRequest(index int, logf func(format string, args ...any)) {
	q := filepath.Join(sysBlock, "nbd"+strconv.Itoa(index), "queue")
	kb, err := maxRequestKB(q, KernelMaxRequest>>10)
	if err == nil {
		err = os.WriteFile(filepath.Join(q, "max_sectors_kb"), []byte(strconv.Itoa(kb)+"\n"), 0)
	}
	if err != nil {
		logf("nbd: nbd%d: keeping the kernel's request size limit: %v", index, err)
	}
}

// maxRequestKB returns the request size limit, in KiB, to set on the block
// queue whose sysfs directory is q: want, or less if the device's
// max_hw_sectors_kb is lower.
func maxRequestKB(q string, want int) (int, error) {
	b, err := os.ReadFile(filepath.Join(q, "max_hw_sectors_kb"))
	if err != nil {
		return 0, err
	}
	hw, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || hw <= 0 {
		return 0, fmt.Errorf("%s: max_hw_sectors_kb %q", q, strings.TrimSpace(string(b)))
	}
	return min(want, hw), nil
}

// ReattachKernel takes over a device that a previous drbdd process attached
// (found with FindByBackend) and whose sockets died with that process: it
// sends NBD_CMD_RECONFIGURE with nconns new sockets and serves them. The
// kernel held the I/O issued meanwhile (up to the dead-connection timeout)
// and re-sends the requests that were never answered, so applications see
// a pause, not an error. The export must have the size the device has.
//
// It fails with ErrNotReattached if the kernel took none of the sockets.
// e.Release is called as by AttachKernel.
func ReattachKernel(ctx context.Context, k KernelNetlink, index int, e *Export, nconns int, opts KernelOptions) (*KernelDevice, error) {
	size, err := checkKernelExport(e, nconns)
	if err != nil {
		e.release()
		return nil, err
	}
	if cur, err := kernelDeviceSize(index); err == nil && cur != size-size%DefaultKernelBlockSize {
		e.release()
		return nil, fmt.Errorf("nbd: nbd%d has %d bytes but export %s has %d; refusing to re-attach", index, cur, e.Name, size)
	}
	pairs, err := newSocketPairs(nconns)
	if err != nil {
		e.release()
		return nil, err
	}
	backend := opts.backend(e)
	t := opts.timeouts()
	err = k.Reconfigure(ctx, netlink.NBDReconfigureParams{
		Index:    index,
		Backend:  backend,
		Sockets:  pairs.kernelFDs(),
		Timeouts: &t,
	})
	pairs.closeKernelEnds()
	if err != nil {
		pairs.closeServerEnds()
		e.release()
		return nil, fmt.Errorf("nbd: re-attaching %s to nbd%d: %w", e.Name, index, err)
	}
	// The kernel drops the sockets it has no dead slot for. Now that our
	// copies of the kernel ends are closed, a dropped socket's server end
	// reports the hang-up at once.
	var adopted []int
	for _, fd := range pairs.server {
		if peerClosed(fd) {
			unix.Close(fd)
			continue
		}
		adopted = append(adopted, fd)
	}
	if len(adopted) == 0 {
		e.release()
		return nil, fmt.Errorf("nbd: re-attaching %s to nbd%d: %w", e.Name, index, ErrNotReattached)
	}
	if len(adopted) < nconns {
		opts.logf("nbd: %s: the kernel took %d of %d sockets for nbd%d", e.Name, len(adopted), nconns, index)
	}
	d, err := startKernelDevice(k, index, backend, e, adopted, opts)
	if err != nil {
		return nil, err
	}
	opts.logf("nbd: %s re-attached to %s with %d socket(s)", e.Name, d.Path(), len(adopted))
	raiseMaxRequest(index, opts.logf)
	return d, nil
}

// checkKernelExport validates an export and connection count for the
// kernel and returns the export size.
func checkKernelExport(e *Export, nconns int) (int64, error) {
	if e == nil || e.Backend == nil {
		return 0, errors.New("nbd: attaching to the kernel: export has no backend")
	}
	if nconns < 1 || nconns > MaxKernelConns {
		return 0, fmt.Errorf("nbd: attaching %s to the kernel: %d sockets, want 1..%d", e.Name, nconns, MaxKernelConns)
	}
	if nconns > 1 && !e.MultiConn {
		return 0, fmt.Errorf("nbd: attaching %s to the kernel: %d sockets need an export with MultiConn (a flush on one socket must cover all)", e.Name, nconns)
	}
	size := e.Backend.Size()
	if size < DefaultKernelBlockSize {
		return 0, fmt.Errorf("nbd: attaching %s to the kernel: export of %d bytes is smaller than one %d-byte block", e.Name, size, DefaultKernelBlockSize)
	}
	return size, nil
}

// startKernelDevice serves the server ends fds (taking ownership of them)
// for the device index.
func startKernelDevice(k KernelNetlink, index int, backend string, e *Export, fds []int, opts KernelOptions) (*KernelDevice, error) {
	conns := make([]net.Conn, 0, len(fds))
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("nbd%d-sock%d", index, i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			for _, fd := range fds[i+1:] {
				unix.Close(fd)
			}
			e.release()
			return nil, fmt.Errorf("nbd: serving nbd%d: %w", index, err)
		}
		conns = append(conns, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &KernelDevice{
		k:       k,
		index:   index,
		backend: backend,
		logf:    opts.logf,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	// The driver sends a write's payload a page at a time.
	topts := opts.Transmission
	topts.WholePages = true
	var wg sync.WaitGroup
	for i, c := range conns {
		// Each connection gets its own copy of the export without
		// Release, which is called once below when all are done.
		ce := *e
		ce.Release = nil
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := ServeTransmission(ctx, c, &ce, topts)
			d.connDone(i, err)
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		e.release()
		close(d.done)
	}()
	return d, nil
}

// connDone records how socket i ended.
func (d *KernelDevice) connDone(i int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping || errors.Is(err, context.Canceled) {
		return
	}
	if err == nil {
		// The kernel closed its end: it disconnected on its own (a
		// timeout) or someone else sent NBD_CMD_DISCONNECT.
		err = fmt.Errorf("nbd: %s: the kernel closed socket %d", d.Path(), i)
	}
	d.logf("nbd: %s: socket %d: %v", d.Path(), i, err)
	if d.err == nil {
		d.err = err
	}
}

// Index returns the device number: the device is /dev/nbd<Index>.
func (d *KernelDevice) Index() int { return d.index }

// Path returns the device node, /dev/nbd<Index>.
func (d *KernelDevice) Path() string { return "/dev/nbd" + strconv.Itoa(d.index) }

// Backend returns the backend identifier the device was attached with.
func (d *KernelDevice) Backend() string { return d.backend }

// Done is closed when no socket of the device is served any more: after
// Detach or Abandon, or when the kernel dropped every socket on its own.
func (d *KernelDevice) Done() <-chan struct{} { return d.done }

// Err returns why sockets ended without Detach or Abandon, if any did.
func (d *KernelDevice) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// InUse reports whether the device is mounted or open (see InUse).
func (d *KernelDevice) InUse() (bool, error) { return InUse(d.Path()) }

// Detach sends NBD_CMD_DISCONNECT and waits until every socket is served
// out. The caller checks InUse first: the kernel fails the I/O of a
// filesystem still mounted on the device. If ctx ends first, Detach stops
// serving anyway and returns ctx.Err(). It returns the disconnect error,
// if any, after the sockets are closed.
func (d *KernelDevice) Detach(ctx context.Context) error {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	err := d.k.Disconnect(ctx, d.index)
	if err != nil {
		// Without the kernel's NBD_CMD_DISC the sockets end only when
		// we close them.
		d.cancel()
		<-d.done
		return fmt.Errorf("nbd: detaching %s: %w", d.Path(), err)
	}
	select {
	case <-d.done:
		d.logf("nbd: %s detached", d.Path())
		return nil
	case <-ctx.Done():
		d.cancel()
		<-d.done
		return fmt.Errorf("nbd: detaching %s: %w", d.Path(), ctx.Err())
	}
}

// Abandon stops serving without telling the kernel, as a crash would, and
// waits until the sockets are closed. The device stays attached with dead
// sockets; the kernel holds new I/O for the dead-connection timeout, during
// which ReattachKernel (from this or another process) can take it over.
func (d *KernelDevice) Abandon() {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	d.cancel()
	<-d.done
}

// socketPairs holds the two ends of each socket pair being attached.
type socketPairs struct {
	kernel []int // ends handed to the kernel; -1 once closed
	server []int // ends served by ServeTransmission
}

// newSocketPairs creates n AF_UNIX stream socket pairs.
func newSocketPairs(n int) (*socketPairs, error) {
	p := &socketPairs{}
	for range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			p.closeKernelEnds()
			p.closeServerEnds()
			return nil, fmt.Errorf("nbd: socketpair: %w", err)
		}
		for _, fd := range fds {
			setSocketBuffers(fd)
		}
		p.kernel = append(p.kernel, fds[0])
		p.server = append(p.server, fds[1])
	}
	return p, nil
}

// setSocketBuffers enlarges a socket's buffers, beyond the system limit if
// the process may (CAP_NET_ADMIN). It is best effort.
func setSocketBuffers(fd int) {
	for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], kernelSocketBuffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], kernelSocketBuffer)
		}
	}
}

func (p *socketPairs) kernelFDs() []int { return append([]int(nil), p.kernel...) }

func (p *socketPairs) closeKernelEnds() {
	for i, fd := range p.kernel {
		if fd >= 0 {
			unix.Close(fd)
			p.kernel[i] = -1
		}
	}
}

func (p *socketPairs) closeServerEnds() {
	for i, fd := range p.server {
		if fd >= 0 {
			unix.Close(fd)
			p.server[i] = -1
		}
	}
}

// peerClosed reports whether the other end of the connected socket fd is
// gone.
func peerClosed(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(pfd, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	}
}

// sysBlock is where the kernel describes block devices; tests point it
// elsewhere.
var sysBlock = "/sys/block"

// kernelDeviceSize returns the size of /dev/nbd<index> in bytes, from sysfs.
func kernelDeviceSize(index int) (int64, error) {
	b, err := os.ReadFile(filepath.Join(sysBlock, "nbd"+strconv.Itoa(index), "size"))
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	return sectors * 512, nil
}

// KernelBackend returns the backend identifier of /dev/nbd<index>, empty if
// it has none or is not attached.
func KernelBackend(index int) (string, error) {
	b, err := os.ReadFile(filepath.Join(sysBlock, "nbd"+strconv.Itoa(index), "backend"))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n"), nil
}

// FindByBackend returns the index of the attached device whose backend
// identifier is backend, and false if there is none.
func FindByBackend(ctx context.Context, k KernelNetlink, backend string) (int, bool, error) {
	if backend == "" {
		return -1, false, errors.New("nbd: empty backend identifier")
	}
	devs, err := k.Status(ctx, netlink.NBDAnyIndex)
	if err != nil {
		return -1, false, err
	}
	for _, dev := range devs {
		if !dev.Connected {
			continue
		}
		b, err := KernelBackend(dev.Index)
		if err != nil {
			return -1, false, err
		}
		if b == backend {
			return dev.Index, true, nil
		}
	}
	return -1, false, nil
}

// InUse reports whether the block device devPath is mounted or open, so
// that drbdd can refuse to demote a Primary under a filesystem:
//
//   - an exclusive open (O_EXCL) fails with EBUSY while the device is
//     mounted, used by device-mapper or md, or held open exclusively (mkfs,
//     fsck, another exclusive opener);
//   - a plain open by any process is found by looking for the device among
//     the open files of /proc/<pid>/fd.
//
// Partitions of the device are not examined.
func InUse(devPath string) (bool, error) {
	fd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == unix.EBUSY {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("nbd: checking %s: %w", devPath, &os.PathError{Op: "open", Path: devPath, Err: err})
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	unix.Close(fd)
	if err != nil {
		return false, fmt.Errorf("nbd: checking %s: %w", devPath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return false, fmt.Errorf("nbd: checking %s: not a block device", devPath)
	}
	return openedByAnyProcess("/proc", st.Rdev)
}

// openedByAnyProcess reports whether a process under procRoot has the block
// device rdev open.
func openedByAnyProcess(procRoot string, rdev uint64) (bool, error) {
	pids, err := os.ReadDir(procRoot)
	if err != nil {
		return false, err
	}
	for _, p := range pids {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		fdDir := filepath.Join(procRoot, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // the process is gone, or hides its files
		}
		for _, f := range fds {
			var st unix.Stat_t
			if unix.Stat(filepath.Join(fdDir, f.Name()), &st) != nil {
				continue
			}
			if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev {
				return true, nil
			}
		}
	}
	return false, nil
}
