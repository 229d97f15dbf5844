package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"drbdd/drbdd/bdev"
	"drbdd/drbdd/meta"
	"drbdd/drbdd/replication"
	"drbdd/protocol"
)

// handshake exchanges P_PROTOCOL, P_SYNC_PARAM, P_SIZES, P_UUIDS and
// P_STATE, decides with DRBD's UUID rules whether and which way to resync,
// exchanges bitmaps when needed, and publishes the session for writes.
//
// Application writes are held (the write gate is taken exclusively) from
// the moment our UUIDs and bitmap are sampled until the session is
// published, so no write can slip between what we told the peer and what
// we replicate. Reads go on.
func (s *session) handshake() error {
	r := s.r
	c := s.c
	// A healthy peer sends its parameters right after authentication; wait
	// no longer than the net timeout, since writes are held meanwhile.
	wait := max(c.conf.Timeout, time.Second)
	s.dataNC.SetReadDeadline(time.Now().Add(wait))
	defer s.dataNC.SetReadDeadline(time.Time{})

	var my struct {
		st      replication.State
		gen     meta.Gen
		size    int64
		crashed bool
		// diskless is set when this node has no disk to compare: no
		// sync handshake runs then, as in DRBD.
		diskless bool
		// negotiated is the state an attaching disk (Negotiating) gets
		// from its flags, which the sync handshake uses in its place.
		negotiated replication.DiskState
		// ld is the disk the handshake speaks for (nil when diskless):
		// a disk attached or detached meanwhile makes it start over.
		ld *localDisk
	}
	err := r.act(s.ctx, func() error {
		if r.conn != c {
			return fmt.Errorf("connection replaced")
		}
		ld := r.ldev.Load()
		ns := r.State()
		ns.Conn = replication.WFReportParams
		if err := r.setState(ns, true); err != nil {
			return err
		}
		my.st = ns
		my.ld = ld
		if ld == nil || ns.Disk < replication.Negotiating {
			my.diskless = true
			my.size = r.capacity.Load()
			return nil
		}
		my.negotiated = ns.Disk
		if ns.Disk == replication.Negotiating {
			my.negotiated, _ = DiskStateFromFlags(ld.flags(), r.checkContext(true).Fencing)
		}
		my.gen = meta.Gen{UUIDs: ld.uuids(), Bits: uint64(ld.bitsSet())}
		if r.crashedPrimary {
			my.gen.Flags |= meta.UUIDFlagCrashedPrimary
		}
		if c.discardMyData {
			my.gen.Flags |= meta.UUIDFlagDiscardMyData
		}
		if my.negotiated == replication.Inconsistent {
			my.gen.Flags |= meta.UUIDFlagInconsistent
		}
		my.size = ld.size
		return nil
	})
	if err != nil {
		return err
	}

	// Our parameters.
	conf := c.conf
	pol := func(name string) protocol.AfterSBPolicy {
		p, err := protocol.ParseAfterSBPolicy(name)
		if err != nil {
			return 0
		}
		return p
	}
	var cf uint32
	if c.discardMyData {
		cf |= protocol.CFDiscardMyData
	}
	proto := &protocol.Protocol{
		WireProtocol: s.wireProto,
		AfterSB0P:    pol(conf.AfterSB0Pri),
		AfterSB1P:    pol(conf.AfterSB1Pri),
		AfterSB2P:    pol(conf.AfterSB2Pri),
		ConnFlags:    cf,
		TwoPrimaries: conf.AllowTwoPrimaries,
	}
	dc := r.diskConfCopy()
	sp89 := protocol.SyncParam89{ResyncRate: uint32(min(dc.ResyncRate>>10, 1<<31)), VerifyAlg: conf.VerifyAlg, CsumsAlg: conf.CsumsAlg}
	var syncParam protocol.Payload = &sp89
	if s.version >= 95 {
		syncParam = &protocol.SyncParam95{SyncParam89: sp89,
			CPlanAhead: uint32(dc.CPlanAhead / (100 * time.Millisecond)), CFillTarget: uint32(dc.CFillTarget >> 9), CMaxRate: uint32(dc.CMaxRate >> 10)}
	}
	sectors := uint64(my.size) / 512
	sizes := &protocol.Sizes{DSize: sectors, CSize: sectors, MaxBioSize: protocol.MaxBioSize}
	if my.diskless {
		// DRBD's diskless node offers no backing size, only the size
		// its device has (zero if it never had one).
		sizes.DSize = 0
	}
	w := my.gen.Words()
	uuids := &protocol.UUIDs{Current: w[0], Bitmap: w[1], HistoryStart: w[2], HistoryEnd: w[3], DirtyBits: w[4], Flags: w[5]}
	state := protocol.State{Role: my.st.Role, Peer: my.st.Peer, Conn: my.st.Conn, Disk: my.st.Disk, PDsk: my.st.PDsk}
	type packet struct {
		cmd protocol.Cmd
		p   protocol.Payload
	}
	params := []packet{{protocol.PProtocol, proto}, {protocol.PSyncParam89, syncParam}, {protocol.PSizes, sizes}, {protocol.PUUIDs, uuids}, {protocol.PState, &state}}
	if my.diskless {
		// Without a disk there are no generations: DRBD sends no
		// P_UUIDS then, and neither do we.
		params = append(params[:3], params[4])
	}
	for _, p := range params {
		if err := s.sendNow(p.cmd, p.p); err != nil {
			return fmt.Errorf("sending %s: %w", p.cmd, err)
		}
	}

	// The peer's parameters, in any order.
	var (
		peerProto protocol.Protocol
		peerSizes protocol.Sizes
		peerUUIDs protocol.UUIDs
		peerState protocol.State
		got       = map[protocol.Cmd]bool{}
	)
	// A diskless peer sends no P_UUIDS; P_STATE, which says so, comes last.
	peerDiskless := func() bool { return got[protocol.PState] && peerState.Disk <= replication.Failed }
	for len(got) < 5 && !(len(got) == 4 && !got[protocol.PUUIDs] && peerDiskless()) {
		h, payload, err := s.data.ReadPacket(protocol.MaxPayload)
		if err != nil {
			return fmt.Errorf("receiving connection parameters: %w", err)
		}
		s.r.io.netRecv.Add(uint64(len(payload)))
		var dst protocol.Payload
		switch h.Cmd {
		case protocol.PProtocol:
			dst = &peerProto
		case protocol.PSyncParam89, protocol.PSyncParam:
			h.Cmd = protocol.PSyncParam89
			dst = nil // accepted; the SyncTarget's own settings drive its requests
		case protocol.PSizes:
			dst = &peerSizes
		case protocol.PUUIDs:
			dst = &peerUUIDs
		case protocol.PState:
			dst = &peerState
		default:
			return protoErr("unexpected %s during the connection handshake", h.Cmd)
		}
		if dst != nil {
			if err := dst.Unmarshal(payload); err != nil {
				return protoErr("%s: %v", h.Cmd, err)
			}
		}
		got[h.Cmd] = true
	}

	// Compatibility, as receive_protocol checks it.
	if peerProto.WireProtocol != s.wireProto {
		return fmt.Errorf("%w: incompatible communication protocols: mine %c, peer's %c", errStandAlone, 'A'-1+s.wireProto, 'A'-1+peerProto.WireProtocol)
	}
	if peerProto.TwoPrimaries != conf.AllowTwoPrimaries {
		return fmt.Errorf("%w: incompatible setting of the two-primaries options", errStandAlone)
	}
	for _, p := range []struct {
		name        string
		mine, peers protocol.AfterSBPolicy
	}{{"after-sb-0pri", proto.AfterSB0P, peerProto.AfterSB0P}, {"after-sb-1pri", proto.AfterSB1P, peerProto.AfterSB1P}, {"after-sb-2pri", proto.AfterSB2P, peerProto.AfterSB2P}} {
		if p.peers.FromPeer() != p.mine {
			return fmt.Errorf("%w: incompatible %s settings", errStandAlone, p.name)
		}
	}
	switch {
	case my.diskless && peerDiskless():
		// Nothing to replicate yet; connect all the same, as DRBD does.
	case my.diskless:
		// A diskless node shows its peer's data, so it takes the peer's
		// size, unless it is Primary with a device of another size.
		peerBytes := int64(peerSizes.DSize) * 512
		if my.st.Role == replication.Primary && my.size != 0 && my.size != peerBytes {
			return fmt.Errorf("%w: the peer's disk size (%d KiB) differs from my device's (%d KiB)", errStandAlone, peerBytes>>10, my.size>>10)
		}
		if err := r.act(s.ctx, func() error { r.capacity.Store(peerBytes); return nil }); err != nil {
			return err
		}
	case peerDiskless():
	case peerSizes.DSize != sectors:
		return fmt.Errorf("%w: the peer's disk size (%d KiB) differs from mine (%d KiB)", errStandAlone, peerSizes.DSize/2, sectors/2)
	}
	if my.diskless && my.st.Role == replication.Primary && got[protocol.PUUIDs] {
		// DRBD's "Can only connect to data with current UUID": a
		// diskless Primary shows the peer's data of one generation and
		// must not switch to another under its users.
		if want := r.exposedUUID.Load(); want != 0 && !r.exposes(peerUUIDs.Current) {
			return fmt.Errorf("%w: can only connect to data with current UUID=%016X (the peer's is %016X)", errStandAlone, want, peerUUIDs.Current)
		}
	}
	if got[protocol.PUUIDs] {
		s.peerCurrent.Store(peerUUIDs.Current)
	}
	peerView := peerState.FromPeer()
	s.peerState.Store(peerView.Pack())

	// From here until the session is published, application writes wait:
	// what we decide, the bitmap we send and the writes we replicate must
	// describe the same data. Writes made while we waited for the peer were
	// local only and are in the bitmap.
	r.io.writeGate.Lock()
	defer r.io.writeGate.Unlock()

	if my.diskless || peerDiskless() {
		// One side has no disk: there is nothing to compare or resync.
		var generated bool
		err := r.act(s.ctx, func() error {
			if r.ldev.Load() != my.ld {
				return errRehandshake
			}
			ns := r.State()
			if ld := my.ld; ld != nil && peerDiskless() && peerState.Role == replication.Primary && ns.Disk >= replication.UpToDate {
				// A diskless Primary's writes reach this disk only. We may
				// never have seen its disk go (the session ended first):
				// start the generation its writes belong to now, as
				// peerChanged would have, so that its old disk cannot
				// pass for this data at its next attach.
				if err := ld.updateUUIDs(func(u *meta.UUIDs) { generated = u.DisklessPeerPromoted(randomUUID(), ns.Role == replication.Primary) }); err != nil {
					return err
				}
				if generated {
					r.logf("%s: new current UUID %s (connected to a diskless Primary)", c.peerName, ld.uuids())
				}
			}
			ns.Conn, ns.Peer, ns.PDsk = replication.Connected, peerState.Role, peerState.Disk
			if ns.Disk == replication.Negotiating {
				// A disk attached to a diskless Primary whose peer has
				// none either: usable only if it holds the data shown.
				if ld := r.ldev.Load(); ld == nil || !r.exposes(ld.uuids().Current) {
					r.logf("%s: the attached disk does not hold the data the device shows (current UUID %016X): detaching it", c.peerName, r.exposedUUID.Load())
					if err := r.failAttachedDisk(); err != nil {
						return err
					}
					ns = r.State()
					ns.Conn, ns.Peer, ns.PDsk = replication.Connected, peerState.Role, peerState.Disk
				} else {
					ns.Disk = my.negotiated
				}
			}
			return r.setState(ns, true)
		})
		if err != nil {
			return err
		}
		s.publish()
		if generated {
			s.sendUUIDs(0)
		}
		return nil
	}

	// Decide. A peer whose disk still attaches (Negotiating) counts with
	// the state its UUID flags give, as in DRBD's receive_state.
	if peerState.Disk == replication.Negotiating {
		peerState.Disk = replication.Consistent
		if meta.UUIDFlags(peerUUIDs.Flags)&meta.UUIDFlagInconsistent != 0 {
			peerState.Disk = replication.Inconsistent
		}
	}
	peerGen := meta.GenFromWords([6]uint64{peerUUIDs.Current, peerUUIDs.Bitmap, peerUUIDs.HistoryStart, peerUUIDs.HistoryEnd, peerUUIDs.DirtyBits, peerUUIDs.Flags})
	if peerProto.ConnFlags&protocol.CFDiscardMyData != 0 {
		peerGen.Flags |= meta.UUIDFlagDiscardMyData
	}
	policy := func(name string) meta.Policy {
		p, _ := meta.ParsePolicy(name)
		return p
	}
	in := meta.HandshakeInput{
		Self: my.gen, Peer: peerGen,
		SelfPrimary: my.st.Role == replication.Primary, PeerPrimary: peerState.Role == replication.Primary,
		SelfDisk: meta.DiskState(my.st.Disk), SelfDiskNegotiated: meta.DiskState(my.negotiated), PeerDisk: meta.DiskState(peerState.Disk),
		ResolveConflicts: c.resolveConflicts, Protocol: s.version, Features: uint32(s.features),
		AfterSB0Pri: policy(conf.AfterSB0Pri), AfterSB1Pri: policy(conf.AfterSB1Pri), AfterSB2Pri: policy(conf.AfterSB2Pri),
		RRConflict: policy(conf.RRConflict), DiscardMyData: c.discardMyData,
		// call-pri-lost-after-sb: a Primary that loses the split brain
		// gives up its role, as `drbdadm secondary` would (refused while
		// the device is in use). Application writes are held off by the
		// writeGate meanwhile, so none slips in between.
		TryDemote: func() bool {
			if err := r.act(s.ctx, r.secondary); err != nil {
				r.logf("%s: call-pri-lost-after-sb: cannot give up the primary role: %v", c.peerName, err)
				return false
			}
			return true
		},
	}
	d := meta.SyncHandshake(in)
	r.logf("%s: uuid_compare()=%d by rule %d (%s)", c.peerName, int(d.Compare), d.Rule.Nr, d.Rule.Desc)
	for _, l := range d.Log {
		if !strings.HasPrefix(l, "uuid_compare()") { // logged above, with the rule's meaning
			r.logf("%s: %s", c.peerName, l)
		}
	}
	ld := my.ld
	if r.ldev.Load() != ld {
		return errRehandshake // the disk changed during the handshake
	}
	if d.SelfRepaired {
		if err := ld.updateUUIDs(func(u *meta.UUIDs) { *u = d.Self }); err != nil {
			return err
		}
	}
	c.discardMyData = false
	if my.st.Disk == replication.Negotiating && d.Action != meta.ActionConnected && d.Action != meta.ActionSyncTarget {
		// The disk attached to this diskless Primary does not hold an
		// older copy of the data it shows (a split brain, unrelated
		// data, or newer data): DRBD fails such a disk. Detach it and
		// reconnect diskless.
		r.logf("%s: the attached disk cannot take the peer's data (%s): detaching it", c.peerName, d)
		if err := r.act(s.ctx, func() error { return r.failAttachedDisk() }); err != nil {
			return err
		}
		return errRehandshake
	}
	switch d.Action {
	case meta.ActionDisconnect:
		if d.Result <= -100 || d.Result >= 100 {
			r.logf("%s: Split-Brain detected, dropping connection!", c.peerName)
		}
		return fmt.Errorf("%w: %s", errStandAlone, d)
	case meta.ActionConnected:
		if bits := ld.bitsSet(); bits > 0 {
			if my.st.Role == replication.Primary && ld.uuids().Bitmap == 0 {
				// Blocks the peer lacks (written while we waited for it,
				// or found by verify): start a new generation and
				// reconnect, so that the UUID rules resync them.
				if err := ld.updateUUIDs(func(u *meta.UUIDs) { u.NewCurrent(randomUUID(), true) }); err != nil {
					return err
				}
				r.logf("%s: %d KiB out of sync but no resync decided: new current UUID %s, reconnecting to resync", c.peerName, bits*4, ld.uuids())
				return errRehandshake
			}
			r.logf("%s: No resync, but %d bits in bitmap!", c.peerName, bits)
		}
		err = r.act(s.ctx, func() error {
			if r.ldev.Load() != ld {
				return errRehandshake
			}
			ns := r.State()
			ns.Conn, ns.Peer, ns.PDsk = replication.Connected, peerState.Role, peerState.Disk
			if ns.Disk == replication.Negotiating {
				ns.Disk = my.negotiated
			}
			r.disklessAcked.Store(false) // the disk has joined
			// Same generation: a Consistent/Outdated side learns it is
			// as up to date as its UpToDate peer.
			if ns.PDsk == replication.UpToDate && (ns.Disk == replication.Consistent || ns.Disk == replication.Outdated) {
				ns.Disk = replication.UpToDate
			}
			if ns.Disk == replication.UpToDate && (ns.PDsk == replication.Consistent || ns.PDsk == replication.Outdated) {
				ns.PDsk = replication.UpToDate
			}
			r.crashedPrimary = false
			return r.setState(ns, true)
		})
		if err != nil {
			return err
		}
	case meta.ActionSyncSource, meta.ActionSyncTarget:
		if err := s.startSync(ld, d, peerState, peerGen.UUIDs); err != nil {
			return err
		}
	}
	s.publish()
	return nil
}

