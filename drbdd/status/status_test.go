package status

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestRenderMatchesProcDrbd(t *testing.T) {
	got := string(Render([]Minor{
		{Minor: 0, ConnState: "Connected", Role: "Primary", PeerRole: "Secondary", Disk: "UpToDate", PeerDisk: "UpToDate",
			Protocol: 'C', NetSend: 1024, DiskWrite: 1024, DiskRead: 8, AppPending: 1, Epochs: 1, WriteOrdering: 'f'},
		{Minor: 2, Unconfigured: true},
		{Minor: 3, ConnState: "StandAlone", Role: "Secondary", PeerRole: "Unknown", Disk: "Inconsistent", PeerDisk: "DUnknown",
			UserIsp: true, OutOfSync: 4096},
	}))
	want := "version: 8.4.11 (api:1/proto:86-101)\n" +
		"srcversion: drbdd\n" +
		" 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n" +
		"    ns:1024 nr:0 dw:1024 dr:8 al:0 bm:0 lo:0 pe:0 ua:0 ap:1 ep:1 wo:f oos:0\n" +
		"\n" +
		" 2: cs:Unconfigured\n" +
		" 3: cs:StandAlone ro:Secondary/Unknown ds:Inconsistent/DUnknown   r--u--\n" +
		"    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:0 wo:f oos:4096\n"
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

// Grammar is the /proc/drbd grammar the integration tests also check.
var Grammar = regexp.MustCompile(`^version: \S+ \(api:\d+/proto:\d+-\d+\)\n[^\n]*\n(( ?\d+: cs:\w+ ro:\w+/\w+ ds:\w+/\w+ [ ABC] [rs][a-][p-][u-][-a-z][-s]\n    ns:\d+ nr:\d+ dw:\d+ dr:\d+ al:\d+ bm:\d+ lo:\d+ pe:\d+ ua:\d+ ap:\d+ ep:\d+ wo:[fdn] oos:\d+\n(\t[^\n]*\n)*)|( ?\d+: cs:Unconfigured\n)|\n)*$`)

func TestGrammar(t *testing.T) {
	out := Render([]Minor{{Minor: 1, ConnState: "WFConnection", Role: "Secondary", PeerRole: "Unknown", Disk: "UpToDate", PeerDisk: "DUnknown", Protocol: 'C',
		Progress: "\t[>....................] sync'ed:  0.1% (100/100)K\n\tfinish: 0:00:01 speed: 1 (1) K/sec\n"}})
	if !Grammar.Match(out) {
		t.Fatalf("does not match grammar:\n%s", out)
	}
}

func TestWriteAtomic(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "status")
	if err := WriteAtomic(p, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(p, []byte("bb")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "bb" {
		t.Fatalf("got %q", b)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
}
