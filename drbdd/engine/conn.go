package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"time"

	"drbdd/drbdd/replication"
	"drbdd/netlink"
	"drbdd/protocol"
)

// connection is a resource's link to its peer: the net configuration, the
// listener, and the connector loop that establishes sessions and
// re-establishes them after failures until `disconnect`.
type connection struct {
	r        *Resource
	conf     netlink.NetConf
	peerName string
	// resolveConflicts is DRBD's RESOLVE_CONFLICTS flag: set on the node
	// whose address sorts higher. That node dials; it also wins ties in
	// UUID comparison and concurrent cluster-wide state changes.
	resolveConflicts bool
	// discardMyData is `connect --discard-my-data`: used for the next
	// handshake only.
	discardMyData bool

	listener net.Listener
	// accepted delivers classified incoming sockets; bounded so that a
	// flood of connections cannot queue unbounded memory.
	accepted chan acceptedSocket

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// acceptedSocket is an incoming connection with its first packet read.
type acceptedSocket struct {
	conn net.Conn
	kind protocol.Cmd // PInitialData or PInitialMeta
}

// handshakeTimeout bounds each step of connection setup, so a peer that
// connects and then says nothing cannot stall the connector.
const handshakeTimeout = 10 * time.Second

// Connect configures the network and starts connecting (DRBD_ADM_CONNECT).
func (r *Resource) Connect(ctx context.Context, nc netlink.NetConf, discardMyData bool) error {
	return r.act(ctx, func() error {
		if r.conn != nil {
			return coded(netlink.ErrNetConfigured, fmt.Errorf("%s: already has a net config (use disconnect first)", r.name))
		}
		if nc.MyAddr == "" || nc.PeerAddr == "" {
			return coded(netlink.ErrInvalidRequest, fmt.Errorf("%s: connect needs both addresses", r.name))
		}
		if nc.SharedSecret != "" {
			if err := protocol.CheckCRAMAlg(nc.CramHMACAlg); err != nil {
				return coded(netlink.ErrAuthAlg, fmt.Errorf("%s: cram-hmac-alg %q: %w", r.name, nc.CramHMACAlg, err))
			}
		}
		if discardMyData && r.State().Role == replication.Primary {
			return coded(netlink.ErrDiscard, fmt.Errorf("%s: --discard-my-data not allowed when primary", r.name))
		}
		l, err := net.Listen("tcp", nc.MyAddr)
		if err != nil {
			return coded(netlink.ErrLocalAddr, fmt.Errorf("%s: listen on %s: %w", r.name, nc.MyAddr, err))
		}
		c := &connection{
			r:                r,
			conf:             nc,
			peerName:         nc.PeerName,
			resolveConflicts: nc.MyAddr > nc.PeerAddr,
			discardMyData:    discardMyData,
			listener:         l,
			accepted:         make(chan acceptedSocket, 4),
			done:             make(chan struct{}),
		}
		c.ctx, c.cancel = context.WithCancel(r.d.ctx)
		ns := r.State()
		ns.Conn = replication.Unconnected
		if err := r.setState(ns, true); err != nil {
			l.Close()
			return err
		}
		r.conn = c
		r.netConf = &nc
		r.netConfV.Store(&nc)
		go c.acceptLoop()
		go c.run()
		return nil
	})
}

// Disconnect drops the connection and goes StandAlone (DRBD_ADM_DISCONNECT).
func (r *Resource) Disconnect(ctx context.Context) error {
	return r.act(ctx, func() error { return r.disconnect() })
}

func (r *Resource) disconnect() error {
	c := r.conn
	if c == nil {
		if r.State().Conn == replication.StandAlone {
			return nil
		}
		return &replication.StateError{Result: replication.SSAlreadyStandAlone}
	}
	ns := r.State()
	ns.Conn = replication.Disconnecting
	_ = r.setState(ns, true)
	c.cancel()
	c.listener.Close()
	// The connector loop reports its end through act; keep serving ops.
	r.waitOwner(func() { <-c.done })
	r.conn = nil
	r.netConf = nil
	r.netConfV.Store(nil)
	ns = r.State()
	ns.Conn, ns.Peer, ns.PDsk = replication.StandAlone, replication.RoleUnknown, replication.DUnknown
	ns.PeerIsp = false
	return r.setState(ns, true)
}

// acceptLoop accepts incoming sockets and classifies them by their first
// packet. It stops when the listener is closed.
func (c *connection) acceptLoop() {
	for {
		nc, err := c.listener.Accept()
		if err != nil {
			return
		}
		go func() {
			nc.SetDeadline(time.Now().Add(handshakeTimeout))
			kind, err := protocol.NewConn(nc).ReadInitial()
			if err != nil {
				c.r.logf("%s: dropping incoming connection from %s: %v", c.peerName, nc.RemoteAddr(), err)
				nc.Close()
				return
			}
			nc.SetDeadline(time.Time{})
			select {
			case c.accepted <- acceptedSocket{nc, kind}:
			case <-c.ctx.Done():
				nc.Close()
			case <-time.After(handshakeTimeout):
				nc.Close()
			}
		}()
	}
}

// setConn moves the connection state, logging the DRBD way.
func (c *connection) setConn(cs replication.ConnState) {
	_ = c.r.act(context.Background(), func() error {
		if c.r.conn != c {
			return nil
		}
		ns := c.r.State()
		ns.Conn = cs
		if cs < replication.Connected {
			ns.Peer, ns.PDsk = replication.RoleUnknown, replication.DUnknown
			ns.PeerIsp = false
		}
		return c.r.setState(ns, true)
	})
}

// errStandAlone wraps failures after which DRBD discards the network
// configuration instead of retrying: wrong secret, incompatible dialects,
// split brain, unrelated data.
var errStandAlone = errors.New("giving up")

// run is the connector loop: establish, run the session, tear down, retry.
func (c *connection) run() {
	defer close(c.done)
	r := c.r
	for c.ctx.Err() == nil {
		c.setConn(replication.WFConnection)
		data, meta, dataNC, metaNC, err := c.establish()
		if err != nil {
			if c.ctx.Err() != nil {
				break
			}
			r.logf("%s: connect failed: %v", c.peerName, err)
			if errors.Is(err, errStandAlone) {
				c.goStandAlone()
				return
			}
			c.sleep(time.Second)
			continue
		}
		s := newSession(c, data, meta, dataNC, metaNC)
		end := s.run()
		if c.ctx.Err() != nil {
			break
		}
		r.logf("%s: connection lost: %v", c.peerName, end.err)
		if errors.Is(end.err, errStandAlone) {
			c.goStandAlone()
			return
		}
		c.setConn(end.state)
		c.setConn(replication.Unconnected)
	}
	// Disconnect is under way; it sets the final state.
}

// goStandAlone discards the network configuration, as DRBD does after an
// authentication failure or an unresolved split brain.
func (c *connection) goStandAlone() {
	r := c.r
	c.listener.Close()
	go func() {
		_ = r.act(context.Background(), func() error {
			if r.conn != c {
				return nil
			}
			r.conn = nil
			r.netConf = nil
			r.netConfV.Store(nil)
			ns := r.State()
			ns.Conn, ns.Peer, ns.PDsk = replication.StandAlone, replication.RoleUnknown, replication.DUnknown
			ns.PeerIsp = false
			return r.setState(ns, true)
		})
	}()
}

func (c *connection) sleep(d time.Duration) {
	select {
	case <-c.ctx.Done():
	case <-time.After(d):
	}
}

// establish returns an authenticated pair of data and meta sockets.
//
// Both nodes listen; the node with resolve-conflicts (the higher address)
// also dials. Whichever complete pair appears first is used, so the lower
// node simply waits for the higher one, and a kernel DRBD peer that dials
// us is accepted as well.
func (c *connection) establish() (data, meta *protocol.Conn, dataNC, metaNC net.Conn, err error) {
	closeAll := func() {
		if dataNC != nil {
			dataNC.Close()
		}
		if metaNC != nil {
			metaNC.Close()
		}
	}
	dialed := make(chan [2]net.Conn, 1)
	dialCtx, stopDial := context.WithCancel(c.ctx)
	defer stopDial()
	if c.resolveConflicts {
		go c.dialLoop(dialCtx, dialed)
	}
	for dataNC == nil || metaNC == nil {
		select {
		case <-c.ctx.Done():
			closeAll()
			return nil, nil, nil, nil, c.ctx.Err()
		case pair := <-dialed:
			closeAll()
			dataNC, metaNC = pair[0], pair[1]
		case a := <-c.accepted:
			switch {
			case a.kind == protocol.PInitialData && dataNC == nil:
				dataNC = a.conn
			case a.kind == protocol.PInitialMeta && metaNC == nil:
				metaNC = a.conn
			default:
				// A second socket of the same kind: the newer one wins,
				// the peer restarted its attempt.
				if a.kind == protocol.PInitialData {
					dataNC.Close()
					dataNC = a.conn
				} else {
					metaNC.Close()
					metaNC = a.conn
				}
			}
		}
	}
	stopDial()
	// Drain a pair the dialer may have produced meanwhile.
	select {
	case pair := <-dialed:
		pair[0].Close()
		pair[1].Close()
	default:
	}
	for _, nc := range []net.Conn{dataNC, metaNC} {
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(false)
		}
	}
	data, meta = protocol.NewConn(dataNC), protocol.NewConn(metaNC)
	if err := c.handshakeSockets(data, meta, dataNC); err != nil {
		closeAll()
		return nil, nil, nil, nil, err
	}
	return data, meta, dataNC, metaNC, nil
}

