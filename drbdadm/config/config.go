// Package config reads drbdd resource files: one YAML file per resource in
// the configuration directory (default /etc/drbdd), the same file on every
// node, in the layout given by DESIGN.md's interface contract.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// DefaultDir is where resource files live unless --config-dir says otherwise.
const DefaultDir = "/etc/drbdd"

// Resource is one parsed resource file.
type Resource struct {
	Name     string          `mapstructure:"resource"`
	Protocol string          `mapstructure:"protocol"`
	Device   string          `mapstructure:"device"`
	Minor    int             `mapstructure:"minor"`
	Net      Net             `mapstructure:"net"`
	Disk     Disk            `mapstructure:"disk"`
	On       map[string]Host `mapstructure:"on"`

	// File is the path the resource was read from.
	File string `mapstructure:"-"`
}

// Net holds the net section: peer connection and split-brain policy.
type Net struct {
	SharedSecret      string        `mapstructure:"shared-secret"`
	CramHMACAlg       string        `mapstructure:"cram-hmac-alg"`
	PingInt           time.Duration `mapstructure:"ping-int"`
	PingTimeout       time.Duration `mapstructure:"ping-timeout"`
	Timeout           time.Duration `mapstructure:"timeout"`
	ConnectInt        time.Duration `mapstructure:"connect-int"`
	KoCount           int           `mapstructure:"ko-count"`
	MaxBuffers        int           `mapstructure:"max-buffers"`
	MaxEpochSize      int           `mapstructure:"max-epoch-size"`
	AllowTwoPrimaries bool          `mapstructure:"allow-two-primaries"`
	AfterSB0Pri       string        `mapstructure:"after-sb-0pri"`
	AfterSB1Pri       string        `mapstructure:"after-sb-1pri"`
	AfterSB2Pri       string        `mapstructure:"after-sb-2pri"`
	RRConflict        string        `mapstructure:"rr-conflict"`
	VerifyAlg         string        `mapstructure:"verify-alg"`
	CsumsAlg          string        `mapstructure:"csums-alg"`
}

// Disk holds the disk section: local disk policy and resync tuning.
type Disk struct {
	ResyncRate  string `mapstructure:"resync-rate"`
	ALExtents   int    `mapstructure:"al-extents"`
	OnIOError   string `mapstructure:"on-io-error"`
	CPlanAhead  int    `mapstructure:"c-plan-ahead"`
	CFillTarget string `mapstructure:"c-fill-target"`
	CMaxRate    string `mapstructure:"c-max-rate"`
	CMinRate    string `mapstructure:"c-min-rate"`
	DirectIO    string `mapstructure:"direct-io"`
	DiskFlushes bool   `mapstructure:"disk-flushes"`
}

// Host is one node's `on <name>:` section.
type Host struct {
	Address   string `mapstructure:"address"`
	Disk      string `mapstructure:"disk"`
	MetaDisk  string `mapstructure:"meta-disk"`
	NBDListen string `mapstructure:"nbd-listen"`
}

