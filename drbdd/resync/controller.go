package resync

import "fmt"

// ControllerConfig holds the resync-rate settings of a resource's disk
// section, in DRBD 8.4's units.
type ControllerConfig struct {
	// ResyncRate is resync-rate in KiB/s: the fixed rate when the
	// dynamic controller is off, and the rate it starts out with.
	ResyncRate uint32
	// PlanAhead is c-plan-ahead in tenths of a second: how far ahead the
	// dynamic controller spreads its corrections. Zero turns the
	// dynamic controller off.
	PlanAhead uint32
	// FillTarget is c-fill-target in sectors: the amount of resync data
	// the dynamic controller keeps in flight. Zero means DelayTarget
	// decides instead.
	FillTarget uint32
	// DelayTarget is c-delay-target in tenths of a second: with no fill
	// target, the controller keeps in flight what arrives in that time.
	DelayTarget uint32
	// MaxRate is c-max-rate in KiB/s, the dynamic controller's ceiling.
	MaxRate uint32
	// MinRate is c-min-rate in KiB/s: resync slows down for application
	// I/O only while it runs faster than this (see ShouldSlowDown). Zero
	// disables that throttling.
	MinRate uint32
	// MaxBuffers is the net section's max-buffers in pages: no more than
	// half of it is requested at once, so the peer's receiver never runs
	// out of buffers. Zero means no such bound.
	MaxBuffers uint32
}

// Defaults and limits of ControllerConfig, from DRBD 8.4's drbd_limits.h.
const (
	DefaultResyncRate  = 250    // KiB/s
	DefaultPlanAhead   = 20     // 0.1 s
	DefaultFillTarget  = 100    // sectors
	DefaultDelayTarget = 10     // 0.1 s
	DefaultMaxRate     = 102400 // KiB/s
	DefaultMinRate     = 250    // KiB/s
	DefaultMaxBuffers  = 2048   // pages

	MaxPlanAhead   = 300
	MaxDelayTarget = 100
	MaxFillTarget  = 1 << 20
	MaxRateLimit   = 4 << 20 // the largest resync-rate, c-max-rate and c-min-rate, KiB/s
)

// DefaultControllerConfig returns DRBD 8.4's defaults.
func DefaultControllerConfig() ControllerConfig {
	return ControllerConfig{
		ResyncRate:  DefaultResyncRate,
		PlanAhead:   DefaultPlanAhead,
		FillTarget:  DefaultFillTarget,
		DelayTarget: DefaultDelayTarget,
		MaxRate:     DefaultMaxRate,
		MinRate:     DefaultMinRate,
		MaxBuffers:  DefaultMaxBuffers,
	}
}

// Validate checks the settings against DRBD's limits.
func (c ControllerConfig) Validate() error {
	switch {
	case c.ResyncRate < 1 || c.ResyncRate > MaxRateLimit:
		return fmt.Errorf("resync: resync-rate %d KiB/s out of range 1..%d", c.ResyncRate, MaxRateLimit)
	case c.PlanAhead > MaxPlanAhead:
		return fmt.Errorf("resync: c-plan-ahead %d out of range 0..%d", c.PlanAhead, MaxPlanAhead)
	case c.PlanAhead > 0 && (c.DelayTarget < 1 || c.DelayTarget > MaxDelayTarget):
		return fmt.Errorf("resync: c-delay-target %d out of range 1..%d", c.DelayTarget, MaxDelayTarget)
	case c.FillTarget > MaxFillTarget:
		return fmt.Errorf("resync: c-fill-target %d out of range 0..%d", c.FillTarget, MaxFillTarget)
	case c.PlanAhead > 0 && (c.MaxRate < 250 || c.MaxRate > MaxRateLimit):
		return fmt.Errorf("resync: c-max-rate %d KiB/s out of range 250..%d", c.MaxRate, MaxRateLimit)
	case c.MinRate > MaxRateLimit:
		return fmt.Errorf("resync: c-min-rate %d KiB/s out of range 0..%d", c.MinRate, MaxRateLimit)
	}
	return nil
}

// Controller is DRBD 8.4's resync rate controller. Once per SleepTime
// tick the engine asks it how many 4 KiB blocks to request (Tick), tells
// it how many it actually requested (Issued), and in between reports the
// resync data that arrived (Received).
//
// With c-plan-ahead set, it is DRBD's dynamic controller: it wants
// c-fill-target sectors in flight (or, without a fill target, what
// arrives in c-delay-target), spreads the difference between that and
// what is in flight or already planned evenly over the next c-plan-ahead
// ticks through a ring of planned corrections, and requests this tick
// what arrived since the last one plus this tick's correction, capped at
// c-max-rate. Without it, it requests resync-rate's worth every tick.
//
// A Controller is not safe for concurrent use.
type Controller struct {
	cfg      ControllerConfig
	plan     []int64 // planned corrections, sectors; len is c-plan-ahead ticks
	head     int
	planned  int64 // sum of plan (DRBD's plan->total)
	inFlight int64 // sectors requested and not yet received (rs_in_flight)
	sectIn   int64 // sectors received since the last tick (rs_sect_in)
	syncRate uint64
}

