package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/drbdd/status"
	"drbdd/nbd"
	"drbdd/netlink"
	"drbdd/protocol"
)

// opQueue bounds how many admin or event operations may wait for a
// resource's state owner.
const opQueue = 64

// Resource is one replicated volume: its state, its local disk, its NBD
// export and (later) its peer connection.
//
// One goroutine, run, owns the state: every change, whether an admin
// command, a disk error or a packet from the peer, is a closure sent to it
// over ops. Readers on the I/O path use the atomically published snapshot.
type Resource struct {
	d    *Daemon
	name string

	ops  chan func()
	stop chan struct{}
	done chan struct{}

	// state is the published snapshot; only the owner goroutine stores it.
	state atomic.Pointer[replication.State]
	// minor is -1 until new-minor.
	minor atomic.Int32

	// The fields below are touched only on the owner goroutine.
	device   *netlink.DeviceConf
	diskConf *netlink.DiskConf
	netConf  *netlink.NetConf
	nbdStop  func()
	// conn is the peer connection, nil while StandAlone.
	conn *connection
	// kdev is the attached kernel device (/dev/nbdX), nil when none.
	kdev *nbd.KernelDevice
	// crashedPrimary is DRBD's CRASHED_PRIMARY: the disk was attached with
	// the Primary indicator set, so this node died as Primary.
	crashedPrimary bool
	// clusterChangePending is set while our own cluster-wide state change
	// (promotion while connected) waits for the peer.
	clusterChangePending bool

	// sess is the established session that replicates writes, nil while
	// not connected. Stored by the session, loaded by the I/O path.
	sess atomic.Pointer[session]
	// netConfV holds a copy of the net configuration for status readers.
	netConfV atomic.Pointer[netlink.NetConf]
	// diskConfV holds a copy of the disk configuration for readers off
	// the owner goroutine.
	diskConfV atomic.Pointer[netlink.DiskConf]
	// nbdClients counts open NBD connections; changed on the owner
	// goroutine (Open/Release), read atomically for status.
	nbdClients atomic.Int32

	// ldev is the attached local disk, nil while Diskless; stored on the
	// owner goroutine, loaded by the I/O path.
	ldev atomic.Pointer[localDisk]
	// retiring is the disk a detach is closing, from when ldev stops
	// naming it until it is synced and closed: a barrier that completes
	// in between still flushes it before it is acknowledged.
	retiring atomic.Pointer[localDisk]
	// onIOError is the attached disk's on-io-error policy, read by the
	// I/O path.
	onIOError atomic.Value
	// capacity is the device size in bytes: the local disk's while one
	// is attached, and the peer's (from its P_SIZES) while diskless. It
	// survives a detach, so that a Primary that loses its disk keeps the
	// size its users saw.
	capacity atomic.Int64
	// exposedUUID is DRBD's ed_uuid: the current UUID of the data the
	// device shows. A diskless Primary shows its peer's data and follows
	// the peer's current UUID; it accepts a peer, or attaches a disk
	// while disconnected, only if that holds the same data. Written on
	// the owner goroutine.
	exposedUUID atomic.Uint64
	// rehandshakeUntil (Unix nanoseconds, 0 for none) is set while this
	// node re-runs the sync handshake it started itself by attaching a
	// disk to a connected diskless Primary. Until then the requests that
	// need the peer wait for the new session instead of failing, so that
	// the device's users see a pause, not an error.
	rehandshakeUntil atomic.Int64
	// disklessAcked is set once a diskless Primary acknowledged a write
	// (which only the peer's disk holds) and cleared when an attached disk
	// joins through the sync handshake: until then, no disk attached
	// while disconnected can hold what the device shows.
	disklessAcked atomic.Bool

	io ioState
}

