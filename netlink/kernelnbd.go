package netlink

// This file is a client for the Linux kernel's own generic netlink family
// "nbd" (include/uapi/linux/nbd-netlink.h, drivers/block/nbd.c), through
// which drbdd attaches a resource to /dev/nbdX. It has nothing to do with the
// drbdadm<->drbdd control plane in control.go apart from sharing the
// netlink attribute encoding.
//
// Facts about the kernel side that shape this client, as read from nbd.c:
//
//   - NBD_CMD_CONNECT and NBD_CMD_STATUS answer with a message of their own
//     (the device index, the device list) and, on failure, with a netlink
//     error. DISCONNECT and RECONFIGURE answer nothing on success, so they
//     are sent with NLM_F_ACK. CONNECT and STATUS are sent without it: the
//     kernel would queue the acknowledgement as a second datagram behind the
//     reply and it would be read as the answer to the next request.
//   - Without NBD_ATTR_BLOCK_SIZE_BYTES the kernel uses 1024-byte blocks.
//   - NBD_ATTR_TIMEOUT (seconds) is stored in the device's tag set and
//     outlives the connection, so it is always sent. With a timeout of 0 the
//     kernel never fails a request for being slow: every 30 seconds it logs
//     "Possible stuck request" and keeps waiting.
//   - NBD_ATTR_DEAD_CONN_TIMEOUT (seconds) is how long new requests wait for
//     NBD_CMD_RECONFIGURE to bring a socket back once every socket is dead;
//     0 fails them at once.
//   - NBD_CMD_RECONFIGURE only replaces sockets the kernel has marked dead.
//     A socket given when none is dead is dropped and the command still
//     succeeds. If the device was connected with a backend identifier, the
//     same identifier must be sent with RECONFIGURE.
//   - NBD_CMD_STATUS reports only index and "connected" (a configuration
//     exists, which includes a device merely held open). The backend
//     identifier is in /sys/block/nbdX/backend.
//   - The kernel multicasts NBD_CMD_LINK_DEAD with NBD_ATTR_INDEX on the
//     group "nbd_mc_group" when it marks a socket dead on its own (the server
//     end closed, a send failed, a timeout fired), not when asked to
//     disconnect.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/genetlink"
	mnl "github.com/mdlayher/netlink"
	"github.com/pmorjan/kmod"
)

// Names and numbers of the kernel's nbd generic netlink family.
const (
	// NBDFamilyName is the name of the kernel's nbd family.
	NBDFamilyName = "nbd"
	// NBDMulticastGroup is the family's multicast group, which carries
	// NBD_CMD_LINK_DEAD.
	NBDMulticastGroup = "nbd_mc_group"
	// nbdGenlVersion is NBD_GENL_VERSION.
	nbdGenlVersion = 1
	// nbdModule is the kernel module that registers the family.
	nbdModule = "nbd"
)

// Commands of the nbd family (NBD_CMD_*).
const (
	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4
	nbdCmdStatus      = 5
)

// Top-level attributes (NBD_ATTR_*).
const (
	nbdAttrIndex             = 1  // u32
	nbdAttrSizeBytes         = 2  // u64
	nbdAttrBlockSizeBytes    = 3  // u64
	nbdAttrTimeout           = 4  // u64, seconds
	nbdAttrServerFlags       = 5  // u64, NBD_FLAG_*
	nbdAttrClientFlags       = 6  // u64, NBD_CFLAG_*
	nbdAttrSockets           = 7  // nested list of nbdSockItem
	nbdAttrDeadConnTimeout   = 8  // u64, seconds
	nbdAttrDeviceList        = 9  // nested list of nbdDeviceItem
	nbdAttrBackendIdentifier = 10 // string
)

// Nested attributes of NBD_ATTR_SOCKETS and NBD_ATTR_DEVICE_LIST.
const (
	nbdSockItem        = 1 // NBD_SOCK_ITEM, nested
	nbdSockFD          = 1 // NBD_SOCK_FD, u32
	nbdDeviceItem      = 1 // NBD_DEVICE_ITEM, nested
	nbdDeviceIndex     = 1 // NBD_DEVICE_INDEX, u32
	nbdDeviceConnected = 2 // NBD_DEVICE_CONNECTED, u8
)

