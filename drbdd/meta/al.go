package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Activity-log format constants.
const (
	// ALMagic identifies an activity-log transaction block ("ALTR").
	ALMagic = 0x414c5452
	// ALUpdatesPerTransaction is the most slot changes one transaction can
	// log (DRBD's AL_UPDATES_PER_TRANSACTION).
	ALUpdatesPerTransaction = 64
	// ALContextPerTransaction is how many slots of the full slot table each
	// transaction also records, cycling through the table (DRBD has 919;
	// drbdd's header is 4 bytes larger for its 64-bit transaction number).
	ALContextPerTransaction = (BlockSize - alHeader - ALUpdatesPerTransaction*6) / 4
	// ALRingBlocks is the number of 4 KiB transaction blocks in the on-disk
	// ring (292 KiB, as DRBD needs for al-extents up to ALExtentsMax). The
	// newest ALRingBlocks-1 transactions always carry a complete copy of
	// the slot table, even when the newest block was torn.
	ALRingBlocks = (ALExtentsMax+ALContextPerTransaction-1)/ALContextPerTransaction + 1
	// ALFree marks an empty slot (DRBD's LC_FREE).
	ALFree uint32 = 0xffffffff
)

// Transaction block field offsets (big-endian, like DRBD's struct
// al_transaction_on_disk).
const (
	alMagic        = 0
	alCRC          = 4  // CRC-32C of the whole block with this field zero
	alNumber       = 8  // u64 transaction number
	alType         = 16 // u16
	alNUpdates     = 18 // u16
	alContextSize  = 20 // u16: number of slots (al-extents)
	alContextStart = 22 // u16: first slot of the context
	alHeader       = 40 // 16 reserved bytes follow the fields above
	alUpdateSlots  = alHeader
	alUpdateExt    = alUpdateSlots + ALUpdatesPerTransaction*2
	alContext      = alUpdateExt + ALUpdatesPerTransaction*4
)

// minALBlocks is the smallest ring that can hold a full copy of the slot
// table in its newest blocks after losing the newest one.
func minALBlocks(slots int) int {
	return max(8, (slots+ALContextPerTransaction-1)/ALContextPerTransaction+1)
}

// TransactionType is the kind of an activity-log transaction.
type TransactionType uint16

// Transaction types.
const (
	// TransactionUpdate logs changes to the active set.
	TransactionUpdate TransactionType = 0
	// TransactionInitialized rewrites part of the slot table without
	// changes, when the log is initialized or emptied.
	TransactionInitialized TransactionType = 0xffff
)

// ALUpdate is one slot change: Slot now holds Extent (ALFree to empty it).
type ALUpdate struct {
	Slot   uint16
	Extent uint32
}

// Transaction is one activity-log transaction block.
type Transaction struct {
	// Number increases by one per transaction; block Number % ring size is
	// where it is written.
	Number uint64
	Type   TransactionType
	// Updates are the slot changes this transaction makes.
	Updates []ALUpdate
	// Slots is the size of the slot table (al-extents).
	Slots uint16
	// ContextStart and Context record slots [ContextStart,
	// ContextStart+len(Context)) of the table as it is after Updates.
	ContextStart uint16
	Context      []uint32
}

// RingPos is the ring block the transaction is written to.
func (t *Transaction) RingPos(ringBlocks int) int { return int(t.Number % uint64(ringBlocks)) }

// EncodeTransaction returns the 4 KiB on-disk form of t with its CRC-32C.
// Context entries past len(t.Context) are written as ALFree.
func EncodeTransaction(t *Transaction) []byte {
	b := make([]byte, BlockSize)
	be := binary.BigEndian
	be.PutUint32(b[alMagic:], ALMagic)
	be.PutUint64(b[alNumber:], t.Number)
	be.PutUint16(b[alType:], uint16(t.Type))
	be.PutUint16(b[alNUpdates:], uint16(len(t.Updates)))
	be.PutUint16(b[alContextSize:], t.Slots)
	be.PutUint16(b[alContextStart:], t.ContextStart)
	for i := range ALUpdatesPerTransaction {
		slot, ext := uint16(0xffff), ALFree
		if i < len(t.Updates) {
			slot, ext = t.Updates[i].Slot, t.Updates[i].Extent
		}
		be.PutUint16(b[alUpdateSlots+2*i:], slot)
		be.PutUint32(b[alUpdateExt+4*i:], ext)
	}
	for i := range ALContextPerTransaction {
		ext := ALFree
		if i < len(t.Context) {
			ext = t.Context[i]
		}
		be.PutUint32(b[alContext+4*i:], ext)
	}
	be.PutUint32(b[alCRC:], blockCRC(b, alCRC))
	return b
}

