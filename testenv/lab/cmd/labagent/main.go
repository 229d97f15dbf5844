// Command labagent runs inside each lab VM: it serves the virtio-serial
// port named agentproto.PortName, runs each requested shell command in its
// own process group and writes back its output and exit status (see
// package agentproto). busybox init respawns it if it exits.
//
// The port outlives host connections: while no host is connected, reads
// return end-of-file and writes block, so the agent polls for the next
// connection instead of exiting.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"drbdd/testenv/lab/agentproto"
)

func main() {
	log.SetPrefix("labagent: ")
	log.SetFlags(0)
	path, err := findPort(agentproto.PortName)
	if err != nil {
		log.Fatal(err)
	}
	port, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		log.Fatal(err)
	}
	a := &agent{out: port, running: make(map[string]*exec.Cmd)}
	a.serve(port)
}

// findPort returns the device node of the virtio-serial port called name.
func findPort(name string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + filepath.Base(filepath.Dir(n)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %q", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agent runs requests. Each runs on its own goroutine, which ends when its
// command has exited and its response is written.
type agent struct {
	outMu sync.Mutex // serializes response lines
	out   io.Writer

	mu      sync.Mutex           // guards running
	running map[string]*exec.Cmd // started commands by request ID
}

// serve reads requests until the port fails.
func (a *agent) serve(port io.Reader) {
	r := bufio.NewReaderSize(port, 1<<20)
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		switch {
		case err == nil:
			a.handle(bytes.TrimSpace(line))
			line = line[:0]
		case errors.Is(err, bufio.ErrBufferFull):
			if len(line) > agentproto.MaxLine {
				log.Printf("dropping a request line longer than %d bytes", agentproto.MaxLine)
				line = line[:0]
				// Skip to the end of the line.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = r.ReadSlice('\n')
				}
			}
		case errors.Is(err, io.EOF):
			// No host connected: a partial line belongs to a host that
			// went away.
			line = line[:0]
			time.Sleep(100 * time.Millisecond)
		default:
			log.Fatalf("reading the port: %v", err)
		}
	}
}

// handle starts one request.
func (a *agent) handle(line []byte) {
	if len(line) == 0 {
		return
	}
	var req agentproto.Request
	if err := json.Unmarshal(line, &req); err != nil {
		log.Printf("bad request line: %v", err)
		return
	}
	switch {
	case req.Kill:
		a.kill(req.ID)
	case req.Cmd == "":
		a.reply(agentproto.Response{ID: req.ID})
	default:
		go a.run(req)
	}
}

// kill kills the process group of a running request.
func (a *agent) kill(id string) {
	a.mu.Lock()
	cmd := a.running[id]
	a.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// limitedBuffer keeps the first agentproto.MaxOutput bytes written to it.
type limitedBuffer struct {
	mu        sync.Mutex
	b         bytes.Buffer
	truncated bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	room := agentproto.MaxOutput - l.b.Len()
	if len(p) > room {
		l.truncated = true
		l.b.Write(p[:max(room, 0)])
	} else {
		l.b.Write(p)
	}
	return len(p), nil
}

// run runs one command and writes its response.
func (a *agent) run(req agentproto.Request) {
	cmd := exec.Command("/bin/sh", "-c", req.Cmd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = []string{"PATH=/sbin:/bin:/usr/sbin:/usr/bin", "HOME=/root", "TERM=dumb", "LANG=C"}
	cmd.Dir = "/root"
	var stdout, stderr limitedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if req.Stdin != nil {
		cmd.Stdin = bytes.NewReader(req.Stdin)
	}
	// A command that leaves a background job holding its output open
	// returns once its shell has exited and this much time has passed.
	cmd.WaitDelay = 2 * time.Second
	resp := agentproto.Response{ID: req.ID}
	if err := cmd.Start(); err != nil {
		resp.Code, resp.Err = -1, err.Error()
		a.reply(resp)
		return
	}
	a.mu.Lock()
	a.running[req.ID] = cmd
	a.mu.Unlock()
	var timer *time.Timer
	timedOut := make(chan struct{})
	if req.Timeout > 0 {
		timer = time.AfterFunc(req.Timeout, func() {
			close(timedOut)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		})
	}
	err := cmd.Wait()
	if timer != nil {
		timer.Stop()
	}
	a.mu.Lock()
	delete(a.running, req.ID)
	a.mu.Unlock()

	resp.Code = exitCode(cmd, err)
	select {
	case <-timedOut:
		resp.Err = "timed out after " + req.Timeout.String()
	default:
	}
	resp.Stdout, resp.Stderr = stdout.b.Bytes(), stderr.b.Bytes()
	resp.Truncated = stdout.truncated || stderr.truncated
	a.reply(resp)
}

// exitCode turns the result of Wait into a shell-style exit status.
func exitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return -1
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}

// reply writes one response line. Writes block while no host is connected.
func (a *agent) reply(resp agentproto.Response) {
	resp.Uptime = uptime()
	b, err := json.Marshal(resp)
	if err != nil {
		log.Printf("encoding a response: %v", err)
		return
	}
	b = append(b, '\n')
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if _, err := a.out.Write(b); err != nil {
		log.Printf("writing a response: %v", err)
	}
}

// uptime reads /proc/uptime.
func uptime() time.Duration {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}
