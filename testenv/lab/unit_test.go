package lab

// Tests of the lab's host-side logic that need no VM: they run in the fast
// unit run.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"drbdd/testenv/lab/agentproto"
	"golang.org/x/sys/unix"
)

func TestCompareVersions(t *testing.T) {
	names := []string{
		"linux-image-6.1.0-9-cloud-amd64",
		"linux-image-6.1.0-47-cloud-amd64-unsigned",
		"linux-image-6.1.0-47-cloud-amd64",
		"linux-image-6.12.9+deb12-cloud-amd64",
		"linux-image-6.12.117+deb12-cloud-amd64",
		"linux-image-6.12.117+deb12-cloud-amd64-unsigned",
		"linux-image-6.12.100+deb12-cloud-amd64",
	}
	if got := pickNewest(names); got != "linux-image-6.12.117+deb12-cloud-amd64" {
		t.Fatalf("pickNewest = %q", got)
	}
	if got := pickNewest(nil); got != "" {
		t.Fatalf("pickNewest(nil) = %q", got)
	}
	tests := []struct {
		a, b string
		want int
	}{
		{"6.1.0-9", "6.1.0-47", -1},
		{"6.12.117+deb12", "6.1.0-56", 1},
		{"6.12.117+deb12", "6.12.117+deb12", 0},
		{"6.12.9+deb12", "6.12.100+deb12", -1},
	}
	for _, tt := range tests {
		if got := compareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
	if v := kernelVersionOf("linux-image-6.12.117+deb12-cloud-amd64-unsigned"); v != "6.12.117+deb12" {
		t.Errorf("kernelVersionOf = %q", v)
	}
}

func TestModuleNames(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/block/nbd.ko.xz":       "nbd",
		"kernel/lib/lru_cache.ko":              "lru_cache",
		"kernel/drivers/net/virtio-net.ko.zst": "virtio_net",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
	p := filepath.Join(t.TempDir(), "modules.dep")
	os.WriteFile(p, []byte("kernel/drivers/block/drbd/drbd.ko.xz: kernel/lib/lru_cache.ko.xz kernel/lib/libcrc32c.ko.xz\nkernel/lib/lru_cache.ko.xz:\n"), 0o644)
	deps, err := readModulesDep(p)
	if err != nil || len(deps) != 2 || len(deps["kernel/drivers/block/drbd/drbd.ko.xz"]) != 2 {
		t.Fatalf("readModulesDep = %v, %v", deps, err)
	}
}

func TestScenarioHelpers(t *testing.T) {
	y := ResourceYAML([]string{"a", "b"}, 16)
	if strings.Contains(ResourceYAML([]string{"a", "b"}, 0), "al-extents") {
		t.Errorf("ResourceYAML(0) sets al-extents")
	}
	for _, want := range []string{"resource: r0\n", "protocol: C\n", "device: /dev/nbd0\n", "disk:\n  al-extents: 16\n", "  a:\n    address: 10.99.0.1:7789\n", "  b:\n    address: 10.99.0.2:7789\n    disk: /dev/vda\n"} {
		if !strings.Contains(y, want) {
			t.Errorf("resource file lacks %q:\n%s", want, y)
		}
	}
	for cs, want := range map[string]bool{"Connected": true, "SyncSource": true, "PausedSyncT": true, "WFBitMapS": true,
		"WFConnection": false, "StandAlone": false, "NetworkFailure": false, "": false} {
		if isConnected(cs) != want {
			t.Errorf("isConnected(%q) = %v", cs, !want)
		}
	}
	st := " 0: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C r-----\n    ns:0 nr:1234 dw:5 dr:0"
	if n := fieldInt(st, "nr:"); n != 1234 {
		t.Errorf("fieldInt(nr) = %d", n)
	}
	if n := fieldInt(st, "xx:"); n != -1 {
		t.Errorf("fieldInt(missing) = %d", n)
	}
}

// fakeAgent serves the agent protocol on a Unix socket: "echo X" answers
// X, "sleep" never answers until killed, and every answer is preceded by
// a stale response that the client must ignore.
func fakeAgent(t *testing.T, path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var mu sync.Mutex
		send := func(r agentproto.Response) {
			b, _ := json.Marshal(r)
			mu.Lock()
			c.Write(append(b, '\n'))
			mu.Unlock()
		}
		sleeping := map[string]bool{}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req agentproto.Request
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				t.Errorf("bad request line %q", sc.Text())
				return
			}
			send(agentproto.Response{ID: "old-connection-1", Stdout: []byte("stale")})
			switch {
			case req.Kill:
				if sleeping[req.ID] {
					send(agentproto.Response{ID: req.ID, Code: 137})
				}
			case req.Cmd == "":
				send(agentproto.Response{ID: req.ID})
			case req.Cmd == "sleep":
				sleeping[req.ID] = true
			case strings.HasPrefix(req.Cmd, "echo "):
				send(agentproto.Response{ID: req.ID, Stdout: []byte(strings.TrimPrefix(req.Cmd, "echo ") + "\n"), Stderr: req.Stdin})
			case req.Cmd == "fail":
				send(agentproto.Response{ID: req.ID, Code: -1, Err: "exec: no such file"})
			default:
				send(agentproto.Response{ID: req.ID, Code: 3})
			}
		}
	}()
}