// DecodeTransaction parses and checks one 4 KiB transaction block: magic,
// checksum, and slot numbers inside the table. It never panics on
// arbitrary input.
func DecodeTransaction(b []byte) (*Transaction, error) {
	if len(b) != BlockSize {
		return nil, fmt.Errorf("AL transaction: %d bytes, want %d", len(b), BlockSize)
	}
	be := binary.BigEndian
	if m := be.Uint32(b[alMagic:]); m != ALMagic {
		return nil, fmt.Errorf("AL transaction: bad magic 0x%08x", m)
	}
	if got, want := be.Uint32(b[alCRC:]), blockCRC(b, alCRC); got != want {
		return nil, fmt.Errorf("AL transaction: checksum mismatch (stored 0x%08x, computed 0x%08x)", got, want)
	}
	t := &Transaction{
		Number:       be.Uint64(b[alNumber:]),
		Type:         TransactionType(be.Uint16(b[alType:])),
		Slots:        be.Uint16(b[alContextSize:]),
		ContextStart: be.Uint16(b[alContextStart:]),
	}
	if t.Type != TransactionUpdate && t.Type != TransactionInitialized {
		return nil, fmt.Errorf("AL transaction %d: unknown type 0x%x", t.Number, uint16(t.Type))
	}
	if t.Slots < ALExtentsMin || t.Slots > ALExtentsMax {
		return nil, fmt.Errorf("AL transaction %d: %d slots out of range", t.Number, t.Slots)
	}
	if t.ContextStart >= t.Slots {
		return nil, fmt.Errorf("AL transaction %d: context starts at slot %d of %d", t.Number, t.ContextStart, t.Slots)
	}
	n := int(be.Uint16(b[alNUpdates:]))
	if n > ALUpdatesPerTransaction {
		return nil, fmt.Errorf("AL transaction %d: %d updates, at most %d", t.Number, n, ALUpdatesPerTransaction)
	}
	t.Updates = make([]ALUpdate, n)
	for i := range t.Updates {
		u := ALUpdate{Slot: be.Uint16(b[alUpdateSlots+2*i:]), Extent: be.Uint32(b[alUpdateExt+4*i:])}
		if u.Slot >= t.Slots {
			return nil, fmt.Errorf("AL transaction %d: update of slot %d of %d", t.Number, u.Slot, t.Slots)
		}
		t.Updates[i] = u
	}
	t.Context = make([]uint32, min(ALContextPerTransaction, int(t.Slots-t.ContextStart)))
	for i := range t.Context {
		t.Context[i] = be.Uint32(b[alContext+4*i:])
	}
	return t, nil
}

// Activity-log errors.
var (
	// ErrALBusy means Begin cannot proceed now: it needs a transaction
	// while another one is not yet committed, or it needs more slots than
	// are free or evictable. Retry after Commit or Complete.
	ErrALBusy = errors.New("activity log busy")
	// ErrALTooManyExtents means one Begin asked for more new extents than
	// fit in one transaction.
	ErrALTooManyExtents = errors.New("too many new activity-log extents for one transaction")
	// ErrALNoTransactions means no valid transaction block was found.
	ErrALNoTransactions = errors.New("no valid activity-log transaction found")
	// ErrALIncomplete means the valid transactions do not describe every
	// slot, so the active set is unknown.
	ErrALIncomplete = errors.New("activity log incomplete: active set unknown")
)

// AL is the activity log: the set of 4 MiB extents that may have writes in
// flight, bounded by al-extents slots. Active extents have reference
// counts; an extent with references is never evicted, and unreferenced
// extents are evicted least recently used first. Changes to the set are
// made durable as transactions in an on-disk ring of 4 KiB blocks.
//
// The caller's protocol for a write to data range [start, end):
//
//  1. Begin(ExtentsFor(start, end)). If it returns needWrite, write the
//     bitmap pages covering the returned evicted extents and sync them,
//     then write EncodeTransaction(tx) to ring block tx.RingPos, sync,
//     and Commit(tx) (or Abort(tx) if any of that failed).
//  2. Write the data.
//  3. Complete the same extents.
//
// Writing the evicted extents' bitmap pages before the transaction that
// evicts them is what keeps "on-disk bitmap ∪ extents active in the
// on-disk log" a superset of every block that might differ from the peer.
// Store.ALBegin does all of step 1.
//
// An AL is not safe for concurrent use; its owner serializes access.
type AL struct {
	slots []uint32          // extent in each slot, or ALFree
	refs  []uint32          // references per slot
	where map[uint32]uint16 // active extent -> slot
	// LRU list of unreferenced active slots, most recently used at head.
	prev, next []int32
	head, tail int32
	lruLen     int
	free       []uint16 // free slots, used from the end
	ring       int
	nextTr     uint64
	cursor     int // first slot of the next transaction's context

	pending    *Transaction
	pendingSet map[uint16]bool // slots updated by the pending transaction
	undoSlots  []ALUpdate      // previous content of updated slots
	undoRefs   []uint16        // slots whose refs Begin incremented
}

