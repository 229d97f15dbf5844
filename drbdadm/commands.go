package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"drbdd/drbdadm/config"
	"drbdd/netlink"
)

// minorAuto asks the daemon to choose a free minor.
const minorAuto = ^uint32(0)

func commands(o *opts) []*cobra.Command {
	one := cobra.ExactArgs(1)
	simple := func(use, short string, fn func(c *netlink.Client, r *config.Resource, node string) error) *cobra.Command {
		return &cobra.Command{Use: use + " <resource|all>", Short: short, Args: one,
			RunE: func(cmd *cobra.Command, args []string) error { return o.forEach(args[0], fn) }}
	}

	var force bool
	primary := simple("primary", "promote to Primary", func(c *netlink.Client, r *config.Resource, node string) error {
		_, err := o.do(c, r.Name, &netlink.Request{Command: netlink.Primary, Role: &netlink.SetRoleParms{AssumeUptodate: force}})
		return err
	})
	primary.Flags().BoolVar(&force, "force", false, "declare the local data UpToDate (initial sync source, or no peer)")

	var detachForce bool
	detach := simple("detach", "detach the backing disk", func(c *netlink.Client, r *config.Resource, node string) error {
		_, err := o.do(c, r.Name, &netlink.Request{Command: netlink.Detach, Detach: &netlink.DetachParms{Force: detachForce}})
		return err
	})
	detach.Flags().BoolVar(&detachForce, "force", false, "detach even if I/O is pending")

	var discard bool
	connectCmd := simple("connect", "connect to the peer", func(c *netlink.Client, r *config.Resource, node string) error {
		return connect(o, c, r, node, discard)
	})
	connectCmd.Flags().BoolVar(&discard, "discard-my-data", false, "resolve a split brain by making this node the SyncTarget")
	var clearBitmap bool
	newUUID := simple("new-current-uuid", "start a new data generation", func(c *netlink.Client, r *config.Resource, node string) error {
		_, err := o.do(c, r.Name, &netlink.Request{Command: netlink.NewCurrentUUID, NewCUUID: &netlink.NewCUUIDParms{ClearBitmap: clearBitmap}})
		return err
	})
	newUUID.Flags().BoolVar(&clearBitmap, "clear-bitmap", false, "skip the initial sync of two just-created disks")
	plain := func(use, short string, cmd netlink.Command) *cobra.Command {
		return simple(use, short, func(c *netlink.Client, r *config.Resource, node string) error {
			_, err := o.do(c, r.Name, &netlink.Request{Command: cmd})
			return err
		})
	}
	return append(mdCommands(o),
		connectCmd,
		newUUID,
		plain("disconnect", "disconnect from the peer (StandAlone)", netlink.Disconnect),
		plain("verify", "start an online verify against the peer", netlink.StartOV),
		plain("pause-sync", "pause a resync", netlink.PauseSync),
		plain("resume-sync", "resume a paused resync", netlink.ResumeSync),
		plain("invalidate", "discard local data and resync it from the peer", netlink.Invalidate),
		plain("invalidate-remote", "discard the peer's data and resync it from here", netlink.InvalidatePeer),
		plain("outdate", "mark the local data Outdated", netlink.Outdate),
		simple("up", "create the resource, attach its disk and connect", func(c *netlink.Client, r *config.Resource, node string) error {
			return up(o, c, r, node)
		}),
		simple("down", "take the resource down", func(c *netlink.Client, r *config.Resource, node string) error {
			_, err := o.do(c, r.Name, &netlink.Request{Command: netlink.Down})
			return err
		}),
		simple("attach", "attach the backing disk", func(c *netlink.Client, r *config.Resource, node string) error {
			return attach(o, c, r, node)
		}),
		detach,
		primary,
		simple("secondary", "demote to Secondary", func(c *netlink.Client, r *config.Resource, node string) error {
			_, err := o.do(c, r.Name, &netlink.Request{Command: netlink.Secondary})
			return err
		}),
		simple("role", "show local/peer role", func(c *netlink.Client, r *config.Resource, node string) error {
			return showState(o, c, r.Name, func(s netlink.StateInfo) string { return s.Role + "/" + s.PeerRole })
		}),
		simple("cstate", "show connection state", func(c *netlink.Client, r *config.Resource, node string) error {
			return showState(o, c, r.Name, func(s netlink.StateInfo) string { return s.ConnState })
		}),
		simple("dstate", "show local/peer disk state", func(c *netlink.Client, r *config.Resource, node string) error {
			return showState(o, c, r.Name, func(s netlink.StateInfo) string { return s.DiskState + "/" + s.PeerDiskState })
		}),
		statusCmd(o),
		eventsCmd(o),
		dumpCmd(o),
	)
}