// publish makes the session the one that replicates writes, and tells the
// peer our state.
func (s *session) publish() {
	s.r.sess.Store(s)
	s.r.rehandshakeUntil.Store(0)
	s.sendState()
}

// startSync exchanges bitmaps and the sync UUID and enters SyncSource or
// SyncTarget (DRBD's WFBitMapS/T and WFSyncUUID steps).
func (s *session) startSync(ld *localDisk, d meta.Decision, peerState protocol.State, peerUUIDs meta.UUIDs) error {
	r := s.r
	source := d.Action == meta.ActionSyncSource
	wf := replication.WFBitMapT
	if source {
		wf = replication.WFBitMapS
	}
	if err := r.act(s.ctx, func() error {
		if r.ldev.Load() != ld {
			return errRehandshake // the disk changed during the handshake
		}
		r.disklessAcked.Store(false) // the disk joins: the resync brings it the rest
		ns := r.State()
		ns.Conn, ns.Peer, ns.PDsk = wf, peerState.Role, peerState.Disk
		return r.setState(ns, true)
	}); err != nil {
		return err
	}
	if d.Full {
		r.logf("%s: writing the whole bitmap, full sync required", s.c.peerName)
		if err := ld.setAllOutOfSync(); err != nil {
			return err
		}
	}
	s.dataNC.SetReadDeadline(time.Now().Add(3 * handshakeTimeout))
	if err := s.exchangeBitmaps(ld); err != nil {
		return err
	}
	var syncUUID uint64
	if source {
		if err := ld.updateUUIDs(func(u *meta.UUIDs) { syncUUID = u.StartSyncSource(randomUUID()) }); err != nil {
			return err
		}
		if err := s.sendNow(protocol.PSyncUUID, &protocol.RSUUID{UUID: syncUUID}); err != nil {
			return err
		}
	} else {
		h, payload, err := s.data.ReadPacket(protocol.MaxPayload)
		if err != nil {
			return fmt.Errorf("waiting for the sync UUID: %w", err)
		}
		if h.Cmd != protocol.PSyncUUID {
			return protoErr("expected P_SYNC_UUID, got %s", h.Cmd)
		}
		var u protocol.RSUUID
		if err := u.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", h.Cmd, err)
		}
		syncUUID = u.UUID
		primary := r.State().Role == replication.Primary
		if err := ld.updateUUIDs(func(x *meta.UUIDs) { x.StartSyncTarget(u.UUID, primary) }); err != nil {
			return err
		}
	}
	y := newSyncState(s, !source, peerUUIDs)
	s.syncMu.Lock()
	s.sync = y
	s.syncMu.Unlock()
	bits := ld.bitsSet()
	r.logf("%s: Began resync as %s (will sync %d KB [%d bits set]).", s.c.peerName, map[bool]string{true: "SyncSource", false: "SyncTarget"}[source], bits*4, bits)
	return r.act(s.ctx, func() error {
		ns := r.State()
		if source {
			ns.Conn, ns.PDsk = replication.SyncSource, replication.Inconsistent
		} else {
			ns.Conn, ns.Disk = replication.SyncTarget, replication.Inconsistent
		}
		if err := r.setState(ns, true); err != nil {
			return err
		}
		y.begin(bits)
		if bits == 0 {
			// Nothing differs: the resync is over before it started.
			return y.finishLocked()
		}
		return nil
	})
}

