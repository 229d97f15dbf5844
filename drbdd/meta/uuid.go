package meta

import "fmt"

// Special UUID values and UUID arithmetic, as in DRBD 8.4.
const (
	// UUIDJustCreated is the current UUID of freshly created metadata
	// (DRBD's UUID_JUST_CREATED).
	UUIDJustCreated uint64 = 4
	// UUIDNewBMOffset is added to the bitmap UUID to derive the sync UUID
	// when a SyncSource starts a resync (DRBD's UUID_NEW_BM_OFFSET).
	UUIDNewBMOffset uint64 = 0x0001000000000000
	// UUIDPrimaryBit is the lowest bit of a UUID. DRBD sets it in the
	// current UUID while the node is Primary; it therefore also appears in
	// bitmap and history UUIDs that were rotated out of a Primary's current
	// UUID. Every comparison masks it off.
	UUIDPrimaryBit uint64 = 1
)

// UUIDs are one node's generation identifiers (DRBD's md.uuid[UI_CURRENT ..
// UI_HISTORY_END]). Current names the data as it is now; Bitmap, when not
// zero, names the data as it was when the bitmap started recording changes
// (the point of the last disconnect); History holds the two previous
// bitmap UUIDs, newest first.
type UUIDs struct {
	Current uint64
	Bitmap  uint64
	History [2]uint64
}

// NewUUIDs returns the UUIDs of freshly created metadata: current UUID
// UUIDJustCreated, everything else zero (what drbdmeta create-md writes).
func NewUUIDs() UUIDs { return UUIDs{Current: UUIDJustCreated} }

// String formats the UUIDs as DRBD logs them: current:bitmap:history0:history1.
func (u UUIDs) String() string {
	return fmt.Sprintf("%016X:%016X:%016X:%016X", u.Current, u.Bitmap, u.History[0], u.History[1])
}

// moveHistory shifts the history down by one slot (drbd_uuid_move_history).
func (u *UUIDs) moveHistory() { u.History[1] = u.History[0] }

// setCurrent stores val as the current UUID with the primary bit set or
// cleared according to the role (__drbd_uuid_set for UI_CURRENT).
func (u *UUIDs) setCurrent(val uint64, primary bool) {
	if primary {
		val |= UUIDPrimaryBit
	} else {
		val &^= UUIDPrimaryBit
	}
	u.Current = val
}

// setBitmapRotating stores val as the bitmap UUID, first rotating a
// non-zero old bitmap UUID into the history (drbd_uuid_set for UI_BITMAP).
func (u *UUIDs) setBitmapRotating(val uint64) {
	if u.Bitmap != 0 {
		u.moveHistory()
		u.History[0] = u.Bitmap
	}
	u.Bitmap = val
}

// NewCurrent starts a new data generation (drbd_uuid_new_current): the old
// current UUID becomes the bitmap UUID and val, with the primary bit set
// according to primary, becomes the current UUID. val must be a fresh
// random number supplied by the caller. It reports whether a bitmap UUID
// was already set (DRBD warns "bm UUID was already set" and overwrites it).
// The caller must write the superblock right away.
func (u *UUIDs) NewCurrent(val uint64, primary bool) (bitmapWasSet bool) {
	bitmapWasSet = u.Bitmap != 0
	u.Bitmap = u.Current
	u.setCurrent(val, primary)
	return bitmapWasSet
}

// Promote applies what DRBD does to the UUIDs when a node becomes Primary
// (drbd_set_role): if the peer's disk is unreachable (not connected, or
// peer disk Failed or worse) and no bitmap UUID is set yet, or if the
// promotion is forced, a new current UUID val is generated; in every case
// the primary bit of the current UUID is set. It reports whether a new
// current UUID was generated.
func (u *UUIDs) Promote(val uint64, peerDiskReachable, forced bool) (generated bool) {
	if (!peerDiskReachable && u.Bitmap == 0) || forced {
		u.NewCurrent(val, true)
		generated = true
	}
	u.Current |= UUIDPrimaryBit
	return generated
}

// Demote clears the primary bit of the current UUID (drbd_set_role to
// Secondary).
func (u *UUIDs) Demote() { u.Current &^= UUIDPrimaryBit }

// LostPeerData applies DRBD's reaction to losing contact with the peer's
// copy of the data (after_state_ch, "Lost contact to peer's copy of the
// data"): when this node or the peer is Primary, no bitmap UUID is set and
// the local disk is UpToDate, a new current UUID val starts a generation
// the peer does not have. primary is this node's role. It reports whether
// a new current UUID was generated; the caller must then write the
// superblock and (if still connected) send its UUIDs.
func (u *UUIDs) LostPeerData(val uint64, primary, peerPrimary, upToDate bool) bool {
	if (primary || peerPrimary) && u.Bitmap == 0 && upToDate {
		u.NewCurrent(val, primary)
		return true
	}
	return false
}

// DisklessPeerPromoted applies DRBD's rule for a diskless peer that
// becomes Primary (after_state_ch): its writes reach this disk only, so,
// unless a bitmap UUID already marks an older generation, a new current
// UUID val starts one the peer's disk (when it attaches again) does not
// have. primary is this node's role. It reports whether a new current
// UUID was generated.
func (u *UUIDs) DisklessPeerPromoted(val uint64, primary bool) bool {
	if u.Bitmap != 0 {
		return false
	}
	u.NewCurrent(val, primary)
	return true
}

