package resync

import (
	"testing"
)

func mustController(t *testing.T, cfg ControllerConfig) *Controller {
	t.Helper()
	c, err := NewController(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// simTick is one 100 ms step of the controller against a link: the
// replies that arrived are reported, the controller decides, and its
// requests are sent. It returns the blocks requested and the sectors in
// flight when the controller decided.
func simTick(c *Controller, l *link) (n int, inFlight int64) {
	c.Received(uint64(l.step()))
	inFlight = l.inFlight()
	n = c.Tick()
	c.Issued(uint64(n))
	l.send(int64(n) * SectorsPerBit)
	return n, inFlight
}

func TestControllerFixedRate(t *testing.T) {
	cfg := DefaultControllerConfig()
	cfg.PlanAhead = 0
	cfg.ResyncRate = 10240
	cfg.MaxBuffers = 0
	c := mustController(t, cfg)
	for i := 0; i < 5; i++ {
		// 10240 KiB/s is 1024 KiB per tick: 256 blocks.
		if n := c.Tick(); n != 256 {
			t.Fatalf("tick %d: %d blocks, want 256", i, n)
		}
		c.Issued(256)
	}
	if c.Want() != 10240 {
		t.Errorf("want %d", c.Want())
	}
	// Rates below 40 KiB/s round down to nothing per tick, as in DRBD.
	cfg.ResyncRate = 39
	if err := c.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if n := c.Tick(); n != 0 {
		t.Errorf("39 KiB/s: %d blocks", n)
	}
}

func TestControllerStart(t *testing.T) {
	// At the start nothing is in flight: the controller plans
	// resync-rate's worth for each tick of the plan, and this tick gets
	// one share: 250 KiB/s is 50 sectors a tick, 6 blocks.
	c := mustController(t, DefaultControllerConfig())
	if n := c.Tick(); n != 6 {
		t.Fatalf("first tick: %d blocks, want 6", n)
	}
	if c.Want() != 240 {
		t.Errorf("want %d KiB/s, want 240", c.Want())
	}
}

func TestControllerConvergesToFillTarget(t *testing.T) {
	for _, tt := range []struct {
		name      string
		fill      uint32
		bw        int64 // sectors per tick
		delay     int
		wantRate  int64 // sectors per tick once converged
		planAhead uint32
	}{
		// The link is the bottleneck: it runs full with the fill
		// target queued in front of it.
		{"link bound", 2048, 400, 2, 400, 20},
		// The fill target is the bottleneck: 2048 sectors per round
		// trip of 4 ticks.
		{"target bound", 2048, 100000, 3, 2048 / 4, 20},
		{"short plan", 4096, 600, 1, 600, 5},
		{"long plan", 4096, 600, 1, 600, 100},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultControllerConfig()
			cfg.FillTarget = tt.fill
			cfg.PlanAhead = tt.planAhead
			cfg.MaxBuffers = 0
			c := mustController(t, cfg)
			l := newLink(tt.bw, tt.delay)
			const ticks, tail = 600, 100
			var sent int64
			for i := 0; i < ticks; i++ {
				n, inFlight := simTick(c, l)
				if i < ticks-tail {
					continue
				}
				sent += int64(n) * SectorsPerBit
				// Converged: in flight within 5% of the target,
				// give or take rounding. Like DRBD, the
				// controller drops the sub-block remainder of
				// each tick's correction (req_sect >> 3), so up
				// to about half a block per planned tick stays
				// planned and never goes out.
				tol := int64(tt.fill)/20 + 4*int64(tt.planAhead) + 8
				if d := inFlight - int64(tt.fill); d < -tol || d > tol {
					t.Fatalf("tick %d: %d sectors in flight, target %d", i, inFlight, tt.fill)
				}
			}
			if rate := sent / tail; rate < tt.wantRate*95/100 || rate > tt.wantRate*105/100 {
				t.Errorf("rate %d sectors/tick, want about %d", rate, tt.wantRate)
			}
		})
	}
}

func TestControllerDelayTarget(t *testing.T) {
	cfg := DefaultControllerConfig()
	cfg.FillTarget = 0
	cfg.DelayTarget = 10 // one second
	cfg.MaxBuffers = 0
	c := mustController(t, cfg)
	l := newLink(200, 1)
	for i := 0; i < 600; i++ {
		_, inFlight := simTick(c, l)
		// One second's worth of what arrives: 10 ticks of 200.
		if i >= 500 && (inFlight < 1900 || inFlight > 2100) {
			t.Fatalf("tick %d: %d sectors in flight, want about 2000", i, inFlight)
		}
	}
}