// NewAL returns an empty activity log with the given number of slots
// (al-extents), writing into a ring of ringBlocks blocks, whose next
// transaction gets number nextTr.
func NewAL(slots, ringBlocks int, nextTr uint64) (*AL, error) {
	if err := checkALExtents(slots); err != nil {
		return nil, err
	}
	if ringBlocks < minALBlocks(slots) {
		return nil, fmt.Errorf("activity log: ring of %d blocks too small for %d slots", ringBlocks, slots)
	}
	a := &AL{
		slots:  make([]uint32, slots),
		refs:   make([]uint32, slots),
		where:  make(map[uint32]uint16),
		prev:   make([]int32, slots),
		next:   make([]int32, slots),
		head:   -1,
		tail:   -1,
		free:   make([]uint16, 0, slots),
		ring:   ringBlocks,
		nextTr: nextTr,
	}
	for i := range a.slots {
		a.slots[i] = ALFree
	}
	for i := slots - 1; i >= 0; i-- {
		a.free = append(a.free, uint16(i))
	}
	return a, nil
}

// Slots is the number of slots (al-extents).
func (a *AL) Slots() int { return len(a.slots) }

// RingBlocks is the number of blocks in the on-disk ring.
func (a *AL) RingBlocks() int { return a.ring }

// NextTransaction is the number the next transaction will get.
func (a *AL) NextTransaction() uint64 { return a.nextTr }

// Pending is the transaction returned by Begin that is not yet committed
// or aborted, or nil.
func (a *AL) Pending() *Transaction { return a.pending }

