package oauth_test

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// The tests here use tiny httptest handlers standing in for broken or
// hostile servers — behaviour a certified server will not show.

// fakeServer starts h on loopback and returns its URL and a request count.
func fakeServer(t *testing.T, h http.HandlerFunc) (string, *atomicCount) {
	t.Helper()
	n := new(atomicCount)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, n
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fakeJWT is an unsigned JWT-shaped token; the client only peeks at exp.
func fakeJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + enc.EncodeToString(b) + ".sig"
}

// grantCfg returns a config for the fake at base with the given grant.
func grantCfg(base, grant string) oauth.Config {
	return oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: "c", ClientSecret: secretBasic, Grant: grant}}
}

func TestMalformedTokenResponses(t *testing.T) {
	huge := strings.Repeat("x", 2<<20)
	cases := []struct {
		name string
		h    http.HandlerFunc
	}{
		{"not JSON", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>ok</html>") }},
		{"no access_token", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": 60, "refresh_token": testRefresh})
		}},
		{"names in another case", func(w http.ResponseWriter, r *http.Request) {
			// Member names are case-sensitive (RFC 8259, RFC 6749 §5.1).
			writeJSON(w, 200, map[string]any{"ACCESS_TOKEN": testAccess, "Token_Type": "Bearer", "expires_in": 60})
		}},
		{"unknown token_type", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "mac", "expires_in": 60})
		}},
		{"missing token_type", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"access_token": testAccess, "expires_in": 60})
		}},
		{"huge body", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "Bearer", "pad": huge})
		}},
	}
	for _, tc := range cases {
		for _, grant := range []string{oauth.GrantClientCredentials, oauth.GrantRefreshToken} {
			t.Run(tc.name+"/"+grant, func(t *testing.T) {
				base, n := fakeServer(t, tc.h)
				_, err := newClient(t, grantCfg(base, grant)).Token(context.Background(), nil, testRefresh)
				// A refresh the server accepted may have rotated: the token
				// is spent. A client_credentials request spends nothing.
				want := oauth.KindTransient
				if grant == oauth.GrantRefreshToken {
					want = oauth.KindUnknownOutcome
				}
				asError(t, err, want)
				if got := errors.Is(err, tokencache.ErrOutcomeUnknown); got != (want == oauth.KindUnknownOutcome) {
					t.Errorf("errors.Is(ErrOutcomeUnknown) = %v", got)
				}
				if n.Load() != 1 {
					t.Errorf("%d requests, want 1", n.Load())
				}
			})
		}
	}
}

// TestErrorClassification is the decided list for a refresh_token request:
// only answers that prove the server did not act leave the token
// presentable (no class); everything else after writing is outcome unknown.
func TestErrorClassification(t *testing.T) {
	cases := []struct {
		status  int
		body    string
		header  map[string]string
		want    oauth.Kind
		class   error
		reason  string
		retryIn time.Duration
	}{
		{400, `{"error":"invalid_grant","error_description":"refresh token reused"}`, nil, oauth.KindDead, tokencache.ErrSessionDead, "invalid_grant", 0},
		{401, `{"error":"invalid_client"}`, nil, oauth.KindConfig, tokencache.ErrCredentialsRejected, "invalid_client", 0},
		{400, `{"error":"unauthorized_client"}`, nil, oauth.KindConfig, tokencache.ErrCredentialsRejected, "invalid_client", 0},
		{400, `{"error":"invalid_scope"}`, nil, oauth.KindConfig, tokencache.ErrCredentialsRejected, "invalid_client", 0},
		{401, `<html>nope</html>`, nil, oauth.KindConfig, tokencache.ErrCredentialsRejected, "invalid_client", 0},
		{400, `{"error":"invalid_dpop_proof"}`, nil, oauth.KindTransient, nil, "dpop_rejected", 0},
		{401, `{"error":"use_dpop_nonce"}`, nil, oauth.KindTransient, nil, "nonce", 0},
		{429, `{"error":"slow_down"}`, map[string]string{"Retry-After": "7"}, oauth.KindTransient, nil, "rate_limited", 7 * time.Second},
		{429, `{"error":"slow_down"}`, nil, oauth.KindTransient, nil, "rate_limited", 0},
		{503, ``, map[string]string{"Retry-After": "999999999"}, oauth.KindTransient, nil, "status_5xx", time.Hour},
		{503, ``, nil, oauth.KindUnknownOutcome, tokencache.ErrOutcomeUnknown, "status_5xx", 0},
		{500, `<html>oops</html>`, nil, oauth.KindUnknownOutcome, tokencache.ErrOutcomeUnknown, "status_5xx", 0},
		{502, `bad gateway`, nil, oauth.KindUnknownOutcome, tokencache.ErrOutcomeUnknown, "status_5xx", 0},
		{504, `gateway timeout`, nil, oauth.KindUnknownOutcome, tokencache.ErrOutcomeUnknown, "status_5xx", 0},
		{400, `{"error":"invalid_request"}`, nil, oauth.KindUnknownOutcome, tokencache.ErrOutcomeUnknown, "other", 0},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d %s %v", tc.status, tc.body, tc.header), func(t *testing.T) {
			base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			})
			_, err := newClient(t, grantCfg(base, oauth.GrantRefreshToken)).Refresh(context.Background(), nil, testRefresh)
			e := asError(t, err, tc.want)
			for _, class := range []error{tokencache.ErrSessionDead, tokencache.ErrOutcomeUnknown, tokencache.ErrCredentialsRejected} {
				if errors.Is(err, class) != (class == tc.class) {
					t.Errorf("errors.Is(%v) = %v, want class %v", class, errors.Is(err, class), tc.class)
				}
			}
			var re tokencache.ReasonError
			if !errors.As(err, &re) || re.FailureReason() != tc.reason {
				t.Errorf("reason = %v, want %q", re, tc.reason)
			}
			var ra tokencache.RetryAfterError
			if !errors.As(err, &ra) || ra.RetryAfter() != tc.retryIn {
				t.Errorf("RetryAfter = %v, want %v", e.RetryDelay, tc.retryIn)
			}
			if n.Load() != 1 {
				t.Errorf("%d requests, want 1", n.Load())
			}
		})
	}
}