func TestAgentClient(t *testing.T) {
	dir := t.TempDir()
	fakeAgent(t, filepath.Join(dir, agentSocket))
	// A VM "booted by another process": its pid file names a live
	// process (this one).
	st, _ := json.Marshal(vmState{Config: VMConfig{Name: "x", Dir: dir}})
	os.WriteFile(filepath.Join(dir, stateFile), st, 0o644)
	os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())), 0o644)
	v, err := OpenVM(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, code, err := v.Run(ctx, fmt.Sprintf("echo %d", i))
			if err != nil || code != 0 || out != fmt.Sprintf("%d\n", i) {
				t.Errorf("Run(echo %d) = %q, %d, %v", i, out, code, err)
			}
		}()
	}
	wg.Wait()
	r, err := v.Exec(ctx, "echo in", []byte("stdin"))
	if err != nil || r.Stderr != "stdin" {
		t.Fatalf("Exec with stdin = %+v, %v", r, err)
	}
	if _, code, err := v.Run(ctx, "exit 3"); err != nil || code != 3 {
		t.Fatalf("exit status: %d, %v", code, err)
	}
	if _, code, err := v.Run(ctx, "fail"); err == nil || code != -1 || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("unstartable command: %d, %v", code, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, _, err := v.Run(cctx, "sleep"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run past its context: %v", err)
	}
	if _, code, err := v.Run(ctx, "echo after"); err != nil || code != 0 {
		t.Fatalf("Run after a cancelled one: %d, %v", code, err)
	}
}

func TestParseFio(t *testing.T) {
	out := `fio: some warning
{"fio version": "fio-3.33", "jobs": [{"jobname": "bench", "error": 0,
 "write": {"io_bytes": 1, "bw_bytes": 1048576, "iops": 256.5, "lat_ns": {"min": 1, "mean": 3900000.0}}}]}`
	iops, bw, lat, err := parseFio(out)
	if err != nil || iops != 256.5 || bw != 1048576 || lat != 3900*time.Microsecond {
		t.Errorf("parseFio = %v %v %v %v", iops, bw, lat, err)
	}
	if _, _, _, err := parseFio("fio: no JSON"); err == nil {
		t.Errorf("parseFio accepted output without JSON")
	}
	c := drbdConf([]string{"a", "b"})
	for _, want := range []string{"protocol C;", "on b {", "address 10.99.0.2:7789;", "disk /dev/vda;", "meta-disk internal;"} {
		if !strings.Contains(c, want) {
			t.Errorf("drbd.conf lacks %q:\n%s", want, c)
		}
	}
}