func newResource(d *Daemon, name string) *Resource {
	r := &Resource{
		d:    d,
		name: name,
		ops:  make(chan func(), opQueue),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	st := replication.Initial()
	r.state.Store(&st)
	r.minor.Store(-1)
	go r.run()
	return r
}

// Name returns the resource name.
func (r *Resource) Name() string { return r.name }

// Minor returns the minor number, or -1 before new-minor.
func (r *Resource) Minor() int { return int(r.minor.Load()) }

// State returns the current state snapshot.
func (r *Resource) State() replication.State { return *r.state.Load() }

func (r *Resource) logf(format string, args ...any) {
	r.d.Logf("%s: "+format, append([]any{r.name}, args...)...)
}

// run is the state owner loop. It stops when close is called.
func (r *Resource) run() {
	defer close(r.done)
	for {
		select {
		case fn := <-r.ops:
			fn()
		case <-r.stop:
			return
		}
	}
}

// errClosed is returned for operations on a resource being removed.
var errClosed = errors.New("resource is being removed")

// act runs fn on the owner goroutine and returns its result.
func (r *Resource) act(ctx context.Context, fn func() error) error {
	res := make(chan error, 1)
	select {
	case r.ops <- func() { res <- fn() }:
	case <-r.done:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-res:
		return err
	case <-r.done:
		return errClosed
	}
}

// close stops the owner goroutine; the resource must be down.
func (r *Resource) close() error {
	err := r.act(context.Background(), func() error {
		st := r.State()
		if !st.Unconfigured() || r.nbdStop != nil {
			return fmt.Errorf("%s: resource is in use (%s %s %s)", r.name, st.Role, st.Conn, st.Disk)
		}
		return nil
	})
	if err != nil {
		return err
	}
	close(r.stop)
	<-r.done
	return nil
}

// checkContext gathers what the pure rules need besides the two states.
func (r *Resource) checkContext(hard bool) replication.Context {
	c := replication.Context{Hard: hard, InUse: r.inUse()}
	if r.netConf != nil {
		c.TwoPrimaries = r.netConf.AllowTwoPrimaries
		c.HaveVerifyAlg = r.netConf.VerifyAlg != ""
	}
	if r.diskConf != nil {
		switch r.diskConf.Fencing {
		case "resource-only":
			c.Fencing = replication.FenceResourceOnly
		case "resource-and-stonith":
			c.Fencing = replication.FenceResourceAndSTONITH
		}
	}
	return c
}

// inUse reports whether the device is open: NBD clients connected.
func (r *Resource) inUse() bool { return r.nbdClients.Load() > 0 }

// setState validates and commits a state change, logs it the DRBD way and
// notifies status readers. It runs on the owner goroutine only.
func (r *Resource) setState(ns replication.State, hard bool) error {
	os := r.State()
	if err := replication.Check(os, ns, r.checkContext(hard)); err != nil {
		return err
	}
	if ns == os {
		return nil
	}
	r.state.Store(&ns)
	// Like DRBD, flags are written only while the disk is usable: a disk
	// that is going away (Failed, Diskless) keeps the flags it had.
	if ld := r.ldev.Load(); ld != nil && ns.Disk >= replication.Inconsistent {
		if err := ld.syncFlags(ns); err != nil {
			r.logf("meta data flags update: %v", err)
		}
	}
	if sess := r.sess.Load(); sess != nil && sess.ctx.Err() == nil && (os.Role != ns.Role || os.Disk != ns.Disk || os.Conn != ns.Conn || os.UserIsp != ns.UserIsp) {
		sess.sendState()
	}
	msg := fmt.Sprintf("%s: %s", r.name, ns.Diff(os))
	r.d.Logf("%s", msg)
	r.d.events.publish(Event{Kind: "change", Resource: r.name, Message: msg, Status: r.status()})
	r.d.kickStatus()
	return nil
}

// NewMinor gives the resource its minor number and device configuration
// and starts its NBD listener (DRBD_ADM_NEW_MINOR).
func (r *Resource) NewMinor(ctx context.Context, dc netlink.DeviceConf, wantMinor int) error {
	return r.act(ctx, func() error {
		if r.Minor() >= 0 {
			return fmt.Errorf("%s: minor %d: %w", r.name, r.Minor(), ErrExists)
		}
		minor := wantMinor
		if minor < 0 {
			minor = r.d.freeMinor()
		} else if r.d.minorTaken(minor, r) {
			return fmt.Errorf("minor %d: %w", minor, ErrExists)
		}
		if dc.NBDListen != "" {
			l, err := nbd.Listen(dc.NBDListen)
			if err != nil {
				return fmt.Errorf("%s: nbd-listen %s: %w", r.name, dc.NBDListen, err)
			}
			r.startNBD(l)
			r.logf("NBD export %q listening on %s", r.name, dc.NBDListen)
		}
		dc.Minor = uint32(minor)
		r.device = &dc
		r.minor.Store(int32(minor))
		r.d.kickStatus()
		return nil
	})
}

// startNBD serves the export on l until the minor is deleted.
func (r *Resource) startNBD(l net.Listener) {
	ctx, cancel := context.WithCancel(r.d.ctx)
	srv := &nbd.Server{Provider: exportProvider{r}, Logf: func(f string, a ...any) { r.logf("nbd: "+f, a...) }}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, l); err != nil && ctx.Err() == nil {
			r.logf("nbd: %v", err)
		}
	}()
	r.nbdStop = func() {
		cancel()
		l.Close()
		wg.Wait()
	}
}