// exchangeBitmaps sends our bitmap and merges the peer's, concurrently so
// that two large bitmaps cannot deadlock on full socket buffers. Both
// stream through the live bitmap (liveBitmap): the sender may pick up
// some of the peer's bits merged meanwhile, which changes nothing, as
// each side ends with the union of the two bitmaps anyway. Application
// writes are held off (writeGate) while this runs.
func (s *session) exchangeBitmaps(ld *localDisk) error {
	nbits := ld.bitmapBits()
	sender := protocol.NewBitmapSenderFrom(&liveBitmap{ld: ld}, nbits, s.version, true)
	sent := make(chan error, 1)
	go func() {
		buf := make([]byte, protocol.SocketBufferSize)
		for {
			cmd, payload, ok := sender.Next(buf)
			if !ok {
				break
			}
			if err := s.dataW.send(cmd, payload); err != nil {
				sent <- err
				return
			}
			s.r.io.netSend.Add(uint64(len(payload)))
		}
		sent <- nil
	}()
	sink := &liveBitmap{ld: ld}
	recv := protocol.NewBitmapReceiverInto(sink, nbits, s.version)
	for !recv.Done() {
		h, payload, err := s.data.ReadPacket(protocol.MaxPayload)
		if err != nil {
			return fmt.Errorf("receiving bitmap: %w", err)
		}
		s.r.io.netRecv.Add(uint64(len(payload)))
		if _, err := recv.Receive(h.Cmd, payload); err != nil {
			return protoErr("bitmap: %v", err)
		}
		if sink.err != nil {
			return fmt.Errorf("merging the peer's bitmap: %w", sink.err)
		}
	}
	if err := <-sent; err != nil {
		return fmt.Errorf("sending bitmap: %w", err)
	}
	pp, pb, rp, rb := recv.Stats()
	s.r.logf("%s: receive bitmap stats [Bytes(packets)]: plain %d(%d), RLE %d(%d)", s.c.peerName, pb, pp, rb, rp)
	return ld.flushBitmap()
}