// diskConf builds the attach request's disk configuration.
func diskConf(r *config.Resource, me config.Host) (*netlink.DiskConf, error) {
	dc := &netlink.DiskConf{
		BackingDev:   me.Disk,
		MetaInternal: me.MetaDisk == "internal",
		OnIOError:    r.Disk.OnIOError,
		ALExtents:    uint32(r.Disk.ALExtents),
		CPlanAhead:   time.Duration(r.Disk.CPlanAhead) * 100 * time.Millisecond,
		DirectIO:     r.Disk.DirectIO,
		DiskFlushes:  r.Disk.DiskFlushes,
		Fencing:      "dont-care",
	}
	if !dc.MetaInternal {
		dc.MetaDev = me.MetaDisk
	}
	var err error
	sizes := []struct {
		dst *uint64
		val string
	}{{&dc.ResyncRate, r.Disk.ResyncRate}, {&dc.CFillTarget, r.Disk.CFillTarget}, {&dc.CMaxRate, r.Disk.CMaxRate}, {&dc.CMinRate, r.Disk.CMinRate}}
	for _, s := range sizes {
		if *s.dst, err = config.ParseSize(s.val); err != nil {
			return nil, err
		}
	}
	return dc, nil
}

func attach(o *opts, c *netlink.Client, r *config.Resource, node string) error {
	me, _, _, err := r.Host(node)
	if err != nil {
		return err
	}
	dc, err := diskConf(r, me)
	if err != nil {
		return err
	}
	_, err = o.do(c, r.Name, &netlink.Request{Command: netlink.Attach, Disk: dc})
	return err
}

// up performs what `drbdadm up` does: new-resource, new-minor, attach
// (and connect, when the resource has a peer).
func up(o *opts, c *netlink.Client, r *config.Resource, node string) error {
	me, _, _, err := r.Host(node)
	if err != nil {
		return err
	}
	if _, err := o.do(c, r.Name, &netlink.Request{Command: netlink.NewResource, ResOpts: &netlink.ResOpts{}}); err != nil {
		return err
	}
	minor := minorAuto
	if r.Minor >= 0 {
		minor = uint32(r.Minor)
	}
	dev := &netlink.DeviceConf{Minor: minor, KernelDevice: r.Device, NBDListen: me.NBDListen}
	if _, err := o.do(c, r.Name, &netlink.Request{Command: netlink.NewMinor, Device: dev}); err != nil {
		return err
	}
	if err := attach(o, c, r, node); err != nil {
		return err
	}
	if _, peerName, _, _ := r.Host(node); peerName == "" {
		return nil // a single-node resource has nobody to connect to
	}
	return connect(o, c, r, node, false)
}

// netConf builds the connect request's net configuration.
func netConf(r *config.Resource, node string) (*netlink.NetConf, error) {
	me, peerName, peer, err := r.Host(node)
	if err != nil {
		return nil, err
	}
	if peerName == "" {
		return nil, fmt.Errorf("%s: has no peer to connect to", r.Name)
	}
	n := r.Net
	return &netlink.NetConf{
		SharedSecret: n.SharedSecret, CramHMACAlg: n.CramHMACAlg,
		VerifyAlg: n.VerifyAlg, CsumsAlg: n.CsumsAlg,
		Protocol:   uint32(r.Protocol[0]-'A') + 1,
		ConnectInt: n.ConnectInt, Timeout: n.Timeout, PingInt: n.PingInt, PingTimeout: n.PingTimeout,
		KoCount: uint32(n.KoCount), MaxBuffers: uint32(n.MaxBuffers), MaxEpochSize: uint32(n.MaxEpochSize),
		AfterSB0Pri: n.AfterSB0Pri, AfterSB1Pri: n.AfterSB1Pri, AfterSB2Pri: n.AfterSB2Pri, RRConflict: n.RRConflict,
		AllowTwoPrimaries: n.AllowTwoPrimaries,
		PeerName:          peerName, MyAddr: me.Address, PeerAddr: peer.Address,
	}, nil
}