// TestBenchReportMedians checks that a report over several rounds gives
// each figure's median and each round's ratio.
func TestBenchReportMedians(t *testing.T) {
	q1, seq := BenchJobs[0], BenchJobs[2]
	r := &BenchReport{}
	for i, v := range []struct{ drbdd, drbd, bw float64 }{{100, 200, 30e6}, {300, 250, 10e6}, {200, 400, 20e6}} {
		r.Results = append(r.Results,
			BenchResult{Target: TargetDrbdd, Job: q1.Name, Round: i + 1, IOPS: v.drbdd, Lat: time.Duration(v.drbdd) * time.Microsecond},
			BenchResult{Target: TargetDRBD, Job: q1.Name, Round: i + 1, IOPS: v.drbd},
			BenchResult{Target: TargetDrbdd, Job: seq.Name, Round: i + 1, BW: v.bw},
		)
	}
	got, ok := r.Get(TargetDrbdd, q1.Name)
	if !ok || got.IOPS != 200 || got.Lat != 200*time.Microsecond || got.Round != 0 {
		t.Fatalf("median of drbdd QD1: %+v, %v; want 200 IOPS, 200µs, round 0", got, ok)
	}
	if got, _ := r.Get(TargetDrbdd, seq.Name); got.BW != 20e6 {
		t.Fatalf("median bandwidth %v, want 20e6", got.BW)
	}
	if _, ok := r.Get(TargetRaw, q1.Name); ok {
		t.Fatal("a target never measured has a result")
	}
	for round, want := range map[int]string{1: "0.500", 2: "1.200", 3: "0.500", 4: "-"} {
		if got := r.roundRatio(TargetDrbdd, TargetDRBD, q1, round); got != want {
			t.Errorf("round %d ratio %s, want %s", round, got, want)
		}
	}
	if got := r.roundRatio(TargetDrbdd, TargetDRBD, seq, 1); got != "-" {
		t.Errorf("ratio without a reference: %s, want -", got)
	}
	r.Results = append(r.Results, BenchResult{Target: TargetDrbdd, Job: "x", Round: 1, IOPS: 1}, BenchResult{Target: TargetDrbdd, Job: "x", Round: 2, IOPS: 4})
	if got, _ := r.Get(TargetDrbdd, "x"); got.IOPS != 2.5 {
		t.Errorf("median of two: %v, want 2.5", got.IOPS)
	}
}

// TestParseCosts checks the reading of `labio probe`'s line and of both
// pings' summaries, and that malformed output is refused.
func TestParseCosts(t *testing.T) {
	var c VMCosts
	if err := c.parseProbe("syscall_ns=554 thread_rtt_ns=33261 process_rtt_ns=120144\n"); err != nil {
		t.Fatal(err)
	}
	if c.Syscall != 554 || c.ThreadRTT != 33261 || c.ProcessRTT != 120144 {
		t.Errorf("parseProbe: %+v", c)
	}
	for _, bad := range []string{"", "syscall_ns=1 thread_rtt_ns=2", "syscall_ns=x thread_rtt_ns=2 process_rtt_ns=3", "syscall_ns=0 thread_rtt_ns=2 process_rtt_ns=3"} {
		if err := new(VMCosts).parseProbe(bad); err == nil {
			t.Errorf("parseProbe accepted %q", bad)
		}
	}
	busybox := "PING 10.99.0.2 (10.99.0.2): 56 data bytes\n\n--- 10.99.0.2 ping statistics ---\n20 packets transmitted, 20 packets received, 0% packet loss\nround-trip min/avg/max = 1.463/1.872/2.873 ms\n"
	iputils := "--- 127.0.0.1 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 2051ms\nrtt min/avg/max/mdev = 0.031/0.052/0.071/0.016 ms\n"
	for out, want := range map[string]time.Duration{busybox: 1872 * time.Microsecond, iputils: 52 * time.Microsecond} {
		if got, err := parsePing(out); err != nil || got != want {
			t.Errorf("parsePing = %v, %v; want %v", got, err, want)
		}
	}
	if _, err := parsePing("20 packets transmitted, 0 packets received, 100% packet loss\n"); err == nil {
		t.Errorf("parsePing accepted output without a summary")
	}
	c.PingRTT = 1872 * time.Microsecond
	if s := c.String(); !strings.Contains(s, "between two processes 120.1µs") || !strings.Contains(s, "ping to the peer 1.87ms") {
		t.Errorf("VMCosts.String = %q", s)
	}
}

