package sandbox

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

func b64json(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// forge signs an arbitrary header and payload with ES256, so a test can
// build proofs that dpop.Key would never produce.
func forge(t testing.TB, priv *ecdsa.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	input := b64json(t, header) + "." + b64json(t, claims)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(nil, priv, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func publicJWK(t testing.TB, priv *ecdsa.PrivateKey) map[string]any {
	t.Helper()
	b, err := jose.JSONWebKey{Key: &priv.PublicKey}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// proofEnv is one session under attack: the legitimate client, the raw
// key behind it, and the refresh token that must survive every bad proof.
type proofEnv struct {
	t     *testing.T
	srv   *Server
	cl    *client
	priv  *ecdsa.PrivateKey
	token string
	url   string
}

// forged returns a proof that is valid for the current refresh except for
// what mutate changes.
func (e *proofEnv) forged(mutate func(h, c map[string]any)) []string {
	h := map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": publicJWK(e.t, e.priv)}
	c := map[string]any{"jti": dpop.NewJTI(), "htm": "POST", "htu": e.url, "iat": time.Now().Unix()}
	mutate(h, c)
	return []string{forge(e.t, e.priv, h, c)}
}

func (e *proofEnv) valid(nonce string) string {
	return proofFor(e.t, e.cl.key, "POST", e.url, dpop.ProofOptions{Nonce: nonce})
}

// challengeNonce asks for a nonce the way a client without one would.
func (e *proofEnv) challengeNonce() string {
	r := call(e.t, "POST", e.url, http.Header{"X-Refresh-Token": {e.token}, "DPoP": {e.valid("")}}, "")
	expect(e.t, r, http.StatusBadRequest, "use_dpop_nonce")
	return r.Header.Get("DPoP-Nonce")
}

func TestRefreshRejectsBadProofs(t *testing.T) {
	srv := NewServer(t, Options{})
	priv, key := newRawKey(t)
	cl := &client{t: t, base: srv.URL, key: key}
	token, _ := cl.login("proofs@example.com", "")
	e := &proofEnv{t: t, srv: srv, cl: cl, priv: priv, token: token, url: srv.URL + "/v1/session/refresh"}

	set := func(k string, v any) func(h, c map[string]any) {
		return func(h, c map[string]any) {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
	}
	setHeader := func(k string, v any) func(h, c map[string]any) {
		return func(h, c map[string]any) { h[k] = v }
	}
	sig := func(p string) string { return p[strings.LastIndex(p, ".")+1:] }
	otherPriv, otherKey := newRawKey(t)

	cases := []struct {
		name    string
		nonce   bool
		proofs  func(e *proofEnv) []string // runs before the stats snapshot
		status  int
		code    string
		reasons []string
	}{
		{"missing DPoP header", false, func(e *proofEnv) []string { return nil },
			401, "missing_dpop_proof", []string{"missing_dpop_proof"}},
		{"two DPoP headers", false, func(e *proofEnv) []string { return []string{e.valid(""), e.valid("")} },
			401, "invalid_dpop_proof", []string{"multiple_dpop_proofs"}},
		{"not a JWS", false, func(e *proofEnv) []string { return []string{"not-a-jws"} },
			401, "invalid_dpop_proof", []string{"malformed"}},
		{"header not JSON", false, func(e *proofEnv) []string { return []string{"bm90anNvbg.e30.c2ln"} },
			401, "invalid_dpop_proof", []string{"malformed"}},
		{"typ JWT", false, func(e *proofEnv) []string { return e.forged(setHeader("typ", "JWT")) },
			401, "invalid_dpop_proof", []string{"bad_typ"}},
		{"typ in wrong case", false, func(e *proofEnv) []string {
			return e.forged(func(h, c map[string]any) { delete(h, "typ"); h["TYP"] = "dpop+jwt" })
		}, 401, "invalid_dpop_proof", []string{"bad_typ"}},
		{"alg none", false, func(e *proofEnv) []string {
			p := e.forged(setHeader("alg", "none"))[0]
			return []string{p[:strings.LastIndex(p, ".")+1]}
		}, 401, "invalid_dpop_proof", []string{"bad_alg"}},
		{"alg HS256", false, func(e *proofEnv) []string { return e.forged(setHeader("alg", "HS256")) },
			401, "invalid_dpop_proof", []string{"bad_alg"}},
		{"jwk with private d", false, func(e *proofEnv) []string {
			return e.forged(func(h, c map[string]any) {
				jwk := maps.Clone(h["jwk"].(map[string]any))
				jwk["d"] = base64.RawURLEncoding.EncodeToString(e.priv.D.Bytes())
				h["jwk"] = jwk
			})
		}, 401, "invalid_dpop_proof", []string{"private_jwk"}},
		{"no jwk", false, func(e *proofEnv) []string {
			return e.forged(func(h, c map[string]any) { delete(h, "jwk") })
		}, 401, "invalid_dpop_proof", []string{"malformed"}},
		{"signed by another key", false, func(e *proofEnv) []string {
			good := e.forged(func(h, c map[string]any) {})[0]
			bad := forge(t, otherPriv, map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": publicJWK(t, e.priv)},
				map[string]any{"jti": dpop.NewJTI(), "htm": "POST", "htu": e.url, "iat": time.Now().Unix()})
			return []string{strings.TrimSuffix(good, sig(good)) + sig(bad)}
		}, 401, "invalid_dpop_proof", []string{"bad_signature"}},
		{"htm GET", false, func(e *proofEnv) []string { return e.forged(set("htm", "GET")) },
			401, "invalid_dpop_proof", []string{"htm_mismatch"}},
		{"htm lowercase", false, func(e *proofEnv) []string { return e.forged(set("htm", "post")) },
			401, "invalid_dpop_proof", []string{"htm_mismatch"}},
		{"htu other path", false, func(e *proofEnv) []string { return e.forged(set("htu", e.srv.URL+"/v1/session/revoke")) },
			401, "invalid_dpop_proof", []string{"htu_mismatch"}},
		{"htu other host", false, func(e *proofEnv) []string {
			return e.forged(set("htu", strings.Replace(e.url, "127.0.0.1", "localhost", 1)))
		}, 401, "invalid_dpop_proof", []string{"htu_mismatch"}},
		{"htu https", false, func(e *proofEnv) []string {
			return e.forged(set("htu", strings.Replace(e.url, "http://", "https://", 1)))
		}, 401, "invalid_dpop_proof", []string{"htu_mismatch"}},
		// RFC 9449 §4.2: htu is sent without query; a client that includes
		// one has a bug the referee should surface.
		{"htu with query", false, func(e *proofEnv) []string { return e.forged(set("htu", e.url+"?x=1")) },
			401, "invalid_dpop_proof", []string{"htu_mismatch"}},
		{"iat too old", false, func(e *proofEnv) []string { return e.forged(set("iat", time.Now().Add(-2*time.Minute).Unix())) },
			401, "invalid_dpop_proof", []string{"iat_window"}},
		{"iat in the future", false, func(e *proofEnv) []string { return e.forged(set("iat", time.Now().Add(time.Minute).Unix())) },
			401, "invalid_dpop_proof", []string{"iat_window"}},
		{"iat not a number", false, func(e *proofEnv) []string { return e.forged(set("iat", "now")) },
			401, "invalid_dpop_proof", []string{"malformed"}},
		{"missing jti", false, func(e *proofEnv) []string { return e.forged(set("jti", nil)) },
			401, "invalid_dpop_proof", []string{"missing_claim"}},
		{"missing htm", false, func(e *proofEnv) []string { return e.forged(set("htm", nil)) },
			401, "invalid_dpop_proof", []string{"missing_claim"}},
		{"missing htu", false, func(e *proofEnv) []string { return e.forged(set("htu", nil)) },
			401, "invalid_dpop_proof", []string{"missing_claim"}},
		{"missing iat", false, func(e *proofEnv) []string { return e.forged(set("iat", nil)) },
			401, "invalid_dpop_proof", []string{"missing_claim"}},
		{"replayed jti", false, func(e *proofEnv) []string {
			p := e.valid("")
			r := call(t, "POST", e.url, http.Header{"X-Refresh-Token": {e.token}, "DPoP": {p}}, "")
			e.token, _ = e.cl.grant(r)
			return []string{p}
		}, 401, "invalid_dpop_proof", []string{"jti_replay"}},
		{"another key than the session's", false, func(e *proofEnv) []string {
			return []string{proofFor(t, otherKey, "POST", e.url, dpop.ProofOptions{})}
		}, 401, "dpop_key_mismatch", []string{"key_mismatch"}},
		{"nonce mode, no nonce", true, func(e *proofEnv) []string { return []string{e.valid("")} },
			400, "use_dpop_nonce", []string{"use_dpop_nonce", "nonce_missing"}},
		{"nonce mode, invented nonce", true, func(e *proofEnv) []string { return []string{e.valid("made-up")} },
			400, "use_dpop_nonce", []string{"use_dpop_nonce", "nonce_invalid"}},
		{"nonce mode, nonce two rotations old", true, func(e *proofEnv) []string {
			stale := e.challengeNonce()
			e.challengeNonce()
			e.challengeNonce()
			return []string{e.valid(stale)}
		}, 400, "use_dpop_nonce", []string{"use_dpop_nonce", "nonce_invalid"}},
	}
	if len(cases) < 15 {
		t.Fatal("the brief asks for at least 15 bad proofs")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			srv.SetRequireNonce(tc.nonce)
			proofs := tc.proofs(e)
			before := srv.Stats()
			r := call(t, "POST", e.url, http.Header{"X-Refresh-Token": {e.token}, "DPoP": proofs}, "")
			expect(t, r, tc.status, tc.code)
			if tc.code == "use_dpop_nonce" && r.Header.Get("DPoP-Nonce") == "" {
				t.Error("nonce challenge without a DPoP-Nonce header")
			}
			after := srv.Stats()
			want := map[string]int64{}
			for _, reason := range tc.reasons {
				want[reason] = 1
			}
			if got := rejectionDelta(before.Rejections, after.Rejections); !maps.Equal(got, want) {
				t.Errorf("rejections changed by %v, want %v", got, want)
			}
			if after.RefreshSuccesses != before.RefreshSuccesses || after.ReuseEvents != 0 {
				t.Errorf("a rejected refresh rotated or counted reuse: %+v", after)
			}
			// The refused request must not have spent the token.
			srv.SetRequireNonce(false)
			e.token, _ = e.cl.mustRefresh(e.token)
		})
	}
}

// The server ignores the request's query when matching htu (RFC 9449
// §4.3), while the proof itself carries none.
func TestRefreshIgnoresRequestQuery(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("query@example.com", "")
	p := proofFor(t, cl.key, "POST", srv.URL+"/v1/session/refresh", dpop.ProofOptions{})
	r := call(t, "POST", srv.URL+"/v1/session/refresh?trace=1", http.Header{"X-Refresh-Token": {token}, "DPoP": {p}}, "")
	expect(t, r, http.StatusOK, "")
}

// A bad proof at finalize must not burn the challenge token, and the good
// one binds the session to its key.
func TestFinalizeProofChecks(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	challenge := challengeFrom(t, call(t, "POST", srv.URL+"/v1/session/login/email/password", nil, `{"identifier":"DEMO@example.com","password":"demo-password"}`))
	body := `{"challenge_token":"` + challenge + `"}`
	url := srv.URL + "/v1/session/login/finalize"

	expect(t, call(t, "POST", url, nil, body), 401, "missing_dpop_proof")
	wrongHTU := proofFor(t, cl.key, "POST", srv.URL+"/v1/session/refresh", dpop.ProofOptions{})
	expect(t, call(t, "POST", url, http.Header{"DPoP": {wrongHTU}}, body), 401, "invalid_dpop_proof")

	refresh, _ := cl.finalize(challenge, "")
	if got := srv.Stats().Rejections; got["missing_dpop_proof"] != 1 || got["htu_mismatch"] != 1 {
		t.Errorf("rejections = %v", got)
	}
	r := call(t, "POST", url, http.Header{"DPoP": {proofFor(t, cl.key, "POST", url, dpop.ProofOptions{})}}, body)
	expect(t, r, http.StatusConflict, "token_reused")

	// The session is pinned to cl.key: another key cannot refresh it.
	other := &client{t: t, base: srv.URL, key: newKey(t)}
	expect(t, other.refresh(refresh), 401, "dpop_key_mismatch")
	cl.mustRefresh(refresh)
}

// Nonce mode: challenge, accept current and previous, refuse older, and
// hand out a fresh nonce on every success.
func TestNonceMode(t *testing.T) {
	srv := NewServer(t, Options{RequireNonce: true})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("nonce@example.com", "") // dpopCall follows the first challenge
	if cl.nonce == "" {
		t.Fatal("finalize answered without DPoP-Nonce")
	}
	first := cl.nonce
	token, _ = cl.mustRefresh(token)
	if cl.nonce == first {
		t.Fatal("success did not rotate the nonce")
	}
	// first is now the previous nonce: still accepted once.
	old := &client{t: t, base: srv.URL, key: cl.key, nonce: first}
	r := old.refresh(token)
	expect(t, r, http.StatusOK, "")
	token, _ = cl.grant(r)
	// Two rotations later it is refused, with a fresh nonce to retry with.
	p := proofFor(t, cl.key, "POST", srv.URL+"/v1/session/refresh", dpop.ProofOptions{Nonce: first})
	r = call(t, "POST", srv.URL+"/v1/session/refresh", http.Header{"X-Refresh-Token": {token}, "DPoP": {p}}, "")
	expect(t, r, http.StatusBadRequest, "use_dpop_nonce")
	cl.nonce = r.Header.Get("DPoP-Nonce")
	cl.mustRefresh(token)
	if n := srv.Stats().Rejections["use_dpop_nonce"]; n != 2 {
		t.Errorf("use_dpop_nonce rejections = %d, want 2 (login + stale)", n)
	}
}