// A client_credentials request spends nothing: 5xx is transient, other 4xx
// a refusal to retry later, and a rejected client is still a config error.
func TestErrorClassificationWithoutSpending(t *testing.T) {
	for status, want := range map[int]oauth.Kind{500: oauth.KindTransient, 502: oauth.KindTransient, 400: oauth.KindRejected, 401: oauth.KindConfig} {
		base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			fmt.Fprint(w, `{"error":"x"}`)
		})
		_, err := newClient(t, grantCfg(base, oauth.GrantClientCredentials)).Token(context.Background(), nil, "")
		asError(t, err, want)
	}
}

func TestRedirectNotFollowed(t *testing.T) {
	var elsewhere atomicCount
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal", http.StatusTemporaryRedirect)
	})
	_, err := newClient(t, grantCfg(base, oauth.GrantRefreshToken)).Refresh(context.Background(), nil, testRefresh)
	asError(t, err, oauth.KindUnknownOutcome)
	if elsewhere.Load() != 0 {
		t.Error("a redirected token request (with its refresh token) was followed")
	}
}

func TestNonceChallengeRetriedExactlyOnce(t *testing.T) {
	var proofs []dpop.Claims
	base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		proofs = append(proofs, verifyProof(t, r))
		w.Header().Set("DPoP-Nonce", fmt.Sprintf("nonce-%d", len(proofs)))
		writeJSON(w, 400, map[string]string{"error": "use_dpop_nonce"})
	})
	cfg := grantCfg(base, oauth.GrantClientCredentials)
	cfg.DPoP = true
	_, err := newClient(t, cfg).Token(context.Background(), newKey(t), "")
	asError(t, err, oauth.KindTransient)
	if n.Load() != 2 {
		t.Fatalf("%d requests, want exactly 2 (one retry)", n.Load())
	}
	if proofs[0].Nonce != "" || proofs[1].Nonce != "nonce-1" {
		t.Errorf("nonces sent = %q, %q; want none, then the challenge's", proofs[0].Nonce, proofs[1].Nonce)
	}
	if proofs[0].JTI == proofs[1].JTI {
		t.Error("retry reused the proof's jti")
	}
	if proofs[1].HTU != base+"/token" || proofs[1].HTM != "POST" {
		t.Errorf("htu/htm = %q %q", proofs[1].HTU, proofs[1].HTM)
	}
}