// sendState tells the peer our current state (P_STATE).
func (s *session) sendState() {
	s.queuePayload(protocol.PState, s.statePacket())
}

// sendStateNow sends our current state and returns once it is on the data
// socket, for a change that must reach the peer before the writes that
// follow it. It goes through the worker's queue, behind any older P_STATE
// still waiting there, so the peer cannot see an older state last.
func (s *session) sendStateNow() {
	p := &outPacket{cmd: protocol.PState, payload: s.statePacket().MarshalAppend(nil), sent: make(chan struct{})}
	if !s.queue(p) {
		return
	}
	select {
	case <-p.sent:
	case <-s.ctx.Done():
	}
}

// statePacket is our current state as P_STATE carries it.
func (s *session) statePacket() *protocol.State {
	st := s.r.State()
	return &protocol.State{Role: st.Role, Peer: st.Peer, Conn: st.Conn, Disk: st.Disk, PDsk: st.PDsk,
		UserISP: st.UserIsp, PeerISP: st.PeerIsp, AftrISP: st.AftrIsp}
}

// receiver reads the data socket and dispatches the peer's packets.
//
// While input is already buffered, the meta socket stays corked: the acks
// of a burst of writes leave in one flush, just before the receiver would
// block waiting for more input.
func (s *session) receiver() error {
	defer s.applies.Close()
	corked := false
	defer func() {
		if corked {
			s.metaW.uncork()
		}
	}()
	for {
		if corked && s.dataRd.Buffered() == 0 {
			corked = false
			if err := s.metaW.uncork(); err != nil {
				return err
			}
		}
		h, err := s.data.ReadHeader(protocol.MaxPayload)
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			return err
		}
		if corked && s.dataRd.Buffered() < int(h.Length) {
			// The payload is still to arrive: the acks owed so far leave
			// before the receiver waits for it.
			corked = false
			if err := s.metaW.uncork(); err != nil {
				return err
			}
		}
		dh, blk, taken, err := s.readBlock(h)
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			return err
		}
		if taken {
			s.r.io.netRecv.Add(uint64(h.Length))
			if err := s.dispatchBlock(h.Cmd, dh, blk); err != nil {
				return err
			}
			continue
		}
		payload, err := s.data.ReadBody(h)
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !corked {
			s.metaW.cork()
			corked = true
		}
		s.r.io.netRecv.Add(uint64(len(payload)))
		if err := s.dispatch(h.Cmd, payload); err != nil {
			return err
		}
	}
}