// Client flags (NBD_ATTR_CLIENT_FLAGS).
const (
	// NBDClientDestroyOnDisconnect (NBD_CFLAG_DESTROY_ON_DISCONNECT) makes
	// the kernel delete /dev/nbdX once it is disconnected and closed.
	NBDClientDestroyOnDisconnect uint64 = 1 << 0
	// NBDClientDisconnectOnClose (NBD_CFLAG_DISCONNECT_ON_CLOSE) makes the
	// kernel disconnect the device when its last opener closes it.
	NBDClientDisconnectOnClose uint64 = 1 << 1
)

// Limits and defaults.
const (
	// NBDAnyIndex asks NBD_CMD_CONNECT to pick an unused device, and
	// NBD_CMD_STATUS to list every device.
	NBDAnyIndex = -1
	// NBDDefaultBlockSize is the block size sent when none is given. The
	// kernel's own default is 1024, which costs ext4 and the page cache.
	NBDDefaultBlockSize = 4096
	// NBDMaxSockets bounds the sockets of one CONNECT or RECONFIGURE.
	NBDMaxSockets = 64
	// NBDMaxBackendLen bounds the backend identifier.
	NBDMaxBackendLen = 256
	// NBDMaxDevices bounds the devices a STATUS reply may list.
	NBDMaxDevices = 1 << 16
	// maxNBDIndex is the largest index the kernel accepts (MINORMASK
	// shifted by the smallest partition shift).
	maxNBDIndex = 1<<20 - 1
	// nbdDefaultRequestTimeout bounds one netlink round trip when the
	// caller's context has no deadline.
	nbdDefaultRequestTimeout = 30 * time.Second
)

// ErrNBDFamilyMissing reports that the kernel has no nbd family and the nbd
// module could not be loaded.
var ErrNBDFamilyMissing = errors.New("netlink: the kernel's nbd generic netlink family is not available")

// NBDTimeouts are the kernel's two timeouts for a device.
type NBDTimeouts struct {
	// Request is NBD_ATTR_TIMEOUT: how long a request may go unanswered
	// before the kernel gives up on its socket. 0 means never: the kernel
	// only logs stuck requests. Sent in whole seconds, rounded up.
	Request time.Duration
	// DeadConn is NBD_ATTR_DEAD_CONN_TIMEOUT: how long I/O waits for
	// NBD_CMD_RECONFIGURE once every socket is dead, instead of failing.
	// Sent in whole seconds, rounded up.
	DeadConn time.Duration
}

// NBDConnectParams are the arguments of NBD_CMD_CONNECT.
type NBDConnectParams struct {
	// Index is the device to attach (/dev/nbd<Index>), or NBDAnyIndex to
	// let the kernel pick an unused one. Note that 0 means /dev/nbd0.
	Index int
	// Size is the device size in bytes. It must be a multiple of
	// BlockSize.
	Size uint64
	// BlockSize is the logical and physical block size in bytes, a power
	// of two from 512 to the page size; 0 means NBDDefaultBlockSize.
	BlockSize uint64
	// Timeouts are sent as given (a zero Request timeout included).
	Timeouts NBDTimeouts
	// ServerFlags are the NBD transmission flags (NBD_FLAG_HAS_FLAGS,
	// SEND_FLUSH, SEND_FUA, SEND_TRIM, ...), as nbd.Export.TransmissionFlags
	// returns them.
	ServerFlags uint64
	// ClientFlags are NBDClient* flags. drbdd sends none: the device node
	// named in the resource file must outlive a disconnect (so no
	// DESTROY_ON_DISCONNECT, which would also race a quick re-attach with
	// the asynchronous removal), and only drbdd decides when to disconnect
	// (so no DISCONNECT_ON_CLOSE, which an unmount would trigger).
	ClientFlags uint64
	// Sockets are the file descriptors, in the calling process, of
	// connected stream sockets whose other ends speak the NBD transmission
	// phase. The kernel takes its own reference; the caller may close
	// them once Connect returns.
	Sockets []int
	// Backend is NBD_ATTR_BACKEND_IDENTIFIER, shown in
	// /sys/block/nbdX/backend and required by later RECONFIGUREs. Empty
	// means none.
	Backend string
}

// NBDReconfigureParams are the arguments of NBD_CMD_RECONFIGURE.
type NBDReconfigureParams struct {
	// Index is the device.
	Index int
	// Backend must equal the identifier the device was connected with,
	// if it was connected with one.
	Backend string
	// Sockets replace dead sockets, one each. Sockets beyond the number
	// of dead ones are silently dropped by the kernel (see nbd.c).
	Sockets []int
	// Timeouts, if not nil, replace the device's timeouts.
	Timeouts *NBDTimeouts
}