// DelMinor stops the export and forgets the minor (DRBD_ADM_DEL_MINOR).
func (r *Resource) DelMinor(ctx context.Context) error {
	return r.act(ctx, func() error { return r.delMinor(false) })
}

func (r *Resource) delMinor(force bool) error {
	st := r.State()
	if st.Disk != replication.Diskless || st.Role == replication.Primary {
		return fmt.Errorf("%s: minor is configured (%s, %s): detach and demote first", r.name, st.Role, st.Disk)
	}
	if r.inUse() && !force {
		return &replication.StateError{Result: replication.SSDeviceInUse}
	}
	if r.nbdStop != nil {
		stop := r.nbdStop
		r.nbdStop = nil
		// Serving goroutines call act for Release; run the wait off the
		// owner goroutine's critical path by draining ops meanwhile.
		r.waitOwner(stop)
	}
	r.device = nil
	r.minor.Store(-1)
	r.d.kickStatus()
	return nil
}

// waitOwner runs a blocking function from the owner goroutine while still
// serving queued operations, because what fn waits for (NBD connections
// closing) may itself need the owner goroutine.
func (r *Resource) waitOwner(fn func()) {
	finished := make(chan struct{})
	go func() {
		fn()
		close(finished)
	}()
	for {
		select {
		case <-finished:
			return
		case op := <-r.ops:
			op()
		}
	}
}

// Primary promotes the resource (DRBD_ADM_PRIMARY). With force, an
// Inconsistent or Outdated local disk is declared UpToDate first, as
// `drbdadm primary --force` does for the initial sync source. While
// connected, the peer must agree first (a cluster-wide state change), so
// that two nodes promoted at the same moment cannot both win.
func (r *Resource) Primary(ctx context.Context, force bool) error {
	var s *session
	err := r.act(ctx, func() error {
		ns, _, err := r.promotion(force)
		if err != nil || ns == nil {
			return err
		}
		if s = r.sess.Load(); s != nil {
			r.clusterChangePending = true
			return nil
		}
		return r.promote(force)
	})
	if err != nil || s == nil {
		return err
	}
	cerr := s.clusterStateChange(ctx, protocol.State{Role: protocol.RoleMask}, protocol.State{Role: replication.Primary})
	return r.act(ctx, func() error {
		r.clusterChangePending = false
		// A peer lost meanwhile no longer objects; but a diskless node
		// needs the peer that agreed (its new generation comes first).
		if cerr != nil && (!errors.Is(cerr, errPeerLost) || r.ldev.Load() == nil) {
			return cerr
		}
		return r.promote(force)
	})
}

