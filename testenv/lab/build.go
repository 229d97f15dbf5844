// Package lab is drbdd's two-VM lab: it builds a kernel and an initramfs
// from Debian packages (the cloud kernel, which ships nbd.ko and DRBD
// 8.4's drbd.ko; busybox-static; e2fsprogs; the repository's own static
// binaries), boots qemu VMs with software emulation (no KVM needed), each
// with its own virtio disk and a private virtio network between them, and
// runs commands in them through an agent on a virtio-serial port.
//
// Nothing leaves the machine: the VMs' network is a pair of UDP sockets on
// 127.0.0.1 (qemu's "-netdev socket,udp=...") carrying Ethernet frames
// between the two VMs only, and a VM can be killed and restarted without
// the other noticing more than a link outage. The addresses 10.99.0.N exist
// only on that private link.
//
// Downloads and the unpacked kernel are cached (DefaultCacheDir, or
// $DRBDD_LAB_CACHE), so a second build needs no network and takes seconds.
//
// The tests of this package boot VMs and need root; they run only with
// DRBDD_LAB=1 (scripts/test.sh --step lab). The command lab
// (testenv/lab/cmd/lab, driven by scripts/lab.sh) starts a lab that stays
// up for a user to play with.
package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults of BuildOptions.
const (
	// DefaultCacheDir holds downloaded packages and the unpacked kernel.
	DefaultCacheDir = "/var/cache/drbdd-lab"
	// kernelPattern selects the kernel packages to choose from.
	kernelPattern = `^linux-image-[0-9][^ ]*-cloud-amd64(-unsigned)?$`
)

// GuestModules are the kernel modules the initramfs carries (with their
// dependencies), in the order the VM loads them: virtio_pci before the
// virtio devices, nbd for /dev/nbdX, and DRBD 8.4 for the comparison
// benchmark. Modules built into the kernel are skipped.
var GuestModules = []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "nbd", "libcrc32c", "lru_cache", "drbd"}

// hostTools maps the host programs the build needs to their Debian
// packages.
var hostTools = [][2]string{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"busybox", "busybox-static"},
	{"cpio", "cpio"},
	{"depmod", "kmod"},
	{"mke2fs", "e2fsprogs"},
	{"xz", "xz-utils"},
	{"zstd", "zstd"},
	{"dpkg-deb", "dpkg"},
}

// BuildOptions configures Build. The zero value builds the default image.
type BuildOptions struct {
	// CacheDir holds downloads and the unpacked kernel; empty means
	// $DRBDD_LAB_CACHE or DefaultCacheDir.
	CacheDir string
	// WorkDir receives the staging tree, the binaries and the initramfs;
	// empty means CacheDir/work. Each build stages in a directory of its
	// own and names the initramfs after its content, so that concurrent
	// labs (a test and a kept lab, say) never boot each other's images.
	WorkDir string
	// RepoRoot is the drbdd module root; empty means the module of the
	// current directory (go env GOMOD).
	RepoRoot string
	// Kernel is the kernel package (linux-image-...-cloud-amd64); empty
	// means $DRBDD_LAB_KERNEL or the newest one apt knows, or else the
	// newest one in the cache.
	Kernel string
	// Extra are more files for the initramfs: guest path -> host path.
	Extra map[string]string
	// Fio adds fio and its libraries (large: about 60 libraries).
	Fio bool
	// DRBDUtils adds Debian's drbd-utils (drbdadm, drbdsetup and
	// drbdmeta with their 8.4 variants) for the kernel DRBD comparison
	// benchmark; the package is downloaded into the cache.
	DRBDUtils bool
	// Logf receives progress lines; nil means quiet.
	Logf func(format string, args ...any)
}

// Image is a bootable kernel and initramfs.
type Image struct {
	// Kernel is the path of the kernel (vmlinuz).
	Kernel string `json:"kernel"`
	// Initrd is the path of the gzip-compressed initramfs.
	Initrd string `json:"initrd"`
	// KernelVersion is the kernel release (uname -r in the VM).
	KernelVersion string `json:"kernel_version"`
	// Package is the kernel package it came from.
	Package string `json:"package"`
	// BuildTime is how long Build took.
	BuildTime time.Duration `json:"build_time"`
}