// NBDDeviceStatus is one device of an NBD_CMD_STATUS reply.
type NBDDeviceStatus struct {
	// Index is the device number: /dev/nbd<Index>.
	Index int
	// Connected is the kernel's NBD_DEVICE_CONNECTED: the device has a
	// configuration. That is true while it is attached, and also for a
	// moment whenever an unattached device is held open.
	Connected bool
}

// genlConn is the part of *genetlink.Conn that KernelNBD uses, so that tests
// can stand in for operations genltest does not emulate (JoinGroup).
type genlConn interface {
	GetFamily(name string) (genetlink.Family, error)
	Execute(m genetlink.Message, family uint16, flags mnl.HeaderFlags) ([]genetlink.Message, error)
	Receive() ([]genetlink.Message, []mnl.Message, error)
	JoinGroup(group uint32) error
	SetDeadline(t time.Time) error
	Close() error
}

// KernelNBD is a client of the kernel's nbd generic netlink family. Its
// methods may be called concurrently; requests are sent one at a time.
type KernelNBD struct {
	dial   func() (genlConn, error) // opens another connection (WatchLinkDead)
	family genetlink.Family

	// mu serializes requests on c, so that a deadline set for one request
	// applies to it alone.
	mu     sync.Mutex
	c      genlConn
	closed bool // guarded by mu
}

// Open connects to the kernel's nbd family. If the family is not registered
// it loads the nbd module (with pmorjan/kmod, which needs modules.dep for
// the running kernel) and tries again. It needs CAP_SYS_ADMIN for every
// command but STATUS.
func Open() (*KernelNBD, error) {
	return openKernelNBD(dialGenl, loadNBDModule)
}

// dialGenl opens a generic netlink socket.
func dialGenl() (genlConn, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// loadNBDModule loads the nbd module and its dependencies.
func loadNBDModule() error {
	k, err := kmod.New()
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	return k.Load(nbdModule, "", 0)
}

// openKernelNBD is Open with the connection and module loader given.
func openKernelNBD(dial func() (genlConn, error), load func() error) (*KernelNBD, error) {
	c, err := dial()
	if err != nil {
		return nil, fmt.Errorf("netlink: dialing generic netlink: %w", err)
	}
	f, err := c.GetFamily(NBDFamilyName)
	if errors.Is(err, os.ErrNotExist) && load != nil {
		if lerr := load(); lerr != nil {
			c.Close()
			return nil, fmt.Errorf("%w: loading module %s: %v", ErrNBDFamilyMissing, nbdModule, lerr)
		}
		f, err = c.GetFamily(NBDFamilyName)
	}
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNBDFamilyMissing
		}
		return nil, fmt.Errorf("netlink: resolving family %q: %w", NBDFamilyName, err)
	}
	return &KernelNBD{dial: dial, family: f, c: c}, nil
}

// Family returns the family as the kernel described it.
func (k *KernelNBD) Family() genetlink.Family { return k.family }

// Close closes the connection. A WatchLinkDead in progress is not affected:
// it has its own connection and ends with its context.
func (k *KernelNBD) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if k.c == nil {
		return nil
	}
	return k.c.Close()
}

// Connect sends NBD_CMD_CONNECT and returns the index of the attached
// device, which the kernel reports (useful with NBDAnyIndex).
func (k *KernelNBD) Connect(ctx context.Context, p NBDConnectParams) (int, error) {
	b, err := encodeNBDConnect(p)
	if err != nil {
		return -1, err
	}
	msgs, err := k.execute(ctx, nbdCmdConnect, b, mnl.Request)
	if err != nil {
		return -1, nbdOpError("connect", p.Index, err)
	}
	idx, err := decodeNBDConnectReply(msgs)
	if err != nil {
		return -1, err
	}
	if p.Index != NBDAnyIndex && idx != p.Index {
		return -1, fmt.Errorf("netlink: nbd connect: asked for nbd%d, kernel attached nbd%d", p.Index, idx)
	}
	return idx, nil
}

// Disconnect sends NBD_CMD_DISCONNECT. The kernel sends NBD_CMD_DISC on
// each socket, shuts the sockets down, fails the requests still in flight
// with EIO and waits for its receive threads. It does not wait for the
// device to be closed by its users.
func (k *KernelNBD) Disconnect(ctx context.Context, index int) error {
	b, err := encodeNBDIndex(index)
	if err != nil {
		return err
	}
	if _, err := k.execute(ctx, nbdCmdDisconnect, b, mnl.Request|mnl.Acknowledge); err != nil {
		return nbdOpError("disconnect", index, err)
	}
	return nil
}

