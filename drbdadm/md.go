package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"os"

	"github.com/spf13/cobra"

	"drbdd/drbdadm/config"
	"drbdd/drbdd/bdev"
	"drbdd/drbdd/meta"
	"drbdd/netlink"
)

// The metadata commands work on the disks directly, as DRBD's drbdmeta
// does, not through the daemon.
func mdCommands(o *opts) []*cobra.Command {
	var force bool
	create := &cobra.Command{
		Use:   "create-md <resource|all>",
		Short: "initialize the metadata area",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.forEachLocal(args[0], func(r *config.Resource, me config.Host) error {
				return createMD(o, r, me, force, os.Stdout)
			})
		},
	}
	create.Flags().BoolVar(&force, "force", false, "overwrite existing metadata or a filesystem")

	show := func(use, short string, fn func(w io.Writer, sb meta.Superblock, md *mdDisk) error) *cobra.Command {
		return &cobra.Command{Use: use + " <resource|all>", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return o.forEachLocal(args[0], func(r *config.Resource, me config.Host) error {
					md, err := openMD(r, me)
					if err != nil {
						return err
					}
					defer md.close()
					sb, _, err := meta.ReadSuperblock(md.meta, md.layout.SuperblockOffsets)
					if err != nil {
						return fmt.Errorf("%s: %s: no valid meta data found: %w", r.Name, me.Disk, err)
					}
					return fn(os.Stdout, sb, md)
				})
			}}
	}
	return []*cobra.Command{
		create,
		show("get-gi", "print the generation identifiers (current:bitmap:history:history:flags)", func(w io.Writer, sb meta.Superblock, _ *mdDisk) error {
			fmt.Fprintln(w, getGI(sb))
			return nil
		}),
		show("show-gi", "explain the generation identifiers", func(w io.Writer, sb meta.Superblock, _ *mdDisk) error {
			showGI(w, sb)
			return nil
		}),
		show("dump-md", "print the metadata in text form", func(w io.Writer, sb meta.Superblock, md *mdDisk) error {
			return dumpMD(w, sb, md)
		}),
	}
}