// TestBenchTable checks the report's table: the ratios against the raw
// disk and kernel DRBD, the StandAlone line and the VM's costs.
func TestBenchTable(t *testing.T) {
	var out strings.Builder
	bn := &bench{o: BenchOptions{Out: &out, Rounds: 1, KernelDRBD: true}, a: &VM{cfg: VMConfig{Name: "a"}}, rep: &BenchReport{
		Costs: &VMCosts{Syscall: 500, ThreadRTT: 30 * time.Microsecond, ProcessRTT: 110 * time.Microsecond, PingRTT: 2 * time.Millisecond},
	}}
	q1 := BenchJobs[0].Name
	for target, iops := range map[string]float64{TargetRaw: 4000, TargetDrbdd: 250, TargetDRBD: 300, TargetDrbddAlone: 1000} {
		bn.rep.Results = append(bn.rep.Results, BenchResult{Target: target, Job: q1, Round: 1, IOPS: iops, Lat: time.Second / time.Duration(iops)})
	}
	bn.table()
	for _, want := range []string{
		"0.062        0.075        0.833", // drbdd/raw, DRBD/raw, drbdd/DRBD at QD1
		"drbdd without its peer (StandAlone), 4k randwrite QD1: 1000 IOPS  lat 1ms; drbdd alone/raw 0.250",
		"a's costs, measured before the jobs: a system call 0.5µs; a round trip over a socket pair between two threads 30.0µs, between two processes 110.0µs",
		"ping to the peer 2.00ms",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestParseRetransSegs reads the retransmission count out of a real
// /proc/net/snmp layout, and refuses text without it.
func TestParseRetransSegs(t *testing.T) {
	snmp := "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 1234\n" +
		"Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n" +
		"Tcp: 1 200 120000 -1 10 5 0 1 2 590089 15381470 30099 0 4 0\n" +
		"Udp: InDatagrams NoPorts\nUdp: 5 6\n"
	n, err := parseRetransSegs(snmp)
	if err != nil || n != 30099 {
		t.Fatalf("parseRetransSegs = %d, %v; want 30099", n, err)
	}
	if _, err := parseRetransSegs("Udp: InDatagrams\nUdp: 5\n"); err == nil {
		t.Fatal("parseRetransSegs accepted text without a Tcp line")
	}
}

// TestLinkSocket makes both ends of a link as the lab does for qemu and
// sends a datagram each way. Run as root, the buffers are the size asked
// for, beyond the system's default.
func TestLinkSocket(t *testing.T) {
	ports := make([]int, 2)
	for i := range ports {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
	}
	a, err := linkSocket(ports[0], ports[1])
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := linkSocket(ports[1], ports[0])
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, p := range [][2]*os.File{{a, b}, {b, a}} {
		msg := []byte("frame from " + p[0].Name())
		if _, err := p[0].Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 100)
		n, err := p[1].Read(got)
		if err != nil || string(got[:n]) != string(msg) {
			t.Fatalf("%s read %q, %v; want %q", p[1].Name(), got[:n], err, msg)
		}
	}
	if os.Geteuid() == 0 {
		sc, err := a.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var rcv int
		sc.Control(func(fd uintptr) { rcv, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
		// Linux reports twice the size set, for its bookkeeping.
		if err != nil || rcv < linkSocketBuffer {
			t.Fatalf("receive buffer %d, %v; want at least %d", rcv, err, linkSocketBuffer)
		}
	}
}