// dispatchBlock handles a data packet whose block readBlock took (into
// pipes, or into a buffer of its own).
func (s *session) dispatchBlock(cmd protocol.Cmd, dh protocol.DataHeader, blk *rxBlock) error {
	if cmd == protocol.PData {
		return s.recvWrite(writeData, dh, blk, blk.n)
	}
	y := s.getSync()
	if y == nil || !y.target {
		blk.release()
		return protoErr("%s while not SyncTarget", cmd)
	}
	return y.gotData(dh, blk)
}

func (s *session) dispatch(cmd protocol.Cmd, payload []byte) error {
	switch cmd {
	case protocol.PData:
		var d protocol.Data
		if err := d.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.recvWrite(writeData, d.DataHeader, memBlock(d.Payload), int64(len(d.Payload)))
	case protocol.PTrim, protocol.PZeroes:
		var t protocol.Trim
		if err := t.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		kind := writeTrim
		if cmd == protocol.PZeroes {
			kind = writeZeroes
		}
		return s.recvWrite(kind, t.DataHeader, nil, int64(t.Size))
	case protocol.PBarrier:
		var b protocol.Barrier
		if err := b.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		s.recvBarrier(b.Barrier)
	case protocol.PState:
		var st protocol.State
		if err := st.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.recvState(st.FromPeer())
	case protocol.PUUIDs:
		var u protocol.UUIDs
		if err := u.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.recvUUIDs(u)
	case protocol.PSyncParam89, protocol.PSyncParam, protocol.PSizes, protocol.PProtocolUpdate, protocol.PUnplugRemote, protocol.PDelayProbe:
		// Tolerated: option changes and hints that need no action here.
	case protocol.PStateChgReq:
		var rq protocol.ReqState
		if err := rq.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		go s.recvStateChgReq(rq)
	case protocol.PRSDataRequest, protocol.PCsumRSRequest, protocol.POVRequest:
		var rq protocol.BlockReq
		if err := rq.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.syncFor().serveRequest(cmd, rq)
	case protocol.PRSDataReply:
		var d protocol.Data
		if err := d.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		y := s.getSync()
		if y == nil || !y.target {
			return protoErr("%s while not SyncTarget", cmd)
		}
		return y.gotData(d.DataHeader, memBlock(d.Payload))
	case protocol.PDataRequest:
		var rq protocol.BlockReq
		if err := rq.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.serveDataRequest(rq)
	case protocol.PDataReply:
		var d protocol.Data
		if err := d.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		return s.gotDataReply(d)
	case protocol.POVReply:
		var rq protocol.BlockReq
		if err := rq.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		y := s.getSync()
		if y == nil {
			return protoErr("%s while not verifying", cmd)
		}
		return y.gotOVReply(rq)
	case protocol.POutOfSync:
		var bd protocol.BlockDesc
		if err := bd.Unmarshal(payload); err != nil {
			return protoErr("%s: %v", cmd, err)
		}
		if ld := s.r.ldev.Load(); ld != nil {
			ld.markOutOfSync(int64(bd.Sector)*512, int64(bd.BlkSize))
		}
	default:
		return protoErr("unexpected %s (0x%04x) on the data socket", cmd, uint16(cmd))
	}
	return nil
}

