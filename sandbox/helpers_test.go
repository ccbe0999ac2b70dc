package sandbox

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Server is a Sandbox on a loopback port for one test. Tests outside this
// package use sandboxtest.NewServer; an internal test cannot import it.
type Server struct {
	*Sandbox
	URL string
}

// NewServer starts a Sandbox for the length of tb.
func NewServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	sb, err := New(opts)
	if err != nil {
		tb.Fatalf("sandbox: %v", err)
	}
	hs := httptest.NewServer(sb)
	tb.Cleanup(hs.Close)
	return &Server{Sandbox: sb, URL: hs.URL}
}

// reply is a fully read response.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// code is the error envelope's code, or "" for other bodies.
func (r reply) code() string {
	var env struct{ Code string }
	_ = json.Unmarshal(r.Body, &env)
	return env.Code
}

func (r reply) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.Body, err)
	}
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.Status, r.Body) }

// call sends one request; a JSON body gets its content type.
func call(t testing.TB, method, url string, hdr http.Header, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

func expect(t testing.TB, r reply, status int, code string) {
	t.Helper()
	if r.Status != status || r.code() != code {
		t.Fatalf("got %v, want %d %q", r, status, code)
	}
}

func proofFor(t testing.TB, key *dpop.Key, method, url string, opts dpop.ProofOptions) string {
	t.Helper()
	p, err := key.Proof(method, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newKey(t testing.TB) *dpop.Key {
	t.Helper()
	k, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newRawKey returns a P-256 key both as raw material (for forging proofs
// dpop.Key refuses to make) and as the dpop.Key that signs valid ones.
func newRawKey(t testing.TB) (*ecdsa.PrivateKey, *dpop.Key) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	k, err := dpop.ParseKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return priv, k
}

// client drives one user agent against a sandbox: its DPoP key, its clock
// and the nonce it last heard.
type client struct {
	t     testing.TB
	base  string
	key   *dpop.Key
	now   func() time.Time // nil: wall clock
	nonce string
}

func newClient(t testing.TB, base string) *client {
	return &client{t: t, base: base, key: newKey(t)}
}

// dpopCall sends a DPoP-signed request, following one use_dpop_nonce
// challenge the way the SDKs do.
func (c *client) dpopCall(method, path string, hdr http.Header, body string) reply {
	c.t.Helper()
	for attempt := 0; ; attempt++ {
		h := hdr.Clone()
		if h == nil {
			h = http.Header{}
		}
		var now time.Time
		if c.now != nil {
			now = c.now()
		}
		h.Set("DPoP", proofFor(c.t, c.key, method, c.base+path, dpop.ProofOptions{Nonce: c.nonce, Now: now}))
		r := call(c.t, method, c.base+path, h, body)
		if n := r.Header.Get("DPoP-Nonce"); n != "" {
			c.nonce = n
		}
		if r.code() != "use_dpop_nonce" || attempt > 0 {
			return r
		}
	}
}

// login runs otp → otp/check → finalize for email and returns the refresh
// and access tokens.
func (c *client) login(email string, previousRefresh string) (refresh, access string) {
	c.t.Helper()
	r := call(c.t, "POST", c.base+"/v1/session/otp", nil, fmt.Sprintf(`{"identifier":{"type":"email_address","value":%q}}`, email))
	expect(c.t, r, http.StatusNoContent, "")
	vt := r.Header.Get("X-Verification-Token")
	if vt == "" {
		c.t.Fatal("no X-Verification-Token")
	}
	r = call(c.t, "POST", c.base+"/v1/session/otp/check", http.Header{"X-Verification-Token": {vt}}, `{"code":"123456"}`)
	return c.finalize(challengeFrom(c.t, r), previousRefresh)
}

// challengeFrom reads the challenge token out of a successful first factor.
func challengeFrom(t testing.TB, r reply) string {
	t.Helper()
	expect(t, r, http.StatusOK, "")
	var ch struct {
		ChallengeToken string `json:"challenge_token"`
	}
	r.decode(t, &ch)
	if ch.ChallengeToken == "" {
		t.Fatalf("no challenge_token in %v", r)
	}
	return ch.ChallengeToken
}

// demoChallenge logs the seeded demo user in with its password.
func demoChallenge(t testing.TB, base string) string {
	t.Helper()
	return challengeFrom(t, call(t, "POST", base+"/v1/session/login/email/password", nil, `{"identifier":"demo@example.com","password":"demo-password"}`))
}

func (c *client) finalize(challenge, previousRefresh string) (refresh, access string) {
	c.t.Helper()
	hdr := http.Header{}
	if previousRefresh != "" {
		hdr.Set("X-Refresh-Token", previousRefresh)
	}
	r := c.dpopCall("POST", "/v1/session/login/finalize", hdr, fmt.Sprintf(`{"challenge_token":%q}`, challenge))
	expect(c.t, r, http.StatusOK, "")
	return c.grant(r)
}

// grant checks a finalize/refresh answer's shape and returns its tokens.
func (c *client) grant(r reply) (refresh, access string) {
	c.t.Helper()
	var g struct {
		AccessToken string `json:"access_token"`
		ExpiresAt   int64  `json:"expires_at"`
	}
	r.decode(c.t, &g)
	refresh = r.Header.Get("X-Refresh-Token")
	if g.AccessToken == "" || g.ExpiresAt == 0 || refresh == "" {
		c.t.Fatalf("incomplete grant: %v %v", r, r.Header)
	}
	if _, err := time.Parse(time.RFC3339, r.Header.Get("X-Refresh-Token-Expires-At")); err != nil {
		c.t.Fatalf("X-Refresh-Token-Expires-At: %v", err)
	}
	return refresh, g.AccessToken
}

func (c *client) refresh(token string) reply {
	c.t.Helper()
	return c.dpopCall("POST", "/v1/session/refresh", http.Header{"X-Refresh-Token": {token}}, "")
}

// mustRefresh refreshes and returns the rotated tokens.
func (c *client) mustRefresh(token string) (refresh, access string) {
	c.t.Helper()
	r := c.refresh(token)
	expect(c.t, r, http.StatusOK, "")
	refresh, access = c.grant(r)
	if refresh == token {
		c.t.Fatal("refresh did not rotate the token")
	}
	return refresh, access
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// rejectionDelta is what changed in Rejections between two snapshots.
func rejectionDelta(before, after map[string]int64) map[string]int64 {
	d := map[string]int64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}
