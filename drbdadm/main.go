// Command drbdadm administers drbdd resources the way DRBD's drbdadm
// administers the kernel module: it reads the resource files, works out
// this node's part, and sends each step to the daemon as a generic netlink
// command over the control socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"drbdd/drbdadm/config"
	"drbdd/netlink"
)

// opts are the global flags.
type opts struct {
	control   string
	configDir string
	node      string
	timeout   time.Duration
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "%s\n", oneLine(err))
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

// oneLine keeps error output to a single line, as promised.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

func newRoot() *cobra.Command {
	o := &opts{}
	root := &cobra.Command{
		Use:           "drbdadm [flags] <command> <resource|all>",
		Short:         "administer drbdd resources",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&o.control, "control", "/run/drbdd/drbdd.sock", "drbdd control socket")
	root.PersistentFlags().StringVarP(&o.configDir, "config-dir", "c", config.DefaultDir, "directory of resource files")
	root.PersistentFlags().StringVar(&o.node, "node", "", "this node's name (default: the hostname)")
	root.PersistentFlags().DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the daemon")
	for _, c := range commands(o) {
		root.AddCommand(c)
	}
	return root
}

// nodeName is --node or the short hostname.
func (o *opts) nodeName() (string, error) {
	if o.node != "" {
		return o.node, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("hostname: %w (use --node)", err)
	}
	if i := strings.IndexByte(h, '.'); i > 0 {
		h = h[:i]
	}
	return h, nil
}

// resources resolves <resource|all> to parsed resource files that
// include this node.
func (o *opts) resources(arg string) ([]*config.Resource, string, error) {
	node, err := o.nodeName()
	if err != nil {
		return nil, "", err
	}
	if arg != "all" {
		r, err := config.Find(o.configDir, arg)
		if err != nil {
			return nil, "", err
		}
		if _, _, _, err := r.Host(node); err != nil {
			return nil, "", err
		}
		return []*config.Resource{r}, node, nil
	}
	all, err := config.LoadDir(o.configDir)
	if err != nil {
		return nil, "", err
	}
	var mine []*config.Resource
	for _, r := range all {
		if _, _, _, err := r.Host(node); err == nil {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return nil, "", fmt.Errorf("no resources for node %q in %s", node, o.configDir)
	}
	return mine, node, nil
}

// dial connects to the daemon.
func (o *opts) dial() (*netlink.Client, error) {
	c, err := netlink.Dial(o.control)
	if err != nil {
		return nil, &exitError{code: 20, err: err}
	}
	return c, nil
}

// do sends one request and turns a failed reply into an error naming the
// resource.
func (o *opts) do(c *netlink.Client, res string, req *netlink.Request) (*netlink.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if req.Ctx.ResourceName == "" {
		req.Ctx.ResourceName = res
	}
	rep, err := c.Do(ctx, req)
	if err != nil {
		var ne *netlink.Error
		if errors.As(err, &ne) {
			msg := ne.Info
			if msg == "" {
				msg = ne.Code.String()
			}
			if !strings.HasPrefix(msg, res+":") {
				msg = res + ": " + msg
			}
			return rep, &exitError{code: 10, err: errors.New(msg)}
		}
		return rep, fmt.Errorf("%s: %s: %w", res, req.Command, err)
	}
	return rep, nil
}

// forEach runs fn for every resource named by arg with a daemon client.
func (o *opts) forEach(arg string, fn func(c *netlink.Client, r *config.Resource, node string) error) error {
	rs, node, err := o.resources(arg)
	if err != nil {
		return err
	}
	c, err := o.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	var first error
	for _, r := range rs {
		if err := fn(c, r, node); err != nil {
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
