package nbd

// Tests against real NBD clients: nbdinfo, nbdcopy and nbdsh (libnbd-bin,
// python3-libnbd), qemu-io and qemu-img (qemu-utils) and fio. Each test
// skips with a message when its tool is not installed.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTool skips the test unless the named program is installed.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("real-client tests skipped in -short mode")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s)", name, pkg)
	}
	return p
}

// toolEnv is the environment for client tools: /usr/bin comes first so
// that nbdsh finds the system python3 that has the nbd module, not one
// from a user-installed Python.
func toolEnv() []string {
	return append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"), "LIBNBD_DEBUG=0")
}

// run runs a client tool and returns its standard output, failing the test
// if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	// Tools may leave files in their working directory (fio's verify
	// state): keep them out of the source tree.
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// clientTarget is one way to reach the test server.
type clientTarget struct {
	name string
	uri  string // libnbd / qemu URI of export r0
	base string // URI of the server without an export name
}

// startClientServers serves a 64 MiB export r0 on TCP and on a Unix socket.
func startClientServers(t *testing.T) (*memBackend, []clientTarget) {
	t.Helper()
	be := newMemBackend(64 << 20)
	prov := newTestProvider()
	prov.add(Export{Name: "r0", Description: "drbdd test", Backend: be, CanTrim: true, CanZeroes: true, MultiConn: true})
	tcp := startServer(t, prov, nil)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	unix := serveOn(t, l, prov, nil)
	t.Cleanup(func() { t.Logf("server logs: tcp %s unix %s", tcp.logs, unix.logs) })
	return be, []clientTarget{
		{"tcp", "nbd://" + tcp.addr + "/r0", "nbd://" + tcp.addr},
		{"unix", "nbd+unix:///r0?socket=" + sock, "nbd+unix://?socket=" + sock},
	}
}

func TestClientNbdinfo(t *testing.T) {
	nbdinfo := needTool(t, "nbdinfo", "libnbd-bin")
	_, targets := startClientServers(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			var info struct {
				Exports []struct {
					Name        string `json:"export-name"`
					Description string `json:"description"`
					Size        int64  `json:"export-size"`
					ReadOnly    bool   `json:"is_read_only"`
					CanFlush    bool   `json:"can_flush"`
					CanFUA      bool   `json:"can_fua"`
					CanTrim     bool   `json:"can_trim"`
					CanZero     bool   `json:"can_zero"`
					CanMulti    bool   `json:"can_multi_conn"`
					MaxBlock    int64  `json:"block_size_maximum"`
				} `json:"exports"`
			}
			out := run(t, nbdinfo, "--json", tg.uri)
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if len(info.Exports) != 1 {
				t.Fatalf("exports: %s", out)
			}
			e := info.Exports[0]
			if e.Name != "r0" || e.Size != 64<<20 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMulti || e.MaxBlock != MaxBlockSize {
				t.Errorf("nbdinfo: %s", out)
			}
			if e.Description != "drbdd test" {
				t.Errorf("description %q", e.Description)
			}
			// The default export (empty name) is r0, the only one.
			if out := run(t, nbdinfo, "--size", tg.base); strings.TrimSpace(out) != fmt.Sprint(64<<20) {
				t.Errorf("size of default export: %q", out)
			}
			if out := run(t, nbdinfo, "--list", tg.base); !strings.Contains(out, "r0") {
				t.Errorf("--list: %s", out)
			}
		})
	}
}

func TestClientQemuIO(t *testing.T) {
	qemuIO := needTool(t, "qemu-io", "qemu-utils")
	qemuImg := needTool(t, "qemu-img", "qemu-utils")
	be, targets := startClientServers(t)
	for i, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			pat := fmt.Sprintf("0x%02x", 0xa0+i)
			be.takeOps()
			out := run(t, qemuIO, "-f", "raw",
				"-c", "write -P "+pat+" 0 1M",
				"-c", "read -P "+pat+" 0 1M",
				"-c", "write -P 0x11 -f 1M 64k", // FUA
				"-c", "aio_write -P 0x22 2M 64k",
				"-c", "aio_write -P 0x33 3M 64k",
				"-c", "aio_flush",
				"-c", "read -P 0x22 2M 64k",
				"-c", "read -P 0x33 3M 64k",
				"-c", "write -z 1M 64k",
				"-c", "read -P 0 1M 64k",
				"-c", "discard 4M 1M",
				"-c", "flush",
				tg.uri)
			if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
				t.Errorf("qemu-io:\n%s", out)
			}
			if be.at(0) != byte(0xa0+i) || be.at(1<<20) != 0 || be.at(2<<20) != 0x22 {
				t.Errorf("backend contents wrong")
			}
			fua := false
			for _, op := range be.takeOps() {
				if op.op == "write" && op.off == 1<<20 && op.fua {
					fua = true
				}
			}
			if !fua {
				t.Errorf("qemu-io write -f did not reach the backend with FUA")
			}
			// Reads past the end fail cleanly and the connection survives.
			out, _ = runErr(t, qemuIO, "-f", "raw", "-c", "read 64M 4k", "-c", "read -P "+pat+" 0 4k", tg.uri)
			if !strings.Contains(out, "read 4096/4096 bytes at offset 0") {
				t.Errorf("qemu-io after out-of-range read:\n%s", out)
			}
			out = run(t, qemuImg, "info", "--output=json", "--image-opts", "driver=raw,file.driver=nbd,file.export=r0,"+qemuServerOpts(tg))
			if !strings.Contains(out, fmt.Sprintf(`"virtual-size": %d`, 64<<20)) {
				t.Errorf("qemu-img info:\n%s", out)
			}
		})
	}
}

