// Package engine owns drbdd's goroutines: the resources, their state-owner
// loops, the NBD exports and (for connected resources) the receiver, worker
// and asender of each peer connection. Decisions are delegated to the pure
// packages (replication, meta, resync); this package turns socket, disk and
// admin events into calls on them.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sort"
	"sync"
	"time"

	"drbdd/drbdd/status"
)

// ErrNoResource is returned for commands naming a resource that is not up.
var ErrNoResource = errors.New("unknown resource")

// ErrExists is returned when creating a resource or minor that exists.
var ErrExists = errors.New("already exists")

// Config configures a Daemon.
type Config struct {
	// StatusPath is where the /proc/drbd-style status file is written; empty
	// disables it.
	StatusPath string
	// Logger receives DRBD-style log lines; nil means the standard logger.
	Logger *log.Logger
}

// Daemon is the set of resources one drbdd process manages.
type Daemon struct {
	cfg Config
	log *log.Logger

	// mu guards resources.
	mu        sync.Mutex
	resources map[string]*Resource

	// statusKick wakes the status writer; capacity 1 so kicks coalesce.
	statusKick chan struct{}
	events     *eventHub
	kernel     kernelHandle
	// watchOnce starts the LINK_DEAD watcher with the first kernel device;
	// faultOnce arms the link fault injection (linkFaultEnv) once.
	watchOnce, faultOnce sync.Once

	// ctx is cancelled by Close; every goroutine the daemon starts watches it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a daemon with no resources, as DRBD's module starts, and
// starts its status-file writer.
func New(cfg Config) *Daemon {
	lg := cfg.Logger
	if lg == nil {
		lg = log.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Daemon{
		cfg:        cfg,
		log:        lg,
		resources:  map[string]*Resource{},
		statusKick: make(chan struct{}, 1),
		events:     newEventHub(),
		ctx:        ctx,
		cancel:     cancel,
	}
	d.wg.Add(1)
	go d.statusWriter()
	return d
}

// Logf logs one line.
func (d *Daemon) Logf(format string, args ...any) {
	d.log.Printf(format, args...)
}

// Resource returns the named resource.
func (d *Daemon) Resource(name string) (*Resource, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.resources[name]
	if !ok {
		return nil, fmt.Errorf("%s: %w", name, ErrNoResource)
	}
	return r, nil
}

// Resources returns every resource, ordered by minor then name.
func (d *Daemon) Resources() []*Resource {
	d.mu.Lock()
	out := make([]*Resource, 0, len(d.resources))
	for _, r := range d.resources {
		out = append(out, r)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Minor() != out[j].Minor() {
			return out[i].Minor() < out[j].Minor()
		}
		return out[i].name < out[j].name
	})
	return out
}

// NewResource creates an empty resource (DRBD_ADM_NEW_RESOURCE).
func (d *Daemon) NewResource(name string) (*Resource, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.resources[name]; ok {
		return nil, fmt.Errorf("resource %s: %w", name, ErrExists)
	}
	r := newResource(d, name)
	d.resources[name] = r
	d.Logf("%s: resource created", name)
	d.kickStatus()
	return r, nil
}

// DelResource removes a resource that has been taken down completely.
func (d *Daemon) DelResource(name string) error {
	r, err := d.Resource(name)
	if err != nil {
		return err
	}
	if err := r.close(); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.resources, name)
	d.mu.Unlock()
	d.events.publish(Event{Kind: "destroy", Resource: name})
	d.Logf("%s: resource removed", name)
	d.kickStatus()
	return nil
}

// minorTaken reports whether another resource uses minor.
func (d *Daemon) minorTaken(minor int, except *Resource) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.resources {
		if r != except && r.Minor() == minor {
			return true
		}
	}
	return false
}

// freeMinor returns the lowest minor no resource uses.
func (d *Daemon) freeMinor() int {
	used := map[int]bool{}
	d.mu.Lock()
	for _, r := range d.resources {
		used[r.Minor()] = true
	}
	d.mu.Unlock()
	for m := 0; ; m++ {
		if !used[m] {
			return m
		}
	}
}

// Shutdown takes every resource down the way `drbdadm down all` would, but
// without refusing: it disconnects peers gracefully and flushes metadata so
// that the next start needs no resync. It is what SIGTERM does.
func (d *Daemon) Shutdown(ctx context.Context) {
	for _, r := range d.Resources() {
		if err := r.Down(ctx, true); err != nil {
			d.Logf("%s: shutdown: %v", r.name, err)
		}
		if err := d.DelResource(r.name); err != nil {
			d.Logf("%s: shutdown: %v", r.name, err)
		}
	}
	d.cancel()
	d.wg.Wait()
	d.writeStatus()
}

func (d *Daemon) kickStatus() {
	select {
	case d.statusKick <- struct{}{}:
	default:
	}
}

// statusWriter rewrites the status file on every state change and at most
// once a second while counters move. It stops when the daemon closes.
func (d *Daemon) statusWriter() {
	defer d.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last []byte
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-d.statusKick:
		case <-tick.C:
		}
		if out := d.renderStatus(); string(out) != string(last) {
			d.writeStatusBytes(out)
			last = out
		}
	}
}

func (d *Daemon) renderStatus() []byte {
	rs := d.Resources()
	minors := make([]status.Minor, 0, len(rs))
	for _, r := range rs {
		if r.Minor() < 0 {
			continue // DRBD shows minors, and this resource has none yet
		}
		minors = append(minors, r.procMinor())
	}
	return status.Render(minors)
}

func (d *Daemon) writeStatus() { d.writeStatusBytes(d.renderStatus()) }

func (d *Daemon) writeStatusBytes(b []byte) {
	if d.cfg.StatusPath == "" {
		return
	}
	if err := status.WriteAtomic(d.cfg.StatusPath, b); err != nil {
		d.Logf("%v", err)
	}
}

// Subscribe registers for state-change events; the returned cancel func
// must be called to unregister. The channel is closed if the subscriber
// falls more than its buffer behind, so a stuck client cannot hold memory.
func (d *Daemon) Subscribe() (<-chan Event, func()) {
	return d.events.subscribe()
}

// Event is one state-change notification.
type Event struct {
	// Kind is "exists" (initial dump), "change" or "destroy".
	Kind     string
	Resource string
	// Message is the DRBD-style log line describing the change.
	Message string
	Status  Status
}

// eventHub fans events out to subscribers.
type eventHub struct {
	// mu guards subs.
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

// eventBuffer bounds how far a subscriber may lag before it is dropped.
const eventBuffer = 256

func newEventHub() *eventHub { return &eventHub{subs: map[chan Event]struct{}{}} }

func (h *eventHub) subscribe() (<-chan Event, func()) {
	ch := make(chan Event, eventBuffer)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
		h.mu.Unlock()
	}
}

func (h *eventHub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
			delete(h.subs, ch)
			close(ch)
		}
	}
}