// NewController returns a controller with the given settings, reset for
// the start of a resync.
func NewController(cfg ControllerConfig) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, plan: make([]int64, planSteps(cfg.PlanAhead))}
	c.syncRate = uint64(cfg.ResyncRate)
	return c, nil
}

// planSteps is the length of the plan ring: c-plan-ahead is in tenths of
// a second and one tick is a tenth of a second.
func planSteps(planAhead uint32) int {
	return int(uint64(planAhead) * uint64(10*SleepTime) / uint64(1e9))
}

// SetConfig changes the settings while a resync runs. As in DRBD, a new
// c-plan-ahead discards the planned corrections.
func (c *Controller) SetConfig(cfg ControllerConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if planSteps(cfg.PlanAhead) != len(c.plan) {
		c.plan = make([]int64, planSteps(cfg.PlanAhead))
		c.head = 0
		c.planned = 0
	}
	c.cfg = cfg
	return nil
}

// Config returns the current settings.
func (c *Controller) Config() ControllerConfig { return c.cfg }

// Reset forgets everything in flight and planned, for the start of a
// resync or verify run (DRBD's drbd_rs_controller_reset).
func (c *Controller) Reset() {
	c.sectIn = 0
	c.inFlight = 0
	c.planned = 0
	c.head = 0
	clear(c.plan)
}

// Received records that the answer to sectors worth of resync or verify
// requests arrived: data written, found equal by checksum, refused, or a
// verify reply.
func (c *Controller) Received(sectors uint64) {
	c.sectIn += int64(sectors)
}

// Issued records that blocks 4 KiB blocks were requested this tick.
func (c *Controller) Issued(blocks uint64) {
	c.inFlight += int64(blocks) * SectorsPerBit
}

// InFlight returns the sectors requested and not yet answered, as far as
// the controller knows.
func (c *Controller) InFlight() int64 { return c.inFlight }

// Want returns the rate the controller aims at, in KiB/s: the "want:"
// figure of the progress line (DRBD's c_sync_rate).
func (c *Controller) Want() uint64 { return c.syncRate }

// Tick is called once per SleepTime and returns the number of 4 KiB
// blocks to request now (DRBD's drbd_rs_number_requests). It consumes
// what Received recorded since the previous tick.
func (c *Controller) Tick() int {
	sectIn := c.sectIn
	c.sectIn = 0
	c.inFlight -= sectIn

	var number int64
	if len(c.plan) > 0 {
		number = c.control(sectIn) / SectorsPerBit
		// number blocks of 4 KiB every tenth of a second.
		c.syncRate = uint64(number) * (BlockSize / 1024) * uint64(1e9/SleepTime)
	} else {
		c.syncRate = uint64(c.cfg.ResyncRate)
		number = int64(c.syncRate * uint64(SleepTime) / ((BlockSize / 1024) * 1e9))
	}
	if c.cfg.MaxBuffers > 0 {
		// rs_in_flight counts sectors, max-buffers pages.
		if room := int64(c.cfg.MaxBuffers/2) - c.inFlight/SectorsPerBit; room < number {
			number = room
		}
	}
	return int(max(number, 0))
}

// control is one step of the dynamic controller (DRBD's
// drbd_rs_controller); it returns the sectors to request this tick.
func (c *Controller) control(sectIn int64) int64 {
	steps := int64(len(c.plan))
	var want int64
	switch {
	case c.inFlight+sectIn == 0:
		// Start of resync: resync-rate's worth per tick, for every tick
		// of the plan.
		want = perTick(c.cfg.ResyncRate) * steps
	case c.cfg.FillTarget != 0:
		want = int64(c.cfg.FillTarget)
	default:
		// What arrives in c-delay-target: sectIn per tick times the
		// target in ticks.
		want = sectIn * int64(c.cfg.DelayTarget) * int64(1e9/SleepTime) / 10
	}

	correction := want - c.inFlight - c.planned
	cps := correction / steps
	for i := range c.plan {
		c.plan[i] += cps
	}
	c.planned += cps * steps

	curr := c.plan[c.head]
	c.plan[c.head] = 0
	c.head = (c.head + 1) % len(c.plan)
	c.planned -= curr

	req := max(sectIn+curr, 0)
	return min(req, perTick(c.cfg.MaxRate))
}

// perTick converts a rate in KiB/s into sectors per tick.
func perTick(kibPerSec uint32) int64 {
	return int64(kibPerSec) * 2 * int64(SleepTime) / 1e9
}

// ShouldSlowDown reports whether resync should yield to application I/O,
// as DRBD's c-min-rate logic does: only when c-min-rate is set, the
// backing device saw more than 64 sectors (32 KiB) of I/O that resync
// does not account for since the last check (appIOKiB), and resync
// currently runs faster than c-min-rate (resyncRateKiB, see
// Marks.ShortTermRate). Resync then sleeps a tick before its next
// request, leaving the disk to the application while never dropping below
// c-min-rate.
func ShouldSlowDown(appIOKiB, resyncRateKiB, cMinRate uint64) bool {
	if cMinRate == 0 {
		return false
	}
	if appIOKiB <= 64/2 {
		return false
	}
	return resyncRateKiB > cMinRate
}
