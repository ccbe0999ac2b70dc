package dpop

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzVerify seeds")

const corpusDir = "testdata/fuzz/FuzzVerify"

// fuzzExpect is what every fuzz input is checked against: the seeds' valid
// proofs satisfy it at t0, so the fuzzer starts from inputs that pass.
func fuzzExpect(tb testing.TB) Expect {
	return Expect{
		Method:      "POST",
		URL:         mustURL(tb, testTarget),
		Nonce:       func(n string) bool { return n == testNonce },
		AccessToken: testToken,
	}
}

func FuzzVerify(f *testing.F) {
	exp := fuzzExpect(f)
	f.Fuzz(func(t *testing.T, proof string) {
		v := verifierAt(t0) // the seeds' iat; a fresh replay cache per input
		got, err := v.Verify(proof, exp)
		if err != nil {
			if Reason(err) == "" {
				t.Fatalf("error without a Reason: %v", err)
			}
			if got != nil {
				t.Fatalf("Verify returned %+v with error %v", got, err)
			}
			return
		}
		if got.Thumbprint == "" || got.Claims.HTM != exp.Method || got.Claims.JTI == "" {
			t.Fatalf("accepted proof with %+v", got)
		}
		if _, err := v.Verify(proof, exp); !errors.Is(err, ErrReplay) {
			t.Fatalf("re-verifying an accepted proof: %v, want ErrReplay", err)
		}
	})
}

// fuzzSeeds are the committed seed corpus, by file name. Names starting
// with "valid-" verify under fuzzExpect at t0; the others are rejected.
func fuzzSeeds(t *testing.T) map[string]string {
	f := newVerifyFixture(t, ES256)
	es := f.proof(t)
	edKey := mustKey(t, EdDSA)
	ed := mustProof(t, edKey, "POST", testTarget, ProofOptions{Now: t0, Nonce: testNonce, AccessToken: testToken})
	noneHdr := f.header(map[string]any{"alg": "none"})
	privHdr := f.header(map[string]any{"jwk": privateJWK(t, f.key)})
	noClaims := f.sign(t, f.header(nil), map[string]any{"iat": t0.Unix()})
	return map[string]string{
		"valid-es256":    es,
		"valid-eddsa":    ed,
		"truncated":      es[:len(es)*2/3],
		"header-only":    strings.Split(es, ".")[0],
		"header-dot-dot": strings.Split(es, ".")[0] + "..",
		"alg-none":       handSign(t, nil, noneHdr, f.claims()),
		"private-jwk":    f.sign(t, privHdr, f.claims()),
		"bad-typ":        f.sign(t, f.header(map[string]any{"typ": "JWT"}), f.claims()),
		"missing-claims": noClaims,
		"garbage":        "\x00\xff{]}..\u2603\"eyJ",
		"empty":          "",
	}
}

// TestFuzzVerifyCorpus keeps the committed seeds meaningful: the valid ones
// still verify (so the fuzzer explores past the signature check) and the
// rest are still rejected. With -update-corpus it rewrites them.
func TestFuzzVerifyCorpus(t *testing.T) {
	if *updateCorpus {
		if err := os.MkdirAll(corpusDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, seed := range fuzzSeeds(t) {
			data := "go test fuzz v1\nstring(" + strconv.Quote(seed) + ")\n"
			if err := os.WriteFile(filepath.Join(corpusDir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries, err := os.ReadDir(corpusDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 8 {
		t.Fatalf("%d seeds in %s, want ≥ 8", len(entries), corpusDir)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(corpusDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		body, ok := strings.CutPrefix(string(data), "go test fuzz v1\nstring(")
		body, ok2 := strings.CutSuffix(body, ")\n")
		seed, err := strconv.Unquote(body)
		if !ok || !ok2 || err != nil {
			t.Fatalf("%s: not a string corpus file", e.Name())
		}
		_, err = verifierAt(t0).Verify(seed, fuzzExpect(t))
		if valid := strings.HasPrefix(e.Name(), "valid-"); valid != (err == nil) {
			t.Errorf("seed %s: Verify error %v, valid=%v", e.Name(), err, valid)
		}
	}
	// The valid seeds stop verifying once their iat leaves the window.
	v := verifierAt(t0.Add(2 * time.Minute))
	seed := fuzzSeeds(t)["valid-es256"]
	if _, err := v.Verify(seed, fuzzExpect(t)); !errors.Is(err, ErrIssuedAt) {
		t.Errorf("valid seed 2 minutes later: %v, want ErrIssuedAt", err)
	}
}
