package exchange_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenwarden/caddy-inject-token/exchange"
	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// clock is an injected clock.
type clock struct{ ns atomic.Int64 }

func newClock() *clock               { c := new(clock); c.ns.Store(time.Now().UnixNano()); return c }
func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

// issuer signs subject tokens and publishes its JWKS over loopback.
type issuer struct {
	signer jose.Signer
	srv    *httptest.Server
}

func newIssuer(t testing.TB) *issuer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: "k1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(set) }))
	t.Cleanup(srv.Close)
	return &issuer{signer: s, srv: srv}
}

// subject signs a subject token for sub, valid for ttl from now, padded to
// about pad bytes.
func (is *issuer) subject(t testing.TB, sub string, now time.Time, ttl time.Duration, aud string, pad int) string {
	claims := map[string]any{"sub": sub, "iss": "https://issuer.test", "aud": aud, "exp": now.Add(ttl).Unix(), "iat": now.Unix()}
	if pad > 0 {
		claims["pad"] = strings.Repeat("x", pad*3/4)
	}
	tok, err := jwt.Signed(is.signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// tokenServer is a token exchange endpoint on loopback that counts the
// exchanges and issues each subject its own token; subjects whose sub
// starts with "rejected" get invalid_grant.
type tokenServer struct {
	srv       *httptest.Server
	exchanges atomic.Int64
	issued    string // issued_token_type to answer
}

func newTokenServer(t testing.TB) *tokenServer {
	ts := &tokenServer{issued: exchange.TokenTypeAccessToken}
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := ts.exchanges.Add(1)
		_ = r.ParseForm()
		var c struct {
			Sub string `json:"sub"`
		}
		tok, err := jwt.ParseSigned(r.PostForm.Get("subject_token"), []jose.SignatureAlgorithm{jose.ES256})
		if err == nil {
			err = tok.UnsafeClaimsWithoutVerification(&c)
		}
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("grant_type") != exchange.GrantType || err != nil || strings.HasPrefix(c.Sub, "rejected") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": fmt.Sprintf("at.%s.%d", c.Sub, n), "token_type": "Bearer",
			"expires_in": 300, "issued_token_type": ts.issued})
	}))
	t.Cleanup(ts.srv.Close)
	return ts
}