// qemuServerOpts renders the server address of tg as qemu block options.
func qemuServerOpts(tg clientTarget) string {
	if s, ok := strings.CutPrefix(tg.base, "nbd+unix://?socket="); ok {
		return "file.server.type=unix,file.server.path=" + s
	}
	hp := strings.TrimPrefix(tg.base, "nbd://")
	i := strings.LastIndex(hp, ":")
	return "file.server.type=inet,file.server.host=" + hp[:i] + ",file.server.port=" + hp[i+1:]
}

// nbdshScript checks error codes with libnbd's client-side checks off, so
// that bad requests reach the server.
const nbdshScript = `
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
assert size == 64 << 20, size
def expect(want, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == want, "%s%r: errno %s, want %s (%s)" % (f.__name__, args, e.errnum, want, e)
        return
    raise AssertionError("%s%r succeeded, want errno %d" % (f.__name__, args, want))
expect(errno.EINVAL, h.pread, 4096, size - 512)
expect(errno.EINVAL, h.pread, 512, size + 4096)
expect(errno.ENOSPC, h.pwrite, b"x" * 4096, size - 512)
expect(errno.EINVAL, h.trim, 4096, size)
expect(errno.ENOSPC, h.zero, 4096, size - 1)
expect(errno.EINVAL, h.pwrite, b"x" * 512, 0, 1 << 7)
h.pwrite(b"\xab" * 4096, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 8192) == b"\xab" * 4096
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 8192) == bytes(4096)
h.trim(4096, 16384)
h.flush()
assert h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero() and h.can_multi_conn()
h.shutdown()
print("ok")
`

func TestClientNbdsh(t *testing.T) {
	nbdsh := needTool(t, "nbdsh", "python3-libnbd")
	if _, err := runErr(t, nbdsh, "--version"); err != nil {
		t.Skipf("nbdsh does not run (python3 without the nbd module?): %v", err)
	}
	_, targets := startClientServers(t)
	script := filepath.Join(t.TempDir(), "check.py")
	if err := os.WriteFile(script, []byte(nbdshScript), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			// nbdsh -c runs Python with the arguments after it in sys.argv.
			out := run(t, nbdsh, "-c", "sys.argv = ['check', '"+tg.uri+"']; exec(open('"+script+"').read())")
			if strings.TrimSpace(out) != "ok" {
				t.Errorf("nbdsh: %s", out)
			}
		})
	}
}

func TestClientNbdcopy(t *testing.T) {
	nbdcopy := needTool(t, "nbdcopy", "libnbd-bin")
	_, targets := startClientServers(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 64<<20)
	for i := 0; i < len(data); i += 4096 {
		copy(data[i:], fmt.Sprintf("block %d ", i/4096))
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			dst := filepath.Join(dir, tg.name+".img")
			run(t, nbdcopy, "--flush", src, tg.uri)
			run(t, nbdcopy, tg.uri, dst)
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Errorf("copy through the export differs")
			}
		})
	}
}

func TestClientFio(t *testing.T) {
	fio := needTool(t, "fio", "fio")
	if out, _ := runErr(t, fio, "--enghelp=nbd"); !strings.Contains(out, "uri") {
		t.Skipf("fio has no nbd engine: %s", out)
	}
	_, targets := startClientServers(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			for _, job := range [][]string{
				{"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M"},
				{"--rw=write", "--bs=1M", "--iodepth=4", "--size=32M"},
				{"--rw=randrw", "--bs=64k", "--iodepth=8", "--size=16M"},
			} {
				args := append([]string{"--name=verify", "--ioengine=nbd", "--uri=" + tg.uri,
					"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"}, job...)
				run(t, fio, args...)
			}
		})
	}
}