// SetBitmap sets the bitmap UUID (drbd_uuid_set_bm). Setting zero clears
// it and rotates the old bitmap UUID into the history, as at the end of a
// resync; setting a non-zero value stores it with the primary bit masked
// and reports whether a bitmap UUID was already set.
func (u *UUIDs) SetBitmap(val uint64) (bitmapWasSet bool) {
	if u.Bitmap == 0 && val == 0 {
		return false
	}
	if val == 0 {
		u.moveHistory()
		u.History[0] = u.Bitmap
		u.Bitmap = 0
		return true
	}
	bitmapWasSet = u.Bitmap != 0
	u.Bitmap = val &^ UUIDPrimaryBit
	return bitmapWasSet
}

// StartSyncSource derives the sync UUID a SyncSource sends in P_SYNC_UUID
// when a resync starts (drbd_gen_and_send_sync_uuid): the bitmap UUID plus
// UUIDNewBMOffset, or random when the bitmap UUID is zero or
// UUIDJustCreated. The sync UUID becomes the new bitmap UUID, the old one
// rotating into the history. It returns the sync UUID to send.
func (u *UUIDs) StartSyncSource(random uint64) uint64 {
	uuid := u.Bitmap
	if uuid != 0 && uuid != UUIDJustCreated {
		uuid += UUIDNewBMOffset
	} else {
		uuid = random
	}
	u.setBitmapRotating(uuid)
	return uuid
}

// StartSyncTarget applies a received P_SYNC_UUID (receive_sync_uuid): the
// sync UUID becomes the current UUID and the bitmap UUID is cleared,
// without touching the history.
func (u *UUIDs) StartSyncTarget(syncUUID uint64, primary bool) {
	u.setCurrent(syncUUID, primary)
	u.Bitmap = 0
}

// FinishResync applies the UUID changes of a successfully finished resync
// (drbd_resync_finished). A SyncTarget first adopts the peer's bitmap and
// history UUIDs, rotates its own current UUID in as bitmap UUID and adopts
// the peer's current UUID; then both sides clear the bitmap UUID into the
// history. peer must be the peer's UUIDs as received in its last P_UUIDS
// (at the handshake, before it generated the sync UUID), as DRBD uses its
// p_uuid copy. Afterwards both nodes hold the same UUIDs. Verify runs do
// not call this.
func (u *UUIDs) FinishResync(asTarget bool, peer UUIDs, primary bool) {
	if asTarget {
		old := u.Current
		u.Bitmap = peer.Bitmap
		u.History = peer.History
		u.setBitmapRotating(old)
		u.setCurrent(peer.Current, primary)
	}
	u.SetBitmap(0)
}

// NewCurrentByUser implements "drbdadm new-current-uuid": the bitmap UUID
// is rotated into the history and a new current UUID val is generated
// (the old current becoming the bitmap UUID). With clearBitmap and skip
// ("--clear-bitmap" while connected to a just-created peer) the bitmap UUID
// is cleared again, so that both sides start in sync without an initial
// resync; the caller must then clear the bitmap and send its UUIDs with
// UUIDFlagSkipInitialSync.
func (u *UUIDs) NewCurrentByUser(val uint64, primary, skipInitialSync bool) {
	u.setBitmapRotating(0)
	u.NewCurrent(val, primary)
	if skipInitialSync {
		u.Bitmap = 0
	}
}

// SkipInitialSync applies a peer's UUIDs sent with UUIDFlagSkipInitialSync
// while this node's current UUID is UUIDJustCreated (receive_uuids): adopt
// the peer's current UUID and clear the bitmap UUID. The caller must clear
// the bitmap and consider both disks UpToDate.
func (u *UUIDs) SkipInitialSync(peerCurrent uint64, primary bool) {
	u.setCurrent(peerCurrent, primary)
	u.Bitmap = 0
}

// UUIDFlags are the flags DRBD sends in the UI_FLAGS word of P_UUIDS.
type UUIDFlags uint64

// P_UUIDS flags.
const (
	// UUIDFlagDiscardMyData: the sender was told to discard its data
	// (net option discard-my-data).
	UUIDFlagDiscardMyData UUIDFlags = 1
	// UUIDFlagCrashedPrimary: the sender crashed while Primary.
	UUIDFlagCrashedPrimary UUIDFlags = 2
	// UUIDFlagInconsistent: the sender's disk will be Inconsistent.
	UUIDFlagInconsistent UUIDFlags = 4
	// UUIDFlagSkipInitialSync: the sender cleared its bitmap for a new
	// current UUID; a just-created receiver may adopt it without resync.
	UUIDFlagSkipInitialSync UUIDFlags = 8
)

// Gen is one side's input to the UUID comparison, exactly what a P_UUIDS
// packet carries: the UUIDs, the number of bits set in the bitmap
// (UI_SIZE, "changes") and the flags (UI_FLAGS). For the local side the
// caller fills Bits with the bitmap count it sent and Flags with the flags
// it sent.
type Gen struct {
	UUIDs
	Bits  uint64
	Flags UUIDFlags
}

// Words returns the six u64 words of a P_UUIDS payload.
func (g Gen) Words() [6]uint64 {
	return [6]uint64{g.Current, g.Bitmap, g.History[0], g.History[1], g.Bits, uint64(g.Flags)}
}

// GenFromWords builds a Gen from the six u64 words of a P_UUIDS payload.
func GenFromWords(w [6]uint64) Gen {
	return Gen{
		UUIDs: UUIDs{Current: w[0], Bitmap: w[1], History: [2]uint64{w[2], w[3]}},
		Bits:  w[4],
		Flags: UUIDFlags(w[5]),
	}
}