func TestControllerMaxRate(t *testing.T) {
	cfg := DefaultControllerConfig()
	cfg.FillTarget = 1 << 20
	cfg.MaxRate = 10240 // 2048 sectors, 256 blocks a tick
	cfg.MaxBuffers = 0
	c := mustController(t, cfg)
	l := newLink(100000, 2)
	for i := 0; i < 300; i++ {
		n, _ := simTick(c, l)
		if n > 256 {
			t.Fatalf("tick %d: %d blocks over c-max-rate", i, n)
		}
		if i > 50 && (n != 256 || c.Want() != 10240) {
			t.Fatalf("tick %d: %d blocks, want %d KiB/s; expected the cap", i, n, c.Want())
		}
	}
}

func TestControllerMaxBuffers(t *testing.T) {
	cfg := DefaultControllerConfig()
	cfg.PlanAhead = 0
	cfg.ResyncRate = 1 << 20 // 26214 blocks a tick
	cfg.MaxBuffers = 2048
	c := mustController(t, cfg)
	if n := c.Tick(); n != 1024 {
		t.Fatalf("first tick: %d blocks, want max-buffers/2", n)
	}
	c.Issued(1024)
	if n := c.Tick(); n != 0 {
		t.Fatalf("with max-buffers/2 in flight: %d blocks", n)
	}
	c.Received(100 * SectorsPerBit)
	if n := c.Tick(); n != 100 {
		t.Fatalf("after 100 replies: %d blocks", n)
	}
}

func TestControllerResetAndSetConfig(t *testing.T) {
	c := mustController(t, DefaultControllerConfig())
	c.Tick()
	c.Issued(6)
	c.Received(16)
	c.Reset()
	if c.InFlight() != 0 {
		t.Fatalf("in flight after reset: %d", c.InFlight())
	}
	if n := c.Tick(); n != 6 {
		t.Fatalf("first tick after reset: %d", n)
	}
	cfg := DefaultControllerConfig()
	cfg.PlanAhead = 50
	if err := c.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if len(c.plan) != 50 || c.planned != 0 || c.Config().PlanAhead != 50 {
		t.Fatalf("plan %d planned %d", len(c.plan), c.planned)
	}
	cfg.MaxRate = 1
	if err := c.SetConfig(cfg); err == nil {
		t.Fatal("c-max-rate 1 accepted")
	}
}

func TestControllerConfigValidate(t *testing.T) {
	bad := []func(*ControllerConfig){
		func(c *ControllerConfig) { c.ResyncRate = 0 },
		func(c *ControllerConfig) { c.ResyncRate = MaxRateLimit + 1 },
		func(c *ControllerConfig) { c.PlanAhead = 301 },
		func(c *ControllerConfig) { c.DelayTarget = 0 },
		func(c *ControllerConfig) { c.DelayTarget = 101 },
		func(c *ControllerConfig) { c.FillTarget = MaxFillTarget + 1 },
		func(c *ControllerConfig) { c.MaxRate = 249 },
		func(c *ControllerConfig) { c.MinRate = MaxRateLimit + 1 },
	}
	for i, f := range bad {
		cfg := DefaultControllerConfig()
		f(&cfg)
		if cfg.Validate() == nil {
			t.Errorf("case %d: %+v accepted", i, cfg)
		}
	}
	if err := DefaultControllerConfig().Validate(); err != nil {
		t.Error(err)
	}
}

func TestShouldSlowDown(t *testing.T) {
	tests := []struct {
		app, rate, min uint64
		want           bool
	}{
		{1000, 5000, 0, false},    // c-min-rate 0 disables throttling
		{32, 5000, 250, false},    // 64 sectors of application I/O is noise
		{33, 5000, 250, true},     // more is activity, and resync is fast
		{1000, 250, 250, false},   // resync at c-min-rate keeps going
		{1000, 251, 250, true},    //
		{^uint64(0), 0, 1, false}, //
	}
	for _, tt := range tests {
		if got := ShouldSlowDown(tt.app, tt.rate, tt.min); got != tt.want {
			t.Errorf("ShouldSlowDown(%d, %d, %d) = %v", tt.app, tt.rate, tt.min, got)
		}
	}
}