// promotion computes the promoted state; nil means already Primary.
func (r *Resource) promotion(force bool) (*replication.State, bool, error) {
	os := r.State()
	if os.Role == replication.Primary {
		return nil, false, nil
	}
	if r.ldev.Load() == nil && (r.sess.Load() == nil || os.Conn != replication.Connected || os.PDsk != replication.UpToDate) {
		// A diskless Primary serves its peer's data, so it needs a
		// connected peer with UpToDate data (DRBD's "Need access to
		// UpToDate data"). While connected with an Inconsistent disk
		// the peer's state rules decide (SS_NO_UP_TO_DATE_DISK).
		return nil, false, fmt.Errorf("%s: %w", r.name, errPromoteDiskless)
	}
	ns := os
	forced := false
	if force && ns.Disk >= replication.Inconsistent && ns.Disk < replication.UpToDate && ns.PDsk < replication.UpToDate {
		ns.Disk = replication.UpToDate
		forced = true
	}
	ns.Role = replication.Primary
	if ns.Disk < replication.UpToDate && (ns.Conn < replication.Connected || ns.PDsk != replication.UpToDate) {
		// DRBD's "Need access to UpToDate data": neither this disk nor
		// a connected peer's holds it. Check alone lets an Outdated disk
		// connected to a diskless peer through, for that state is
		// already invalid (SS_CONNECTED_OUTDATES) before the promotion,
		// and the promotion would start a new generation on stale data.
		return nil, false, &replication.StateError{Result: replication.SSNoUpToDateDisk}
	}
	if err := replication.Check(os, ns, r.checkContext(false)); err != nil {
		return nil, false, err
	}
	return &ns, forced, nil
}

// promote commits a promotion on the owner goroutine.
func (r *Resource) promote(force bool) error {
	ns, forced, err := r.promotion(force)
	if err != nil || ns == nil {
		return err
	}
	if err := r.setState(*ns, false); err != nil {
		return err
	}
	if err := r.promotedKernel(); err != nil {
		return err
	}
	ld := r.ldev.Load()
	if ld == nil {
		// Diskless: the device shows the peer's data. DRBD leaves the
		// UUIDs to the peer, which starts a new generation when it sees
		// its diskless peer become Primary.
		if s := r.sess.Load(); s != nil {
			r.exposedUUID.Store(s.peerCurrent.Load())
		}
		r.logf("promoted without a local disk: serving the peer's data")
	}
	if ld != nil {
		// The device shows this disk's data now: nothing it shows was
		// acknowledged diskless (see disklessAcked).
		r.disklessAcked.Store(false)
		// DRBD's drbd_set_role: the peer's disk counts as unreachable when
		// not connected, and when connected to a peer that has none.
		reachable := ns.Conn >= replication.Connected && ns.PDsk > replication.Failed
		if generated, err := ld.promoted(forced, reachable); err != nil {
			r.logf("meta data update on promotion: %v", err)
		} else if generated && !forced {
			r.logf("new current UUID %s (promoted without the peer's disk)", ld.uuids())
			if s := r.sess.Load(); s != nil {
				// Connected to a diskless peer: it shows this disk's
				// data, and must know the new generation (a diskless
				// Primary exposes it, see recvUUIDs). Otherwise it would
				// take its own disk of the generation before for the data
				// it shows.
				s.sendUUIDs(0)
			}
		}
		if forced {
			// The forced UpToDate is a new generation: re-run the sync
			// handshake so that the UUID rules start the initial sync.
			if s := r.sess.Load(); s != nil {
				s.cancel(errRehandshake)
			}
		}
	}
	return nil
}