// recvWrite applies a write from the Primary. The range is owned in
// arrival order before the write is handed to its goroutine, so
// overlapping writes land in the order the Primary sent them.
//
// blk is the data block of a P_DATA (nil for trim and zeroes); recvWrite
// releases it.
func (s *session) recvWrite(kind writeKind, h protocol.DataHeader, blk *rxBlock, n int64) error {
	r := s.r
	// Released on every return until apply owns it.
	defer func() { blk.release() }()
	ld := r.ldev.Load()
	off := int64(h.Sector) * 512
	if n == 0 {
		// An empty flush: it asks for a disk flush at the epoch's barrier.
		if h.DPFlags&protocol.DPFlush != 0 {
			s.recvEpochs.flushRequested()
		}
		if h.DPFlags&(protocol.DPSendWriteAck|protocol.DPSendReceiveAck) != 0 {
			cmd := protocol.PWriteAck
			if h.DPFlags&protocol.DPSendReceiveAck != 0 {
				cmd = protocol.PRecvAck
			}
			return s.sendMeta(cmd, &protocol.BlockAck{Sector: h.Sector, BlockID: h.BlockID, SeqNum: h.SeqNum})
		}
		return nil
	}
	if ld == nil {
		// Diskless (detached): the Primary marks the block out of sync.
		return s.sendMeta(protocol.PNegAck, &protocol.BlockAck{Sector: h.Sector, BlockID: h.BlockID, BlkSize: uint32(n), SeqNum: h.SeqNum})
	}
	if n < 0 || off < 0 || off+n > ld.size {
		return protoErr("write of %d bytes at sector %d beyond the end of the device (%d bytes)", n, h.Sector, ld.size)
	}
	if st := r.State(); st.Role == replication.Primary && !s.c.conf.AllowTwoPrimaries {
		return protoErr("peer sent a write while I am Primary")
	}
	wantRecvAck := h.DPFlags&protocol.DPSendReceiveAck != 0 || (s.version < 100 && s.wireProto == protocol.ProtocolB)
	wantWriteAck := h.DPFlags&protocol.DPSendWriteAck != 0 || (s.version < 100 && s.wireProto == protocol.ProtocolC)
	ack := protocol.BlockAck{Sector: h.Sector, BlockID: h.BlockID, BlkSize: uint32(n), SeqNum: h.SeqNum}
	if wantRecvAck {
		if err := s.sendMeta(protocol.PRecvAck, &ack); err != nil {
			return err
		}
	}
	// With no other peer write in flight, apply the write right here: a
	// goroutine hand-off would only add latency, and the data can be
	// written straight from the receive buffer. On a page-cache backed
	// disk a write is a memory copy, so a burst is applied inline too.
	// An inline write to a direct-I/O disk is one blocking call, not an
	// AIO round (submission, completion event, reaping, hand-off back):
	// the receiver would only wait for it anyway. In the lab's VMs that
	// made writes at queue depth 1 about 13% faster.
	inline := s.peerBuffers.idle() && (s.dataRd.Buffered() == 0 || !ld.direct())
	if blk != nil && blk.held() {
		// The pipe holds the block: the receiver can go on while it is
		// copied into the page cache.
		inline = false
	}
	if !inline {
		blk = blk.ownCopy()
	}
	lr, err := r.io.writes.acquireCtx(s.ctx, off, n)
	if err != nil {
		return nil // the session ends
	}
	ep := s.recvEpochs.write()
	onlyDisk := r.State().PDsk < replication.Inconsistent
	if onlyDisk {
		// The writes of a diskless Primary reach this disk only: record
		// them for the Primary's next attach, before the write, so that
		// the activity log covers the bit until it is on disk (DRBD's
		// receive_Data for "the only disk of the cluster").
		ld.markOutOfSync(off, n)
	}
	if err := s.peerBuffers.acquire(s.ctx, n); err != nil {
		r.io.writes.release(lr)
		return nil
	}
	r.io.unacked.Add(1)
	s.wg.Add(1)
	mine := blk
	blk = nil // apply owns it now
	apply := func() {
		defer s.wg.Done()
		err := r.applyPeerWrite(ld, kind, mine, off, n, h.DPFlags&protocol.DPFUA != 0, inline)
		r.io.writes.release(lr)
		mine.release()
		s.peerBuffers.release(n)
		r.io.unacked.Add(-1)
		if err != nil {
			s.sendMeta(protocol.PNegAck, &ack)
		} else {
			if h.DPFlags&protocol.DPMaySetInSync != 0 && !onlyDisk {
				ld.clearFullBlocks(off, n)
				if y := s.getSync(); y != nil {
					y.applicationWrote(off, n)
				}
			}
			if wantWriteAck {
				s.sendMeta(protocol.PWriteAck, &ack)
			}
		}
		s.recvEpochDone(ep)
	}
	if inline {
		apply()
	} else {
		s.applies.Run(apply)
	}
	return nil
}

