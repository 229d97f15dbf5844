package netlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testServer runs a Server on a socket in a temporary directory until the
// test ends.
type testServer struct {
	path   string
	cancel context.CancelFunc
	done   chan error
}

func startServer(t *testing.T, s *Server) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "drbdd.sock")
	l, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Logf == nil {
		s.Logf = t.Logf
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{path: path, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Serve(ctx, l) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop ends the server and checks that Serve returns nil promptly.
func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok && err != nil {
			t.Errorf("Serve: %v", err)
		}
		if ok {
			close(ts.done)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoHandlers is a small dispatch table for the tests.
func echoHandlers() map[Command]Handler {
	return map[Command]Handler{
		Primary: func(_ context.Context, req *Request, stream EventSink) *Reply {
			if stream != nil {
				return NewReply(ErrInternal, "primary got a stream")
			}
			if req.Role == nil || !req.Role.AssumeUptodate {
				return NewReply(SSNoUpToDateDisk, "%s: State change failed: (-2) Need access to UpToDate data", req.Ctx.ResourceName)
			}
			return NewReply(NoError, "%s is primary now", req.Ctx.ResourceName)
		},
		GetStatus: func(context.Context, *Request, EventSink) *Reply {
			return &Reply{RetCode: NoError, Version: "test", States: []StateInfo{fullStateInfo("r0", 0), fullStateInfo("r1", 1)}}
		},
		Secondary: func(context.Context, *Request, EventSink) *Reply { return nil },
	}
}

func TestDispatch(t *testing.T) {
	ts := startServer(t, &Server{Handlers: echoHandlers()})
	c := dial(t, ts.path)
	ctx := testCtx(t)

	rep, err := c.Do(ctx, &Request{Command: Primary, Minor: 4, Ctx: CfgContext{ResourceName: "r0"}, Role: &SetRoleParms{AssumeUptodate: true}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Command != Primary || rep.RetCode != NoError || rep.Info != "r0 is primary now" || rep.Minor != 4 {
		t.Errorf("primary reply = %+v", rep)
	}

	rep, err = c.Do(ctx, &Request{Command: Primary, Ctx: CfgContext{ResourceName: "r0"}})
	var derr *Error
	if !errors.As(err, &derr) || derr.Code != SSNoUpToDateDisk || rep == nil || rep.RetCode != SSNoUpToDateDisk {
		t.Fatalf("refused primary: reply %+v, error %v", rep, err)
	}
	if err.Error() != "r0: State change failed: (-2) Need access to UpToDate data" {
		t.Errorf("error text = %q", err)
	}

	// A failure reply does not break the connection.
	rep, err = c.Do(ctx, &Request{Command: GetStatus})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.States) != 2 || rep.States[1].ResourceName != "r1" || rep.Version != "test" {
		t.Errorf("status reply = %+v", rep)
	}

	_, err = c.Do(ctx, &Request{Command: Secondary})
	if !errors.As(err, &derr) || derr.Code != ErrInternal {
		t.Errorf("nil reply: %v", err)
	}

	_, err = c.Do(ctx, &Request{Command: Down})
	if !errors.As(err, &derr) || derr.Code != ErrUnknownCommand || err.Error() != "command down is not supported by this daemon" {
		t.Errorf("unhandled command: %v", err)
	}
	_, err = c.Do(ctx, &Request{Command: 99})
	if !errors.As(err, &derr) || derr.Code != ErrUnknownCommand || err.Error() != "unknown command 99" {
		t.Errorf("unknown command: %v", err)
	}

	// Requests from several goroutines share one client.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := c.Do(ctx, &Request{Command: GetStatus}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// rawConn is a connection that speaks bytes, for feeding the server junk.
type rawConn struct {
	t *testing.T
	net.Conn
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t, c}
}

func (c *rawConn) send(b []byte) {
	c.t.Helper()
	if _, err := c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawConn) reply() *Reply {
	c.t.Helper()
	b, err := readControlFrame(c, 0, 0)
	if err != nil {
		c.t.Fatalf("read reply: %v", err)
	}
	rep, err := UnmarshalReply(b)
	if err != nil {
		c.t.Fatalf("decode reply: %v", err)
	}
	return rep
}

// expectClosed checks that the server closes the connection. A close with
// our unread bytes in the server's queue shows as ECONNRESET, after any data.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if err != nil || len(b) != 0 {
		c.t.Fatalf("after the error: read %q, %v; want EOF", b, err)
	}
}

func (c *rawConn) good(seq uint32) {
	c.t.Helper()
	b, err := (&Request{Command: GetStatus, Seq: seq}).MarshalBinary()
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(b)
	rep := c.reply()
	if rep.Seq != seq || rep.RetCode != NoError || rep.Command != GetStatus {
		c.t.Fatalf("good request after bad one: %+v", rep)
	}
}

func TestServerSurvivesBadInput(t *testing.T) {
	ts := startServer(t, &Server{Handlers: echoHandlers(), ReadTimeout: 200 * time.Millisecond})

	t.Run("garbage", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		c.send([]byte("GET / HTTP/1.1\r\nHost: drbdd\r\n\r\n"))
		if rep := c.reply(); rep.RetCode != ErrInvalidRequest || !strings.Contains(rep.Info, "bad frameControl length") {
			t.Errorf("reply = %+v", rep)
		}
		c.expectClosed()
	})
	t.Run("oversized length", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		b := rawRequest(t, GetStatus, nil)
		b[0], b[1], b[2], b[3] = 0, 0, 0x20, 0 // 2 MiB
		c.send(b)
		if rep := c.reply(); rep.RetCode != ErrInvalidRequest || rep.Seq != 1 {
			t.Errorf("reply = %+v", rep)
		}
		c.expectClosed()
	})
	t.Run("truncated frameControl", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		b, err := (&Request{Command: Primary, Ctx: CfgContext{ResourceName: "r0"}}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		c.send(b[:len(b)-4])
		c.Conn.(*net.UnixConn).CloseWrite()
		c.expectClosed()
	})
	t.Run("stalled frameControl", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		b := rawRequest(t, GetStatus, nil)
		c.send(b[:10])
		c.expectClosed() // after ReadTimeout
	})
	t.Run("wrong family", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		b := rawRequest(t, GetStatus, nil)
		b[4], b[5] = 0x10, 0
		c.send(b)
		if rep := c.reply(); rep.RetCode != ErrInvalidRequest || !strings.Contains(rep.Info, "wrong message type 0x10") || rep.Seq != 1 {
			t.Errorf("reply = %+v", rep)
		}
		c.good(2)
	})
	t.Run("unknown command", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		b, err := (&Request{Command: 99, Seq: 5}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		c.send(b)
		if rep := c.reply(); rep.RetCode != ErrUnknownCommand || rep.Info != "unknown command 99" || rep.Seq != 5 || rep.Command != 99 {
			t.Errorf("reply = %+v", rep)
		}
		c.good(6)
	})
	t.Run("bad attributes", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		c.send(rawRequest(t, Connect, nil))
		if rep := c.reply(); rep.RetCode != ErrInvalidRequest || rep.Command != Connect || !strings.Contains(rep.Info, "needs a net configuration") {
			t.Errorf("reply = %+v", rep)
		}
		c.good(2)
	})
	t.Run("idle close", func(t *testing.T) {
		c := dialRaw(t, ts.path)
		c.Close()
	})

	// The daemon still answers.
	c := dial(t, ts.path)
	if _, err := c.Do(testCtx(t), &Request{Command: GetStatus}); err != nil {
		t.Fatal(err)
	}
}

