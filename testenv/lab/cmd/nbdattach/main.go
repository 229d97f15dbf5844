// Command nbdattach attaches an NBD export served over TCP or a Unix socket
// (drbdd's nbd-listen) to /dev/nbdX through the kernel's nbd netlink
// family, the way nbd-client does: it runs the newstyle handshake
// (NBD_OPT_GO), then hands the connected socket to the kernel with
// NBD_CMD_CONNECT and exits; the kernel keeps the socket.
//
// It is a lab helper for as long as drbdd does not attach its device by
// itself on promotion.
//
//	nbdattach [-index N] [-timeout D] [-dead-conn D] [-backend ID] ADDRESS EXPORT
//	nbdattach -disconnect N
//	nbdattach -status
//
// ADDRESS is host:port or unix:/path.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"drbdd/netlink"
)

// Protocol constants (NetworkBlockDevice/nbd doc/proto.md).
const (
	magicNBD       = 0x4e42444d41474943
	magicIHaveOpt  = 0x49484156454f5054
	magicOptReply  = 0x0003e889045565a9
	flagFixedNew   = 1 << 0
	flagNoZeroes   = 1 << 1
	optGo          = 7
	repAck         = 1
	repInfo        = 3
	infoExport     = 0
	maxReplyLength = 1 << 20
)

func main() {
	index := flag.Int("index", 0, "device index (/dev/nbdN); -1 lets the kernel pick")
	timeout := flag.Duration("timeout", 0, "kernel request timeout (0: never)")
	deadConn := flag.Duration("dead-conn", 2*time.Minute, "how long the kernel holds I/O when the connection is dead")
	backend := flag.String("backend", "", "backend identifier (default drbdd:EXPORT)")
	disconnect := flag.Int("disconnect", -1, "disconnect /dev/nbdN and exit")
	status := flag.Bool("status", false, "list nbd devices and exit")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: nbdattach [flags] ADDRESS EXPORT | -disconnect N | -status\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k, err := netlink.Open()
	if err != nil {
		fatal(err)
	}
	defer k.Close()
	switch {
	case *status:
		devs, err := k.Status(ctx, netlink.NBDAnyIndex)
		if err != nil {
			fatal(err)
		}
		for _, d := range devs {
			fmt.Printf("nbd%d connected=%v\n", d.Index, d.Connected)
		}
		return
	case *disconnect >= 0:
		if err := k.Disconnect(ctx, *disconnect); err != nil {
			fatal(err)
		}
		return
	}
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	addr, export := flag.Arg(0), flag.Arg(1)
	if *backend == "" {
		*backend = "drbdd:" + export
	}
	c, err := dial(addr)
	if err != nil {
		fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	size, flags, err := handshake(c, export)
	if err != nil {
		fatal(fmt.Errorf("%s: %w", addr, err))
	}
	_ = c.SetDeadline(time.Time{})
	sc, ok := c.(syscall.Conn)
	if !ok {
		fatal(errors.New("connection has no file descriptor"))
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		fatal(err)
	}
	var idx int
	var cerr error
	err = raw.Control(func(fd uintptr) {
		idx, cerr = k.Connect(ctx, netlink.NBDConnectParams{
			Index:       *index,
			Size:        size - size%4096,
			BlockSize:   4096,
			Timeouts:    netlink.NBDTimeouts{Request: *timeout, DeadConn: *deadConn},
			ServerFlags: uint64(flags),
			Sockets:     []int{int(fd)},
			Backend:     *backend,
		})
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		fatal(err)
	}
	// The kernel holds its own reference to the socket.
	c.Close()
	fmt.Printf("/dev/nbd%d\n", idx)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "nbdattach: %v\n", err)
	os.Exit(1)
}

// dial connects to host:port or unix:/path.
func dial(addr string) (net.Conn, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return net.Dial("unix", p)
	}
	return net.Dial("tcp", addr)
}

// handshake runs the fixed newstyle handshake with NBD_OPT_GO and returns
// the export size and transmission flags.
func handshake(c net.Conn, export string) (uint64, uint16, error) {
	var g [18]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		return 0, 0, fmt.Errorf("reading the greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		return 0, 0, errors.New("not a newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(g[16:])
	if sflags&flagFixedNew == 0 {
		return 0, 0, errors.New("server does not speak fixed newstyle")
	}
	cflags := uint32(flagFixedNew)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0) // no information requests
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, magicIHaveOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(data)))
	msg = append(msg, data...)
	if _, err := c.Write(msg); err != nil {
		return 0, 0, err
	}
	var size uint64
	var tflags uint16
	gotExport := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return 0, 0, fmt.Errorf("reading an option reply: %w", err)
		}
		if binary.BigEndian.Uint64(h[0:]) != magicOptReply {
			return 0, 0, errors.New("bad option reply magic")
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > maxReplyLength {
			return 0, 0, fmt.Errorf("option reply of %d bytes", n)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c, body); err != nil {
			return 0, 0, err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return 0, 0, errors.New("server sent no NBD_INFO_EXPORT")
			}
			return size, tflags, nil
		case typ == repInfo:
			if len(body) >= 12 && binary.BigEndian.Uint16(body) == infoExport {
				size = binary.BigEndian.Uint64(body[2:])
				tflags = binary.BigEndian.Uint16(body[10:])
				gotExport = true
			}
		case typ&(1<<31) != 0:
			return 0, 0, fmt.Errorf("server refused export %q: %s", export, body)
		}
	}
}
