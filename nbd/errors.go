package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Errno is an error number of the NBD protocol, sent in the error field of
// a reply. The values are fixed by the protocol; they happen to equal the
// Linux errno values of the same names.
type Errno uint32

// Error numbers defined by the protocol.
const (
	EPERM     Errno = 1   // operation not permitted (write to a read-only export)
	EIO       Errno = 5   // input/output error (any backend failure)
	ENOMEM    Errno = 12  // cannot allocate memory (never sent by this server)
	EINVAL    Errno = 22  // invalid argument (bad request)
	ENOSPC    Errno = 28  // no space left on device (write beyond the end)
	EOVERFLOW Errno = 75  // value too large (never sent by this server)
	ENOTSUP   Errno = 95  // operation not supported (never sent by this server)
	ESHUTDOWN Errno = 108 // server shutting down; the client must disconnect
)

// Error implements the error interface.
func (e Errno) Error() string {
	switch e {
	case 0:
		return "nbd: success"
	case EPERM:
		return "nbd: operation not permitted"
	case EIO:
		return "nbd: input/output error"
	case ENOMEM:
		return "nbd: cannot allocate memory"
	case EINVAL:
		return "nbd: invalid argument"
	case ENOSPC:
		return "nbd: no space left on device"
	case EOVERFLOW:
		return "nbd: value too large"
	case ENOTSUP:
		return "nbd: operation not supported"
	case ESHUTDOWN:
		return "nbd: server is shutting down"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

// Sentinel errors a Backend may return (possibly wrapped) to choose the
// error number the client sees. Any other error is reported as EIO.
var (
	// ErrNoSpace makes the client see ENOSPC.
	ErrNoSpace = errors.New("nbd: no space left on device")
	// ErrInvalid makes the client see EINVAL.
	ErrInvalid = errors.New("nbd: invalid request")
	// ErrNotPermitted makes the client see EPERM.
	ErrNotPermitted = errors.New("nbd: operation not permitted")
	// ErrReadOnly makes the client see EPERM; use it when an export
	// becomes read-only while a connection is open.
	ErrReadOnly = fmt.Errorf("%w: export is read-only", ErrNotPermitted)
	// ErrShutdown makes the client see ESHUTDOWN, which tells it to
	// disconnect: use it when the export stops serving I/O, for example
	// when its resource is demoted.
	ErrShutdown = errors.New("nbd: export is shutting down")
)

// ErrUnknownExport is returned (possibly wrapped) by ExportProvider.Open for
// names it does not know. The client then sees NBD_REP_ERR_UNKNOWN; any
// other error from Open is sent as NBD_REP_ERR_POLICY.
var ErrUnknownExport = errors.New("nbd: unknown export")

// ErrnoOf maps an error returned by a Backend to the error number sent to
// the client. A nil error maps to 0. Errno values pass through unchanged.
// The sentinel errors of this package are recognised with errors.Is, and so
// are the system errors a file-backed backend commonly returns:
// ENOSPC, EDQUOT and EFBIG become ENOSPC; EINVAL stays EINVAL; EPERM, EROFS
// and EACCES become EPERM; ESHUTDOWN stays ESHUTDOWN. Anything else is EIO.
func ErrnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var e Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	switch {
	case errors.Is(err, ErrNoSpace),
		errors.Is(err, syscall.ENOSPC),
		errors.Is(err, syscall.EDQUOT),
		errors.Is(err, syscall.EFBIG):
		return ENOSPC
	case errors.Is(err, ErrInvalid), errors.Is(err, syscall.EINVAL):
		return EINVAL
	case errors.Is(err, ErrNotPermitted),
		errors.Is(err, syscall.EPERM),
		errors.Is(err, syscall.EROFS),
		errors.Is(err, syscall.EACCES):
		return EPERM
	case errors.Is(err, ErrShutdown), errors.Is(err, syscall.ESHUTDOWN):
		return ESHUTDOWN
	}
	return EIO
}
