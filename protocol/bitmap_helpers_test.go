package protocol

// setBitRange sets bits s..e inclusive of a bitmap held in words.
func setBitRange(words []uint64, s, e uint64) {
	orBitRange(sliceWords(words), make([]uint64, 8), s, e)
}

// findNext is BitmapSender.findNext over a bitmap held in words.
func findNext(words []uint64, nbits, from uint64, want bool) uint64 {
	s := &BitmapSender{src: sliceWords(words), nwords: uint64(len(words)), nbits: nbits}
	return s.findNext(from, want)
}
