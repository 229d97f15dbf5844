// Command drbdd is the drbdd daemon: like DRBD's kernel module it starts
// with no resources and does what drbdadm tells it over its control socket.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"drbdd/drbdd/engine"
	"drbdd/netlink"
)

// shutdownTimeout bounds how long SIGTERM may take to flush and disconnect.
const shutdownTimeout = 30 * time.Second

func main() {
	var controlPath, statusPath string
	cmd := &cobra.Command{
		Use:           "drbdd",
		Short:         "drbdd replicated block device daemon",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(controlPath, statusPath)
		},
	}
	cmd.Flags().StringVar(&controlPath, "control", "/run/drbdd/drbdd.sock", "control socket path")
	cmd.Flags().StringVar(&statusPath, "status-file", "/run/drbdd/status", "/proc/drbd-style status file")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "drbdd: %v\n", err)
		os.Exit(1)
	}
}

// gcPercent keeps the heap close to what is live. Most of drbdd's memory
// is out-of-sync bitmaps (32 MiB per TiB), which hold no pointers and so
// cost the collector almost nothing to scan, while Go's default of 100
// would let the heap grow to twice their size before collecting.
const gcPercent = 25

// defaultProcs is how many CPUs drbdd runs Go code on at once unless the
// GOMAXPROCS environment variable says otherwise: half of them. A
// replicating node shares its CPUs with the application that writes, the
// kernel's TCP and page-cache work and, on a Primary, its NBD client;
// DRBD itself is three kernel threads per resource. With every CPU its
// own, the Go scheduler keeps spinning threads hunting for work and
// hands requests between threads, which on the 2-CPU test host cost
// about a fifth of replicated 4 KiB throughput and a quarter of
// single-node sequential throughput.
func defaultProcs() int { return max(1, runtime.NumCPU()/2) }

func run(controlPath, statusPath string) error {
	keepSysmonAwake()
	debug.SetGCPercent(gcPercent)
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(defaultProcs())
	}
	logger := log.New(os.Stderr, "drbdd: ", log.LstdFlags|log.Lmicroseconds)
	// A debugging aid for performance work: a CPU profile of the whole
	// run, written at clean shutdown.
	if path := os.Getenv("DRBDD_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	l, err := netlink.ListenControl(controlPath)
	if err != nil {
		return err
	}
	d := engine.New(engine.Config{StatusPath: statusPath, Logger: logger})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &netlink.Server{Handlers: d.Handlers(), Logf: logger.Printf}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	logger.Printf("ready: control %s, status %s, running on %d of %d CPUs", controlPath, statusPath, runtime.GOMAXPROCS(0), runtime.NumCPU())
	select {
	case <-ctx.Done():
		logger.Printf("terminating: taking resources down")
	case err := <-served:
		logger.Printf("control socket: %v", err)
	}
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	d.Shutdown(sctx)
	os.Remove(controlPath)
	logger.Printf("stopped")
	return nil
}