func (o *BuildOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Build builds the image: it installs the host packages that are missing,
// fetches and unpacks the kernel package (or takes both from the cache),
// builds drbdd, drbdadm and the lab's helpers as static binaries, and packs
// the initramfs.
func Build(ctx context.Context, o BuildOptions) (*Image, error) {
	start := time.Now()
	if o.CacheDir == "" {
		o.CacheDir = os.Getenv("DRBDD_LAB_CACHE")
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir
	}
	if o.WorkDir == "" {
		o.WorkDir = filepath.Join(o.CacheDir, "work")
	}
	if o.Kernel == "" {
		o.Kernel = os.Getenv("DRBDD_LAB_KERNEL")
	}
	if o.RepoRoot == "" {
		root, err := repoRoot(ctx)
		if err != nil {
			return nil, err
		}
		o.RepoRoot = root
	}
	for _, d := range []string{o.CacheDir, o.WorkDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := EnsureHostTools(ctx, o.Fio, o.logf); err != nil {
		return nil, err
	}
	pkg, kdir, err := kernelTree(ctx, &o)
	if err != nil {
		return nil, err
	}
	kver, err := onlyDir(filepath.Join(kdir, "lib", "modules"))
	if err != nil {
		return nil, fmt.Errorf("lab: kernel package %s: %w", pkg, err)
	}
	tmp, err := os.MkdirTemp(o.WorkDir, "build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "bin")
	if err := buildBinaries(ctx, o.RepoRoot, bin, o.logf); err != nil {
		return nil, err
	}
	root := filepath.Join(tmp, "root")
	st := &stager{root: root}
	if err := st.base(); err != nil {
		return nil, err
	}
	if err := st.busybox(); err != nil {
		return nil, err
	}
	tools := []string{"/usr/sbin/mke2fs", "/usr/sbin/e2fsck", "/usr/sbin/debugfs", "/usr/sbin/dumpe2fs"}
	if o.Fio {
		tools = append(tools, "/usr/bin/fio")
	}
	for _, t := range tools {
		if err := st.dynamic(ctx, t); err != nil {
			return nil, err
		}
	}
	for _, l := range []string{"/usr/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext2", "/usr/sbin/mkfs.ext3"} {
		if err := st.symlink("mke2fs", l); err != nil {
			return nil, err
		}
	}
	for _, l := range []string{"/usr/sbin/fsck.ext4", "/usr/sbin/fsck.ext2", "/usr/sbin/fsck.ext3"} {
		if err := st.symlink("e2fsck", l); err != nil {
			return nil, err
		}
	}
	if err := st.copyFile("/etc/mke2fs.conf", "/etc/mke2fs.conf", 0o644); err != nil {
		return nil, err
	}
	for _, b := range []string{"drbdd", "drbdadm", "labagent", "labio", "nbdattach"} {
		if err := st.copyFile(filepath.Join(bin, b), "/usr/sbin/"+b, 0o755); err != nil {
			return nil, err
		}
	}
	if err := st.copyFile(filepath.Join(bin, "invm.test"), "/usr/local/bin/invm.test", 0o755); err != nil {
		return nil, err
	}
	if o.DRBDUtils {
		if err := st.drbdUtils(ctx, &o); err != nil {
			return nil, err
		}
	}
	for guest, host := range o.Extra {
		if err := st.copyFile(host, guest, 0o755); err != nil {
			return nil, err
		}
	}
	loaded, err := st.modules(ctx, kdir, kver, GuestModules)
	if err != nil {
		return nil, err
	}
	if err := st.scripts(loaded); err != nil {
		return nil, err
	}
	initrd, err := packInitramfs(ctx, root, o.WorkDir)
	if err != nil {
		return nil, err
	}
	img := &Image{
		Kernel:        filepath.Join(kdir, "boot", "vmlinuz-"+kver),
		Initrd:        initrd,
		KernelVersion: kver,
		Package:       pkg,
		BuildTime:     time.Since(start),
	}
	if _, err := os.Stat(img.Kernel); err != nil {
		return nil, fmt.Errorf("lab: kernel package %s has no vmlinuz: %w", pkg, err)
	}
	o.logf("lab: image built in %v: %s, initramfs %s", img.BuildTime.Round(time.Millisecond), pkg, initrd)
	return img, nil
}

// repoRoot returns the directory of the current Go module.
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("lab: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("lab: not inside the drbdd module (set BuildOptions.RepoRoot)")
	}
	return filepath.Dir(mod), nil
}

// run runs a command and returns its standard output; the error carries
// its standard error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// EnsureHostTools installs the Debian packages of the host programs the lab
// needs that are missing (and fio's if withFio). It runs apt-get update
// only if the install fails without it.
func EnsureHostTools(ctx context.Context, withFio bool, logf func(string, ...any)) error {
	tools := slices.Clone(hostTools)
	if withFio {
		tools = append(tools, [2]string{"fio", "fio"})
	}
	var missing []string
	for _, t := range tools {
		p, err := exec.LookPath(t[0])
		// Debian's plain busybox package is dynamically linked: the
		// initramfs needs busybox-static (which replaces it).
		if err == nil && t[1] == "busybox-static" && !isStatic(p) {
			err = errors.New("not static")
		}
		if err != nil && !slices.Contains(missing, t[1]) {
			missing = append(missing, t[1])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if logf != nil {
		logf("lab: installing %s", strings.Join(missing, " "))
	}
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)
	if _, err := run(ctx, "", env, "apt-get", args...); err != nil {
		if _, uerr := run(ctx, "", env, "apt-get", "update", "-q"); uerr != nil {
			return fmt.Errorf("lab: apt-get update: %w", uerr)
		}
		if _, err := run(ctx, "", env, "apt-get", args...); err != nil {
			return fmt.Errorf("lab: installing %s: %w", strings.Join(missing, " "), err)
		}
	}
	return nil
}

// kernelTree returns the kernel package to use and the directory it is
// unpacked in, downloading and unpacking it unless cached.
func kernelTree(ctx context.Context, o *BuildOptions) (string, string, error) {
	debs := filepath.Join(o.CacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", "", err
	}
	pkg := o.Kernel
	if pkg == "" {
		pkg = newestKernelPackage(ctx, debs)
		if pkg == "" {
			// A fresh machine may have no package lists yet.
			o.logf("lab: no cloud kernel known to apt: apt-get update")
			if _, err := run(ctx, "", []string{"DEBIAN_FRONTEND=noninteractive"}, "apt-get", "update", "-q"); err != nil {
				return "", "", fmt.Errorf("lab: apt-get update: %w", err)
			}
			pkg = newestKernelPackage(ctx, debs)
		}
		if pkg == "" {
			return "", "", errors.New("lab: no linux-image-*-cloud-amd64 package known to apt or cached (run apt-get update, or set DRBDD_LAB_KERNEL)")
		}
	}
	deb, err := fetchDeb(ctx, debs, pkg, o.logf)
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(o.CacheDir, "kernel", pkg)
	stamp := filepath.Join(dir, ".unpacked-"+filepath.Base(deb))
	if _, err := os.Stat(stamp); err == nil {
		return pkg, dir, nil
	}
	o.logf("lab: unpacking %s", filepath.Base(deb))
	if err := os.RemoveAll(dir); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if _, err := run(ctx, "", nil, "dpkg-deb", "-x", deb, dir); err != nil {
		return "", "", fmt.Errorf("lab: %w", err)
	}
	// The package ships no modules.dep: the postinst would make it.
	kver, err := onlyDir(filepath.Join(dir, "lib", "modules"))
	if err != nil {
		return "", "", fmt.Errorf("lab: kernel package %s: %w", pkg, err)
	}
	if _, err := run(ctx, "", nil, "depmod", "-b", dir, kver); err != nil {
		return "", "", fmt.Errorf("lab: %w", err)
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		return "", "", err
	}
	return pkg, dir, nil
}

// fetchDeb returns the cached .deb of pkg in debs, downloading it with
// apt-get download first if needed.
func fetchDeb(ctx context.Context, debs, pkg string, logf func(string, ...any)) (string, error) {
	deb, err := cachedDeb(debs, pkg)
	if err != nil || deb != "" {
		return deb, err
	}
	logf("lab: downloading %s", pkg)
	// apt drops privileges to _apt for downloads, which cannot write to a
	// root-owned cache; run it as root.
	if _, err := run(ctx, debs, nil, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return "", fmt.Errorf("lab: %w", err)
	}
	if deb, err = cachedDeb(debs, pkg); err != nil || deb == "" {
		return "", fmt.Errorf("lab: apt-get download %s left no .deb in %s", pkg, debs)
	}
	return deb, nil
}

// drbdUtilsPackage is the Debian package of kernel DRBD's tools.
const drbdUtilsPackage = "drbd-utils"

// drbdUtils installs drbd-utils' tools for the 8.4 module with their
// libraries, and the directories they use: /lib/drbd/drbdadm-84 (kernel
// DRBD's drbdadm; the package's /sbin/drbdadm dispatcher is left out, as
// drbdd's drbdadm is the lab's), /lib/drbd/drbdsetup-84, drbdsetup and
// drbdmeta (in /sbin and, for drbdadm-84, next to it).
func (s *stager) drbdUtils(ctx context.Context, o *BuildOptions) error {
	debs := filepath.Join(o.CacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return err
	}
	deb, err := fetchDeb(ctx, debs, drbdUtilsPackage, o.logf)
	if err != nil {
		return err
	}
	dir := filepath.Join(o.CacheDir, "pkgs", strings.TrimSuffix(filepath.Base(deb), ".deb"))
	if _, err := os.Stat(filepath.Join(dir, "sbin", "drbdmeta")); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if _, err := run(ctx, "", nil, "dpkg-deb", "-x", deb, dir); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "lib", "drbd", "drbdadm-84")); err != nil {
		return fmt.Errorf("lab: %s has no 8.4 tools: %w", filepath.Base(deb), err)
	}
	for guest, host := range map[string]string{
		"/lib/drbd/drbdadm-84":   "/lib/drbd/drbdadm-84",
		"/lib/drbd/drbdsetup-84": "/lib/drbd/drbdsetup-84",
		"/lib/drbd/drbdmeta":     "/sbin/drbdmeta",
		"/sbin/drbdmeta":         "/sbin/drbdmeta",
		"/sbin/drbdsetup":        "/sbin/drbdsetup",
	} {
		if err := s.dynamicFrom(ctx, filepath.Join(dir, host), guest); err != nil {
			return err
		}
	}
	for _, d := range []string{"/var/lib/drbd", "/var/run/drbd", "/var/lock", "/etc/drbd.d"} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// newestKernelPackage picks the newest cloud kernel apt knows, or failing
// that (no package lists) the newest cached one.
func newestKernelPackage(ctx context.Context, debs string) string {
	var names []string
	if out, err := run(ctx, "", nil, "apt-cache", "search", "--names-only", kernelPattern); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 && !strings.HasSuffix(f[0], "-dbg") {
				names = append(names, f[0])
			}
		}
	}
	if len(names) == 0 {
		files, _ := filepath.Glob(filepath.Join(debs, "linux-image-*-cloud-amd64*_*.deb"))
		for _, f := range files {
			names = append(names, strings.SplitN(filepath.Base(f), "_", 2)[0])
		}
	}
	return pickNewest(names)
}