func connect(o *opts, c *netlink.Client, r *config.Resource, node string, discard bool) error {
	nc, err := netConf(r, node)
	if err != nil {
		return err
	}
	nc.DiscardMyData = discard
	_, err = o.do(c, r.Name, &netlink.Request{Command: netlink.Connect, Net: nc, Connect: &netlink.ConnectParms{DiscardMyData: discard}})
	return err
}

// getStatus asks the daemon for one resource's state ("" for all).
func getStatus(o *opts, c *netlink.Client, res string) ([]netlink.StateInfo, error) {
	rep, err := o.do(c, res, &netlink.Request{Command: netlink.GetStatus, Ctx: netlink.CfgContext{ResourceName: res}})
	if err != nil {
		return nil, err
	}
	return rep.States, nil
}

func showState(o *opts, c *netlink.Client, res string, f func(netlink.StateInfo) string) error {
	sts, err := getStatus(o, c, res)
	if err != nil {
		return err
	}
	for _, s := range sts {
		fmt.Println(f(s))
	}
	return nil
}

func statusCmd(o *opts) *cobra.Command {
	return &cobra.Command{
		Use:   "status [resource|all]",
		Short: "show resource status (DRBD 9 layout)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res := optionalResource(args)
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			sts, err := getStatus(o, c, res)
			if err != nil {
				return err
			}
			for _, s := range sts {
				writeStatus(os.Stdout, s)
			}
			return nil
		},
	}
}

// writeStatus prints one resource like DRBD 9's `drbdadm status`.
func writeStatus(w io.Writer, s netlink.StateInfo) {
	fmt.Fprintf(w, "%s role:%s\n", s.ResourceName, s.Role)
	fmt.Fprintf(w, "  disk:%s", s.DiskState)
	if s.DiskState == "Inconsistent" && s.RsTotal > 0 {
		fmt.Fprintf(w, " done:%.2f", done(s))
	}
	if s.NBDClients > 0 {
		fmt.Fprintf(w, " open:yes")
	}
	fmt.Fprintln(w)
	peer := s.PeerName
	if peer == "" {
		peer = "peer"
	}
	switch s.ConnState {
	case "StandAlone", "Unconnected", "WFConnection", "Disconnecting", "Timeout", "BrokenPipe", "NetworkFailure", "ProtocolError", "TearDown", "WFReportParams":
		name := s.ConnState
		if name == "WFConnection" || name == "Unconnected" || name == "WFReportParams" {
			name = "Connecting"
		}
		if s.PeerName != "" || s.ConnState != "StandAlone" {
			fmt.Fprintf(w, "  %s connection:%s\n", peer, name)
		}
	default:
		fmt.Fprintf(w, "  %s role:%s\n", peer, s.PeerRole)
		fmt.Fprintf(w, "    ")
		if s.ConnState != "Connected" {
			fmt.Fprintf(w, "replication:%s ", s.ConnState)
		}
		fmt.Fprintf(w, "peer-disk:%s", s.PeerDiskState)
		if s.RsTotal > 0 && s.ConnState != "Connected" {
			fmt.Fprintf(w, " done:%.2f", done(s))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

func done(s netlink.StateInfo) float64 {
	if s.RsTotal == 0 {
		return 100
	}
	return 100 * float64(s.RsTotal-min(s.RsLeft, s.RsTotal)) / float64(s.RsTotal)
}

func eventsCmd(o *opts) *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use:   "events [resource|all]",
		Short: "stream state changes",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res := optionalResource(args)
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			seen := 0
			errDone := errors.New("done")
			err = c.Subscribe(context.Background(), &netlink.Request{Command: netlink.Subscribe, Ctx: netlink.CfgContext{ResourceName: res}},
				func(s netlink.StateInfo) error {
					fmt.Println(eventLine(s))
					seen++
					if count > 0 && seen >= count {
						return errDone
					}
					return nil
				})
			if errors.Is(err, errDone) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().IntVar(&count, "count", 0, "exit after this many events")
	return cmd
}

// eventLine renders an event in the spirit of `drbdsetup events2`.
func eventLine(s netlink.StateInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s resource name:%s role:%s disk:%s peer-disk:%s connection:%s peer-role:%s",
		s.EventKind, s.ResourceName, s.Role, s.DiskState, s.PeerDiskState, s.ConnState, s.PeerRole)
	if s.Message != "" {
		fmt.Fprintf(&b, " # %s", s.Message)
	}
	return b.String()
}

func dumpCmd(o *opts) *cobra.Command {
	return &cobra.Command{
		Use:   "dump <resource|all>",
		Short: "print the parsed resource configuration",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, node, err := o.resources(args[0])
			if err != nil {
				return err
			}
			for _, r := range rs {
				dump(os.Stdout, r, node)
			}
			return nil
		},
	}
}

