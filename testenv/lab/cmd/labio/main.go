// Command labio runs in the lab's VMs. It copies a file into another in
// place with the open flags busybox dd lacks, to issue FUA writes, which
// a filesystem sends for an O_DIRECT|O_DSYNC overwrite of allocated
// blocks:
//
//	labio [-direct] [-dsync] [-sync] [-bs N] SRC DST
//
// DST is opened without truncation (created if missing) and written from
// offset 0 in blocks of -bs bytes (a multiple of 4096 with -direct; the
// last block is padded with zeros).
//
//	labio probe
//
// measures what the VM's CPU charges for a system call and for a round
// trip between two threads and between two processes (see probe.go).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"
	"unsafe"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "probe":
			if err := runProbe(os.Stdout); err != nil {
				fmt.Fprintf(os.Stderr, "labio probe: %v\n", err)
				os.Exit(1)
			}
			return
		case probeEchoArg:
			echoChild()
			return
		}
	}
	direct := flag.Bool("direct", false, "open DST with O_DIRECT")
	dsync := flag.Bool("dsync", false, "open DST with O_DSYNC")
	osync := flag.Bool("sync", false, "open DST with O_SYNC")
	bs := flag.Int("bs", 64<<10, "block size in bytes")
	flag.Parse()
	if flag.NArg() != 2 || *bs <= 0 || (*direct && *bs%4096 != 0) {
		fmt.Fprintln(os.Stderr, "usage: labio [-direct] [-dsync] [-sync] [-bs N] SRC DST")
		os.Exit(2)
	}
	flags := os.O_WRONLY | os.O_CREATE
	if *direct {
		flags |= syscall.O_DIRECT
	}
	if *dsync {
		flags |= syscall.O_DSYNC
	}
	if *osync {
		flags |= os.O_SYNC
	}
	if err := copyInPlace(flag.Arg(0), flag.Arg(1), flags, *bs); err != nil {
		fmt.Fprintf(os.Stderr, "labio: %v\n", err)
		os.Exit(1)
	}
}

// copyInPlace writes src over dst from offset 0 through a 4096-byte
// aligned buffer (O_DIRECT needs one).
func copyInPlace(src, dst string, flags, bs int) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, flags, 0o644)
	if err != nil {
		return err
	}
	raw := make([]byte, bs+4096)
	off := int((4096 - uintptr(unsafe.Pointer(&raw[0]))%4096) % 4096)
	buf := raw[off : off+bs]
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			clear(buf[n:])
			if _, werr := out.Write(buf); werr != nil {
				out.Close()
				return werr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	return out.Close()
}
