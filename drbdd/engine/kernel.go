package engine

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"drbdd/drbdadm/config"
	"drbdd/drbdd/replication"
	"drbdd/nbd"
	"drbdd/netlink"
)

// kernelConns is how many sockets a kernel device gets. One: with several,
// the kernel marks a socket dead when any request on it outlives the block
// layer's 30 s timeout (a large discard on a slow disk, a peer that takes
// long to ack) and fails I/O once all are dead; with one socket and no
// request timeout it waits, which is what a replicated disk must do.
const kernelConns = 1

// kernelTimeout bounds attaching and detaching a kernel device.
const kernelTimeout = 30 * time.Second

// kernelHandle is the daemon's lazily opened connection to the kernel's
// nbd generic netlink family.
type kernelHandle struct {
	// mu guards k.
	mu sync.Mutex
	k  *netlink.KernelNBD
}

func (h *kernelHandle) get() (*netlink.KernelNBD, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.k == nil {
		k, err := netlink.Open()
		if err != nil {
			return nil, fmt.Errorf("kernel nbd: %w", err)
		}
		h.k = k
	}
	return h.k, nil
}

// kernelExport builds the export the kernel device serves. It is not
// counted as an NBD client: the kernel device's own open count decides.
func (r *Resource) kernelExport(size int64) *nbd.Export {
	return &nbd.Export{
		Name:        r.name,
		Description: "drbdd resource " + r.name,
		Backend:     &backend{r: r, size: size},
		MultiConn:   true,
		CanTrim:     true,
		CanZeroes:   true,
	}
}

// attachKernel shows the Primary's data as the configured /dev/nbdX. A
// device left attached by a previous drbdd process (found by its backend
// identifier) is taken over with NBD_CMD_RECONFIGURE, so a filesystem
// mounted on it sees a pause, not an error. Runs on the owner goroutine.
func (r *Resource) attachKernel() error {
	if r.device == nil || r.device.KernelDevice == "" || r.kdev != nil {
		return nil
	}
	index, err := config.MinorFromDevice(r.device.KernelDevice)
	if err != nil {
		return err
	}
	size := r.capacity.Load()
	if size <= 0 {
		return fmt.Errorf("device size unknown: no local disk and no peer's")
	}
	k, err := r.d.kernel.get()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.d.ctx, kernelTimeout)
	defer cancel()
	opts := nbd.KernelOptions{Logf: func(f string, a ...any) { r.logf(f, a...) }}
	backendID := nbd.BackendPrefix + r.name
	if idx, found, err := nbd.FindByBackend(ctx, k, backendID); err == nil && found {
		if idx != index {
			return fmt.Errorf("resource is still attached to /dev/nbd%d, not %s", idx, r.device.KernelDevice)
		}
		dev, err := nbd.ReattachKernel(ctx, k, index, r.kernelExport(size), kernelConns, opts)
		if err == nil {
			r.attachedKernel(k, dev)
			return nil
		}
		r.logf("re-attaching %s failed (%v); attaching anew", r.device.KernelDevice, err)
	}
	dev, err := nbd.AttachKernel(ctx, k, index, r.kernelExport(size), kernelConns, opts)
	if err != nil {
		return err
	}
	r.attachedKernel(k, dev)
	return nil
}

// attachedKernel records a newly attached kernel device.
func (r *Resource) attachedKernel(k *netlink.KernelNBD, dev *nbd.KernelDevice) {
	r.kdev = dev
	r.d.watchLinkDead(k)
	r.d.faultOnce.Do(func() { r.injectLinkFault(dev) })
}

// watchLinkDead starts, once per daemon, the goroutine that listens to the
// nbd family's multicast group: when the kernel reports a device's
// connection dead (NBD_CMD_LINK_DEAD), the resource serving that device
// re-attaches it. The goroutine belongs to the daemon and ends with it.
func (d *Daemon) watchLinkDead(k *netlink.KernelNBD) {
	d.watchOnce.Do(func() {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			err := k.WatchLinkDead(d.ctx, func(index int) {
				for _, r := range d.Resources() {
					// Off the watcher: the owner may be busy for a while,
					// and other notifications must not wait behind it.
					d.wg.Add(1)
					go func() {
						defer d.wg.Done()
						_ = r.act(d.ctx, func() error { return r.relinkKernel(index) })
					}()
				}
			})
			if err != nil && d.ctx.Err() == nil {
				d.Logf("kernel nbd: not watching for dead connections: %v", err)
			}
		}()
	})
}

