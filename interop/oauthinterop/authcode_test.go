package oauthinterop_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The authorization code grant against oidc-provider: users log in through
// the provider's login and consent steps (server.js's JSON interaction
// routes, driven by interop.Provider.Authorize as a browser would), the
// gateway's AuthCode begins and finishes the flow.

const redirectURI = "http://127.0.0.1:9/callback" // never requested

var users = map[string]interop.Account{
	"alice": {Password: "alice-PASSWORD-0123", Email: "alice@example.test", Name: "Alice Liddell"},
	"bob":   {Password: "bob-PASSWORD-4567", Email: "bob@example.test", Name: "Bob Builder"},
}

// authCodeProvider starts oidc-provider with alice and bob and a
// confidential web client "web" that must push its authorization requests.
// Clients already in opts are registered too.
func authCodeProvider(t *testing.T, opts interop.ProviderOptions) *interop.Provider {
	opts.Accounts = users
	opts.Clients = append(opts.Clients, interop.Client{ID: "web", Secret: oauthtest.SecretBasic, RedirectURIs: []string{redirectURI}, RequirePAR: !opts.NoPAR})
	return interop.StartOIDCProvider(t, opts)
}

// tamper is the network between the gateway and the provider, counting
// requests per path, and on demand rewriting the ID token of token
// responses and adding a key of its own to the JWKS.
type tamper struct {
	mu        sync.Mutex
	n         map[string]int
	idToken   func(string) string // nil: unchanged
	extraKey  *jose.JSONWebKey    // added to /jwks responses from fetch jwksFrom on
	jwksFrom  int
	jwksCount int
}

func (tp *tamper) RoundTrip(r *http.Request) (*http.Response, error) {
	tp.mu.Lock()
	tp.n[r.URL.Path]++
	tp.mu.Unlock()
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	rewrite := func(f func(map[string]any)) {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var m map[string]any
		if json.Unmarshal(raw, &m) == nil {
			f(m)
			raw, _ = json.Marshal(m)
		}
		resp.Body = io.NopCloser(bytes.NewReader(raw))
		resp.ContentLength = int64(len(raw))
		resp.Header.Del("Content-Length")
	}
	switch {
	case r.URL.Path == "/token" && tp.idToken != nil:
		rewrite(func(m map[string]any) {
			if s, ok := m["id_token"].(string); ok {
				m["id_token"] = tp.idToken(s)
			}
		})
	case r.URL.Path == "/jwks":
		tp.jwksCount++
		if tp.extraKey != nil && tp.jwksCount >= tp.jwksFrom {
			rewrite(func(m map[string]any) {
				k, _ := tp.extraKey.MarshalJSON()
				var km any
				_ = json.Unmarshal(k, &km)
				m["keys"] = append(m["keys"].([]any), km)
			})
		}
	}
	return resp, nil
}

func (tp *tamper) count(path string) int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.n[path]
}

func (tp *tamper) set(f func(*tamper)) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	f(tp)
}

// newAuthCode is the gateway's flow for client "web", DPoP on, through tp.
func newAuthCode(t *testing.T, p *interop.Provider, tp *tamper, now func() time.Time) *oauth.AuthCode {
	return newAuthCodeWith(t, p, tp, now, nil)
}

