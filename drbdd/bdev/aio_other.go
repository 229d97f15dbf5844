//go:build !(amd64 || arm64 || riscv64 || loong64 || ppc64le)

package bdev

// asyncIO is not built here: its control block layout is the
// little-endian one. Devices do blocking I/O.
type asyncIO struct{}

func newAsyncIO(int) (*asyncIO, error) { return nil, errAIOUnavailable }

func (*asyncIO) do(uint16, []byte, int64) (int, error) { return 0, errAIOUnavailable }

func (*asyncIO) close() {}