// Reconfigure sends NBD_CMD_RECONFIGURE: new sockets in place of dead ones
// and, optionally, new timeouts.
func (k *KernelNBD) Reconfigure(ctx context.Context, p NBDReconfigureParams) error {
	b, err := encodeNBDReconfigure(p)
	if err != nil {
		return err
	}
	if _, err := k.execute(ctx, nbdCmdReconfigure, b, mnl.Request|mnl.Acknowledge); err != nil {
		return nbdOpError("reconfigure", p.Index, err)
	}
	return nil
}

// Status sends NBD_CMD_STATUS for one device, or for every device if index
// is NBDAnyIndex. A device that does not exist is simply absent from the
// result.
func (k *KernelNBD) Status(ctx context.Context, index int) ([]NBDDeviceStatus, error) {
	var b []byte
	if index != NBDAnyIndex {
		var err error
		if b, err = encodeNBDIndex(index); err != nil {
			return nil, err
		}
	}
	msgs, err := k.execute(ctx, nbdCmdStatus, b, mnl.Request)
	if err != nil {
		return nil, nbdOpError("status", index, err)
	}
	return decodeNBDStatusReply(msgs)
}

// WatchLinkDead joins the family's multicast group on a connection of its
// own and calls fn, on the calling goroutine, with the device index of each
// NBD_CMD_LINK_DEAD until ctx is done. It returns nil when ctx is done and
// the error otherwise. fn should return quickly: notifications arriving
// while it runs queue up in the socket, and the kernel drops them once the
// socket buffer is full.
func (k *KernelNBD) WatchLinkDead(ctx context.Context, fn func(index int)) error {
	var gid uint32
	found := false
	for _, g := range k.family.Groups {
		if g.Name == NBDMulticastGroup {
			gid, found = g.ID, true
		}
	}
	if !found {
		return fmt.Errorf("netlink: nbd family has no multicast group %q", NBDMulticastGroup)
	}
	c, err := k.dial()
	if err != nil {
		return fmt.Errorf("netlink: dialing generic netlink: %w", err)
	}
	// Closing the connection is what ends a Receive blocked in the kernel.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if stop() {
			c.Close()
		}
	}()
	if err := c.JoinGroup(gid); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("netlink: joining %s: %w", NBDMulticastGroup, err)
	}
	for {
		msgs, _, err := c.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("netlink: nbd multicast: %w", err)
		}
		for _, m := range msgs {
			if idx, ok := decodeNBDLinkDead(m); ok {
				fn(idx)
			}
		}
	}
}

// execute sends one command and returns the replies.
func (k *KernelNBD) execute(ctx context.Context, cmd uint8, attrs []byte, flags mnl.HeaderFlags) ([]genetlink.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, errors.New("netlink: KernelNBD is closed")
	}
	if k.c == nil {
		c, err := k.dial()
		if err != nil {
			return nil, fmt.Errorf("netlink: dialing generic netlink: %w", err)
		}
		k.c = c
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(nbdDefaultRequestTimeout)
	}
	// Deadlines are best effort: a test connection may not support them.
	_ = k.c.SetDeadline(deadline)
	// Cancelling ctx moves the deadline into the past, which ends a
	// Receive blocked in the kernel. finished keeps a late cancellation
	// from touching the deadline of the next request.
	var (
		dlMu     sync.Mutex
		finished bool
	)
	stop := context.AfterFunc(ctx, func() {
		dlMu.Lock()
		defer dlMu.Unlock()
		if !finished {
			_ = k.c.SetDeadline(time.Unix(1, 0))
		}
	})
	msgs, err := k.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: nbdGenlVersion},
		Data:   attrs,
	}, k.family.ID, flags)
	stop()
	dlMu.Lock()
	finished = true
	dlMu.Unlock()
	_ = k.c.SetDeadline(time.Time{})
	if err != nil && (ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)) {
		// The kernel may still answer the abandoned request; its reply
		// must not be taken for the answer to the next one.
		k.c.Close()
		k.c = nil
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return msgs, err
}

