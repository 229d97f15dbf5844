package protocol

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
)

// ChallengeLen is CHALLENGE_LEN: the size of the random challenge each side
// sends in P_AUTH_CHALLENGE. A peer's challenge may be up to twice as long.
const ChallengeLen = 64

// MaxChallengeLen is the longest peer challenge DRBD accepts.
const MaxChallengeLen = 2 * ChallengeLen

// ErrAuthFailed reports a peer that failed CRAM-HMAC authentication: a
// wrong response, or a reflected challenge.
var ErrAuthFailed = errors.New("drbd protocol: authentication of peer failed")

// hmacHash maps a cram-hmac-alg name to its hash. Both the bare name drbd.conf
// uses ("sha256") and the kernel crypto name ("hmac(sha256)") are accepted,
// in any case.
func hmacHash(alg string) (func() hash.Hash, error) {
	name := strings.ToLower(strings.TrimSpace(alg))
	if strings.HasPrefix(name, "hmac(") && strings.HasSuffix(name, ")") {
		name = name[len("hmac(") : len(name)-1]
	}
	switch name {
	case "md5":
		return md5.New, nil
	case "sha1":
		return sha1.New, nil
	case "sha224":
		return sha256.New224, nil
	case "sha256":
		return sha256.New, nil
	case "sha384":
		return sha512.New384, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("unsupported cram-hmac-alg %q (want md5, sha1, sha224, sha256, sha384 or sha512)", alg)
}

// CheckCRAMAlg reports whether alg names a supported HMAC hash.
func CheckCRAMAlg(alg string) error {
	_, err := hmacHash(alg)
	return err
}

// CRAMResponseSize returns the size of a response (the HMAC digest size)
// for alg.
func CRAMResponseSize(alg string) (int, error) {
	h, err := hmacHash(alg)
	if err != nil {
		return 0, err
	}
	return h().Size(), nil
}

func checkSecret(secret []byte) error {
	if len(secret) > SharedSecretMax {
		return fmt.Errorf("shared secret of %d bytes exceeds %d", len(secret), SharedSecretMax)
	}
	return nil
}

// CRAMResponse computes the response to a challenge: HMAC with hash alg,
// keyed with the shared secret, over the whole challenge.
func CRAMResponse(alg string, secret, challenge []byte) ([]byte, error) {
	h, err := hmacHash(alg)
	if err != nil {
		return nil, err
	}
	if err := checkSecret(secret); err != nil {
		return nil, err
	}
	m := hmac.New(h, secret)
	m.Write(challenge)
	return m.Sum(nil), nil
}

// NewChallenge returns ChallengeLen random bytes read from r, or from
// crypto/rand if r is nil.
func NewChallenge(r io.Reader) ([]byte, error) {
	if r == nil {
		r = rand.Reader
	}
	c := make([]byte, ChallengeLen)
	if _, err := io.ReadFull(r, c); err != nil {
		return nil, fmt.Errorf("generating auth challenge: %w", err)
	}
	return c, nil
}

// CheckPeerChallenge applies DRBD's checks to a received challenge: it must
// be ChallengeLen to MaxChallengeLen bytes long, and its first ChallengeLen
// bytes must differ from our own challenge (a peer that echoes our challenge
// could make us compute its answer; DRBD refuses it).
func CheckPeerChallenge(mine, peers []byte) error {
	switch {
	case len(peers) < ChallengeLen:
		return fmt.Errorf("%w: AuthChallenge payload of %d bytes is too small", ErrShortPayload, len(peers))
	case len(peers) > MaxChallengeLen:
		return fmt.Errorf("%w: AuthChallenge payload of %d bytes is too big", ErrTooLarge, len(peers))
	case len(mine) >= ChallengeLen && bytes.Equal(mine[:ChallengeLen], peers[:ChallengeLen]):
		return fmt.Errorf("%w: peer presented the same challenge", ErrAuthFailed)
	}
	return nil
}

// VerifyCRAMResponse checks the peer's response to our challenge in
// constant time.
func VerifyCRAMResponse(alg string, secret, myChallenge, response []byte) error {
	want, err := CRAMResponse(alg, secret, myChallenge)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, response) {
		return fmt.Errorf("%w: wrong response (%d bytes)", ErrAuthFailed, len(response))
	}
	return nil
}

// AuthChallenge is the payload of P_AUTH_CHALLENGE.
type AuthChallenge struct {
	Challenge []byte // copied by Unmarshal
}

// MarshalAppend appends the challenge bytes.
func (a *AuthChallenge) MarshalAppend(b []byte) []byte { return append(b, a.Challenge...) }

// Unmarshal accepts ChallengeLen to MaxChallengeLen bytes, as DRBD does.
func (a *AuthChallenge) Unmarshal(p []byte) error {
	switch {
	case len(p) < ChallengeLen:
		return fmt.Errorf("%w: AuthChallenge needs %d bytes, got %d", ErrShortPayload, ChallengeLen, len(p))
	case len(p) > MaxChallengeLen:
		return fmt.Errorf("%w: AuthChallenge of %d bytes exceeds %d", ErrTooLarge, len(p), MaxChallengeLen)
	}
	a.Challenge = bytes.Clone(p)
	return nil
}

// AuthResponse is the payload of P_AUTH_RESPONSE: an HMAC digest.
type AuthResponse struct {
	Response []byte // copied by Unmarshal
}

// MarshalAppend appends the response bytes.
func (a *AuthResponse) MarshalAppend(b []byte) []byte { return append(b, a.Response...) }

// Unmarshal accepts 1 to 64 bytes (the digest sizes of the supported
// hashes lie in between); the exact size is checked against the agreed
// algorithm by the caller.
func (a *AuthResponse) Unmarshal(p []byte) error {
	switch {
	case len(p) == 0:
		return fmt.Errorf("%w: empty AuthResponse", ErrShortPayload)
	case len(p) > MaxDigestSize:
		return fmt.Errorf("%w: AuthResponse of %d bytes exceeds %d", ErrTooLarge, len(p), MaxDigestSize)
	}
	a.Response = bytes.Clone(p)
	return nil
}