// Secondary demotes the resource (DRBD_ADM_SECONDARY). It is refused while
// the device is in use, with DRBD's "Device is held open by someone".
func (r *Resource) Secondary(ctx context.Context) error {
	return r.act(ctx, func() error { return r.secondary() })
}

func (r *Resource) secondary() error {
	ns := r.State()
	if ns.Role == replication.Secondary {
		return nil
	}
	if r.kernelInUse() {
		return &replication.StateError{Result: replication.SSDeviceInUse}
	}
	ns.Role = replication.Secondary
	if err := r.setState(ns, false); err != nil {
		return err
	}
	if err := r.detachKernel(); err != nil {
		r.logf("%v", err)
	}
	if ld := r.ldev.Load(); ld != nil {
		if err := ld.demoted(); err != nil {
			r.logf("meta data update on demotion: %v", err)
		}
	}
	return nil
}

// errDetachPrimary refuses to detach a Primary's disk when no connected
// peer holds UpToDate data: the device's users would get nothing but
// errors. A forced detach, and on-io-error's, go ahead.
var errDetachPrimary = errors.New("refusing to detach the disk of a Primary without a connected UpToDate peer: the device would have no data (connect first, demote, or detach --force)")

// errPromoteDiskless refuses to promote a node without a disk unless a
// connected peer holds UpToDate data to serve.
var errPromoteDiskless = errors.New("refusing to promote without a local disk: no connected peer with UpToDate data (attach or connect first)")

// exposes reports whether data of generation current is the data the
// device shows (see exposedUUID); the primary bit does not count.
func (r *Resource) exposes(current uint64) bool {
	return r.exposedUUID.Load()&^meta.UUIDPrimaryBit == current&^meta.UUIDPrimaryBit
}

// errDetachOutOfSync refuses to detach a Primary's disk while it holds
// blocks the peer lacks.
var errDetachOutOfSync = errors.New("refusing to detach the disk of a Primary that holds blocks its peer lacks: resync first (or detach --force)")

// errDetachOnlyDisk refuses to detach the disk a diskless Primary peer
// serves from: it is the only one, and the Primary's device would have
// no data left.
var errDetachOnlyDisk = errors.New("refusing to detach the only disk of a diskless Primary peer: its device would have no data (demote or attach the peer first, or detach --force)")

// Detach releases the local disk (DRBD_ADM_DETACH). A Primary goes on
// serving its peer's data, as DRBD's does, so it may detach only while
// connected to an UpToDate peer (not during a resync, which the state
// rules refuse); and the disk of a diskless Primary's peer stays.
func (r *Resource) Detach(ctx context.Context, force bool) error {
	return r.act(ctx, func() error {
		st := r.State()
		if !force && r.ldev.Load() != nil && st.Role == replication.Primary &&
			(r.sess.Load() == nil || st.Conn != replication.Connected || st.PDsk != replication.UpToDate) {
			return fmt.Errorf("%s: %w", r.name, errDetachPrimary)
		}
		if !force && r.ldev.Load() != nil && st.Peer == replication.Primary && st.PDsk < replication.Inconsistent && st.Conn >= replication.Connected {
			return fmt.Errorf("%s: %w", r.name, errDetachOnlyDisk)
		}
		if ld := r.ldev.Load(); !force && ld != nil && st.Role == replication.Primary && ld.bitsSet() > 0 {
			// Blocks only this disk holds (the peer failed them, or
			// verify found them): without the disk they would be read
			// from the peer's older copy.
			return fmt.Errorf("%s: %w (%d KiB out of sync)", r.name, errDetachOutOfSync, ld.outOfSyncKiB())
		}
		return r.detach(force)
	})
}