// nbdOpError names the command and device in a kernel error.
func nbdOpError(op string, index int, err error) error {
	if index == NBDAnyIndex {
		return fmt.Errorf("netlink: nbd %s: %w", op, err)
	}
	return fmt.Errorf("netlink: nbd %s nbd%d: %w", op, index, err)
}

// checkNBDIndex validates a device index to be sent as a u32.
func checkNBDIndex(index int) error {
	if index < 0 || index > maxNBDIndex {
		return fmt.Errorf("netlink: nbd device index %d out of range 0..%d", index, maxNBDIndex)
	}
	return nil
}

// nbdSeconds converts a timeout to the kernel's whole seconds, rounding up
// so that a short positive timeout never becomes "never".
func nbdSeconds(d time.Duration) (uint64, error) {
	if d < 0 {
		return 0, fmt.Errorf("netlink: negative nbd timeout %v", d)
	}
	return uint64((d + time.Second - 1) / time.Second), nil
}

// encodeNBDSockets appends NBD_ATTR_SOCKETS.
func encodeNBDSockets(ae *mnl.AttributeEncoder, fds []int) error {
	if len(fds) > NBDMaxSockets {
		return fmt.Errorf("netlink: %d nbd sockets exceed the limit of %d", len(fds), NBDMaxSockets)
	}
	for _, fd := range fds {
		if fd < 0 || fd > math.MaxInt32 {
			return fmt.Errorf("netlink: invalid socket descriptor %d", fd)
		}
	}
	ae.Nested(nbdAttrSockets, func(nae *mnl.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(nbdSockItem, func(sae *mnl.AttributeEncoder) error {
				sae.Uint32(nbdSockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
	return nil
}

// encodeNBDTimeouts appends NBD_ATTR_TIMEOUT and NBD_ATTR_DEAD_CONN_TIMEOUT.
func encodeNBDTimeouts(ae *mnl.AttributeEncoder, t NBDTimeouts) error {
	req, err := nbdSeconds(t.Request)
	if err != nil {
		return err
	}
	dead, err := nbdSeconds(t.DeadConn)
	if err != nil {
		return err
	}
	ae.Uint64(nbdAttrTimeout, req)
	ae.Uint64(nbdAttrDeadConnTimeout, dead)
	return nil
}

// checkNBDBackend validates a backend identifier.
func checkNBDBackend(s string) error {
	if len(s) > NBDMaxBackendLen {
		return fmt.Errorf("netlink: nbd backend identifier of %d bytes exceeds the limit of %d", len(s), NBDMaxBackendLen)
	}
	if strings.ContainsAny(s, "\x00\n") {
		return errors.New("netlink: nbd backend identifier contains a NUL or newline")
	}
	return nil
}

// encodeNBDConnect encodes the attributes of NBD_CMD_CONNECT.
func encodeNBDConnect(p NBDConnectParams) ([]byte, error) {
	if p.Index != NBDAnyIndex {
		if err := checkNBDIndex(p.Index); err != nil {
			return nil, err
		}
	}
	bs := p.BlockSize
	if bs == 0 {
		bs = NBDDefaultBlockSize
	}
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("netlink: nbd block size %d is not a power of two from 512 to 65536", bs)
	}
	if p.Size == 0 || p.Size%bs != 0 || p.Size > math.MaxInt64 {
		return nil, fmt.Errorf("netlink: nbd size %d is not a positive multiple of the block size %d", p.Size, bs)
	}
	if len(p.Sockets) == 0 {
		return nil, errors.New("netlink: nbd connect needs at least one socket")
	}
	if err := checkNBDBackend(p.Backend); err != nil {
		return nil, err
	}
	ae := mnl.NewAttributeEncoder()
	if p.Index != NBDAnyIndex {
		ae.Uint32(nbdAttrIndex, uint32(p.Index))
	}
	ae.Uint64(nbdAttrSizeBytes, p.Size)
	ae.Uint64(nbdAttrBlockSizeBytes, bs)
	if err := encodeNBDTimeouts(ae, p.Timeouts); err != nil {
		return nil, err
	}
	ae.Uint64(nbdAttrServerFlags, p.ServerFlags)
	ae.Uint64(nbdAttrClientFlags, p.ClientFlags)
	if err := encodeNBDSockets(ae, p.Sockets); err != nil {
		return nil, err
	}
	if p.Backend != "" {
		ae.String(nbdAttrBackendIdentifier, p.Backend)
	}
	return ae.Encode()
}

// encodeNBDIndex encodes a lone NBD_ATTR_INDEX (DISCONNECT, STATUS).
func encodeNBDIndex(index int) ([]byte, error) {
	if err := checkNBDIndex(index); err != nil {
		return nil, err
	}
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, uint32(index))
	return ae.Encode()
}

// encodeNBDReconfigure encodes the attributes of NBD_CMD_RECONFIGURE.
func encodeNBDReconfigure(p NBDReconfigureParams) ([]byte, error) {
	if err := checkNBDIndex(p.Index); err != nil {
		return nil, err
	}
	if err := checkNBDBackend(p.Backend); err != nil {
		return nil, err
	}
	if len(p.Sockets) == 0 && p.Timeouts == nil {
		return nil, errors.New("netlink: nbd reconfigure with neither sockets nor timeouts")
	}
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, uint32(p.Index))
	if p.Backend != "" {
		ae.String(nbdAttrBackendIdentifier, p.Backend)
	}
	if p.Timeouts != nil {
		if err := encodeNBDTimeouts(ae, *p.Timeouts); err != nil {
			return nil, err
		}
	}
	if len(p.Sockets) > 0 {
		if err := encodeNBDSockets(ae, p.Sockets); err != nil {
			return nil, err
		}
	}
	return ae.Encode()
}

// decodeNBDConnectReply returns the index carried by a CONNECT reply.
func decodeNBDConnectReply(msgs []genetlink.Message) (int, error) {
	if len(msgs) != 1 {
		return -1, fmt.Errorf("netlink: nbd connect: %d reply messages, want 1", len(msgs))
	}
	ad, err := mnl.NewAttributeDecoder(msgs[0].Data)
	if err != nil {
		return -1, fmt.Errorf("netlink: nbd connect reply: %w", err)
	}
	idx := int64(-1)
	for ad.Next() {
		if ad.Type() == nbdAttrIndex {
			idx = int64(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return -1, fmt.Errorf("netlink: nbd connect reply: %w", err)
	}
	if idx < 0 || idx > maxNBDIndex {
		return -1, errors.New("netlink: nbd connect reply carries no valid device index")
	}
	return int(idx), nil
}

// decodeNBDStatusReply decodes the device list of a STATUS reply.
func decodeNBDStatusReply(msgs []genetlink.Message) ([]NBDDeviceStatus, error) {
	if len(msgs) != 1 {
		return nil, fmt.Errorf("netlink: nbd status: %d reply messages, want 1", len(msgs))
	}
	ad, err := mnl.NewAttributeDecoder(msgs[0].Data)
	if err != nil {
		return nil, fmt.Errorf("netlink: nbd status reply: %w", err)
	}
	devs := []NBDDeviceStatus{}
	for ad.Next() {
		if ad.Type() != nbdAttrDeviceList {
			continue
		}
		ad.Nested(func(lad *mnl.AttributeDecoder) error {
			for lad.Next() {
				if lad.Type() != nbdDeviceItem {
					return fmt.Errorf("unexpected attribute %d in the device list", lad.Type())
				}
				if len(devs) >= NBDMaxDevices {
					return fmt.Errorf("more than %d devices", NBDMaxDevices)
				}
				d := NBDDeviceStatus{Index: -1}
				lad.Nested(func(dad *mnl.AttributeDecoder) error {
					for dad.Next() {
						switch dad.Type() {
						case nbdDeviceIndex:
							d.Index = int(dad.Uint32())
						case nbdDeviceConnected:
							d.Connected = dad.Uint8() != 0
						}
					}
					return dad.Err()
				})
				if d.Index < 0 || d.Index > maxNBDIndex {
					return errors.New("device item without a valid index")
				}
				devs = append(devs, d)
			}
			return lad.Err()
		})
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("netlink: nbd status reply: %w", err)
	}
	return devs, nil
}

// decodeNBDLinkDead reports the index of a LINK_DEAD notification; ok is
// false for any other message.
func decodeNBDLinkDead(m genetlink.Message) (index int, ok bool) {
	if m.Header.Command != nbdCmdLinkDead {
		return 0, false
	}
	ad, err := mnl.NewAttributeDecoder(m.Data)
	if err != nil {
		return 0, false
	}
	index = -1
	for ad.Next() {
		if ad.Type() == nbdAttrIndex {
			index = int(ad.Uint32())
		}
	}
	if ad.Err() != nil || index < 0 || index > maxNBDIndex {
		return 0, false
	}
	return index, true
}