// forEachLocal runs fn for each resource with this node's host section.
func (o *opts) forEachLocal(arg string, fn func(r *config.Resource, me config.Host) error) error {
	rs, node, err := o.resources(arg)
	if err != nil {
		return err
	}
	var first error
	for _, r := range rs {
		me, _, _, err := r.Host(node)
		if err == nil {
			err = fn(r, me)
		}
		if err != nil {
			if len(rs) == 1 {
				return err
			}
			fmt.Fprintln(os.Stderr, oneLine(err))
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// mdDisk is a resource's data and metadata devices opened for drbdmeta work.
type mdDisk struct {
	data, meta bdev.Device
	layout     meta.Layout
}

func (m *mdDisk) close() {
	m.data.Close()
	if m.meta != m.data {
		m.meta.Close()
	}
}

func openMD(r *config.Resource, me config.Host) (*mdDisk, error) {
	data, err := bdev.OpenFile(me.Disk, bdev.DirectOff)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Name, err)
	}
	m := &mdDisk{data: data, meta: data}
	internal := me.MetaDisk == "internal"
	if !internal {
		if m.meta, err = bdev.OpenFile(me.MetaDisk, bdev.DirectOff); err != nil {
			data.Close()
			return nil, fmt.Errorf("%s: meta-disk: %w", r.Name, err)
		}
	}
	m.layout, err = meta.LayoutFor(internal, data.Size(), m.meta.Size(), r.Disk.ALExtents)
	if err != nil {
		m.close()
		return nil, fmt.Errorf("%s: %s: %w", r.Name, me.Disk, err)
	}
	return m, nil
}

// attachedInDaemon reports whether the running daemon has the resource's
// disk attached; metadata must not be rewritten under it.
func attachedInDaemon(o *opts, res string) bool {
	c, err := netlink.Dial(o.control)
	if err != nil {
		return false
	}
	defer c.Close()
	sts, err := getStatus(o, c, res)
	return err == nil && len(sts) == 1 && sts[0].DiskState != "Diskless"
}

// filesystemAt names a filesystem whose signature is found in the first
// 128 KiB of dev, or returns "".
func filesystemAt(dev bdev.Device) string {
	buf := make([]byte, 128<<10)
	n, _ := dev.ReadAt(buf[:min(int64(len(buf)), dev.Size())], 0)
	buf = buf[:n]
	switch {
	case len(buf) >= 1082 && binary.LittleEndian.Uint16(buf[1080:]) == 0xEF53:
		return "ext2/3/4"
	case len(buf) >= 4 && bytes.Equal(buf[:4], []byte("XFSB")):
		return "xfs"
	case len(buf) >= 65536+72 && bytes.Equal(buf[65536+64:65536+72], []byte("_BHRfS_M")):
		return "btrfs"
	}
	return ""
}

func createMD(o *opts, r *config.Resource, me config.Host, force bool, w io.Writer) error {
	if attachedInDaemon(o, r.Name) {
		return fmt.Errorf("%s: device is attached: run 'drbdadm down %s' first", r.Name, r.Name)
	}
	md, err := openMD(r, me)
	if err != nil {
		return err
	}
	defer md.close()
	if !force {
		if sb, _, err := meta.ReadSuperblock(md.meta, md.layout.SuperblockOffsets); err == nil {
			return fmt.Errorf("%s: %s: valid meta data found (UUIDs %s); use --force to overwrite it", r.Name, me.Disk, sb.UUIDs)
		}
		if fs := filesystemAt(md.data); fs != "" && me.MetaDisk == "internal" {
			return fmt.Errorf("%s: %s holds an %s filesystem whose end the internal meta data would overwrite; use --force, or shrink it to %d KiB first",
				r.Name, me.Disk, fs, md.layout.DataBytes>>10)
		}
	}
	fmt.Fprintf(w, "initializing activity log\n")
	fmt.Fprintf(w, "initializing bitmap (%d KB) to all zero\n", md.layout.BitmapBytes>>10)
	fmt.Fprintf(w, "Writing meta data...\n")
	if err := meta.Create(md.meta, md.layout, meta.NewUUIDs(), meta.RandomUUID()); err != nil {
		return fmt.Errorf("%s: create-md: %w", r.Name, err)
	}
	fmt.Fprintf(w, "New drbd meta data block successfully created.\n")
	return nil
}

// gi flags in the order drbdmeta's get-gi prints them.
var giFlags = []struct {
	f    meta.Flags
	name string
}{
	{meta.MDFConsistent, "consistent"},
	{meta.MDFWasUpToDate, "was-up-to-date"},
	{meta.MDFPrimaryInd, "primary"},
	{meta.MDFConnectedInd, "connected"},
	{meta.MDFFullSync, "full-sync"},
	{meta.MDFPeerOutDated, "peer-out-dated"},
	{meta.MDFCrashedPrimary, "crashed-primary"},
}

func getGI(sb meta.Superblock) string {
	s := sb.UUIDs.String()
	for _, g := range giFlags {
		b := 0
		if sb.Flags&g.f != 0 {
			b = 1
		}
		s += fmt.Sprintf(":%d", b)
	}
	return s
}

func showGI(w io.Writer, sb meta.Superblock) {
	fmt.Fprintf(w, "\n       +--<  Current data generation UUID  >-\n")
	fmt.Fprintf(w, "       |               +--<  Bitmap's base data generation UUID  >-\n")
	fmt.Fprintf(w, "       |               |                 +--<  younger history UUID  >-\n")
	fmt.Fprintf(w, "       |               |                 |         +-<  older history  >-\n")
	fmt.Fprintf(w, "       V               V                 V         V\n")
	fmt.Fprintf(w, "%s\n", getGI(sb))
	for _, g := range giFlags {
		state := "not set"
		if sb.Flags&g.f != 0 {
			state = "set"
		}
		fmt.Fprintf(w, "  %-16s %s\n", g.name, state)
	}
}

func dumpMD(w io.Writer, sb meta.Superblock, md *mdDisk) error {
	fmt.Fprintf(w, "# drbdd meta data dump\n")
	fmt.Fprintf(w, "version \"v08\";\n")
	fmt.Fprintf(w, "uuid {\n    0x%016X; 0x%016X; 0x%016X; 0x%016X;\n    flags 0x%08X; # %s\n}\n",
		sb.UUIDs.Current, sb.UUIDs.Bitmap, sb.UUIDs.History[0], sb.UUIDs.History[1], uint32(sb.Flags), sb.Flags)
	fmt.Fprintf(w, "la-size-sect %d;\n", sb.LaSizeSectors)
	fmt.Fprintf(w, "data-size-bytes %d;\n", md.layout.DataBytes)
	fmt.Fprintf(w, "device-uuid 0x%016X;\n", sb.DeviceUUID)
	fmt.Fprintf(w, "al-extents %d;\n", md.layout.ALExtents)
	fmt.Fprintf(w, "bm-bytes-per-bit %d;\n", meta.BMBlockSize)
	// Count the on-disk bitmap as stored; an unclean activity log would add
	// its extents at the next attach.
	var set int64
	buf := make([]byte, 1<<20)
	for off := int64(0); off < md.layout.BitmapBytes; off += int64(len(buf)) {
		n := min(int64(len(buf)), md.layout.BitmapBytes-off)
		if _, err := md.meta.ReadAt(buf[:n], md.layout.BitmapOffset+off); err != nil {
			return fmt.Errorf("read bitmap: %w", err)
		}
		for _, b := range buf[:n] {
			set += int64(bits.OnesCount8(b))
		}
	}
	fmt.Fprintf(w, "bits-set %d; # %d KiB out of sync\n", set, set*meta.BMBlockSize/1024)
	return nil
}