// TestHostileNonceNotCarried: a token server whose DPoP-Nonce is a
// megabyte does not get it back in every proof: the nonce is refused
// (dpop.MaxNonceLen), the proofs stay small, and the failure is transient.
func TestHostileNonceNotCarried(t *testing.T) {
	long := strings.Repeat("n", 1<<20)
	var sizes []int
	base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		sizes = append(sizes, len(r.Header.Get("DPoP")))
		w.Header().Set("DPoP-Nonce", long)
		writeJSON(w, 400, map[string]string{"error": "use_dpop_nonce"})
	})
	cfg := grantCfg(base, oauth.GrantClientCredentials)
	cfg.DPoP = true
	_, err := newClient(t, cfg).Token(context.Background(), newKey(t), "")
	asError(t, err, oauth.KindTransient)
	if n.Load() != 2 {
		t.Fatalf("%d requests reached the server, want 2", n.Load())
	}
	for i, size := range sizes {
		if size == 0 || size > 2048 {
			t.Errorf("proof %d is %d bytes", i, size)
		}
	}
}

func TestNonceChallengeWithoutNonceNotRetried(t *testing.T) {
	base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 400, map[string]string{"error": "use_dpop_nonce"})
	})
	cfg := grantCfg(base, oauth.GrantClientCredentials)
	cfg.DPoP = true
	_, err := newClient(t, cfg).Token(context.Background(), newKey(t), "")
	asError(t, err, oauth.KindTransient)
	if n.Load() != 1 {
		t.Errorf("%d requests, want 1 (nothing new to retry with)", n.Load())
	}
}

// verifyProof checks r's DPoP header as a strict server would.
func verifyProof(t *testing.T, r *http.Request) dpop.Claims {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path}
	v, err := dpop.NewVerifier(0).Verify(r.Header.Get("DPoP"), dpop.Expect{Method: r.Method, URL: u})
	if err != nil {
		t.Errorf("DPoP proof: %v", err)
		return dpop.Claims{}
	}
	return v.Claims
}

func TestLostResponse(t *testing.T) {
	// The handler reads the whole request, then drops the connection: the
	// request was written, no answer came back.
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	for grant, want := range map[string]oauth.Kind{
		oauth.GrantRefreshToken:      oauth.KindUnknownOutcome,
		oauth.GrantClientCredentials: oauth.KindTransient,
	} {
		t.Run(grant, func(t *testing.T) {
			_, err := newClient(t, grantCfg(base, grant)).Token(context.Background(), nil, testRefresh)
			asError(t, err, want)
		})
	}
	t.Run("never sent", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close() // nothing listens: the request is never written
		_, err := newClient(t, grantCfg(srv.URL, oauth.GrantRefreshToken)).Token(context.Background(), nil, testRefresh)
		asError(t, err, oauth.KindTransient)
	})
}

func TestSecretsScrubbedFromServerText(t *testing.T) {
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		// A hostile or careless server echoing what it received.
		writeJSON(w, 400, map[string]string{"error": "invalid_request",
			"error_description": "bad " + r.Form.Get("refresh_token") + " " + r.Form.Get("client_secret") + " " + r.Header.Get("Authorization") + "\n\x1b[31m"})
	})
	cfg := grantCfg(base, oauth.GrantRefreshToken)
	cfg.Auth = oauth.AuthPost
	_, err := newClient(t, cfg).Refresh(context.Background(), nil, testRefresh)
	e := asError(t, err, oauth.KindUnknownOutcome)
	if !strings.Contains(e.Message, "[redacted]") || strings.ContainsAny(e.Message, "\n\x1b") {
		t.Errorf("description = %q, want secrets redacted and control characters gone", e.Message)
	}
}