func (r *Resource) detach(force bool) error {
	ld := r.ldev.Load()
	if ld == nil {
		return nil
	}
	os := r.State()
	ns := os
	ns.Disk = replication.Diskless
	if err := replication.Check(os, ns, r.checkContext(force)); err != nil {
		return err
	}
	s := r.sess.Load()
	inUse := os.Disk >= replication.Inconsistent || os.Disk == replication.Failed
	if inUse && s != nil && os.PDsk == replication.UpToDate && (os.Role == replication.Primary || os.Peer == replication.Primary) {
		// The Primary writes on without this disk: mark it no longer
		// UpToDate, so that after a crash of both nodes it does not come
		// back UpToDate from its flags and get promoted with stale data.
		if err := ld.markOutdated(); err != nil {
			r.logf("detach: marking the disk Outdated: %v", err)
		}
	}
	if err := r.setState(ns, force); err != nil {
		return err
	}
	// A disk that was in use (not one still attaching) leaves a Primary
	// showing the data it held, or while connected to UpToDate data the
	// peer's generation (a SyncTarget's own current UUID is only the
	// sync UUID).
	if ns.Role == replication.Primary && inUse {
		exposed := ld.uuids().Current
		if os.Disk != replication.UpToDate && s != nil && os.PDsk == replication.UpToDate && s.peerCurrent.Load() != 0 {
			exposed = s.peerCurrent.Load()
		}
		r.exposedUUID.Store(exposed)
		if s != nil {
			// The peer must learn that this disk is gone before the
			// first write that skips it: it marks the writes of a
			// diskless Primary out of sync, for this disk's next attach.
			// Writes go to the peer without the disk only once ldev is
			// nil, below, so sending the state first orders the two on
			// the data socket.
			s.sendStateNow()
		}
	}
	if s != nil && os.Conn.IsSyncing() {
		// A forced detach (or a disk error) in the middle of a resync
		// or verify: the resync cannot go on without the disk. End the
		// session, as a resync reply finding no disk would, so that
		// both nodes reconnect and agree on the diskless state.
		s.cancel(errors.New("local disk detached during resync"))
	}
	r.retiring.Store(ld)
	r.ldev.Store(nil)
	// New requests now fail fast; wait for the ones in flight.
	r.waitOwner(r.io.drain)
	if err := ld.close(); err != nil {
		r.logf("detach: %v", err)
	}
	r.retiring.Store(nil)
	r.diskConf = nil
	return nil
}

// Down takes the resource down completely (DRBD_ADM_DOWN): demote,
// disconnect, detach, delete the minor. With force (daemon shutdown) NBD
// clients are disconnected instead of refusing.
func (r *Resource) Down(ctx context.Context, force bool) error {
	return r.act(ctx, func() error {
		if force && r.nbdStop != nil {
			stop := r.nbdStop
			r.nbdStop = nil
			r.waitOwner(stop)
		}
		if force && r.kernelInUse() {
			// Daemon shutdown under a mounted filesystem: leave the device
			// for the next drbdd instead of failing the filesystem's I/O.
			r.abandonKernel()
		}
		if err := r.secondary(); err != nil {
			return err
		}
		if r.conn != nil {
			if err := r.disconnect(); err != nil {
				return err
			}
		}
		if err := r.detach(force); err != nil {
			return err
		}
		if r.Minor() >= 0 {
			if err := r.delMinor(force); err != nil {
				return err
			}
		}
		return nil
	})
}

// exportProvider hands out the resource's export to NBD clients, but only
// while it is Primary.
type exportProvider struct{ r *Resource }

func (p exportProvider) List() []string { return []string{p.r.name} }

