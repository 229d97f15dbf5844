package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const good = `resource: r0
protocol: C
device: /dev/nbd3
net:
  shared-secret: "s3cret"
  ping-timeout: 700ms
on:
  alice:
    address: 127.0.0.1:7789
    disk: /tmp/a.img
    nbd-listen: 127.0.0.1:10809
  bob:
    address: 127.0.0.2:7789
    disk: /tmp/b.img
    meta-disk: /tmp/b.meta
`

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadGood(t *testing.T) {
	dir := t.TempDir()
	r, err := Load(write(t, dir, "r0.yaml", good))
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "r0" || r.Minor != 3 || r.Net.SharedSecret != "s3cret" {
		t.Fatalf("parsed %+v", r)
	}
	if r.Net.PingTimeout != 700*time.Millisecond || r.Net.PingInt != 10*time.Second {
		t.Fatalf("durations: %v %v", r.Net.PingTimeout, r.Net.PingInt)
	}
	if r.Disk.ALExtents != 1237 || r.Net.AfterSB0Pri != "disconnect" {
		t.Fatalf("defaults not applied: %+v", r.Disk)
	}
	me, peerName, peer, err := r.Host("alice")
	if err != nil || me.MetaDisk != "internal" || peerName != "bob" || peer.MetaDisk != "/tmp/b.meta" {
		t.Fatalf("Host: %+v %q %+v %v", me, peerName, peer, err)
	}
	if _, _, _, err := r.Host("carol"); err == nil || !strings.Contains(err.Error(), "not in its 'on:' sections") {
		t.Fatalf("unknown node: %v", err)
	}
	found, err := Find(dir, "r0")
	if err != nil || found.Name != "r0" {
		t.Fatalf("Find: %v", err)
	}
	if _, err := Find(dir, "r9"); err == nil || !strings.Contains(err.Error(), "not defined") {
		t.Fatalf("Find unknown: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"bad yaml":      {"resource: r0\non:\n  alice: [\n", "line"},
		"unknown key":   {good + "bogus: 1\n", "bogus"},
		"protocol":      {strings.Replace(good, "protocol: C", "protocol: D", 1), "protocol"},
		"no disk":       {strings.Replace(good, "    disk: /tmp/a.img\n", "", 1), "missing disk"},
		"after-sb":      {strings.Replace(good, "net:\n", "net:\n  after-sb-0pri: merge\n", 1), "after-sb-0pri"},
		"bad rate":      {good + "disk:\n  resync-rate: fast\n", "resync-rate"},
		"bad device":    {strings.Replace(good, "/dev/nbd3", "/dev/sda", 1), "/dev/nbdN"},
		"timeout order": {strings.Replace(good, "net:\n", "net:\n  timeout: 20s\n", 1), "timeout"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := write(t, t.TempDir(), "r0.yaml", c.body)
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("got %v, want error naming %s and containing %q", err, p, c.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"100M": 100 << 20, "250k": 250 << 10, "4096": 4096, "1G": 1 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "M", "-1", "1X", "99999999999999999999T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}