// dump prints a resource the way `drbdadm dump` does: DRBD's own syntax.
func dump(w io.Writer, r *config.Resource, node string) {
	fmt.Fprintf(w, "# resource %s on %s: not ignored, not stacked\n", r.Name, node)
	fmt.Fprintf(w, "# defined at %s\n", r.File)
	fmt.Fprintf(w, "resource %s {\n", r.Name)
	fmt.Fprintf(w, "    protocol %s;\n", r.Protocol)
	if r.Device != "" {
		fmt.Fprintf(w, "    device           %s minor %d;\n", r.Device, r.Minor)
	}
	for _, name := range sortedHosts(r) {
		h := r.On[name]
		fmt.Fprintf(w, "    on %s {\n", name)
		fmt.Fprintf(w, "        disk             %s;\n", h.Disk)
		fmt.Fprintf(w, "        meta-disk        %s;\n", h.MetaDisk)
		if h.Address != "" {
			fmt.Fprintf(w, "        address          ipv4 %s;\n", h.Address)
		}
		if h.NBDListen != "" {
			fmt.Fprintf(w, "        nbd-listen       %s;\n", h.NBDListen)
		}
		fmt.Fprintf(w, "    }\n")
	}
	n := r.Net
	fmt.Fprintf(w, "    net {\n")
	if n.SharedSecret != "" {
		fmt.Fprintf(w, "        cram-hmac-alg    %s;\n", n.CramHMACAlg)
		fmt.Fprintf(w, "        shared-secret    \"%s\";\n", n.SharedSecret)
	}
	fmt.Fprintf(w, "        ping-int         %d;\n", int(n.PingInt/time.Second))
	fmt.Fprintf(w, "        ping-timeout     %d;\n", int(n.PingTimeout/(100*time.Millisecond)))
	fmt.Fprintf(w, "        timeout          %d;\n", int(n.Timeout/(100*time.Millisecond)))
	fmt.Fprintf(w, "        connect-int      %d;\n", int(n.ConnectInt/time.Second))
	fmt.Fprintf(w, "        ko-count         %d;\n", n.KoCount)
	fmt.Fprintf(w, "        max-buffers      %d;\n", n.MaxBuffers)
	if n.AllowTwoPrimaries {
		fmt.Fprintf(w, "        allow-two-primaries yes;\n")
	}
	fmt.Fprintf(w, "        after-sb-0pri    %s;\n", n.AfterSB0Pri)
	fmt.Fprintf(w, "        after-sb-1pri    %s;\n", n.AfterSB1Pri)
	fmt.Fprintf(w, "        after-sb-2pri    %s;\n", n.AfterSB2Pri)
	if n.VerifyAlg != "" {
		fmt.Fprintf(w, "        verify-alg       %s;\n", n.VerifyAlg)
	}
	if n.CsumsAlg != "" {
		fmt.Fprintf(w, "        csums-alg        %s;\n", n.CsumsAlg)
	}
	fmt.Fprintf(w, "    }\n")
	d := r.Disk
	fmt.Fprintf(w, "    disk {\n")
	fmt.Fprintf(w, "        on-io-error      %s;\n", d.OnIOError)
	fmt.Fprintf(w, "        al-extents       %d;\n", d.ALExtents)
	fmt.Fprintf(w, "        resync-rate      %s;\n", d.ResyncRate)
	fmt.Fprintf(w, "        c-plan-ahead     %d;\n", d.CPlanAhead)
	fmt.Fprintf(w, "        c-fill-target    %s;\n", d.CFillTarget)
	fmt.Fprintf(w, "        c-max-rate       %s;\n", d.CMaxRate)
	fmt.Fprintf(w, "        c-min-rate       %s;\n", d.CMinRate)
	fmt.Fprintf(w, "    }\n")
	fmt.Fprintf(w, "}\n")
}

func sortedHosts(r *config.Resource) []string {
	var names []string
	for n := range r.On {
		names = append(names, n)
	}
	if len(names) == 2 && names[0] > names[1] {
		names[0], names[1] = names[1], names[0]
	}
	return names
}

// optionalResource maps the optional <resource|all> argument of status and
// events to a resource name, "" meaning every resource.
func optionalResource(args []string) string {
	if len(args) == 1 && args[0] != "all" {
		return args[0]
	}
	return ""
}