func (p exportProvider) Open(name string) (*nbd.Export, error) {
	r := p.r
	if name != r.name && name != "" {
		return nil, fmt.Errorf("%w: %q (this server exports %q)", nbd.ErrUnknownExport, name, r.name)
	}
	var e *nbd.Export
	err := r.act(r.d.ctx, func() error {
		st := r.State()
		if st.Role != replication.Primary {
			return fmt.Errorf("%s: not Primary (role %s): only the Primary serves I/O", r.name, st.Role)
		}
		if st.Disk != replication.UpToDate && st.PDsk != replication.UpToDate {
			return r.noUpToDateData("")
		}
		r.nbdClients.Add(1)
		var once sync.Once
		e = &nbd.Export{
			Name:        r.name,
			Description: fmt.Sprintf("drbdd resource %s minor %d", r.name, r.Minor()),
			Backend:     &backend{r: r, size: r.capacity.Load()},
			MultiConn:   true,
			CanTrim:     true,
			CanZeroes:   true,
			Release: func() {
				once.Do(func() {
					r.nbdClients.Add(-1)
					r.d.kickStatus()
				})
			},
		}
		r.d.kickStatus()
		return nil
	})
	return e, err
}

// Status is a snapshot of everything status readers show.
type Status struct {
	Name          string
	Minor         int
	State         replication.State
	Protocol      byte
	PeerName      string
	KernelDevice  string
	NBDClients    int
	Size          int64
	UUIDs         []uint64
	Counters      Counters
	OutOfSyncKiB  uint64
	WriteOrdering byte
	// Progress holds the /proc/drbd resync or verify lines; RsTotal,
	// RsLeft (KiB) and RsWant (KiB/s) the numbers behind them.
	Progress                string
	RsTotal, RsLeft, RsWant uint64
}

func (r *Resource) status() Status {
	s := Status{
		Name:          r.name,
		Minor:         r.Minor(),
		State:         r.State(),
		NBDClients:    int(r.nbdClients.Load()),
		Size:          r.capacity.Load(),
		Counters:      r.io.snapshot(),
		WriteOrdering: 'd',
	}
	if r.diskConfCopy().DiskFlushes {
		s.WriteOrdering = 'f'
	}
	if nc := r.netConfV.Load(); nc != nil {
		s.PeerName = nc.PeerName
		s.Protocol = byte('A' - 1 + max(min(nc.Protocol, 3), 1))
	}
	if sess := r.sess.Load(); sess != nil {
		if y := sess.getSync(); y != nil {
			s.Progress, s.RsTotal, s.RsLeft, s.RsWant, _ = y.progress(s.State.Conn)
		}
	}
	if ld := r.ldev.Load(); ld != nil {
		s.OutOfSyncKiB = ld.outOfSyncKiB()
		u := ld.uuids()
		s.UUIDs = []uint64{u.Current, u.Bitmap, u.History[0], u.History[1]}
	}
	return s
}

// Status returns a consistent-enough snapshot for status and events.
func (r *Resource) Status() Status { return r.status() }

func (r *Resource) procMinor() status.Minor {
	s := r.status()
	st := s.State
	m := status.Minor{
		Minor:         s.Minor,
		Unconfigured:  st.Unconfigured(),
		ConnState:     st.Conn.String(),
		Role:          st.Role.String(),
		PeerRole:      st.Peer.String(),
		Disk:          st.Disk.String(),
		PeerDisk:      st.PDsk.String(),
		Protocol:      s.Protocol,
		Suspended:     st.Susp,
		AftrIsp:       st.AftrIsp,
		PeerIsp:       st.PeerIsp,
		UserIsp:       st.UserIsp,
		NetSend:       s.Counters.NetSend >> 10,
		NetRecv:       s.Counters.NetRecv >> 10,
		DiskWrite:     s.Counters.DiskWrite >> 10,
		DiskRead:      s.Counters.DiskRead >> 10,
		ALWrites:      s.Counters.ALWrites,
		BMWrites:      s.Counters.BMWrites,
		LocalCount:    s.Counters.LocalCount,
		Pending:       s.Counters.Pending,
		Unacked:       s.Counters.Unacked,
		AppPending:    s.Counters.AppPending,
		Epochs:        s.Counters.Epochs,
		WriteOrdering: s.WriteOrdering,
		OutOfSync:     s.OutOfSyncKiB,
		Progress:      s.Progress,
	}
	if m.Minor < 0 {
		m.Minor = 0
	}
	return m
}