func newCache(t testing.TB, ts *tokenServer, is *issuer, clk *clock, mod func(*exchange.Config)) *exchange.Cache {
	cfg := exchange.Config{
		Config:        oauth.Config{Settings: oauth.Settings{Endpoint: ts.srv.URL + "/token", ClientID: "gw", ClientSecret: "s3cret", Params: map[string]string{"audience": "api"}}},
		SubjectHeader: "X-Subject",
		Verify:        exchange.Verify{JWKSURL: is.srv.URL, Issuer: "https://issuer.test", Audiences: []string{"gw"}},
		Now:           clk.now,
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := exchange.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e.Cache()
}

// owner is the sub an access token of tokenServer was issued for.
func owner(at string) string { return strings.Split(at, ".")[1] }

func TestThousandRequestsFiftySubjectsFiftyExchanges(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, nil)
	subjects := make([]string, 50)
	for i := range subjects {
		subjects[i] = is.subject(t, fmt.Sprintf("user%d", i), clk.now(), time.Hour, "gw", 0)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 1000)
	for i := range 1000 {
		wg.Go(func() {
			<-start
			want := fmt.Sprintf("user%d", i%50)
			g, err := c.Get(context.Background(), subjects[i%50])
			switch {
			case err != nil:
				errs <- err
			case owner(g.AccessToken) != want:
				errs <- fmt.Errorf("subject %s got a token issued for %s", want, owner(g.AccessToken))
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := ts.exchanges.Load(); n != 50 {
		t.Fatalf("%d exchanges for 50 subjects, want exactly 50", n)
	}
}

func TestRejectedSubjectOneExchangePerNegativeWindow(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, func(c *exchange.Config) { c.NegativeTTL = 30 * time.Second })
	s := is.subject(t, "rejected-1", clk.now(), time.Hour, "gw", 0)
	for window := 1; window <= 3; window++ {
		for range 100 {
			if _, err := c.Get(context.Background(), s); err == nil {
				t.Fatal("a rejected subject got a token")
			}
			clk.add(100 * time.Millisecond) // 10 s per window, well inside it
		}
		if n := ts.exchanges.Load(); n != int64(window) {
			t.Fatalf("window %d: %d exchanges, want %d", window, n, window)
		}
		clk.add(20 * time.Second)
	}
}

func TestJunkSubjectsNoExchangeWithVerification(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, nil)
	other := newIssuer(t) // same kid, other key: a forged signature
	junk := []func(i int) string{
		func(i int) string { return fmt.Sprintf("junk-%d", i) },
		func(i int) string { return other.subject(t, fmt.Sprint(i), clk.now(), time.Hour, "gw", 0) },
		func(i int) string { return is.subject(t, fmt.Sprint(i), clk.now(), -time.Minute, "gw", 0) }, // expired
		func(i int) string { return is.subject(t, fmt.Sprint(i), clk.now(), time.Hour, "other", 0) }, // wrong aud
	}
	for i := range 1000 {
		_, err := c.Get(context.Background(), junk[i%len(junk)](i))
		if !errors.Is(err, exchange.ErrSubjectInvalid) {
			t.Fatalf("junk subject %d: %v, want ErrSubjectInvalid", i, err)
		}
	}
	if n := ts.exchanges.Load(); n != 0 {
		t.Fatalf("%d exchanges for junk subjects, want 0", n)
	}
}

func TestUnverifiedNewSubjectsRateLimited(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, func(c *exchange.Config) {
		c.Verify = exchange.Verify{Off: true}
		c.MissRate, c.MissBurst = 5, 5
	})
	limited := 0
	for i := range 1000 {
		_, err := c.Get(context.Background(), fmt.Sprintf("junk-%d", i))
		if errors.Is(err, exchange.ErrTooManySubjects) {
			limited++
		}
	}
	if n := ts.exchanges.Load(); n != 5 || limited != 995 {
		t.Fatalf("verification off, 1000 junk subjects at one instant: %d exchanges, %d limited; want 5 and 995", n, limited)
	}
	clk.add(time.Second)
	_, _ = c.Get(context.Background(), "junk-next")
	if n := ts.exchanges.Load(); n != 6 {
		t.Fatalf("after a second: %d exchanges, want 6", n)
	}
}

func TestInvalidateDropsThatSubjectOnly(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, nil)
	a, b := is.subject(t, "a", clk.now(), time.Hour, "gw", 0), is.subject(t, "b", clk.now(), time.Hour, "gw", 0)
	ga, _ := c.Get(context.Background(), a)
	gb, _ := c.Get(context.Background(), b)
	c.Invalidate(a, "some-older-token") // a stale 401 must not drop the new token
	if g, _ := c.Get(context.Background(), a); g.AccessToken != ga.AccessToken || ts.exchanges.Load() != 2 {
		t.Fatal("a 401 for another token dropped a's current one")
	}
	c.Invalidate(a, ga.AccessToken)
	ga2, _ := c.Get(context.Background(), a)
	gb2, _ := c.Get(context.Background(), b)
	if ga2.AccessToken == ga.AccessToken || gb2.AccessToken != gb.AccessToken || ts.exchanges.Load() != 3 {
		t.Fatalf("after a 401 for a: a %q→%q, b %q→%q, %d exchanges; want a new, b kept, 3", ga.AccessToken, ga2.AccessToken, gb.AccessToken, gb2.AccessToken, ts.exchanges.Load())
	}
}

func TestSubjectExpBoundsToken(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, nil)
	s := is.subject(t, "short", clk.now(), time.Minute, "gw", 0) // the token server says 300 s
	g, err := c.Get(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.now().Add(time.Minute).Truncate(time.Second); g.Expiry.After(want) {
		t.Fatalf("token expiry %v outlives the subject's exp %v", g.Expiry, want)
	}
	clk.add(time.Minute - exchange.DefaultLeeway)
	_, err = c.Get(context.Background(), s)
	if !errors.Is(err, exchange.ErrSubjectInvalid) && ts.exchanges.Load() != 2 {
		t.Fatalf("token handed out past the subject's exp: %v", err)
	}
}