// defaults are DRBD 8.4's defaults where DRBD has one. resync-rate is
// higher than DRBD's historic 250K because the dynamic controller
// (c-plan-ahead) decides the real rate and this is only its start value.
var defaults = map[string]any{
	"protocol":           "C",
	"minor":              -1,
	"net.cram-hmac-alg":  "sha256",
	"net.ping-int":       "10s",
	"net.ping-timeout":   "500ms",
	"net.timeout":        "6s",
	"net.connect-int":    "10s",
	"net.ko-count":       7,
	"net.max-buffers":    8192,
	"net.max-epoch-size": 2048,
	"net.after-sb-0pri":  "disconnect",
	"net.after-sb-1pri":  "disconnect",
	"net.after-sb-2pri":  "disconnect",
	"net.rr-conflict":    "disconnect",
	"disk.resync-rate":   "100M",
	"disk.al-extents":    1237,
	"disk.on-io-error":   "detach",
	"disk.c-plan-ahead":  20,
	"disk.c-fill-target": "100k",
	"disk.c-max-rate":    "1G",
	"disk.c-min-rate":    "250k",
	"disk.direct-io":     "auto",
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// Load parses one resource file.
func Load(path string) (*Resource, error) {
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	for k, val := range defaults {
		v.SetDefault(k, val)
	}
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, unwrapParse(err))
	}
	var r Resource
	err := v.UnmarshalExact(&r, func(c *mapstructure.DecoderConfig) {
		c.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
		)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.File = path
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// unwrapParse strips viper's wrapper so that the YAML parser's "line N"
// reaches the user.
func unwrapParse(err error) error {
	var pe viper.ConfigParseError
	if errors.As(err, &pe) {
		if u := errors.Unwrap(pe); u != nil {
			return fmt.Errorf("invalid YAML: %w", u)
		}
	}
	return err
}

var afterSB = map[string][]string{
	"after-sb-0pri": {"disconnect", "discard-younger-primary", "discard-older-primary", "discard-zero-changes", "discard-least-changes", "discard-local", "discard-remote"},
	"after-sb-1pri": {"disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb"},
	"after-sb-2pri": {"disconnect", "violently-as0p", "call-pri-lost-after-sb"},
	"rr-conflict":   {"disconnect", "call-pri-lost", "violently"},
	"on-io-error":   {"pass_on", "call-local-io-error", "detach"},
}

func oneOf(key, val string) error {
	for _, ok := range afterSB[key] {
		if val == ok {
			return nil
		}
	}
	return fmt.Errorf("%s: %q is not one of %s", key, val, strings.Join(afterSB[key], ", "))
}

func (r *Resource) validate() error {
	if r.Name == "" {
		return errors.New("missing 'resource:' name")
	}
	if !nameRE.MatchString(r.Name) {
		return fmt.Errorf("resource name %q: use letters, digits, '_', '-', '.'", r.Name)
	}
	switch r.Protocol {
	case "A", "B", "C":
	default:
		return fmt.Errorf("protocol %q: want A, B or C", r.Protocol)
	}
	if r.Minor < 0 && r.Device != "" {
		m, err := MinorFromDevice(r.Device)
		if err != nil {
			return err
		}
		r.Minor = m
	}
	if len(r.On) == 0 {
		return errors.New("no 'on:' host sections")
	}
	if len(r.On) > 2 {
		return fmt.Errorf("%d 'on:' hosts: drbdd replicates between two nodes", len(r.On))
	}
	for name, h := range r.On {
		if h.Disk == "" {
			return fmt.Errorf("on %s: missing disk", name)
		}
		if h.MetaDisk == "" {
			h.MetaDisk = "internal"
			r.On[name] = h
		}
		if len(r.On) == 2 && h.Address == "" {
			return fmt.Errorf("on %s: missing address", name)
		}
	}
	for key, val := range map[string]string{
		"after-sb-0pri": r.Net.AfterSB0Pri, "after-sb-1pri": r.Net.AfterSB1Pri,
		"after-sb-2pri": r.Net.AfterSB2Pri, "rr-conflict": r.Net.RRConflict,
		"on-io-error": r.Disk.OnIOError,
	} {
		if err := oneOf(key, val); err != nil {
			return err
		}
	}
	for key, val := range map[string]string{
		"resync-rate": r.Disk.ResyncRate, "c-max-rate": r.Disk.CMaxRate,
		"c-min-rate": r.Disk.CMinRate, "c-fill-target": r.Disk.CFillTarget,
	} {
		if _, err := ParseSize(val); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	if r.Disk.ALExtents < 7 || r.Disk.ALExtents > 65534 {
		return fmt.Errorf("al-extents %d: want 7..65534", r.Disk.ALExtents)
	}
	switch r.Disk.DirectIO {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("direct-io %q: want auto, on or off", r.Disk.DirectIO)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ping-int", r.Net.PingInt}, {"ping-timeout", r.Net.PingTimeout}, {"timeout", r.Net.Timeout}, {"connect-int", r.Net.ConnectInt}} {
		if d.v <= 0 {
			return fmt.Errorf("%s must be positive", d.name)
		}
	}
	// As drbdadm does: the data-socket timeout must fire before the next
	// ping or connect attempt would, or dead peers are detected late.
	if r.Net.Timeout >= r.Net.PingInt || r.Net.Timeout >= r.Net.ConnectInt {
		return fmt.Errorf("timeout %s must be less than ping-int %s and connect-int %s", r.Net.Timeout, r.Net.PingInt, r.Net.ConnectInt)
	}
	return nil
}

// MinorFromDevice extracts N from /dev/nbdN.
func MinorFromDevice(dev string) (int, error) {
	base := filepath.Base(dev)
	if !strings.HasPrefix(base, "nbd") {
		return 0, fmt.Errorf("device %q: want /dev/nbdN", dev)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(base, "nbd"))
	if err != nil || n < 0 || n > 1<<20 {
		return 0, fmt.Errorf("device %q: want /dev/nbdN", dev)
	}
	return n, nil
}

// ParseSize parses DRBD-style sizes with K, M, G, T suffixes (powers of
// 1024; a bare number counts bytes) and returns bytes.
func ParseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size")
	}
	mult := uint64(1)
	switch s[len(s)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a number with optional K, M, G or T", s)
	}
	if n > (1<<63)/mult {
		return 0, fmt.Errorf("size %q too large", s)
	}
	return n * mult, nil
}

// Host returns this node's section and the peer's name and section (empty
// when the resource has a single node).
func (r *Resource) Host(node string) (me Host, peerName string, peer Host, err error) {
	me, ok := r.On[strings.ToLower(node)]
	if !ok {
		names := make([]string, 0, len(r.On))
		for n := range r.On {
			names = append(names, n)
		}
		sort.Strings(names)
		return Host{}, "", Host{}, fmt.Errorf("resource %s: this node %q is not in its 'on:' sections (%s); use --node", r.Name, node, strings.Join(names, ", "))
	}
	for n, h := range r.On {
		if n != strings.ToLower(node) {
			return me, n, h, nil
		}
	}
	return me, "", Host{}, nil
}

// LoadDir parses every *.yaml file in dir.
func LoadDir(dir string) ([]*Resource, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("config dir: %w", err)
		}
	}
	sort.Strings(paths)
	var out []*Resource
	seen := map[string]string{}
	for _, p := range paths {
		r, err := Load(p)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[r.Name]; dup {
			return nil, fmt.Errorf("resource %s defined twice: %s and %s", r.Name, prev, p)
		}
		seen[r.Name] = p
		out = append(out, r)
	}
	return out, nil
}

// Find returns the named resource from dir. It reads <name>.yaml first and
// falls back to scanning every file, because the file name is a convention,
// not a rule.
func Find(dir, name string) (*Resource, error) {
	p := filepath.Join(dir, name+".yaml")
	if _, err := os.Stat(p); err == nil {
		r, err := Load(p)
		if err != nil {
			return nil, err
		}
		if r.Name == name {
			return r, nil
		}
	}
	all, err := LoadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, r := range all {
		if r.Name == name {
			return r, nil
		}
	}
	return nil, fmt.Errorf("'%s' not defined in your config (for this host): no resource %q in %s", name, name, dir)
}
