package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fileBackend is a Backend over a regular file, like nbdkit's file plugin,
// for comparing the two servers on equal terms.
type fileBackend struct {
	f    *os.File
	size int64
}

func (b *fileBackend) Size() int64 { return b.size }

func (b *fileBackend) ReadAt(p []byte, off int64) error {
	_, err := b.f.ReadAt(p, off)
	return err
}

func (b *fileBackend) WriteAt(p []byte, off int64, fua bool) error {
	if _, err := b.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return b.Flush()
	}
	return nil
}

func (b *fileBackend) Flush() error { return unix.Fdatasync(int(b.f.Fd())) }

func (b *fileBackend) Trim(off, length int64, fua bool) error {
	err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil && fua {
		err = b.Flush()
	}
	return err
}

func (b *fileBackend) WriteZeroes(off, length int64, noHole, fua bool) error {
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE)
	if !noHole {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(int(b.f.Fd()), mode, off, length)
	if err == nil && fua {
		err = b.Flush()
	}
	return err
}

// fioResult is the part of fio's JSON output the benchmark reads.
type fioResult struct {
	Jobs []struct {
		Write struct {
			IOPS float64 `json:"iops"`
			BW   float64 `json:"bw"` // KiB/s
			Lat  struct {
				Mean float64 `json:"mean"` // ns
			} `json:"clat_ns"`
		} `json:"write"`
	} `json:"jobs"`
}

