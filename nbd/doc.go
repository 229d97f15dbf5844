// Package nbd implements the server side of the Network Block Device
// protocol, as described by doc/proto.md in the NetworkBlockDevice/nbd
// repository.
//
// The server speaks the fixed newstyle handshake (NBD_OPT_EXPORT_NAME,
// NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST and NBD_OPT_ABORT; every other
// option is answered with NBD_REP_ERR_UNSUP) and the transmission phase with
// simple replies only (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC, with
// the FUA and NO_HOLE command flags). Structured replies, metadata contexts,
// extended headers and TLS are not offered.
//
// # Export names
//
// The export name is looked up through an [ExportProvider]. An empty name
// (the protocol's "default export", which clients such as nbdinfo and
// qemu-io send when the URI has no path) selects the only export when the
// provider lists exactly one; otherwise the empty name is passed to the
// provider unchanged.
//
// # Concurrency and bounds
//
// Each connection has one reader goroutine (the caller of [Server.ServeConn]
// or [ServeTransmission]) that decodes requests and hands them to worker
// goroutines, started on demand and kept until the connection ends, which
// call the [Backend] and send the replies. The number of requests in flight
// and the bytes of payload they hold are bounded per connection
// ([Server.MaxInFlight], [Server.MaxInFlightBytes]), and so is the number
// of workers; when a bound is reached the reader stops reading from the
// socket, which pushes back on the client through TCP flow control.
// Replies are sent as requests complete, so they may be out of order; each
// is a header and, for a READ, its data in one vectored write, and replies
// that complete while another is being written are gathered into the next
// write.
//
// # Errors
//
// Backend errors are mapped to NBD error numbers with [ErrnoOf]:
// [ErrNoSpace] (and the system's ENOSPC, EDQUOT, EFBIG) become ENOSPC,
// [ErrInvalid] (and EINVAL) become EINVAL, [ErrNotPermitted] and
// [ErrReadOnly] (and EPERM, EROFS, EACCES) become EPERM, [ErrShutdown]
// becomes ESHUTDOWN, and everything else becomes EIO.
//
// Requests are validated before the backend sees them: an unknown command,
// an unknown or inapplicable command flag, or a command the export did not
// advertise (TRIM without CanTrim, WRITE_ZEROES without CanZeroes) gets
// EINVAL; a write, trim or write-zeroes to a read-only export gets EPERM; a
// READ or TRIM beyond the end of the export gets EINVAL, and a WRITE or
// WRITE_ZEROES beyond the end gets ENOSPC, as the protocol recommends; a READ
// or WRITE longer than [MaxBlockSize] gets EINVAL. A WRITE whose payload is
// longer than [MaxWritePayload] cannot be skipped safely and makes the server
// drop the connection.
package nbd
