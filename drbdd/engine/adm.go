package engine

import (
	"context"
	"errors"
	"fmt"
	"math"

	"drbdd/drbdd/replication"
	"drbdd/drbdd/status"
	"drbdd/netlink"
)

// MinorAuto in a DeviceConf asks the daemon to pick the lowest free minor.
const MinorAuto = math.MaxUint32

// CodedError is an error that carries the DRBD return code to report.
type CodedError struct {
	Code netlink.RetCode
	Err  error
}

func (e *CodedError) Error() string { return e.Err.Error() }
func (e *CodedError) Unwrap() error { return e.Err }

// coded wraps err with a specific return code.
func coded(code netlink.RetCode, err error) error {
	if err == nil {
		return nil
	}
	return &CodedError{Code: code, Err: err}
}

// Handlers returns the daemon's dispatch table: one handler per DRBD_ADM_*
// command number, the counterpart of DRBD's genl ops table.
func (d *Daemon) Handlers() map[netlink.Command]netlink.Handler {
	return map[netlink.Command]netlink.Handler{
		netlink.GetStatus:   d.admGetStatus,
		netlink.NewResource: d.admNewResource,
		netlink.DelResource: d.admDelResource,
		netlink.NewMinor:    d.withResource(d.admNewMinor),
		netlink.DelMinor:    d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.DelMinor(ctx) }),
		netlink.Attach:      d.withResource(d.admAttach),
		netlink.Detach: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error {
			return r.Detach(ctx, req.Detach != nil && req.Detach.Force)
		}),
		netlink.Primary: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error {
			return r.Primary(ctx, req.Role != nil && req.Role.AssumeUptodate)
		}),
		netlink.Secondary: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.Secondary(ctx) }),
		netlink.Down:      d.admDown,
		netlink.Connect: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error {
			if req.Net == nil {
				return errors.New("connect: missing net configuration")
			}
			discard := req.Net.DiscardMyData || (req.Connect != nil && req.Connect.DiscardMyData)
			return r.Connect(ctx, *req.Net, discard)
		}),
		netlink.Disconnect: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.Disconnect(ctx) }),
		netlink.StartOV: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error {
			var start uint64
			if req.StartOV != nil {
				start = req.StartOV.Start
			}
			return r.StartVerify(ctx, start)
		}),
		netlink.PauseSync:      d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.PauseSync(ctx, true) }),
		netlink.ResumeSync:     d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.PauseSync(ctx, false) }),
		netlink.Invalidate:     d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.Invalidate(ctx) }),
		netlink.InvalidatePeer: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.InvalidatePeer(ctx) }),
		netlink.Outdate:        d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error { return r.Outdate(ctx) }),
		netlink.NewCurrentUUID: d.withResource(func(ctx context.Context, r *Resource, req *netlink.Request) error {
			return r.NewCurrentUUID(ctx, req.NewCUUID != nil && req.NewCUUID.ClearBitmap)
		}),
		netlink.Subscribe: d.admSubscribe,
	}
}

// reply turns an error from the engine into a reply with DRBD's code.
func reply(err error) *netlink.Reply {
	if err == nil {
		return &netlink.Reply{RetCode: netlink.NoError}
	}
	var ce *CodedError
	var se *replication.StateError
	code := netlink.ErrInvalidRequest
	switch {
	case errors.As(err, &ce):
		code = ce.Code
	case errors.As(err, &se):
		code = netlink.RetCode(se.Result)
	case errors.Is(err, ErrNoResource):
		code = netlink.ErrResNotKnown
	case errors.Is(err, ErrExists):
		code = netlink.ErrMinorExists
	}
	return &netlink.Reply{RetCode: code, Info: err.Error()}
}

type resourceHandler func(ctx context.Context, r *Resource, req *netlink.Request) error

// withResource resolves the request's resource before calling h.
func (d *Daemon) withResource(h resourceHandler) netlink.Handler {
	return func(ctx context.Context, req *netlink.Request, _ netlink.EventSink) *netlink.Reply {
		r, err := d.Resource(req.Ctx.ResourceName)
		if err != nil {
			return reply(err)
		}
		return reply(h(ctx, r, req))
	}
}

func (d *Daemon) admNewResource(ctx context.Context, req *netlink.Request, _ netlink.EventSink) *netlink.Reply {
	if req.Ctx.ResourceName == "" {
		return reply(errors.New("new-resource: missing resource name"))
	}
	_, err := d.NewResource(req.Ctx.ResourceName)
	if errors.Is(err, ErrExists) {
		err = coded(netlink.ErrResInUse, err)
	}
	return reply(err)
}

func (d *Daemon) admDelResource(ctx context.Context, req *netlink.Request, _ netlink.EventSink) *netlink.Reply {
	return reply(d.DelResource(req.Ctx.ResourceName))
}