// TestBenchVsNbdkit compares this server with nbdkit's file plugin on the
// same backing file, with fio's nbd engine. It is a benchmark, not a
// timed test: run it with NBD_BENCH=1 (NBD_BENCH_RUNTIME=seconds per job,
// default 10) and read the logged ratios.
func TestBenchVsNbdkit(t *testing.T) {
	if os.Getenv("NBD_BENCH") != "1" {
		t.Skip("set NBD_BENCH=1 to compare with nbdkit")
	}
	fio := needTool(t, "fio", "fio")
	nbdkit := needTool(t, "nbdkit", "nbdkit")
	runtime := 10
	if s := os.Getenv("NBD_BENCH_RUNTIME"); s != "" {
		runtime, _ = strconv.Atoi(s)
	}
	dir := os.Getenv("NBD_BENCH_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "nbd-bench.img")
	const size = 1 << 30
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Fatal(err)
	}

	prov := newTestProvider()
	prov.add(Export{Name: "r0", Backend: &fileBackend{f: f, size: size}, CanTrim: true, CanZeroes: true})
	ts := startServer(t, prov, nil)

	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	kit := exec.CommandContext(ctx, nbdkit, "-f", "-i", "127.0.0.1", "-p", port, "-e", "r0", "file", "file="+path)
	kit.Stderr = os.Stderr
	if err := kit.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = kit.Wait() }()
	waitListening(t, "127.0.0.1:"+port)

	jobs := []struct {
		name string
		args []string
	}{
		{"4k-randwrite-qd32", []string{"--rw=randwrite", "--bs=4k", "--iodepth=32"}},
		{"1m-seqwrite-qd8", []string{"--rw=write", "--bs=1M", "--iodepth=8"}},
		{"1m-seqwrite-qd1", []string{"--rw=write", "--bs=1M", "--iodepth=1"}},
		{"4k-randwrite-qd1", []string{"--rw=randwrite", "--bs=4k", "--iodepth=1"}},
	}
	servers := []struct {
		name, uri string
		pid       int
	}{
		{"drbdd", "nbd://" + ts.addr + "/r0", os.Getpid()},
		{"nbdkit", "nbd://127.0.0.1:" + port + "/r0", kit.Process.Pid},
	}
	for _, job := range jobs {
		if only := os.Getenv("NBD_BENCH_JOB"); only != "" && !strings.Contains(job.name, only) {
			continue
		}
		var iops, lat, cpu [2]float64
		for round := range 2 { // alternate to even out drift
			for i, srv := range servers {
				cpu0 := cpuSeconds(t, srv.pid)
				var perf *exec.Cmd
				var perfOut bytes.Buffer
				if os.Getenv("NBD_BENCH_PERF") == "1" {
					// Count the server's system calls and context switches.
					perf = exec.Command("perf", "stat", "-x,", "-e", "task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_pwrite64,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_read,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_nanosleep,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto", "-p", strconv.Itoa(srv.pid))
					perf.Stderr = &perfOut
					if err := perf.Start(); err != nil {
						t.Fatal(err)
					}
				}
				args := append([]string{"--name=" + job.name, "--ioengine=nbd", "--uri=" + srv.uri,
					"--size=1G", "--time_based", fmt.Sprintf("--runtime=%d", runtime/2+runtime%2),
					"--output-format=json"}, job.args...)
				out := run(t, fio, args...)
				var res fioResult
				if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil || len(res.Jobs) == 0 {
					t.Fatalf("fio output: %v\n%s", err, out)
				}
				w := res.Jobs[0].Write
				if perf != nil {
					_ = perf.Process.Signal(os.Interrupt)
					_ = perf.Wait()
					ios := w.IOPS * float64(runtime/2+runtime%2)
					for _, line := range strings.Split(perfOut.String(), "\n") {
						f := strings.Split(line, ",")
						if len(f) > 3 {
							v, _ := strconv.ParseFloat(f[0], 64)
							t.Logf("%s %s: %s per I/O: %.2f", job.name, srv.name, f[2], v/ios)
						}
					}
				}
				iops[i] += w.IOPS / 2
				lat[i] += w.Lat.Mean / 2
				// Server CPU time per I/O: less sensitive to a busy machine
				// than throughput.
				cpu[i] += (cpuSeconds(t, srv.pid) - cpu0) / (w.IOPS * float64(runtime/2+runtime%2)) / 2
				_ = round
			}
		}
		t.Logf("%-18s drbdd %8.0f IOPS %7.1f us/io, %5.1f us CPU/io | nbdkit %8.0f IOPS %7.1f us/io, %5.1f us CPU/io | IOPS ratio %.2f, CPU ratio %.2f",
			job.name, iops[0], lat[0]/1e3, cpu[0]*1e6, iops[1], lat[1]/1e3, cpu[1]*1e6, iops[0]/iops[1], cpu[1]/cpu[0])
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuSeconds returns the user and system CPU time used so far by process
// pid, from /proc/pid/stat.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// nullBackend accepts everything and stores nothing.
type nullBackend struct{ size int64 }

func (b nullBackend) Size() int64                               { return b.size }
func (nullBackend) ReadAt(p []byte, off int64) error            { return nil }
func (nullBackend) WriteAt(p []byte, off int64, fua bool) error { return nil }
func (nullBackend) Flush() error                                { return nil }
func (nullBackend) Trim(off, length int64, fua bool) error      { return nil }
func (nullBackend) WriteZeroes(off, length int64, noHole, fua bool) error {
	return nil
}

// benchPipelined drives b.N requests of one kind through a loopback
// connection with up to qd in flight.
func benchPipelined(b *testing.B, typ uint16, size uint32, qd int) {
	prov := newTestProvider()
	prov.add(Export{Name: "r0", Backend: nullBackend{size: 1 << 30}})
	ts := startServer(b, prov, nil)
	cl := connect(b, ts.addr, "r0")
	_ = cl.c.SetDeadline(time.Time{})
	payload := make([]byte, size)
	if typ != cmdWrite {
		payload = nil
	}
	slots := make(chan struct{}, qd)
	errc := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		var hb []byte
		for i := range b.N {
			slots <- struct{}{}
			off := uint64(i) * uint64(size) % (1 << 30)
			hb = requestHeader{Type: typ, Handle: uint64(i), Offset: off, Length: size}.appendTo(hb[:0])
			if _, err := cl.c.Write(hb); err != nil {
				errc <- err
				return
			}
			if payload != nil {
				if _, err := cl.c.Write(payload); err != nil {
					errc <- err
					return
				}
			}
		}
		errc <- nil
	}()
	data := make([]byte, size)
	for range b.N {
		errno, _ := cl.readReply()
		if errno != 0 {
			b.Fatal(errno)
		}
		if typ == cmdRead {
			cl.readFull(data)
		}
		<-slots
	}
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	cl.disconnect()
}

func BenchmarkWrite4KQD32(b *testing.B) { benchPipelined(b, cmdWrite, 4096, 32) }
func BenchmarkWrite4KQD1(b *testing.B)  { benchPipelined(b, cmdWrite, 4096, 1) }
func BenchmarkWrite1MQD8(b *testing.B)  { benchPipelined(b, cmdWrite, 1<<20, 8) }
func BenchmarkRead4KQD32(b *testing.B)  { benchPipelined(b, cmdRead, 4096, 32) }
func BenchmarkRead1MQD8(b *testing.B)   { benchPipelined(b, cmdRead, 1<<20, 8) }