func TestPeerCredRefusal(t *testing.T) {
	var asked []uint32
	var mu sync.Mutex // guards asked
	ts := startServer(t, &Server{Handlers: echoHandlers(), AllowUID: func(uid uint32) bool {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, uid)
		return false
	}})
	c := dial(t, ts.path)
	_, err := c.Do(testCtx(t), &Request{Command: GetStatus})
	var derr *Error
	if !errors.As(err, &derr) || derr.Code != ErrPerm || !strings.Contains(err.Error(), "permission denied: uid") {
		t.Fatalf("Do = %v, want a permission error", err)
	}
	mu.Lock()
	if len(asked) != 1 || asked[0] != uint32(os.Getuid()) {
		t.Errorf("AllowUID asked for %v, want [%d]", asked, os.Getuid())
	}
	mu.Unlock()
	// The client knows its connection is gone.
	if _, err := c.Do(testCtx(t), &Request{Command: GetStatus}); err == nil {
		t.Error("second Do on a refused connection succeeded")
	}
}

func TestBusy(t *testing.T) {
	ts := startServer(t, &Server{Handlers: echoHandlers(), MaxConns: 1})
	first := dial(t, ts.path)
	if _, err := first.Do(testCtx(t), &Request{Command: GetStatus}); err != nil {
		t.Fatal(err)
	}
	second := dial(t, ts.path)
	_, err := second.Do(testCtx(t), &Request{Command: GetStatus})
	var derr *Error
	if !errors.As(err, &derr) || derr.Code != ErrBusy {
		t.Fatalf("Do over the limit = %v, want ErrBusy", err)
	}
	first.Close()
	// The slot frees up once the server notices the close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dial(t, ts.path)
		_, err := c.Do(testCtx(t), &Request{Command: GetStatus})
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot never freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSubscribe(t *testing.T) {
	handlerDone := make(chan error, 1)
	handlers := echoHandlers()
	handlers[Subscribe] = func(ctx context.Context, req *Request, stream EventSink) *Reply {
		for i := range 3 {
			st := fullStateInfo(fmt.Sprintf("r%d", i), uint32(i))
			if err := stream.Send(st); err != nil {
				handlerDone <- err
				return NewReply(ErrIO, "send: %v", err)
			}
		}
		<-ctx.Done()
		err := stream.Send(StateInfo{ResourceName: "late"})
		if err == nil {
			// The write may still succeed into the socket buffer; a
			// later one must fail once the peer is gone.
			time.Sleep(50 * time.Millisecond)
			err = stream.Send(StateInfo{ResourceName: "later"})
		}
		handlerDone <- err
		return NewReply(NoError, "bye")
	}
	ts := startServer(t, &Server{Handlers: handlers})
	c := dial(t, ts.path)

	var got []string
	errStop := errors.New("stop")
	err := c.Subscribe(testCtx(t), nil, func(st StateInfo) error {
		got = append(got, st.ResourceName)
		if st.EventKind != "change" || len(st.UUIDs) != 4 {
			t.Errorf("event = %+v", st)
		}
		if len(got) == 3 {
			return errStop
		}
		return nil
	})
	if err != errStop {
		t.Fatalf("Subscribe = %v, want errStop", err)
	}
	if strings.Join(got, ",") != "r0,r1,r2" {
		t.Errorf("events = %v", got)
	}
	select {
	case err := <-handlerDone:
		if err == nil {
			t.Error("Send after the client left succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler context did not end when the client closed")
	}
	if _, err := c.Do(testCtx(t), &Request{Command: GetStatus}); err == nil {
		t.Error("Do after Subscribe succeeded")
	}
}

func TestSubscribeEndedByDaemon(t *testing.T) {
	handlers := map[Command]Handler{
		Subscribe: func(ctx context.Context, req *Request, stream EventSink) *Reply {
			if req.Ctx.ResourceName != "r7" {
				return NewReply(ErrNoResource, "unknown resource %q", req.Ctx.ResourceName)
			}
			stream.Send(StateInfo{ResourceName: "r7", EventKind: "exists"})
			stream.Send(StateInfo{ResourceName: "r7", EventKind: "destroy"})
			return NewReply(NoError, "resource gone")
		},
	}
	ts := startServer(t, &Server{Handlers: handlers})

	var kinds []string
	err := dial(t, ts.path).Subscribe(testCtx(t), &Request{Ctx: CfgContext{ResourceName: "r7"}}, func(st StateInfo) error {
		kinds = append(kinds, st.EventKind)
		return nil
	})
	if err != nil || strings.Join(kinds, ",") != "exists,destroy" {
		t.Fatalf("Subscribe = %v, events %v", err, kinds)
	}

	err = dial(t, ts.path).Subscribe(testCtx(t), &Request{Ctx: CfgContext{ResourceName: "nope"}}, func(StateInfo) error { return nil })
	var derr *Error
	if !errors.As(err, &derr) || derr.Code != ErrNoResource {
		t.Fatalf("Subscribe to unknown resource = %v", err)
	}
}

func TestSubscribeContextAndShutdown(t *testing.T) {
	started := make(chan struct{})
	handlers := map[Command]Handler{
		Subscribe: func(ctx context.Context, _ *Request, stream EventSink) *Reply {
			close(started)
			<-ctx.Done()
			return NewReply(NoError, "")
		},
		Primary: func(ctx context.Context, _ *Request, _ EventSink) *Reply {
			<-ctx.Done()
			return NewReply(ErrIntr, "interrupted")
		},
	}
	ts := startServer(t, &Server{Handlers: handlers})

	// A cancelled context ends Subscribe.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- dial(t, ts.path).Subscribe(ctx, nil, func(StateInfo) error { return nil }) }()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe after cancel = %v", err)
	}

	// A deadline ends Do and leaves the client unusable.
	c := dial(t, ts.path)
	dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer dcancel()
	if _, err := c.Do(dctx, &Request{Command: Primary}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do past its deadline = %v", err)
	}
	if _, err := c.Do(testCtx(t), &Request{Command: Primary}); err == nil {
		t.Error("Do on a timed-out client succeeded")
	}

	// Stopping the server ends the blocked handler and removes the socket.
	ts.stop(t)
	if _, err := os.Stat(ts.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still exists after Serve returned: %v", err)
	}
}

func TestListenControl(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "drbdd")
	path := filepath.Join(dir, "drbdd.sock")

	l, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&fs.ModeSocket == 0 {
		t.Errorf("socket mode = %v, want socket 0600", fi.Mode())
	}
	// A live daemon keeps its socket.
	if _, err := ListenControl(path); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Errorf("second ListenControl = %v", err)
	}
	// A dead daemon's socket is replaced.
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket missing: %v", err)
	}
	l, err = ListenControl(path)
	if err != nil {
		t.Fatalf("ListenControl over a stale socket: %v", err)
	}
	l.Close()

	// A regular file is never removed.
	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenControl(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ListenControl on a file = %v", err)
	}
}

func TestDialNoDaemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drbdd.sock")
	_, err := Dial(path)
	if err == nil {
		t.Fatal("Dial succeeded without a daemon")
	}
	want := "cannot connect to drbdd at " + path + ": is the daemon running?"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Dial error = %q, want prefix %q", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Dial error %v does not wrap ENOENT", err)
	}
}

func TestClientRejectsMisuse(t *testing.T) {
	ts := startServer(t, &Server{Handlers: echoHandlers()})
	c := dial(t, ts.path)
	if _, err := c.Do(testCtx(t), nil); err == nil {
		t.Error("Do(nil) succeeded")
	}
	if _, err := c.Do(testCtx(t), &Request{Command: Subscribe}); err == nil {
		t.Error("Do(subscribe) succeeded")
	}
	// An invalid request is refused locally and leaves the client usable.
	if _, err := c.Do(testCtx(t), &Request{Command: Connect}); err == nil {
		t.Error("connect without net succeeded")
	}
	if _, err := c.Do(testCtx(t), &Request{Command: GetStatus}); err != nil {
		t.Errorf("Do after a local error: %v", err)
	}
	if err := c.Subscribe(testCtx(t), &Request{Command: Primary}, nil); err == nil {
		t.Error("Subscribe(primary) succeeded")
	}
	c.Close()
	if _, err := c.Do(testCtx(t), &Request{Command: GetStatus}); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Do after Close = %v", err)
	}
}