// applyPeerWrite writes the peer's data locally, recording the extent in
// the activity log first like an application write. With blocking, a data
// block in memory is written with one blocking call (see recvWrite).
func (r *Resource) applyPeerWrite(ld *localDisk, kind writeKind, blk *rxBlock, off, n int64, fua, blocking bool) error {
	if err := ld.beginWrite(off, n); err != nil {
		r.localIOError("activity log update", off, err)
		return err
	}
	defer ld.endWrite(off, n)
	r.io.local.Add(1)
	var err error
	if kind == writeData {
		err = blk.write(ld.dev, off, n, fua, blocking)
	} else {
		err = localWrite(ld.dev, kind, nil, off, n, fua)
	}
	r.io.local.Add(-1)
	if err != nil {
		r.localIOError("peer write", off, err)
		return err
	}
	r.io.diskWrite.Add(uint64(n))
	return nil
}

// recvBarrier closes the open receive epoch.
func (s *session) recvBarrier(nr uint32) {
	s.recvEpochs.barrier(nr)
	s.recvEpochDone(nil)
}

// recvEpochDone records a finished peer write and acknowledges, in order,
// every closed epoch whose writes are all done (see recvEpochs.done).
// With disk-flushes (DRBD's write ordering "f") or when the Primary's
// client flushed in an epoch, the disk is flushed first, so that the
// barrier ack promises stable storage; otherwise it promises completion
// (write ordering "d").
func (s *session) recvEpochDone(e *recvEpoch) {
	flush := func() error {
		// The epochs' writes went to the attached disk or to one being
		// detached, which is flushed all the same; a disk already closed
		// was synced as it closed.
		for _, ld := range []*localDisk{s.r.ldev.Load(), s.r.retiring.Load()} {
			if ld == nil {
				continue
			}
			err := ld.dev.Sync()
			if errors.Is(err, bdev.ErrClosed) {
				continue // closed meanwhile by a detach, and so synced
			}
			if err != nil {
				s.r.localIOError("flush", 0, err)
				err = fmt.Errorf("flush for barrier: %w", err)
				s.cancel(err)
				return err
			}
		}
		return nil
	}
	send := func(a protocol.BarrierAck) error { return s.sendMeta(protocol.PBarrierAck, &a) }
	s.recvEpochs.done(e, s.r.diskConfCopy().DiskFlushes, flush, send)
}