func (d *Daemon) admNewMinor(ctx context.Context, r *Resource, req *netlink.Request) error {
	if req.Device == nil {
		return errors.New("new-minor: missing device configuration")
	}
	want := -1
	if req.Device.Minor != MinorAuto {
		want = int(req.Device.Minor)
	}
	return r.NewMinor(ctx, *req.Device, want)
}

func (d *Daemon) admAttach(ctx context.Context, r *Resource, req *netlink.Request) error {
	if req.Disk == nil {
		return errors.New("attach: missing disk configuration")
	}
	return r.Attach(ctx, *req.Disk)
}

func (d *Daemon) admDown(ctx context.Context, req *netlink.Request, _ netlink.EventSink) *netlink.Reply {
	r, err := d.Resource(req.Ctx.ResourceName)
	if err != nil {
		return reply(err)
	}
	if err := r.Down(ctx, false); err != nil {
		return reply(err)
	}
	return reply(d.DelResource(r.name))
}

// admGetStatus answers for one resource, or for all when none is named.
func (d *Daemon) admGetStatus(ctx context.Context, req *netlink.Request, _ netlink.EventSink) *netlink.Reply {
	var rs []*Resource
	if req.Ctx.ResourceName != "" {
		r, err := d.Resource(req.Ctx.ResourceName)
		if err != nil {
			return reply(err)
		}
		rs = []*Resource{r}
	} else {
		rs = d.Resources()
	}
	rep := &netlink.Reply{RetCode: netlink.NoError, Version: status.Version}
	for _, r := range rs {
		rep.States = append(rep.States, stateInfo(r.Status()))
	}
	return rep
}

// admSubscribe streams state changes: first an "exists" event per
// resource, then every change, until the client goes away.
func (d *Daemon) admSubscribe(ctx context.Context, req *netlink.Request, sink netlink.EventSink) *netlink.Reply {
	if sink == nil {
		return reply(errors.New("subscribe: no event stream"))
	}
	ch, cancel := d.Subscribe()
	defer cancel()
	for _, r := range d.Resources() {
		if req.Ctx.ResourceName != "" && r.name != req.Ctx.ResourceName {
			continue
		}
		si := stateInfo(r.Status())
		si.EventKind = "exists"
		if err := sink.Send(si); err != nil {
			return reply(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return reply(nil)
		case <-d.ctx.Done():
			return reply(nil)
		case ev, ok := <-ch:
			if !ok {
				return reply(fmt.Errorf("events: subscriber fell %d events behind", eventBuffer))
			}
			if req.Ctx.ResourceName != "" && ev.Resource != req.Ctx.ResourceName {
				continue
			}
			si := stateInfo(ev.Status)
			si.ResourceName = ev.Resource
			si.EventKind = ev.Kind
			si.Message = ev.Message
			if err := sink.Send(si); err != nil {
				return reply(err)
			}
		}
	}
}

// stateInfo converts a status snapshot into its wire form.
func stateInfo(s Status) netlink.StateInfo {
	st := s.State
	pm := status.Minor{Suspended: st.Susp, AftrIsp: st.AftrIsp, PeerIsp: st.PeerIsp, UserIsp: st.UserIsp}
	si := netlink.StateInfo{
		ResourceName:  s.Name,
		PeerName:      s.PeerName,
		Role:          st.Role.String(),
		PeerRole:      st.Peer.String(),
		ConnState:     st.Conn.String(),
		DiskState:     st.Disk.String(),
		PeerDiskState: st.PDsk.String(),
		Flags:         pm.Flags(),
		NetSend:       s.Counters.NetSend >> 10,
		NetRecv:       s.Counters.NetRecv >> 10,
		DiskRead:      s.Counters.DiskRead >> 10,
		DiskWrite:     s.Counters.DiskWrite >> 10,
		ALWrites:      s.Counters.ALWrites,
		BMWrites:      s.Counters.BMWrites,
		LocalCount:    uint64(max(s.Counters.LocalCount, 0)),
		Pending:       uint64(max(s.Counters.Pending, 0)),
		Unacked:       uint64(max(s.Counters.Unacked, 0)),
		AppPending:    uint64(max(s.Counters.AppPending, 0)),
		Epochs:        uint64(max(s.Counters.Epochs, 0)),
		OutOfSync:     s.OutOfSyncKiB,
		WriteOrdering: string(rune(s.WriteOrdering)),
		NBDClients:    uint32(s.NBDClients),
		KernelDevice:  s.KernelDevice,
		Size:          uint64(s.Size),
		UUIDs:         s.UUIDs,
		RsTotal:       s.RsTotal,
		RsLeft:        s.RsLeft,
		RsWant:        s.RsWant,
		Verify:        st.Conn == replication.VerifyS || st.Conn == replication.VerifyT,
	}
	if s.Minor >= 0 {
		si.Minor = uint32(s.Minor)
	}
	if s.Protocol != 0 {
		si.Protocol = string(rune(s.Protocol))
	}
	return si
}