// newAuthCodeWith is newAuthCode with the client changed by edit.
func newAuthCodeWith(t *testing.T, p *interop.Provider, tp *tamper, now func() time.Time, edit func(*oauth.Config)) *oauth.AuthCode {
	t.Helper()
	cfg := oauth.AuthCodeConfig{
		Config: oauth.Config{
			Settings: oauth.Settings{
				Endpoint: p.Issuer, ClientID: "web", ClientSecret: oauthtest.SecretBasic,
				Grant: oauth.GrantAuthorizationCode, RedirectURI: redirectURI,
				// oidc-provider drops offline_access (no refresh token)
				// unless consent is prompted for.
				AuthorizeParams: map[string]string{"prompt": "consent"},
				Scopes:          []string{"openid", "offline_access", "email", "profile", "api:read"},
				Resource:        interop.DefaultResource,
			},
			DPoP: true, HTTPClient: &http.Client{Transport: tp},
		},
		Now: now,
	}
	if edit != nil {
		edit(&cfg.Config)
	}
	a, err := oauth.NewAuthCode(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func newTamper() *tamper { return &tamper{n: map[string]int{}} }

// login runs Begin, the user's browser and Finish.
func login(t *testing.T, p *interop.Provider, a *oauth.AuthCode, key *dpop.Key, u interop.User) (*tokencache.Grant, *oauth.IDToken, error) {
	t.Helper()
	ctx := context.Background()
	authURL, pend, err := a.Begin(ctx, key, "/after-login")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := p.Authorize(ctx, authURL, redirectURI, u)
	if err != nil {
		t.Fatal(err)
	}
	return a.Finish(ctx, key, pend, cb)
}

// callUpstream presents g to the verifying resource server with a proof
// signed by key and returns the sub it saw.
func callUpstream(t *testing.T, rs *interop.ResourceServer, key *dpop.Key, g *tokencache.Grant) string {
	t.Helper()
	target := rs.URL + "/whoami"
	proof, err := key.Proof(http.MethodGet, target, dpop.ProofOptions{AccessToken: g.AccessToken})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, target, nil)
	req.Header.Set("Authorization", "DPoP "+g.AccessToken)
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var echo struct {
		Sub string `json:"sub"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&echo); resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("upstream: HTTP %d %v (%v)", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), rs.Stats())
	}
	return echo.Sub
}

// TestInteropAuthCodeTwoUsers: alice and bob each log in (PKCE, state,
// nonce, PAR, DPoP with the provider demanding nonces), each gets their
// own sub from the verified ID token and a DPoP-bound access token that a
// verifying upstream accepts as theirs; a refresh through Backend rotates
// the refresh token, and the old one is then dead.
func TestInteropAuthCodeTwoUsers(t *testing.T) {
	t.Parallel()
	p := authCodeProvider(t, interop.ProviderOptions{RequireNonce: true})
	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer, Audience: interop.DefaultResource})
	tp := newTamper()
	a := newAuthCode(t, p, tp, nil)
	ctx := context.Background()
	for i, name := range []string{"alice", "bob"} {
		key := oauthtest.NewKey(t)
		authURL, pend, err := a.Begin(ctx, key, "/after-login")
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(authURL)
		if q := u.Query(); len(q) != 2 || q.Get("client_id") != "web" || q.Get("request_uri") == "" {
			t.Errorf("authorization URL %s: want only client_id and request_uri (PAR)", authURL)
		}
		if n := tp.count("/request"); n != i+1 {
			t.Errorf("%d pushed authorization requests after %d logins", n, i+1)
		}
		if pend.ReturnTo != "/after-login" || pend.RedirectURI != redirectURI || strings.Contains(authURL, pend.Verifier) || strings.Contains(authURL, pend.Nonce) {
			t.Errorf("pending %+v / URL %s", pend, authURL)
		}
		cb, err := p.Authorize(ctx, authURL, redirectURI, interop.User{Login: name, Password: users[name].Password})
		if err != nil {
			t.Fatal(err)
		}
		g, id, err := a.Finish(ctx, key, pend, cb)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, p.Logs())
		}
		if id.Subject != name || id.Email != users[name].Email || id.Name != users[name].Name || !id.EmailVerified {
			t.Errorf("ID token of %s: %+v", name, id)
		}
		if g.TokenType != "DPoP" || oauthtest.JKT(t, g.AccessToken) != key.Thumbprint() || g.RefreshToken == "" {
			t.Fatalf("grant of %s not DPoP-bound to its key or without a refresh token: %s", name, g.TokenType)
		}
		if sub := callUpstream(t, rs, key, g); sub != name {
			t.Errorf("upstream saw sub %q for %s", sub, name)
		}

		g2, err := a.Backend().Refresh(ctx, key, g.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if g2.RefreshToken == "" || g2.RefreshToken == g.RefreshToken || g2.AccessToken == g.AccessToken {
			t.Error("refresh did not rotate")
		}
		if sub := callUpstream(t, rs, key, g2); sub != name {
			t.Errorf("upstream saw sub %q for %s after refresh", sub, name)
		}
		_, err = a.Backend().Refresh(ctx, key, g.RefreshToken)
		asError(t, err, oauth.KindDead, g.RefreshToken, g2.RefreshToken)
	}
}

// TestInteropAuthCodeWithoutPAR: a server without a PAR endpoint gets the
// whole request in the URL: PKCE S256, state, nonce, dpop_jkt.
func TestInteropAuthCodeWithoutPAR(t *testing.T) {
	t.Parallel()
	p := authCodeProvider(t, interop.ProviderOptions{NoPAR: true})
	tp := newTamper()
	a := newAuthCode(t, p, tp, nil)
	key := oauthtest.NewKey(t)
	authURL, pend, err := a.Begin(context.Background(), key, "")
	if err != nil {
		t.Fatal(err)
	}
	q, _ := url.ParseQuery(authURL[strings.IndexByte(authURL, '?')+1:])
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") != pend.State ||
		q.Get("nonce") != pend.Nonce || q.Get("dpop_jkt") != key.Thumbprint() || q.Get("response_type") != "code" {
		t.Errorf("authorization request %v", q)
	}
	cb, err := p.Authorize(context.Background(), authURL, redirectURI, interop.User{Login: "bob", Password: users["bob"].Password})
	if err != nil {
		t.Fatal(err)
	}
	_, id, err := a.Finish(context.Background(), key, pend, cb)
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "bob" || tp.count("/request") != 0 {
		t.Errorf("sub %q, %d pushed requests", id.Subject, tp.count("/request"))
	}
}

// TestInteropAuthCodeClientAuth: a private_key_jwt client (its assertion
// made anew for the PAR and the token request) and a public client (auth
// none, PKCE alone) log in the same way.
func TestInteropAuthCodeClientAuth(t *testing.T) {
	t.Parallel()
	signer, jwks := oauthtest.ClientKey(t)
	p := authCodeProvider(t, interop.ProviderOptions{RequireNonce: true, Clients: []interop.Client{
		{ID: "pkjwt", AuthMethod: "private_key_jwt", JWKS: jwks, RedirectURIs: []string{redirectURI}, RequirePAR: true},
		{ID: "public", AuthMethod: "none", RedirectURIs: []string{redirectURI}},
	}})
	for name, edit := range map[string]func(*oauth.Config){
		"private_key_jwt": func(c *oauth.Config) {
			c.ClientID, c.ClientSecret, c.ClientKey, c.ClientKeyID = "pkjwt", "", signer, "k1"
		},
		"public": func(c *oauth.Config) { c.ClientID, c.ClientSecret = "public", "" },
	} {
		t.Run(name, func(t *testing.T) {
			tp := newTamper()
			a := newAuthCodeWith(t, p, tp, nil, edit)
			key := oauthtest.NewKey(t)
			g, id, err := login(t, p, a, key, interop.User{Login: "alice", Password: users["alice"].Password})
			if err != nil {
				t.Fatal(err)
			}
			if id.Subject != "alice" || oauthtest.JKT(t, g.AccessToken) != key.Thumbprint() || tp.count("/request") != 1 {
				t.Errorf("sub %q, jkt ok %v, %d pushed requests", id.Subject, oauthtest.JKT(t, g.AccessToken) == key.Thumbprint(), tp.count("/request"))
			}
			if _, err := a.Backend().Refresh(context.Background(), key, g.RefreshToken); err != nil {
				t.Error(err)
			}
		})
	}
}

// forger signs ID tokens with a key the tamper network adds to the JWKS.
type forger struct {
	jwk    jose.JSONWebKey
	signer jose.Signer
}

func newForger(t *testing.T, kid string) *forger {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	return &forger{jwk: jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"}, signer: s}
}

// resign returns the real token's claims, changed by edit, signed by f.
func (f *forger) resign(t *testing.T, real string, edit func(map[string]any)) string {
	parts := strings.Split(real, ".")
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		t.Error(err)
		return real
	}
	edit(claims)
	payload, _ := json.Marshal(claims)
	jws, err := f.signer.Sign(payload)
	if err != nil {
		t.Error(err)
		return real
	}
	s, _ := jws.CompactSerialize()
	return s
}

// TestInteropAuthCodeRefused: every check of Finish refuses its case with
// a clear error and returns nothing; the checks that come before the
// token request send none, and a refused ID token's refresh token is
// revoked.
func TestInteropAuthCodeRefused(t *testing.T) {
	t.Parallel()
	p := authCodeProvider(t, interop.ProviderOptions{})
	ctx := context.Background()
	alice := interop.User{Login: "alice", Password: users["alice"].Password}
	forged := newForger(t, "forger")

	// begin starts alice's login and returns what Finish needs.
	begin := func(t *testing.T, a *oauth.AuthCode, key *dpop.Key, u interop.User) (oauth.Pending, url.Values) {
		authURL, pend, err := a.Begin(ctx, key, "")
		if err != nil {
			t.Fatal(err)
		}
		cb, err := p.Authorize(ctx, authURL, redirectURI, u)
		if err != nil {
			t.Fatal(err)
		}
		return pend, cb
	}
	type result struct {
		tp  *tamper
		err error
	}
	run := func(t *testing.T, now func() time.Time, setup func(*tamper), change func(*oauth.Pending, url.Values, **dpop.Key)) result {
		tp := newTamper()
		if setup != nil {
			setup(tp)
		}
		a := newAuthCode(t, p, tp, now)
		key := oauthtest.NewKey(t)
		pend, cb := begin(t, a, key, alice)
		if change != nil {
			change(&pend, cb, &key)
		}
		g, id, err := a.Finish(ctx, key, pend, cb)
		if err == nil || g != nil || id != nil {
			t.Fatalf("Finish = %v, %v, %v; want only an error", g, id, err)
		}
		return result{tp, err}
	}
	want := func(t *testing.T, r result, sentinel error, tokenRequests int) {
		t.Helper()
		if !errors.Is(r.err, sentinel) {
			t.Errorf("error %v, want %v", r.err, sentinel)
		}
		if n := r.tp.count("/token"); n != tokenRequests {
			t.Errorf("%d token requests, want %d", n, tokenRequests)
		}
		t.Log(r.err)
	}

	t.Run("control: forged token with nothing wrong is accepted", func(t *testing.T) {
		// The forging network itself works, so the refusals below are the
		// verifier's.
		tp := newTamper()
		tp.extraKey, tp.idToken = &forged.jwk, func(s string) string { return forged.resign(t, s, func(map[string]any) {}) }
		a := newAuthCode(t, p, tp, nil)
		if _, id, err := login(t, p, a, oauthtest.NewKey(t), alice); err != nil || id.Subject != "alice" {
			t.Fatalf("%v %v", id, err)
		}
	})
	t.Run("wrong state", func(t *testing.T) {
		r := run(t, nil, nil, func(_ *oauth.Pending, cb url.Values, _ **dpop.Key) { cb.Set("state", "attacker-"+cb.Get("state")) })
		want(t, r, oauth.ErrStateMismatch, 0)
	})
	t.Run("no state", func(t *testing.T) {
		r := run(t, nil, nil, func(_ *oauth.Pending, cb url.Values, _ **dpop.Key) { cb.Del("state") })
		want(t, r, oauth.ErrStateMismatch, 0)
	})
	t.Run("wrong iss", func(t *testing.T) {
		r := run(t, nil, nil, func(_ *oauth.Pending, cb url.Values, _ **dpop.Key) { cb.Set("iss", "http://127.0.0.1:1") })
		want(t, r, oauth.ErrIssuerMismatch, 0)
	})
	t.Run("missing iss the server promised", func(t *testing.T) {
		r := run(t, nil, nil, func(_ *oauth.Pending, cb url.Values, _ **dpop.Key) { cb.Del("iss") })
		want(t, r, oauth.ErrIssuerMismatch, 0)
	})
	t.Run("expired pending login", func(t *testing.T) {
		r := run(t, nil, nil, func(p *oauth.Pending, _ url.Values, _ **dpop.Key) { p.Created = p.Created.Add(-time.Hour) })
		want(t, r, oauth.ErrLoginExpired, 0)
	})
	t.Run("code bound to another DPoP key", func(t *testing.T) {
		r := run(t, nil, nil, func(_ *oauth.Pending, _ url.Values, k **dpop.Key) { *k = oauthtest.NewKey(t) })
		asError(t, r.err, oauth.KindDead)
	})
	t.Run("wrong PKCE verifier", func(t *testing.T) {
		r := run(t, nil, nil, func(p *oauth.Pending, _ url.Values, _ **dpop.Key) { p.Verifier = strings.Repeat("v", 43) })
		asError(t, r.err, oauth.KindDead)
	})
	t.Run("wrong nonce", func(t *testing.T) {
		r := run(t, nil, nil, func(p *oauth.Pending, _ url.Values, _ **dpop.Key) { p.Nonce = "another-login's-nonce" })
		want(t, r, oauth.ErrIDTokenInvalid, 1)
		if n := r.tp.count("/token/revocation"); n != 1 {
			t.Errorf("%d revocations, want 1: the refused login's refresh token must be given up", n)
		}
	})
	t.Run("tampered ID token signature", func(t *testing.T) {
		r := run(t, nil, func(tp *tamper) {
			tp.idToken = func(s string) string {
				i := strings.LastIndexByte(s, '.') + 5
				c := byte('A')
				if s[i] == 'A' {
					c = 'B'
				}
				return s[:i] + string(c) + s[i+1:]
			}
		}, nil)
		want(t, r, oauth.ErrIDTokenInvalid, 1)
	})
	t.Run("tampered ID token claims", func(t *testing.T) {
		r := run(t, nil, func(tp *tamper) {
			tp.idToken = func(s string) string {
				parts := strings.Split(s, ".")
				b, _ := base64.RawURLEncoding.DecodeString(parts[1])
				b = bytes.Replace(b, []byte(`"alice"`), []byte(`"bob"`), 1)
				return parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2]
			}
		}, nil)
		want(t, r, oauth.ErrIDTokenInvalid, 1)
	})
	forge := func(edit func(map[string]any)) func(*tamper) {
		return func(tp *tamper) {
			tp.extraKey = &forged.jwk
			tp.idToken = func(s string) string { return forged.resign(t, s, edit) }
		}
	}
	for name, edit := range map[string]func(map[string]any){
		"wrong aud":         func(c map[string]any) { c["aud"] = "another-client" },
		"extra aud w/o azp": func(c map[string]any) { c["aud"] = []string{"web", "another-client"}; delete(c, "azp") },
		"wrong azp":         func(c map[string]any) { c["azp"] = "another-client" },
		"wrong iss":         func(c map[string]any) { c["iss"] = "http://127.0.0.1:1" },
		"no sub":            func(c map[string]any) { delete(c, "sub") },
		"sub with newline":  func(c map[string]any) { c["sub"] = "alice\nadmin" },
		"no exp":            func(c map[string]any) { delete(c, "exp") },
		"no iat":            func(c map[string]any) { delete(c, "iat") },
		"iat in the future": func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() },
		"nbf in the future": func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() },
		"expired":           func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() },
	} {
		t.Run("forged: "+name, func(t *testing.T) {
			want(t, run(t, nil, forge(edit), nil), oauth.ErrIDTokenInvalid, 1)
		})
	}
	t.Run("expired ID token (gateway clock two hours on)", func(t *testing.T) {
		// oidc-provider's ID tokens live an hour; Begin and Finish both
		// read the shifted clock, so only the token is old.
		later := func() time.Time { return time.Now().Add(2 * time.Hour) }
		want(t, run(t, later, nil, nil), oauth.ErrIDTokenInvalid, 1)
	})
	t.Run("replayed code", func(t *testing.T) {
		tp := newTamper()
		a := newAuthCode(t, p, tp, nil)
		key := oauthtest.NewKey(t)
		pend, cb := begin(t, a, key, alice)
		if _, _, err := a.Finish(ctx, key, pend, cb); err != nil {
			t.Fatal(err)
		}
		g, id, err := a.Finish(ctx, key, pend, cb)
		if g != nil || id != nil {
			t.Fatal("a replayed code was accepted")
		}
		asError(t, err, oauth.KindDead, cb.Get("code"), pend.Verifier)
	})
	t.Run("access_denied with a hostile description", func(t *testing.T) {
		hostile := "<script>alert(document.cookie)</script>\r\nSet-Cookie: session=evil; \"quoted\" `tick` \\ &amp; ${x} {{.}}"
		tp := newTamper()
		a := newAuthCode(t, p, tp, nil)
		key := oauthtest.NewKey(t)
		pend, cb := begin(t, a, key, interop.User{Deny: hostile})
		if cb.Get("error") != "access_denied" || cb.Get("error_description") != hostile {
			t.Fatalf("the provider did not pass the description through: %v", cb)
		}
		g, id, err := a.Finish(ctx, key, pend, cb)
		if g != nil || id != nil || !errors.Is(err, oauth.ErrAuthorizationFailed) {
			t.Fatalf("Finish = %v, %v, %v", g, id, err)
		}
		e := asError(t, err, oauth.KindRejected)
		if e.Code != "access_denied" {
			t.Errorf("Code %q", e.Code)
		}
		for _, s := range []string{err.Error(), e.Message} {
			if strings.ContainsAny(s, "<>\"`\\&${}\r\n") {
				t.Errorf("hostile text reflected: %q", s)
			}
		}
		t.Log(err)
		if !strings.Contains(e.Message, "script") || tp.count("/token") != 0 {
			t.Errorf("message %q (want the cleaned text), %d token requests", e.Message, tp.count("/token"))
		}
	})
	t.Run("unknown kid: JWKS fetched once more, then rate-limited", func(t *testing.T) {
		var offset atomic.Int64 // the gateway's clock runs this far ahead
		clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		tp := newTamper()
		a := newAuthCode(t, p, tp, clock)
		if _, _, err := login(t, p, a, oauthtest.NewKey(t), alice); err != nil {
			t.Fatal(err)
		}
		// The provider rotates to the forger's key, half a minute later.
		offset.Store(int64(31 * time.Second))
		tp.set(func(tp *tamper) {
			tp.extraKey, tp.jwksFrom = &forged.jwk, 2
			tp.idToken = func(s string) string { return forged.resign(t, s, func(map[string]any) {}) }
		})
		if _, _, err := login(t, p, a, oauthtest.NewKey(t), alice); err != nil {
			t.Fatal(err)
		}
		if n := tp.count("/jwks"); n != 2 {
			t.Errorf("%d JWKS fetches, want 2 (first, then once for the new kid)", n)
		}
		other := newForger(t, "unknown")
		tp.set(func(tp *tamper) {
			tp.idToken = func(s string) string { return other.resign(t, s, func(map[string]any) {}) }
		})
		_, _, err := login(t, p, a, oauthtest.NewKey(t), alice)
		if !errors.Is(err, oauth.ErrIDTokenInvalid) {
			t.Errorf("unknown kid: %v", err)
		}
		if n := tp.count("/jwks"); n != 2 {
			t.Errorf("%d JWKS fetches, want still 2 (refetch is rate-limited)", n)
		}
	})
}