// recvState applies the peer's new state to ours.
func (s *session) recvState(peer protocol.State) error {
	r := s.r
	s.peerState.Store(peer.Pack())
	return r.act(s.ctx, func() error {
		os := r.State()
		ns := os
		ns.Peer = peer.Peer
		ns.PDsk = peer.PDsk
		ns.PeerIsp = peer.PeerISP
		if y := s.getSync(); y != nil {
			if err := y.peerStateChanged(&ns, peer); err != nil {
				return err
			}
		} else if ns.Conn == replication.Connected && peer.Conn == replication.VerifyT {
			ns.Conn = replication.VerifyT
		} else if ns.Conn == replication.VerifyT && peer.Conn == replication.Connected {
			ns.Conn = replication.Connected
		}
		if !s.c.conf.AllowTwoPrimaries && ns.Role == replication.Primary && ns.Peer == replication.Primary {
			return fmt.Errorf("%w: both nodes are Primary", errStandAlone)
		}
		if err := r.setState(ns, true); err != nil {
			return err
		}
		return s.peerChanged(os, ns)
	})
}

// peerChanged applies DRBD's generation rules for changes of the peer's
// role or disk while connected (after_state_ch). Runs on the owner
// goroutine.
//
//   - The peer detached (or lost) its disk while one of us is Primary:
//     what the Primary writes from now on reaches this disk only, under a
//     new generation, so that the peer's next attach resyncs exactly the
//     blocks in our bitmap (peerDataLost).
//   - A diskless peer became Primary: its writes reach this disk only, so
//     they start a new generation here too.
//
// Either way the peer learns our new UUIDs; a diskless Primary follows
// them (see Resource.exposedUUID).
func (s *session) peerChanged(os, ns replication.State) error {
	r := s.r
	generated, err := r.peerDataLost(os, ns)
	if err != nil {
		return err
	}
	if ld := r.ldev.Load(); ld != nil && !generated && ns.PDsk < replication.Inconsistent &&
		os.Peer != replication.Primary && ns.Peer == replication.Primary && ns.Disk >= replication.UpToDate {
		err = ld.updateUUIDs(func(u *meta.UUIDs) { generated = u.DisklessPeerPromoted(randomUUID(), ns.Role == replication.Primary) })
		if generated {
			r.logf("%s: new current UUID %s (the diskless peer became Primary)", s.c.peerName, ld.uuids())
		}
	}
	if generated {
		s.sendUUIDs(0)
	}
	return err
}

// recvStateChgReq answers a cluster-wide state change from the peer, such
// as its promotion, after checking it against our state.
func (s *session) recvStateChgReq(rq protocol.ReqState) {
	r := s.r
	mask, val := rq.Mask.FromPeer(), rq.Val.FromPeer()
	res := replication.SSSuccess
	invalidate := false
	err := r.act(s.ctx, func() error {
		os := r.State()
		ns := os
		if mask.Peer != 0 {
			ns.Peer = val.Peer
		}
		if mask.PDsk != 0 {
			ns.PDsk = val.PDsk
		}
		if mask.Role != 0 {
			ns.Role = val.Role
		}
		if mask.Disk != 0 {
			ns.Disk = val.Disk
		}
		if r.clusterChangePending && s.c.resolveConflicts {
			res = replication.SSConcurrentStChg
			return nil
		}
		if mask.Disk != 0 && val.Disk == replication.Inconsistent {
			// invalidate-remote from the peer: discard our data, after
			// the reply (invalidating ends this session).
			if r.ldev.Load() == nil {
				res = replication.SSIsDiskless
			} else if os.Conn.IsSyncing() {
				res = replication.SSResyncRunning
			} else {
				invalidate = true
			}
			return nil
		}
		if err := replication.Check(os, ns, r.checkContext(false)); err != nil {
			var se *replication.StateError
			if errors.As(err, &se) {
				res = se.Result
			}
			return nil
		}
		if err := r.setState(ns, true); err != nil {
			return err
		}
		return s.peerChanged(os, ns)
	})
	if err != nil {
		res = replication.SSUnknownError
	}
	s.sendMeta(protocol.PStateChgReply, &protocol.ReqStateReply{Result: protocol.StateChangeResult(res)})
	if invalidate {
		if err := r.act(context.Background(), r.invalidate); err != nil {
			r.logf("%s: invalidate requested by the peer: %v", s.c.peerName, err)
		}
	}
}

// clusterStateChange asks the peer to accept our new role before we take
// it (DRBD's cluster-wide state change for promotion while connected).
func (s *session) clusterStateChange(ctx context.Context, mask, val protocol.State) error {
	for {
		select {
		case <-s.stateReply:
		default:
		}
		if !s.queuePayload(protocol.PStateChgReq, &protocol.ReqState{Mask: mask, Val: val}) {
			return errPeerLost
		}
		select {
		case res := <-s.stateReply:
			if res >= replication.SSSuccess {
				return nil
			}
			return &replication.StateError{Result: res}
		case <-s.ctx.Done():
			return errPeerLost
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * handshakeTimeout):
			return &replication.StateError{Result: replication.SSCWFailedByPeer}
		}
	}
}