// relinkKernel reacts to the kernel's LINK_DEAD for /dev/nbd<index>: if
// this resource serves that device, it stops serving the dead connection
// and hands the kernel a new one with NBD_CMD_RECONFIGURE. The kernel
// holds the device's I/O meanwhile and sends again what was not answered,
// so a mounted filesystem sees a pause. Runs on the owner goroutine.
func (r *Resource) relinkKernel(index int) error {
	dev := r.kdev
	if dev == nil || dev.Index() != index {
		return nil
	}
	r.logf("%s: the kernel reports its connection dead; re-attaching", dev.Path())
	r.kdev = nil
	r.waitOwner(dev.Abandon)
	if err := r.attachKernel(); err != nil {
		r.logf("%s: re-attaching after a dead connection: %v", dev.Path(), err)
		return err
	}
	r.logf("%s: re-attached", dev.Path())
	return nil
}

// linkFaultEnv names the environment variable that makes drbdd drop its
// kernel device's connection once, the given duration after attaching it
// (like DRBD's fault-injection module parameters, for testing recovery):
// the kernel then reports the link dead and drbdd must re-attach.
const linkFaultEnv = "DRBDD_FAULT_KERNEL_LINK_AFTER"

// injectLinkFault arms the fault of linkFaultEnv for dev, if set. It is
// armed for the first device a daemon attaches only.
func (r *Resource) injectLinkFault(dev *nbd.KernelDevice) {
	after, err := time.ParseDuration(os.Getenv(linkFaultEnv))
	if err != nil || after <= 0 {
		return
	}
	r.d.wg.Add(1)
	go func() {
		defer r.d.wg.Done()
		select {
		case <-time.After(after):
		case <-r.d.ctx.Done():
			return
		}
		_ = r.act(r.d.ctx, func() error {
			if r.kdev != dev {
				return nil
			}
			r.logf("%s: fault injection (%s): dropping the kernel device's connection", dev.Path(), linkFaultEnv)
			// The serving goroutines stop and close drbdd's socket ends,
			// but r.kdev stays: only the kernel's report starts recovery.
			r.waitOwner(dev.Abandon)
			return nil
		})
	}()
}

// kernelInUse reports whether the kernel device is open or mounted.
func (r *Resource) kernelInUse() bool {
	if r.kdev == nil {
		return false
	}
	busy, err := r.kdev.InUse()
	if err != nil {
		r.logf("%v", err)
		return true // when in doubt, do not pull the device from under a user
	}
	return busy
}

// detachKernel disconnects the kernel device (it must not be in use).
func (r *Resource) detachKernel() error {
	if r.kdev == nil {
		return nil
	}
	dev := r.kdev
	r.kdev = nil
	ctx, cancel := context.WithTimeout(context.Background(), kernelTimeout)
	defer cancel()
	var err error
	// The device's serving goroutines call into the resource; keep the
	// owner loop running while they finish.
	r.waitOwner(func() { err = dev.Detach(ctx) })
	return err
}

// abandonKernel stops serving the kernel device without disconnecting it,
// as a crash would: the kernel holds I/O for the dead-connection timeout,
// and a restarted drbdd re-attaches. Used at daemon shutdown while the
// device is mounted.
func (r *Resource) abandonKernel() {
	if r.kdev == nil {
		return
	}
	dev := r.kdev
	r.kdev = nil
	r.logf("%s is in use: leaving it attached for a restarted drbdd to take over", dev.Path())
	r.waitOwner(dev.Abandon)
}

// promotedKernel attaches the kernel device after a promotion and undoes
// the promotion if that fails, so that "Primary" always means "the device
// is there".
func (r *Resource) promotedKernel() error {
	if err := r.attachKernel(); err != nil {
		ns := r.State()
		ns.Role = replication.Secondary
		_ = r.setState(ns, true)
		if ld := r.ldev.Load(); ld != nil {
			_ = ld.demoted()
		}
		return fmt.Errorf("%s: attach %s: %w", r.name, r.device.KernelDevice, err)
	}
	return nil
}
