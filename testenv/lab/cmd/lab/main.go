// Command lab drives drbdd's two-VM lab (package drbdd/testenv/lab); it is
// what scripts/lab.sh runs.
//
//	lab scenario [-nodes a,b] [-keep] [-fresh] [-fio] [-files N]
//	lab bench    [-runtime 15s] [-size 128M] [-kernel-drbd] [-keep]
//	lab up       [-nodes a,b] [-fresh] [-fio]  boot the VMs and leave them running
//	lab run NODE COMMAND...                run a shell command in a VM
//	lab console NODE                       interactive shell on the serial console (Ctrl-] quits)
//	lab status                             list the VMs
//	lab down                               kill the VMs
//
// Every command takes -dir (default $DRBDD_LAB_DIR or /var/tmp/drbdd-lab).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"drbdd/testenv/lab"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "scenario":
		err = scenario(ctx, os.Args[2:])
	case "bench":
		err = benchCmd(ctx, os.Args[2:])
	case "up":
		err = up(ctx, os.Args[2:])
	case "run":
		err = runCmd(ctx, os.Args[2:])
	case "console":
		err = console(os.Args[2:])
	case "status":
		err = status(os.Args[2:])
	case "down":
		err = down(os.Args[2:])
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "lab: unknown command %q\n", os.Args[1])
		usage()
	}
	if err != nil {
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec))
		}
		fmt.Fprintf(os.Stderr, "lab: %v\n", err)
		os.Exit(1)
	}
}

// exitCode passes a command's exit status through.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  lab scenario [-nodes a,b] [-keep] [-fresh] [-fio] [-files N]
  lab bench    [-runtime 15s] [-size 128M] [-kernel-drbd] [-keep]
  lab up       [-nodes a,b] [-fresh] [-fio]
  lab run NODE COMMAND...
  lab console NODE          (Ctrl-] quits)
  lab status
  lab down
every command takes -dir DIR (default $DRBDD_LAB_DIR or /var/tmp/drbdd-lab)
`)
	os.Exit(2)
}

// common flags.
type common struct {
	fs    *flag.FlagSet
	dir   string
	nodes string
	fresh bool
	fio   bool
}

func newFlags(name string, withNodes bool) *common {
	c := &common{fs: flag.NewFlagSet(name, flag.ExitOnError)}
	def := os.Getenv("DRBDD_LAB_DIR")
	if def == "" {
		def = lab.DefaultDir
	}
	c.fs.StringVar(&c.dir, "dir", def, "lab directory")
	if withNodes {
		c.fs.StringVar(&c.nodes, "nodes", "a,b", "node names (one or two, comma separated)")
		c.fs.BoolVar(&c.fresh, "fresh", false, "start from empty disks")
		c.fs.BoolVar(&c.fio, "fio", false, "put fio (and its libraries) into the VMs")
	}
	return c
}

func (c *common) open(ctx context.Context) (*lab.Lab, error) {
	for _, n := range strings.Split(c.nodes, ",") {
		if v, err := lab.OpenVM(filepath.Join(c.dir, n)); err == nil && v.Running() {
			return nil, fmt.Errorf("VM %s is already running (lab down, or lab run/console to use it)", n)
		}
	}
	return lab.New(ctx, lab.LabOptions{
		Dir:   c.dir,
		Nodes: strings.Split(c.nodes, ","),
		Fresh: c.fresh,
		Build: lab.BuildOptions{Logf: logf, Fio: c.fio},
	})
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

// howTo prints how to use VMs left running.
func howTo(l *lab.Lab) {
	fmt.Printf("\nThe VMs keep running (lab directory %s):\n", l.Dir)
	for _, v := range l.VMs {
		c := v.Config()
		fmt.Printf("  %s  %s  disk %s  console log %s/console.log\n", v.Name(), strings.TrimSuffix(c.IP, "/24"), v.DiskPath(), c.Dir)
	}
	env := ""
	if l.Dir != lab.DefaultDir {
		env = "DRBDD_LAB_DIR=" + l.Dir + " "
	}
	fmt.Printf(`
  shell on a node:      %[1]sscripts/lab.sh console a     (serial console; Ctrl-] quits)
  run a command:        %[1]sscripts/lab.sh run a drbdadm status r0
  stop everything:      %[1]sscripts/lab.sh down
`, env)
	fmt.Print(`Inside a node: drbdadm, drbdd (log /var/log/drbdd.log), /etc/drbdd/r0.yaml,
