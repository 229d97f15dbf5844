package lab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"

	"golang.org/x/sys/unix"
)

// linkSocketBuffer is the receive and send buffer of each VM's end of
// the private link. qemu reads the link's UDP socket from its main loop,
// which shares the host's CPUs with both VMs; with the system's default
// buffer (about 200 KiB) a burst of replication traffic overflowed it
// and the host dropped about one packet in 500, so that both DRBD's and
// drbdd's TCP connections spent the benchmark recovering from losses. A
// real network between two DRBD nodes does not drop packets at that
// rate.
const linkSocketBuffer = 4 << 20

// linkFDNumber is the file descriptor number of the link's socket in
// qemu: the first of exec.Cmd.ExtraFiles.
const linkFDNumber = 3

// linkSocket returns a UDP socket bound to 127.0.0.1:local and connected
// to 127.0.0.1:peer, with buffers of linkSocketBuffer bytes, for qemu to
// use as the VM's end of the private link (-netdev dgram with a file
// descriptor). A socket qemu opens itself gets the system's default
// buffers; this one is made larger without changing the system's
// settings for everything else.
func linkSocket(local, peer int) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lab: link socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("udp:%d", local))
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		// Beyond the system's maximum only with CAP_NET_ADMIN; up to it
		// otherwise.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], linkSocketBuffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], linkSocketBuffer)
		}
	}
	loopback := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: local, Addr: loopback}); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: link socket: bind 127.0.0.1:%d: %w", local, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: peer, Addr: loopback}); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: link socket: connect to 127.0.0.1:%d: %w", peer, err)
	}
	return f, nil
}

// qemuHasDgram reports whether qemu has the dgram netdev (qemu 7.2 and
// later), which takes a socket by file descriptor.
var qemuHasDgram = sync.OnceValue(func() bool {
	out, _ := exec.Command("qemu-system-x86_64", "-netdev", "help").CombinedOutput()
	for _, line := range bytes.Split(out, []byte("\n")) {
		if string(bytes.TrimSpace(line)) == "dgram" {
			return true
		}
	}
	return false
})