// pickNewest returns the package of the newest kernel among names,
// preferring the signed package to the -unsigned one of the same version
// (both carry the same modules); "" if names is empty.
func pickNewest(names []string) string {
	if len(names) == 0 {
		return ""
	}
	names = slices.Clone(names)
	slices.SortFunc(names, func(a, b string) int {
		if c := compareVersions(kernelVersionOf(a), kernelVersionOf(b)); c != 0 {
			return c
		}
		return len(b) - len(a)
	})
	return names[len(names)-1]
}

// kernelVersionOf extracts "6.12.117+deb12" from a package name.
func kernelVersionOf(pkg string) string {
	v := strings.TrimPrefix(pkg, "linux-image-")
	v = strings.TrimSuffix(v, "-unsigned")
	return strings.TrimSuffix(v, "-cloud-amd64")
}

// compareVersions compares dotted and dashed version strings the way
// sort -V does for these names: numeric runs as numbers, the rest as text.
func compareVersions(a, b string) int {
	for a != "" || b != "" {
		na, ra := leadingNumber(a)
		nb, rb := leadingNumber(b)
		if na != nb {
			if na < nb {
				return -1
			}
			return 1
		}
		ta, ra2 := leadingText(ra)
		tb, rb2 := leadingText(rb)
		if c := strings.Compare(ta, tb); c != 0 {
			return c
		}
		if ra2 == a && rb2 == b {
			break
		}
		a, b = ra2, rb2
	}
	return 0
}