/run/drbdd/status, /dev/vda (the node's disk), /dev/nbd0, mkfs.ext4, e2fsck,
labio (O_DIRECT/O_DSYNC writes), fio (with --fio).
`)
}

func scenario(ctx context.Context, args []string) error {
	c := newFlags("scenario", true)
	keep := c.fs.Bool("keep", false, "leave the VMs running afterwards")
	files := c.fs.Int("files", 300, "files to write with checksums")
	c.fs.Parse(args)
	if c.fs.NArg() != 0 {
		usage()
	}
	start := time.Now()
	l, err := c.open(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("lab: image ready in %v (%s)\n", l.Image.BuildTime.Round(time.Millisecond), l.Image.Package)
	rep, err := lab.RunScenario(ctx, l, lab.ScenarioOptions{Out: os.Stdout, Files: *files})
	fmt.Printf("total %v\n", time.Since(start).Round(time.Millisecond))
	finish(l, *keep)
	fmt.Println(rep.Verdict())
	if err != nil {
		return exitCode(1)
	}
	return nil
}

// finish leaves the VMs running (and says how to use them) or kills them.
func finish(l *lab.Lab, keep bool) {
	if keep {
		l.Close()
		howTo(l)
	} else {
		l.Kill()
	}
}

func benchCmd(ctx context.Context, args []string) error {
	c := newFlags("bench", false)
	keep := c.fs.Bool("keep", false, "leave the VMs running afterwards")
	runtime := c.fs.Duration("runtime", 15*time.Second, "duration of each fio job")
	size := c.fs.String("size", "128M", "region each fio job writes")
	kernel := c.fs.Bool("kernel-drbd", false, "also measure kernel DRBD 8.4 on /dev/drbd0 (downloads drbd-utils)")
	rounds := c.fs.Int("rounds", 1, "rounds of every job on every target, taking turns; the table shows medians")
	c.fs.Parse(args)
	if c.fs.NArg() != 0 {
		usage()
	}
	for _, n := range []string{"a", "b"} {
		if v, err := lab.OpenVM(filepath.Join(c.dir, n)); err == nil && v.Running() {
			return fmt.Errorf("VM %s is already running (lab down first)", n)
		}
	}
	l, err := lab.New(ctx, lab.LabOptions{
		Dir:   c.dir,
		Fresh: true,
		Build: lab.BuildOptions{Logf: logf, Fio: true, DRBDUtils: *kernel},
		VM:    lab.VMConfig{ScratchSize: 256 << 20},
	})
	if err != nil {
		return err
	}
	rep, err := lab.RunBench(ctx, l, lab.BenchOptions{Out: os.Stdout, Runtime: *runtime, Size: *size, KernelDRBD: *kernel, Rounds: *rounds})
	finish(l, *keep)
	if err != nil {
		return err
	}
	if len(rep.Results) == 0 {
		return errors.New("nothing measured")
	}
	return nil
}

func up(ctx context.Context, args []string) error {
	c := newFlags("up", true)
	c.fs.Parse(args)
	l, err := c.open(ctx)
	if err != nil {
		return err
	}
	if err := l.Boot(ctx); err != nil {
		l.Kill()
		return err
	}
	for _, v := range l.VMs {
		fmt.Printf("%s booted in %v\n", v.Name(), v.BootTime().Round(time.Millisecond))
	}
	l.Close()
	howTo(l)
	return nil
}

func runCmd(ctx context.Context, args []string) error {
	c := newFlags("run", false)
	c.fs.Parse(args)
	if c.fs.NArg() < 2 {
		usage()
	}
	v, err := lab.OpenVM(filepath.Join(c.dir, c.fs.Arg(0)))
	if err != nil {
		return err
	}
	defer v.Close()
	var stdin []byte
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&os.ModeCharDevice == 0 {
		if stdin, err = io.ReadAll(os.Stdin); err != nil {
			return err
		}
	}
	r, err := v.Exec(ctx, strings.Join(c.fs.Args()[1:], " "), stdin)
	if err != nil {
		return err
	}
	os.Stdout.WriteString(r.Stdout)
	os.Stderr.WriteString(r.Stderr)
	if r.Code != 0 {
		return exitCode(r.Code)
	}
	return nil
}

func status(args []string) error {
	c := newFlags("status", false)
	c.fs.Parse(args)
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		v, err := lab.OpenVM(filepath.Join(c.dir, e.Name()))
		if err != nil {
			continue
		}
		state := "stopped"
		if v.Running() {
			state = "running"
		}
		fmt.Printf("%s\t%s\t%s\t%s\n", v.Name(), state, strings.TrimSuffix(v.Config().IP, "/24"), v.Dir())
	}
	return nil
}

func down(args []string) error {
	c := newFlags("down", false)
	c.fs.Parse(args)
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if v, err := lab.OpenVM(filepath.Join(c.dir, e.Name())); err == nil && v.Running() {
			v.Kill()
			fmt.Printf("%s killed\n", v.Name())
		}
	}
	return nil
}

// console bridges the terminal to a VM's serial console until Ctrl-].
func console(args []string) error {
	c := newFlags("console", false)
	c.fs.Parse(args)
	if c.fs.NArg() != 1 {
		usage()
	}
	v, err := lab.OpenVM(filepath.Join(c.dir, c.fs.Arg(0)))
	if err != nil {
		return err
	}
	conn, err := net.Dial("unix", v.ConsoleSocket())
	if err != nil {
		return fmt.Errorf("%s: %w (is the VM running?)", v.Name(), err)
	}
	defer conn.Close()
	fmt.Fprintf(os.Stderr, "connected to %s's console; press Enter for a prompt, Ctrl-] to quit\r\n", v.Name())
	fd := int(os.Stdin.Fd())
	if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		raw := *old
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Oflag &^= unix.OPOST
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err == nil {
			defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
		}
	}
	done := make(chan struct{})
	// Console output to the terminal; ends when the connection closes.
	go func() {
		io.Copy(os.Stdout, conn)
		close(done)
	}()
	buf := make([]byte, 256)
	for {
		n, err := os.Stdin.Read(buf)
		if err != nil {
			return nil
		}
		if i := strings.IndexByte(string(buf[:n]), 0x1d); i >= 0 {
			conn.Write(buf[:i])
			fmt.Fprint(os.Stderr, "\r\n")
			return nil
		}
		if _, err := conn.Write(buf[:n]); err != nil {
			return nil
		}
		select {
		case <-done:
			return nil
		default:
		}
	}
}
