package nbd

// Backend is the storage behind an export. All methods may be called
// concurrently, from one goroutine per request in flight. Offsets and
// lengths are already bounds-checked by the server against the size the
// client was given, and lengths are never zero.
//
// Errors choose the error number the client sees (see ErrnoOf): wrap
// ErrNoSpace, ErrInvalid, ErrNotPermitted or ErrShutdown to pick one,
// anything else becomes EIO.
type Backend interface {
	// Size returns the size of the export in bytes. The server calls it
	// once per connection, when the export is chosen.
	Size() int64
	// ReadAt fills p with the bytes at off. It reads all of p or fails.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off. If fua is set, the data must be on stable
	// storage when WriteAt returns. WriteAt must not keep p.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every write that has returned before Flush was called
	// stable.
	Flush() error
	// Trim discards length bytes at off: they read back as anything until
	// written again. Called only if the export has CanTrim.
	Trim(off, length int64, fua bool) error
	// WriteZeroes makes length bytes at off read back as zeroes. If noHole
	// is set, the range must stay allocated (no hole may be punched).
	// Called only if the export has CanZeroes.
	WriteZeroes(off, length int64, noHole, fua bool) error
}

// Export is what an ExportProvider hands out for one client connection.
type Export struct {
	// Name is the export's canonical name, sent back in NBD_INFO_NAME.
	Name string
	// Description is a human-readable description, sent in
	// NBD_INFO_DESCRIPTION when the client asks for it.
	Description string
	// Backend serves the I/O.
	Backend Backend
	// ReadOnly makes the server advertise NBD_FLAG_READ_ONLY and refuse
	// writes, trims and write-zeroes with EPERM.
	ReadOnly bool
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN: set it only if a flush
	// on one connection makes the writes of every connection stable.
	MultiConn bool
	// CanTrim advertises NBD_FLAG_SEND_TRIM.
	CanTrim bool
	// CanZeroes advertises NBD_FLAG_SEND_WRITE_ZEROES.
	CanZeroes bool
	// Release, if not nil, is called exactly once when the server is done
	// with the export: when the connection using it ends, or right after
	// answering an NBD_OPT_INFO (which opens an export only to describe
	// it), or when the handshake fails after Open succeeded.
	Release func()
}

// TransmissionFlags returns the transmission flags the server advertises
// for e. The kernel's nbd driver needs them when a device is attached with
// ServeTransmission, since it skips the handshake that would carry them.
func (e *Export) TransmissionFlags() uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendFUA
	if e.ReadOnly {
		f |= FlagReadOnly
	}
	if e.CanTrim {
		f |= FlagSendTrim
	}
	if e.CanZeroes {
		f |= FlagSendWriteZeroes
	}
	if e.MultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

// release calls e.Release if it is set. Callers make sure it happens once.
func (e *Export) release() {
	if e.Release != nil {
		e.Release()
	}
}

// ExportProvider resolves export names.
type ExportProvider interface {
	// Open returns the export called name for one connection. The text of
	// an error is sent to the client (NBD_REP_ERR_UNKNOWN if it wraps
	// ErrUnknownExport, NBD_REP_ERR_POLICY otherwise), for example
	// "r0: not Primary (role Secondary), refusing I/O".
	Open(name string) (*Export, error)
	// List returns the names of the exports, for NBD_OPT_LIST.
	List() []string
}
