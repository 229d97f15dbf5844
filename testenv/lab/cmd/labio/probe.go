package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// A block device served from user space pays, on every request, two
// switches between the client's process and the server's: the kernel
// hands the request to the server, and the reply back to the client.
// Kernel DRBD pays none; its threads borrow whichever address space is
// loaded. The probe measures that price where the benchmark runs, next
// to the price of a switch that keeps the address space (two threads of
// one process) and of a bare system call, so that the report can say
// how much of the gap at queue depth 1 the design itself costs there.

// probeEchoArg is the argument that makes labio the probe's echo child.
const probeEchoArg = "probe-echo"

// probeRequest is the size of the message sent each round trip: an NBD
// request header and a 4 KiB block, as the kernel's nbd client sends a
// 4 KiB write; the echo answers with probeReply bytes, an NBD reply.
const (
	probeRequest = 28 + 4096
	probeReply   = 16
)

// Rounds of each measurement, after a few to warm up.
const (
	probeSyscalls = 20000
	probeTrips    = 1000
	probeWarmup   = 20
)

// runProbe prints one line of key=value pairs: the mean cost of a system
// call, and of a round trip over a socket pair between two threads of
// this process and between this process and a child, in nanoseconds.
func runProbe(w io.Writer) error {
	// Two threads that block in the kernel each hold a P.
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := measureSyscall()
	thread, err := measureTrips(false)
	if err != nil {
		return fmt.Errorf("between threads: %w", err)
	}
	proc, err := measureTrips(true)
	if err != nil {
		return fmt.Errorf("between processes: %w", err)
	}
	_, err = fmt.Fprintf(w, "syscall_ns=%d thread_rtt_ns=%d process_rtt_ns=%d\n", sys.Nanoseconds(), thread.Nanoseconds(), proc.Nanoseconds())
	return err
}

// measureSyscall times getppid(2), about the cheapest system call.
func measureSyscall() time.Duration {
	start := time.Now()
	for range probeSyscalls {
		syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
	}
	return time.Since(start) / probeSyscalls
}

// measureTrips times round trips to an echo over a SOCK_SEQPACKET socket
// pair: in a child process when child is set, else on another thread.
func measureTrips(child bool) (time.Duration, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socketpair: %w", err)
	}
	mine := fds[0]
	defer syscall.Close(mine)
	done := make(chan error, 1)
	if child {
		self, err := os.Executable()
		if err != nil {
			syscall.Close(fds[1])
			return 0, err
		}
		peer := os.NewFile(uintptr(fds[1]), "echo")
		cmd := exec.Command(self, probeEchoArg)
		cmd.ExtraFiles = []*os.File{peer} // fd 3 in the child
		cmd.Stderr = os.Stderr
		err = cmd.Start()
		peer.Close()
		if err != nil {
			return 0, fmt.Errorf("starting the echo: %w", err)
		}
		go func() { done <- cmd.Wait() }()
	} else {
		go func() {
			runtime.LockOSThread()
			defer syscall.Close(fds[1])
			done <- echo(fds[1])
		}()
	}
	req := make([]byte, probeRequest)
	reply := make([]byte, probeReply)
	var start time.Time
	for i := range probeWarmup + probeTrips {
		if i == probeWarmup {
			start = time.Now()
		}
		if err := rawWrite(mine, req); err != nil {
			return 0, err
		}
		if n, err := rawRead(mine, reply); err != nil || n != probeReply {
			return 0, fmt.Errorf("echo answered %d bytes: %v", n, err)
		}
	}
	rtt := time.Since(start) / probeTrips
	// Closing our end ends the echo.
	syscall.Shutdown(mine, syscall.SHUT_RDWR)
	if err := <-done; err != nil {
		return 0, fmt.Errorf("echo: %w", err)
	}
	return rtt, nil
}

// echoChild is the child process's side of measureTrips: it echoes on
// fd 3 until the parent closes its end.
func echoChild() {
	runtime.LockOSThread()
	if err := echo(3); err != nil {
		fmt.Fprintf(os.Stderr, "labio %s: %v\n", probeEchoArg, err)
		os.Exit(1)
	}
}

// echo answers every message on fd with probeReply bytes until the other
// end closes. It uses raw system calls, which block this thread in the
// kernel: the Go scheduler and its poller stay out of the measurement.
func echo(fd int) error {
	buf := make([]byte, probeRequest)
	for {
		n, err := rawRead(fd, buf)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if err := rawWrite(fd, buf[:probeReply]); err != nil {
			if errors.Is(err, syscall.EPIPE) {
				return nil
			}
			return err
		}
	}
}

func rawRead(fd int, b []byte) (int, error) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, fmt.Errorf("read: %w", e)
	}
}

func rawWrite(fd int, b []byte) error {
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		}
		return fmt.Errorf("write: %w", e)
	}
}
