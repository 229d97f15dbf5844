// Package agentproto is the wire format between the lab's VMs and the host:
// the agent inside each VM (testenv/lab/cmd/labagent) reads requests and
// writes responses as JSON lines on a virtio-serial port named PortName,
// which qemu connects to a Unix socket on the host.
//
// Every request carries an ID chosen by the host. IDs start with a prefix
// unique to the host connection, so a response to a request of an earlier
// connection (the port outlives host connections) is recognized and
// dropped.
package agentproto

import "time"

// PortName is the name of the virtio-serial port the agent serves
// (/sys/class/virtio-ports/*/name).
const PortName = "drbdd.agent"

// MaxOutput bounds the output of a command kept by the agent, per stream.
// Longer output is cut, and Truncated is set.
const MaxOutput = 16 << 20

// MaxLine bounds one JSON line in either direction.
const MaxLine = 3*MaxOutput + 4096

// Request is one line from the host.
type Request struct {
	// ID names the request; the response carries it back.
	ID string `json:"id"`
	// Cmd is a shell command run with /bin/sh -c in its own process
	// group. Empty Cmd with Kill unset is a ping.
	Cmd string `json:"cmd,omitempty"`
	// Stdin, if set, is the command's standard input.
	Stdin []byte `json:"stdin,omitempty"`
	// Timeout, if positive, kills the command's process group when it
	// runs longer.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Kill asks the agent to kill the process group of the running
	// request ID; it is answered by the response of that request.
	Kill bool `json:"kill,omitempty"`
}

// Response is one line from the agent.
type Response struct {
	// ID is the ID of the request answered.
	ID string `json:"id"`
	// Stdout and Stderr are the command's output.
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// Truncated reports output beyond MaxOutput that was dropped.
	Truncated bool `json:"truncated,omitempty"`
	// Code is the exit status, 128+N for a command killed by signal N,
	// or -1 if the command could not be started.
	Code int `json:"code"`
	// Err explains a Code of -1 or a timeout.
	Err string `json:"err,omitempty"`
	// Uptime is the guest's uptime when the response was sent.
	Uptime time.Duration `json:"uptime,omitempty"`
}
