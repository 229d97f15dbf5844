package engine

import (
	"context"
	"errors"
	"fmt"

	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/netlink"
	"drbdd/protocol"
)

// errInvalidate ends a session so that the reconnect resyncs everything.
var errInvalidate = errors.New("full resync requested: reconnecting")

// errRehandshake ends a session whose data generation changed under it,
// so that the reconnect's sync handshake decides what to resync.
var errRehandshake = errors.New("data generation changed: reconnecting to resync")

// sendUUIDs tells the peer our generation UUIDs (P_UUIDS) with extra flags.
func (s *session) sendUUIDs(flags meta.UUIDFlags) {
	ld := s.r.ldev.Load()
	if ld == nil {
		return
	}
	g := meta.Gen{UUIDs: ld.uuids(), Bits: uint64(ld.bitsSet()), Flags: flags}
	w := g.Words()
	s.queuePayload(protocol.PUUIDs, &protocol.UUIDs{Current: w[0], Bitmap: w[1], HistoryStart: w[2], HistoryEnd: w[3], DirtyBits: w[4], Flags: w[5]})
}

// recvUUIDs handles P_UUIDS after the handshake. A diskless Primary
// follows the peer's current UUID. The other case that needs action is
// new-current-uuid --clear-bitmap on a peer whose data is as just-created
// as ours: adopt its UUID and skip the initial sync.
func (s *session) recvUUIDs(u protocol.UUIDs) error {
	r := s.r
	s.peerCurrent.Store(u.Current)
	if meta.UUIDFlags(u.Flags)&meta.UUIDFlagSkipInitialSync == 0 {
		// A diskless Primary shows the peer's data, whose new generation
		// this announces (DRBD's drbd_set_ed_uuid).
		return r.act(s.ctx, func() error {
			if r.ldev.Load() == nil && r.State().Role == replication.Primary {
				r.exposedUUID.Store(u.Current)
			}
			return nil
		})
	}
	return r.act(s.ctx, func() error {
		ld := r.ldev.Load()
		if ld == nil || ld.uuids().Current&^meta.UUIDPrimaryBit != meta.UUIDJustCreated {
			return nil
		}
		ns := r.State()
		if err := ld.updateUUIDs(func(x *meta.UUIDs) { x.SkipInitialSync(u.Current, ns.Role == replication.Primary) }); err != nil {
			return err
		}
		if err := ld.clearAllInSync(); err != nil {
			return err
		}
		r.logf("%s: peer cleared the bitmap with a new current UUID: skipping the initial sync", s.c.peerName)
		ns.Disk, ns.PDsk = replication.UpToDate, replication.UpToDate
		return r.setState(ns, true)
	})
}

// NewCurrentUUID starts a new data generation (DRBD_ADM_NEW_C_UUID). With
// clearBitmap on a connected pair of just-created disks it skips the
// initial sync: both sides are declared UpToDate with an empty bitmap.
func (r *Resource) NewCurrentUUID(ctx context.Context, clearBitmap bool) error {
	return r.act(ctx, func() error {
		ld := r.ldev.Load()
		if ld == nil {
			return &replication.StateError{Result: replication.SSIsDiskless}
		}
		ns := r.State()
		s := r.sess.Load()
		skip := clearBitmap && s != nil && ns.Conn == replication.Connected && ld.uuids().Current&^meta.UUIDPrimaryBit == meta.UUIDJustCreated
		if clearBitmap && s != nil && !skip {
			return coded(netlink.ErrInvalidRequest, fmt.Errorf("%s: --clear-bitmap while connected needs just-created meta data on both nodes", r.name))
		}
		if err := ld.updateUUIDs(func(u *meta.UUIDs) { u.NewCurrentByUser(randomUUID(), ns.Role == replication.Primary, clearBitmap) }); err != nil {
			return err
		}
		r.logf("new current UUID %s", ld.uuids())
		if clearBitmap {
			if err := ld.clearAllInSync(); err != nil {
				return err
			}
			ns.Disk = replication.UpToDate
			if skip {
				ns.PDsk = replication.UpToDate
			}
			if err := r.setState(ns, true); err != nil {
				return err
			}
		}
		if s != nil {
			var f meta.UUIDFlags
			if skip {
				f = meta.UUIDFlagSkipInitialSync
			}
			s.sendUUIDs(f)
		}
		return nil
	})
}

// Invalidate discards the local data: the whole disk is marked out of
// sync and Inconsistent, and while connected the session is re-established
// so that this node becomes SyncTarget (DRBD_ADM_INVALIDATE).
func (r *Resource) Invalidate(ctx context.Context) error {
	return r.act(ctx, func() error { return r.invalidate() })
}

func (r *Resource) invalidate() error {
	ld := r.ldev.Load()
	if ld == nil {
		return &replication.StateError{Result: replication.SSIsDiskless}
	}
	ns := r.State()
	if ns.Conn.IsSyncing() {
		return &replication.StateError{Result: replication.SSResyncRunning}
	}
	s := r.sess.Load()
	if s != nil && ns.PDsk < replication.UpToDate {
		return &replication.StateError{Result: replication.SSNoUpToDateDisk}
	}
	ns.Disk = replication.Inconsistent
	if err := replication.Check(r.State(), ns, r.checkContext(false)); err != nil {
		return err
	}
	if err := ld.setAllOutOfSync(); err != nil {
		return err
	}
	if err := r.setState(ns, true); err != nil {
		return err
	}
	if s != nil {
		s.cancel(errInvalidate)
	}
	return nil
}

// InvalidatePeer discards the peer's data: it becomes SyncTarget of a full
// resync (DRBD_ADM_INVAL_PEER, `drbdadm invalidate-remote`).
func (r *Resource) InvalidatePeer(ctx context.Context) error {
	var s *session
	err := r.act(ctx, func() error {
		s = r.sess.Load()
		ns := r.State()
		if s == nil || ns.Conn != replication.Connected {
			return &replication.StateError{Result: replication.SSNeedConnection}
		}
		if ns.Disk != replication.UpToDate {
			return &replication.StateError{Result: replication.SSNoUpToDateDisk}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.clusterStateChange(ctx, protocol.State{PDsk: protocol.DiskMask}, protocol.State{PDsk: replication.Inconsistent}); err != nil {
		return err
	}
	return r.act(ctx, func() error {
		if ld := r.ldev.Load(); ld != nil {
			return ld.setAllOutOfSync()
		}
		return nil
	})
}

// Outdate marks consistent local data as Outdated (DRBD_ADM_OUTDATE).
func (r *Resource) Outdate(ctx context.Context) error {
	return r.act(ctx, func() error {
		ns := r.State()
		if ns.Disk == replication.Outdated {
			return nil
		}
		ns.Disk = replication.Outdated
		return r.setState(ns, false)
	})
}

// PauseSync sets the user's sync-inhibit flag (DRBD_ADM_PAUSE_SYNC).
func (r *Resource) PauseSync(ctx context.Context, pause bool) error {
	return r.act(ctx, func() error {
		ns := r.State()
		if ns.UserIsp == pause {
			if pause {
				return coded(netlink.ErrPauseIsSet, fmt.Errorf("%s: sync-pause flag is already set", r.name))
			}
			return coded(netlink.ErrPauseIsClear, fmt.Errorf("%s: sync-pause flag is already cleared", r.name))
		}
		ns.UserIsp = pause
		applyPause(&ns)
		return r.setState(ns, true)
	})
}