func TestClientAuthenticationOnTheWire(t *testing.T) {
	type seen struct {
		auth string
		form url.Values
	}
	var got seen
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got = seen{r.Header.Get("Authorization"), r.PostForm}
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "bearer", "expires_in": 60})
	})
	const id, secret = "app:1 é", "p@ss word+/=%"
	ctx := context.Background()

	t.Run("basic", func(t *testing.T) {
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: id, ClientSecret: secret,
			Scopes: []string{"a", "b"}, Resource: "https://api.example", Params: map[string]string{"audience": "x"}}})
		g, err := c.Token(ctx, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if g.TokenType != "Bearer" {
			t.Errorf("token_type bearer → %q, want Bearer", g.TokenType)
		}
		// RFC 6749 §2.3.1: each part form-urlencoded, then joined by ':'.
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
		if got.auth != want {
			t.Errorf("Authorization = %q, want %q", got.auth, want)
		}
		wantForm := url.Values{"grant_type": {"client_credentials"}, "scope": {"a b"}, "resource": {"https://api.example"}, "audience": {"x"}}
		if got.form.Encode() != wantForm.Encode() {
			t.Errorf("form = %v, want %v", got.form, wantForm)
		}
	})
	t.Run("post", func(t *testing.T) {
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: id, ClientSecret: secret, Auth: oauth.AuthPost}})
		if _, err := c.Token(ctx, nil, ""); err != nil {
			t.Fatal(err)
		}
		if got.auth != "" || got.form.Get("client_id") != id || got.form.Get("client_secret") != secret {
			t.Errorf("post auth sent header %q form %v", got.auth, got.form)
		}
	})
	t.Run("private_key_jwt", func(t *testing.T) {
		signer, jwks := clientKey(t)
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: id}, ClientKey: signer, ClientKeyID: "k1"})
		start := time.Now()
		if _, err := c.Token(ctx, nil, ""); err != nil {
			t.Fatal(err)
		}
		if got.auth != "" || got.form.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			t.Fatalf("assertion auth sent header %q form %v", got.auth, got.form)
		}
		jws, err := jose.ParseSigned(got.form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		if jws.Signatures[0].Header.KeyID != "k1" {
			t.Errorf("kid = %q", jws.Signatures[0].Header.KeyID)
		}
		payload, err := jws.Verify(jwks.Keys[0].Key)
		if err != nil {
			t.Fatal("assertion does not verify with the client's public key")
		}
		var cl struct {
			Iss, Sub, Aud, JTI string
			IAT, Exp           int64
		}
		_ = json.Unmarshal(payload, &cl)
		if cl.Iss != id || cl.Sub != id || cl.Aud != base+"/token" || cl.JTI == "" {
			t.Errorf("claims = %+v", cl)
		}
		if cl.Exp-cl.IAT > 300 || cl.IAT < start.Unix()-1 {
			t.Errorf("iat %d exp %d: want fresh and at most 5 minutes", cl.IAT, cl.Exp)
		}
	})
	// A key held in hardware is reachable only through crypto.Signer.
	t.Run("private_key_jwt through crypto.Signer", func(t *testing.T) {
		signer, jwks := clientKey(t)
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: id}, ClientKey: hiddenSigner{signer}})
		if _, err := c.Token(ctx, nil, ""); err != nil {
			t.Fatal(err)
		}
		jws, err := jose.ParseSigned(got.form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jws.Verify(jwks.Keys[0].Key); err != nil {
			t.Fatal("assertion signed through crypto.Signer does not verify")
		}
	})
}

// hiddenSigner hides a key's concrete type behind crypto.Signer.
type hiddenSigner struct{ s crypto.Signer }

func (h hiddenSigner) Public() crypto.PublicKey { return h.s.Public() }
func (h hiddenSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return h.s.Sign(r, d, o)
}

func TestExpiry(t *testing.T) {
	serverAhead := time.Hour
	exp := time.Now().Add(serverAhead + 10*time.Minute).Unix()
	for _, tc := range []struct {
		name string
		body map[string]any
		want time.Duration // from now
	}{
		{"expires_in number", map[string]any{"access_token": testAccess, "token_type": "DPoP", "expires_in": 120}, 120 * time.Second},
		{"expires_in string", map[string]any{"access_token": testAccess, "token_type": "DPoP", "expires_in": "90"}, 90 * time.Second},
		// exp is on the server's clock (an hour ahead): corrected by Date.
		{"JWT exp", map[string]any{"access_token": fakeJWT(map[string]any{"exp": exp}), "token_type": "Bearer"}, 10 * time.Minute},
		{"default", map[string]any{"access_token": testAccess, "token_type": "Bearer", "expires_in": 0}, oauth.DefaultExpiresIn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Date", time.Now().Add(serverAhead).UTC().Format(http.TimeFormat))
				writeJSON(w, 200, tc.body)
			})
			g, err := newClient(t, grantCfg(base, oauth.GrantClientCredentials)).Token(context.Background(), nil, "")
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Until(g.Expiry) - tc.want; d.Abs() > 2*time.Second {
				t.Errorf("Expiry is %s from now, want %s", time.Until(g.Expiry).Round(time.Second), tc.want)
			}
		})
	}
}