func leadingNumber(s string) (int, string) {
	n, i := 0, 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		n = n*10 + int(s[i]-'0')
		i++
	}
	return n, s[i:]
}

func leadingText(s string) (string, string) {
	i := 0
	for i < len(s) && (s[i] < '0' || s[i] > '9') {
		i++
	}
	return s[:i], s[i:]
}

// cachedDeb returns the cached .deb of pkg, or "".
func cachedDeb(dir, pkg string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(files) == 0 {
		return "", err
	}
	slices.Sort(files)
	return files[len(files)-1], nil
}

// onlyDir returns the name of the single directory in dir.
func onlyDir(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("%s holds %d directories, want 1", dir, len(dirs))
	}
	return dirs[0], nil
}

// buildBinaries builds the static binaries the VMs run.
func buildBinaries(ctx context.Context, repo, bin string, logf func(string, ...any)) error {
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	logf("lab: building static binaries")
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}
	if _, err := run(ctx, repo, env, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin+"/",
		"./drbdd", "./drbdadm", "./testenv/lab/cmd/labagent", "./testenv/lab/cmd/labio", "./testenv/lab/cmd/nbdattach"); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if _, err := run(ctx, repo, env, "go", "test", "-c", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(bin, "invm.test"), "./testenv/lab/invm"); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// stager fills the initramfs staging tree.