// Active returns the active extents in ascending order.
func (a *AL) Active() []uint32 {
	out := make([]uint32, 0, len(a.where))
	for e := range a.where {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}

// IsActive reports whether extent e is in the log.
func (a *AL) IsActive(e uint32) bool { _, ok := a.where[e]; return ok }

// Refs returns extent e's reference count (0 if not active).
func (a *AL) Refs(e uint32) int {
	if s, ok := a.where[e]; ok {
		return int(a.refs[s])
	}
	return 0
}

// InUse reports whether any extent has references.
func (a *AL) InUse() bool {
	for _, r := range a.refs {
		if r != 0 {
			return true
		}
	}
	return false
}

func (a *AL) lruUnlink(s int32) {
	p, n := a.prev[s], a.next[s]
	if p >= 0 {
		a.next[p] = n
	} else {
		a.head = n
	}
	if n >= 0 {
		a.prev[n] = p
	} else {
		a.tail = p
	}
	a.prev[s], a.next[s] = -1, -1
	a.lruLen--
}

func (a *AL) lruPushFront(s int32) {
	a.lruLen++
	a.prev[s], a.next[s] = -1, a.head
	if a.head >= 0 {
		a.prev[a.head] = s
	} else {
		a.tail = s
	}
	a.head = s
}

// ref takes a reference on active slot s.
func (a *AL) ref(s uint16) {
	if a.refs[s] == 0 {
		a.lruUnlink(int32(s))
	}
	a.refs[s]++
}

// unref drops a reference on slot s.
func (a *AL) unref(s uint16) {
	a.refs[s]--
	if a.refs[s] == 0 {
		a.lruPushFront(int32(s))
	}
}

// Begin takes a reference on each extent (duplicates count once). When all
// of them are already active it returns needWrite false and the caller may
// write data at once. Otherwise it assigns slots to the new extents,
// evicting the least recently used unreferenced extents if needed, and
// returns the transaction that must be made durable, and the evicted
// extents whose bitmap pages must be written first (see AL). Until Commit
// or Abort, further Begins that need a transaction or touch the pending
// extents fail with ErrALBusy. Begin changes nothing when it fails.
func (a *AL) Begin(extents []uint32) (tx *Transaction, needWrite bool, evicted []uint32, err error) {
	uniq := make([]uint32, 0, len(extents))
	for _, e := range extents {
		if e == ALFree {
			return nil, false, nil, fmt.Errorf("activity log: invalid extent number %d", e)
		}
		if !slices.Contains(uniq, e) {
			uniq = append(uniq, e)
		}
	}
	var need []uint32
	for _, e := range uniq {
		s, ok := a.where[e]
		switch {
		case !ok:
			need = append(need, e)
		case a.pending != nil && a.pendingSet[s]:
			return nil, false, nil, ErrALBusy
		}
	}
	if len(need) > 0 && a.pending != nil {
		return nil, false, nil, ErrALBusy
	}
	if len(need) > ALUpdatesPerTransaction {
		return nil, false, nil, ErrALTooManyExtents
	}
	// Reference the active ones first so that they cannot be chosen for
	// eviction, then check there is room for the rest.
	var refd []uint16
	for _, e := range uniq {
		if s, ok := a.where[e]; ok {
			a.ref(s)
			refd = append(refd, s)
		}
	}
	if len(need) == 0 {
		return nil, false, nil, nil
	}
	if len(need) > len(a.free)+a.lruLen {
		for _, s := range refd {
			a.unref(s)
		}
		return nil, false, nil, ErrALBusy
	}
	tx = &Transaction{Number: a.nextTr, Type: TransactionUpdate, Slots: uint16(len(a.slots))}
	a.pendingSet = make(map[uint16]bool, len(need))
	a.undoSlots = a.undoSlots[:0]
	for _, e := range need {
		var s uint16
		if n := len(a.free); n > 0 {
			s = a.free[n-1]
			a.free = a.free[:n-1]
		} else {
			s = uint16(a.tail)
			a.lruUnlink(a.tail)
			old := a.slots[s]
			delete(a.where, old)
			evicted = append(evicted, old)
		}
		a.undoSlots = append(a.undoSlots, ALUpdate{Slot: s, Extent: a.slots[s]})
		a.slots[s] = e
		a.where[e] = s
		a.refs[s] = 1
		a.pendingSet[s] = true
		tx.Updates = append(tx.Updates, ALUpdate{Slot: s, Extent: e})
	}
	a.undoRefs = refd
	a.fillContext(tx)
	a.pending = tx
	return tx, true, evicted, nil
}

// fillContext records the next window of the slot table in tx.
func (a *AL) fillContext(tx *Transaction) {
	end := min(a.cursor+ALContextPerTransaction, len(a.slots))
	tx.ContextStart = uint16(a.cursor)
	tx.Context = slices.Clone(a.slots[a.cursor:end])
}

// advance moves the transaction number and context cursor past a written
// transaction.
func (a *AL) advance() {
	a.nextTr++
	a.cursor += ALContextPerTransaction
	if a.cursor >= len(a.slots) {
		a.cursor = 0
	}
}

// Commit records that the pending transaction tx is durable: its extents
// may now be written to.
func (a *AL) Commit(tx *Transaction) error {
	if tx == nil || tx != a.pending {
		return errors.New("activity log: commit of a transaction that is not pending")
	}
	a.advance()
	a.pending, a.pendingSet = nil, nil
	return nil
}

// Abort undoes Begin for the pending transaction tx, after it could not be
// written: the evicted extents come back and the references are dropped.
func (a *AL) Abort(tx *Transaction) error {
	if tx == nil || tx != a.pending {
		return errors.New("activity log: abort of a transaction that is not pending")
	}
	for i := len(a.undoSlots) - 1; i >= 0; i-- {
		u := a.undoSlots[i]
		delete(a.where, a.slots[u.Slot])
		a.slots[u.Slot] = u.Extent
		a.refs[u.Slot] = 0
		if u.Extent == ALFree {
			a.free = append(a.free, u.Slot)
		} else {
			a.where[u.Extent] = u.Slot
			a.lruPushFront(int32(u.Slot))
		}
	}
	for _, s := range a.undoRefs {
		a.unref(s)
	}
	a.pending, a.pendingSet, a.undoRefs = nil, nil, nil
	return nil
}

// Complete drops one reference on each extent (duplicates count once), as
// the writes that Begin covered finish. An extent whose count reaches zero
// stays active but becomes evictable.
func (a *AL) Complete(extents []uint32) error {
	var errs []error
	var done []uint32
	for _, e := range extents {
		if slices.Contains(done, e) {
			continue
		}
		done = append(done, e)
		s, ok := a.where[e]
		if !ok || a.refs[s] == 0 {
			errs = append(errs, fmt.Errorf("activity log: complete of inactive extent %d", e))
			continue
		}
		a.unref(s)
	}
	return errors.Join(errs...)
}

// Reset empties the log, for a clean shutdown or after its content was
// applied to the bitmap, and returns the transactions that record the
// empty table; they are already counted as written, so the caller must
// write each to its ring block and sync before relying on the log again.
// Every extent must be unreferenced and no transaction pending. The
// returned extents were active: their bitmap pages must be written first.
func (a *AL) Reset() ([]*Transaction, []uint32, error) {
	if a.pending != nil {
		return nil, nil, ErrALBusy
	}
	if a.InUse() {
		return nil, nil, fmt.Errorf("activity log: reset while extents are in use: %w", ErrALBusy)
	}
	was := a.Active()
	for i := range a.slots {
		a.slots[i] = ALFree
		a.prev[i], a.next[i] = -1, -1
	}
	a.head, a.tail, a.lruLen = -1, -1, 0
	clear(a.where)
	a.free = a.free[:0]
	for i := len(a.slots) - 1; i >= 0; i-- {
		a.free = append(a.free, uint16(i))
	}
	a.cursor = 0
	return a.contextTransactions((len(a.slots) + ALContextPerTransaction - 1) / ALContextPerTransaction), was, nil
}

// contextTransactions returns n update-less transactions that together
// rewrite the slot table, counting them as written.
func (a *AL) contextTransactions(n int) []*Transaction {
	out := make([]*Transaction, n)
	for i := range out {
		tx := &Transaction{Number: a.nextTr, Type: TransactionInitialized, Slots: uint16(len(a.slots))}
		a.fillContext(tx)
		out[i] = tx
		a.advance()
	}
	return out
}

// InitRing returns transactions for every block of the ring describing an
// empty log, for freshly created metadata. The log must be empty.
func (a *AL) InitRing() ([]*Transaction, error) {
	if len(a.where) != 0 || a.pending != nil {
		return nil, errors.New("activity log: InitRing on a log in use")
	}
	a.cursor = 0
	return a.contextTransactions(a.ring), nil
}

// RecoverAL replays an activity-log ring after a crash. blocks holds the
// ring's blocks in ring order. It finds the valid transaction with the
// highest number, takes the unbroken run of valid transactions ending
// there (each in the block its number maps to), replays them oldest first
// and returns the extents that were active, in ascending order, and the
// highest transaction number. If no block is valid it returns
// ErrALNoTransactions; if the run does not describe every slot it returns
// ErrALIncomplete with lastTr set. In both cases the caller must treat the
// whole device as possibly out of sync.
func RecoverAL(blocks [][]byte) (active []uint32, lastTr uint64, err error) {
	n := len(blocks)
	if n == 0 {
		return nil, 0, ErrALNoTransactions
	}
	txs := make([]*Transaction, n)
	found := false
	for i, b := range blocks {
		tx, err := DecodeTransaction(b)
		if err != nil || tx.RingPos(n) != i {
			continue
		}
		txs[i] = tx
		if !found || tx.Number > lastTr {
			lastTr, found = tx.Number, true
		}
	}
	if !found {
		return nil, 0, ErrALNoTransactions
	}
	newest := txs[int(lastTr%uint64(n))]
	var run []*Transaction
	for num := lastTr; len(run) < n; num-- {
		tx := txs[int(num%uint64(n))]
		if tx == nil || tx.Number != num || tx.Slots != newest.Slots {
			break
		}
		run = append(run, tx)
		if num == 0 {
			break
		}
	}
	table := make([]uint32, newest.Slots)
	known := make([]bool, newest.Slots)
	for i := len(run) - 1; i >= 0; i-- {
		tx := run[i]
		for j, e := range tx.Context {
			table[int(tx.ContextStart)+j] = e
			known[int(tx.ContextStart)+j] = true
		}
		for _, u := range tx.Updates {
			table[u.Slot] = u.Extent
			known[u.Slot] = true
		}
	}
	for s, k := range known {
		if !k {
			return nil, lastTr, fmt.Errorf("slot %d not covered by transactions %d..%d: %w",
				s, lastTr+1-uint64(len(run)), lastTr, ErrALIncomplete)
		}
	}
	for _, e := range table {
		if e != ALFree {
			active = append(active, e)
		}
	}
	slices.Sort(active)
	return slices.Compact(active), lastTr, nil
}