func TestProofUsesServerClockAndNoProofWhenOff(t *testing.T) {
	serverAhead := time.Hour
	var iats []int64
	var headers []string
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		headers = append(headers, r.Header.Get("DPoP"))
		if p := r.Header.Get("DPoP"); p != "" {
			parts := strings.Split(p, ".")
			b, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var c dpop.Claims
			_ = json.Unmarshal(b, &c)
			iats = append(iats, c.IAT)
		}
		w.Header().Set("Date", time.Now().Add(serverAhead).UTC().Format(http.TimeFormat))
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "DPoP", "expires_in": 60})
	})
	cfg := grantCfg(base, oauth.GrantClientCredentials)
	cfg.DPoP = true
	c := newClient(t, cfg)
	key := newKey(t)
	for range 2 {
		if _, err := c.Token(context.Background(), key, ""); err != nil {
			t.Fatal(err)
		}
	}
	// The second proof is made after the Date header showed the skew.
	if d := time.Until(time.Unix(iats[1], 0)) - serverAhead; d.Abs() > 3*time.Second {
		t.Errorf("second proof iat is %s off the server's clock", d)
	}

	cfg.DPoP = false
	if _, err := newClient(t, cfg).Token(context.Background(), key, ""); err != nil {
		t.Fatal(err)
	}
	if headers[2] != "" {
		t.Error("a DPoP proof was sent with DPoP off")
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []oauth.Config{
		{Settings: oauth.Settings{Endpoint: "https://as.example/token"}}, // no client id
		{Settings: oauth.Settings{Endpoint: "ftp://as.example/token", ClientID: "c"}},
		{Settings: oauth.Settings{Endpoint: "https://user:" + secretBasic + "@as.example/token", ClientID: "c"}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token#f", ClientID: "c"}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Grant: "password"}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Auth: oauth.AuthBasic}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Auth: oauth.AuthNone, ClientSecret: secretBasic}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Auth: oauth.AuthPrivateKeyJWT}},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c"}, ClientKeyPEM: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")},
		{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Params: map[string]string{"client_id": "x"}}},
	} {
		if _, err := oauth.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg.Endpoint)
		} else if strings.Contains(err.Error(), secretBasic) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
	c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", ClientSecret: secretBasic}})
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, secretBasic) {
		t.Errorf("formatting a Client leaks the secret: %s", s)
	}
	cfg := oauth.Config{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", ClientSecret: secretBasic}, DPoP: true}
	_, err := newClient(t, cfg).Token(context.Background(), nil, "")
	asError(t, err, oauth.KindConfig)
}

func TestDiscoveryFailures(t *testing.T) {
	t.Run("issuer mismatch", func(t *testing.T) {
		base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]string{"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"})
		})
		err := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base, ClientID: "c", ClientSecret: secretBasic}}).Discover(context.Background())
		asError(t, err, oauth.KindConfig)
	})
	t.Run("no metadata: Endpoint is the token endpoint", func(t *testing.T) {
		// A catch-all server answering 200 HTML to every path.
		base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>hi</html>") })
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base + "/as", ClientID: "c", ClientSecret: secretBasic}})
		tok, rev, err := c.Endpoints(context.Background())
		if err != nil || tok != base+"/as" || rev != "" {
			t.Errorf("endpoints %q %q %v; want %q and no revocation", tok, rev, err, base+"/as")
		}
		if n.Load() != 2 {
			t.Errorf("%d requests, want 2 probes", n.Load())
		}
	})
	t.Run("5xx is transient and not cached", func(t *testing.T) {
		fail := true
		var base string
		base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
			if fail {
				w.WriteHeader(502)
				return
			}
			writeJSON(w, 200, map[string]string{"issuer": base, "token_endpoint": base + "/tok", "revocation_endpoint": base + "/rev"})
		})
		c := newClient(t, oauth.Config{Settings: oauth.Settings{Endpoint: base, ClientID: "c", ClientSecret: secretBasic}})
		asError(t, c.Discover(context.Background()), oauth.KindTransient)
		fail = false
		tok, rev, err := c.Endpoints(context.Background())
		if err != nil || tok != base+"/tok" || rev != base+"/rev" {
			t.Fatalf("after recovery: %q %q %v", tok, rev, err)
		}
		before := n.Load()
		if err := c.Discover(context.Background()); err != nil || n.Load() != before {
			t.Errorf("success not cached: %v, %d new requests", err, n.Load()-before)
		}
	})
}

func TestRevokeNoops(t *testing.T) {
	// A token endpoint without metadata: no revocation endpoint known.
	base, n := fakeServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) })
	c := newClient(t, grantCfg(base, oauth.GrantRefreshToken))
	if err := c.Revoke(context.Background(), nil, ""); err != nil || n.Load() != 0 {
		t.Errorf("revoking nothing: %v, %d requests", err, n.Load())
	}
	if err := c.Revoke(context.Background(), nil, testRefresh); err != nil {
		t.Errorf("no revocation endpoint must be a no-op: %v", err)
	}
	if n.Load() != 0 {
		t.Errorf("%d requests, want none (a token endpoint URL is not probed)", n.Load())
	}
}