type stager struct {
	root string
}

// path maps a guest path into the staging tree.
func (s *stager) path(guest string) string { return filepath.Join(s.root, guest) }

// base creates the directory skeleton and the static configuration.
func (s *stager) base() error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "lib", "lib64", "etc", "proc", "sys",
		"dev", "run", "tmp", "root", "mnt", "var/lib/drbdd", "var/log", "etc/drbdd"} {
		if err := os.MkdirAll(s.path(d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"/etc/passwd":   "root::0:0:root:/root:/bin/sh\n",
		"/etc/group":    "root:x:0:\n",
		"/etc/hosts":    "127.0.0.1 localhost\n10.99.0.1 a\n10.99.0.2 b\n",
		"/etc/profile":  "export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/bin\nexport PS1='\\h:\\w# '\ncd /root\n",
		"/etc/fstab":    "",
		"/etc/shells":   "/bin/sh\n",
		"/etc/issue":    "drbdd lab\n",
		"/etc/inittab":  inittab,
		"/etc/hostname": "lab\n",
	}
	for name, content := range files {
		if err := os.WriteFile(s.path(name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// busybox installs busybox-static and a link for each applet.
func (s *stager) busybox() error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	if !isStatic(bb) {
		return fmt.Errorf("lab: %s is not static: install busybox-static", bb)
	}
	if err := s.copyFile(bb, "/bin/busybox", 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("lab: busybox --list-full: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		guest := "/" + applet
		if guest == "/bin/busybox" {
			continue
		}
		if err := s.symlink("/bin/busybox", guest); err != nil {
			return err
		}
	}
	return nil
}

// isStatic reports whether the program at path is statically linked.
func isStatic(path string) bool {
	out, _ := exec.Command("ldd", path).CombinedOutput()
	return bytes.Contains(out, []byte("not a dynamic executable"))
}

// symlink creates the link guest -> target, replacing what was there.
func (s *stager) symlink(target, guest string) error {
	p := s.path(guest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(target, p)
}

// copyFile copies the host file host (following links) to guest. An
// existing link at guest (a busybox applet) is removed first, so that the
// copy does not write through it into busybox itself.
func (s *stager) copyFile(host, guest string, mode os.FileMode) error {
	p := s.path(guest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	in, err := os.Open(host)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// dynamic installs a dynamically linked host program with the libraries
// ldd lists for it.
func (s *stager) dynamic(ctx context.Context, prog string) error {
	return s.dynamicFrom(ctx, prog, prog)
}

// dynamicFrom installs the dynamically linked program host as guest, with
// the host libraries ldd lists for it.
func (s *stager) dynamicFrom(ctx context.Context, host, guest string) error {
	if err := s.copyFile(host, guest, 0o755); err != nil {
		return err
	}
	out, err := run(ctx, "", nil, "ldd", host)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the dynamic loader
		case strings.Contains(l, "not found"):
			return fmt.Errorf("lab: %s needs a library the host lacks: %s", host, strings.TrimSpace(l))
		default:
			continue
		}
		if _, err := os.Stat(s.path(lib)); err == nil {
			continue
		}
		if err := s.copyFile(lib, lib, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// modules installs the wanted modules and their dependencies, uncompressed,
// runs depmod, and returns the module names in load order (dependencies
// first; built-in ones left out).
func (s *stager) modules(ctx context.Context, kdir, kver string, want []string) ([]string, error) {
	src := filepath.Join(kdir, "lib", "modules", kver)
	deps, err := readModulesDep(filepath.Join(src, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(src, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				builtin[moduleName(l)] = true
			}
		}
	}
	byName := map[string]string{}
	for path := range deps {
		byName[moduleName(path)] = path
	}
	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		name = strings.ReplaceAll(name, "-", "_")
		if seen[name] {
			return nil
		}
		seen[name] = true
		path, ok := byName[name]
		if !ok {
			if builtin[name] {
				return nil
			}
			return fmt.Errorf("lab: kernel %s has no module %s", kver, name)
		}
		for _, d := range deps[path] {
			if err := visit(moduleName(d)); err != nil {
				return err
			}
		}
		order = append(order, name)
		return nil
	}
	for _, m := range want {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	dst := filepath.Join("/lib/modules", kver)
	for _, name := range order {
		rel := byName[name]
		if err := s.module(ctx, filepath.Join(src, rel), filepath.Join(dst, stripCompression(rel))); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if _, err := os.Stat(filepath.Join(src, f)); err == nil {
			if err := s.copyFile(filepath.Join(src, f), filepath.Join(dst, f), 0o644); err != nil {
				return nil, err
			}
		}
	}
	if _, err := run(ctx, "", nil, "depmod", "-b", s.root, kver); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	return order, nil
}

// module copies one module, decompressing it so that busybox insmod and
// any finit_module caller can load it.
func (s *stager) module(ctx context.Context, host, guest string) error {
	var tool string
	switch {
	case strings.HasSuffix(host, ".xz"):
		tool = "xz"
	case strings.HasSuffix(host, ".zst"):
		tool = "zstd"
	case strings.HasSuffix(host, ".gz"):
		tool = "gzip"
	default:
		return s.copyFile(host, guest, 0o644)
	}
	out, err := run(ctx, "", nil, tool, "-dc", host)
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	p := s.path(guest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, out, 0o644)
}

// readModulesDep parses modules.dep: "path: dep dep ...".
func readModulesDep(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lab: %w (the kernel package has no modules.dep? run depmod)", err)
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// moduleName turns "kernel/drivers/block/nbd.ko.xz" into "nbd".
func moduleName(path string) string {
	base := filepath.Base(stripCompression(path))
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

func stripCompression(path string) string {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		path = strings.TrimSuffix(path, ext)
	}
	return path
}

// scripts writes /init and /etc/rc.sysinit.
func (s *stager) scripts(modules []string) error {
	if err := os.WriteFile(s.path("/init"), []byte(initScript), 0o755); err != nil {
		return err
	}
	rc := strings.Replace(rcSysinit, "@MODULES@", strings.Join(modules, " "), 1)
	return os.WriteFile(s.path("/etc/rc.sysinit"), []byte(rc), 0o755)
}

// packInitramfs writes the staging tree as a gzip-compressed newc cpio
// archive into dir, named after its content (initrd-HASH.gz), and returns
// its path. Images older than a day are removed (a VM reads its image
// only when it boots).
func packInitramfs(ctx context.Context, root, dir string) (string, error) {
	f, err := os.CreateTemp(dir, "initrd-*.tmp")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	script := `find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 -n > "$1"`
	if _, err := run(ctx, root, nil, "sh", "-c", script, "sh", tmp); err != nil {
		return "", fmt.Errorf("lab: packing the initramfs: %w", err)
	}
	sum, err := fileSHA256(tmp)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "initrd-"+sum[:16]+".gz")
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	now := time.Now()
	_ = os.Chtimes(out, now, now)
	old, _ := filepath.Glob(filepath.Join(dir, "initrd*.gz"))
	for _, p := range old {
		if fi, err := os.Stat(p); err == nil && p != out && now.Sub(fi.ModTime()) > 24*time.Hour {
			os.Remove(p)
		}
	}
	return out, nil
}

// fileSHA256 returns the hex SHA-256 of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// initScript is /init: the kernel runs it first. It mounts what busybox
// init needs and hands over to it.
const initScript = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec /bin/busybox init
`

// inittab starts the lab: rc.sysinit once, then the agent and a shell on
// the serial console, both respawned.
const inittab = `::sysinit:/etc/rc.sysinit
::respawn:/usr/sbin/labagent
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
`

// rcSysinit configures the VM from the kernel command line: drbdd.node
// (hostname), drbdd.ip (address of eth0, CIDR).
const rcSysinit = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/drbdd /var/lib/drbdd
for m in @MODULES@; do
	modprobe "$m" || echo "rc.sysinit: modprobe $m failed" >/dev/console
done
node=lab ip=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	drbdd.node=*) node=${arg#drbdd.node=} ;;
	drbdd.ip=*) ip=${arg#drbdd.ip=} ;;
	esac
done
hostname "$node"
echo "$node" >/etc/hostname
ip link set lo up
if [ -n "$ip" ] && ip link show eth0 >/dev/null 2>&1; then
	ip addr add "$ip" dev eth0
	ip link set eth0 up
fi
echo "rc.sysinit: $node up after $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
`
