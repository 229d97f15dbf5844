package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// HMAC test vectors from RFC 2202 and RFC 4231 (test case 2, key "Jefe").
func TestCRAMResponseVectors(t *testing.T) {
	data := []byte("what do ya want for nothing?")
	tests := []struct {
		alg  string
		want string
	}{
		{"md5", "750c783e6ab0b503eaa86e310a5db738"},
		{"sha1", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"},
		{"hmac(sha1)", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"},
		{"sha256", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
		{"HMAC(SHA256)", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
		{"sha512", "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"},
	}
	for _, tt := range tests {
		got, err := CRAMResponse(tt.alg, []byte("Jefe"), data)
		if err != nil {
			t.Fatalf("%s: %v", tt.alg, err)
		}
		if hex.EncodeToString(got) != tt.want {
			t.Errorf("%s: %x", tt.alg, got)
		}
		n, err := CRAMResponseSize(tt.alg)
		if err != nil || n != len(got) {
			t.Errorf("%s: size %d, %v", tt.alg, n, err)
		}
		if err := VerifyCRAMResponse(tt.alg, []byte("Jefe"), data, got); err != nil {
			t.Errorf("%s: verify: %v", tt.alg, err)
		}
		got[0] ^= 1
		if err := VerifyCRAMResponse(tt.alg, []byte("Jefe"), data, got); !errors.Is(err, ErrAuthFailed) {
			t.Errorf("%s: tampered response: %v", tt.alg, err)
		}
	}
	if _, err := CRAMResponse("crc32c", nil, data); err == nil {
		t.Error("crc32c accepted as HMAC")
	}
	if _, err := CRAMResponse("sha1", make([]byte, 65), data); err == nil {
		t.Error("65-byte secret accepted")
	}
}

func TestCheckPeerChallenge(t *testing.T) {
	mine := bytes.Repeat([]byte{1}, ChallengeLen)
	other := bytes.Repeat([]byte{2}, ChallengeLen)
	if err := CheckPeerChallenge(mine, other); err != nil {
		t.Fatal(err)
	}
	if err := CheckPeerChallenge(mine, append(other, make([]byte, 64)...)); err != nil {
		t.Fatalf("128-byte challenge: %v", err)
	}
	if err := CheckPeerChallenge(mine, mine); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("reflection: %v", err)
	}
	// A reflected challenge with extra bytes appended is still a reflection.
	if err := CheckPeerChallenge(mine, append(bytes.Clone(mine), 9)); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("extended reflection: %v", err)
	}
	if err := CheckPeerChallenge(mine, other[:63]); !errors.Is(err, ErrShortPayload) {
		t.Fatalf("short: %v", err)
	}
	if err := CheckPeerChallenge(mine, make([]byte, 129)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("long: %v", err)
	}
}

func TestNewChallenge(t *testing.T) {
	a, err := NewChallenge(nil)
	if err != nil || len(a) != ChallengeLen {
		t.Fatal(err)
	}
	b, _ := NewChallenge(nil)
	if bytes.Equal(a, b) {
		t.Fatal("two equal random challenges")
	}
	if _, err := NewChallenge(bytes.NewReader(make([]byte, 10))); err == nil {
		t.Fatal("short random source accepted")
	}
}