// dialLoop dials data and meta sockets every connect-int until it
// delivers a pair or ctx ends.
func (c *connection) dialLoop(ctx context.Context, out chan<- [2]net.Conn) {
	d := net.Dialer{Timeout: c.conf.ConnectInt}
	for ctx.Err() == nil {
		dataNC, err := d.DialContext(ctx, "tcp", c.conf.PeerAddr)
		if err == nil {
			if err = protocol.NewConn(dataNC).WriteInitial(protocol.PInitialData); err == nil {
				var metaNC net.Conn
				if metaNC, err = d.DialContext(ctx, "tcp", c.conf.PeerAddr); err == nil {
					if err = protocol.NewConn(metaNC).WriteInitial(protocol.PInitialMeta); err == nil {
						select {
						case out <- [2]net.Conn{dataNC, metaNC}:
						default:
							dataNC.Close()
							metaNC.Close()
						}
						return
					}
					metaNC.Close()
				}
			}
			dataNC.Close()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(c.conf.ConnectInt, 2*time.Second)):
		}
	}
}

// handshakeSockets runs the feature exchange and, with a shared secret,
// CRAM-HMAC authentication on the data socket.
func (c *connection) handshakeSockets(data, meta *protocol.Conn, dataNC net.Conn) error {
	dataNC.SetDeadline(time.Now().Add(handshakeTimeout))
	defer dataNC.SetDeadline(time.Time{})
	// Failures before the peer is authenticated never discard the net
	// configuration (DRBD goes StandAlone here): any host that can reach
	// the port could otherwise switch replication off. They are logged and
	// the real peer is waited for.
	version, feats, err := data.ExchangeFeatures(protocol.LocalFeatures(protocol.FeatureTrim | protocol.FeatureWZeroes))
	if err != nil {
		return fmt.Errorf("feature exchange: %w", err)
	}
	meta.SetVersion(version)
	c.r.logf("%s: handshake successful: agreed network protocol version %d, features %s", c.peerName, version, feats)
	if c.conf.SharedSecret != "" {
		if err := data.Authenticate(c.conf.CramHMACAlg, []byte(c.conf.SharedSecret), rand.Reader); err != nil {
			if errors.Is(err, protocol.ErrAuthFailed) {
				return fmt.Errorf("authentication of peer failed (wrong shared-secret?): %w", err)
			}
			return fmt.Errorf("authentication: %w", err)
		}
		c.r.logf("%s: peer authenticated using %d bytes HMAC", c.peerName, len(c.conf.SharedSecret))
	}
	return nil
}