func TestLRUBounded(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, func(c *exchange.Config) { c.CacheSize = 3 })
	var subs []string
	for i := range 5 {
		subs = append(subs, is.subject(t, fmt.Sprint(i), clk.now(), time.Hour, "gw", 0))
		if _, err := c.Get(context.Background(), subs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if c.Len() != 3 {
		t.Fatalf("cache holds %d subjects, bound 3", c.Len())
	}
	_, _ = c.Get(context.Background(), subs[4]) // most recent: still held
	_, _ = c.Get(context.Background(), subs[0]) // evicted: exchanged again
	if n := ts.exchanges.Load(); n != 6 {
		t.Fatalf("%d exchanges, want 6", n)
	}
}

func TestIssuedTokenTypeChecked(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	ts.issued = exchange.TokenTypeIDToken
	c := newCache(t, ts, is, clk, nil)
	if g, err := c.Get(context.Background(), is.subject(t, "u", clk.now(), time.Hour, "gw", 0)); err == nil {
		t.Fatalf("an id_token was accepted as an access token: %v", g.AccessToken)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]exchange.Config{
		"no subject":        {Config: oauth.Config{Settings: oauth.Settings{Endpoint: "https://idp.test/token", ClientID: "gw"}}},
		"both subjects":     {Config: oauth.Config{Settings: oauth.Settings{Endpoint: "https://idp.test/token", ClientID: "gw"}}, SubjectFile: "/f", SubjectHeader: "X"},
		"header, no verify": {Config: oauth.Config{Settings: oauth.Settings{Endpoint: "https://idp.test/token", ClientID: "gw"}}, SubjectHeader: "X"},
		"verify, no aud":    {Config: oauth.Config{Settings: oauth.Settings{Endpoint: "https://idp.test/token", ClientID: "gw"}}, SubjectHeader: "X", Verify: exchange.Verify{Issuer: "https://idp.test"}},
	} {
		if _, err := exchange.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestErrorsNeverQuoteSubject: a subject token is a user's credential; no
// error about it, however it failed, contains it.
func TestErrorsNeverQuoteSubject(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	c := newCache(t, ts, is, clk, nil)
	for _, s := range []string{
		is.subject(t, "rejected-x", clk.now(), time.Hour, "gw", 0), // refused by the server
		is.subject(t, "u", clk.now(), time.Hour, "wrong-aud", 0),   // refused by verification
		"not.a.jwt-but-a-secret-value",
	} {
		_, err := c.Get(context.Background(), s)
		if err == nil {
			t.Fatal("no error")
		}
		for _, part := range strings.Split(s, ".") {
			if len(part) > 8 && strings.Contains(err.Error(), part) {
				t.Fatalf("error quotes the subject: %v", err)
			}
		}
	}
}

// TestVerifyByIssuerDiscovery: with only an issuer, its keys are found
// through OpenID Connect discovery, and a subject from another issuer is
// refused.
func TestVerifyByIssuerDiscovery(t *testing.T) {
	ts, is, clk := newTokenServer(t), newIssuer(t), newClock()
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/openid-configuration" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": srv.URL, "jwks_uri": is.srv.URL})
	}))
	t.Cleanup(srv.Close)
	c := newCache(t, ts, is, clk, func(c *exchange.Config) {
		c.Verify = exchange.Verify{Issuer: srv.URL, Audiences: []string{"gw"}}
	})
	sign := func(iss string) string {
		tok, err := jwt.Signed(is.signer).Claims(jwt.Claims{Subject: "u", Issuer: iss, Audience: jwt.Audience{"gw"},
			Expiry: jwt.NewNumericDate(clk.now().Add(time.Hour))}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if _, err := c.Get(context.Background(), sign(srv.URL)); err != nil {
		t.Fatalf("subject of the discovered issuer: %v", err)
	}
	if _, err := c.Get(context.Background(), sign("https://other.test")); !errors.Is(err, exchange.ErrSubjectInvalid) {
		t.Fatalf("subject of another issuer: %v, want ErrSubjectInvalid", err)
	}
	if n := ts.exchanges.Load(); n != 1 {
		t.Fatalf("%d exchanges, want 1", n)
	}
}