// TestInteropAuthCodeEngineSession: a session of the token engine
// (tokencache with file storage) logs in through the flow with the key the
// engine made for it, hands out bob's DPoP-bound token, and refreshes it
// through the backend contract: the rotated refresh token is stored and
// the new token is still bob's, bound to the same key.
func TestInteropAuthCodeEngineSession(t *testing.T) {
	t.Parallel()
	p := authCodeProvider(t, interop.ProviderOptions{})
	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer, Audience: interop.DefaultResource})
	a := newAuthCode(t, p, newTamper(), nil)
	ctx := context.Background()
	cache, err := tokencache.New(tokencache.Config{Name: "bob", Storage: &certmagic.FileStorage{Path: t.TempDir()}, Backend: a.Backend()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	var sub string
	err = cache.Login(ctx, func(ctx context.Context, key *dpop.Key, _ string) (*tokencache.Grant, error) {
		authURL, pend, err := a.Begin(ctx, key, "")
		if err != nil {
			return nil, err
		}
		cb, err := p.Authorize(ctx, authURL, redirectURI, interop.User{Login: "bob", Password: users["bob"].Password})
		if err != nil {
			return nil, err
		}
		g, id, err := a.Finish(ctx, key, pend, cb)
		if id != nil {
			sub = id.Subject
		}
		return g, err
	})
	if err != nil || sub != "bob" {
		t.Fatalf("login: %v (sub %q)", err, sub)
	}
	tok, err := cache.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := callUpstream(t, rs, tok.Key, &tokencache.Grant{AccessToken: tok.Value}); got != "bob" || tok.Type != "DPoP" {
		t.Fatalf("upstream saw %q with a %s token", got, tok.Type)
	}
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	tok2, err := cache.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok2.Value == tok.Value || tok2.Key.Thumbprint() != tok.Key.Thumbprint() {
		t.Error("refresh did not replace the token, or changed the session's key")
	}
	if got := callUpstream(t, rs, tok2.Key, &tokencache.Grant{AccessToken: tok2.Value}); got != "bob" {
		t.Errorf("upstream saw %q after the refresh", got)
	}
}
