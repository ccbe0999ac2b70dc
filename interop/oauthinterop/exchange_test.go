package oauthinterop_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/exchange"
	"github.com/tokenwarden/caddy-inject-token/internal/oauthtest"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// upstreamSub presents token to the verifying resource server and returns
// the sub it accepted it for.
func upstreamSub(t *testing.T, rs *interop.ResourceServer, token string) string {
	req, _ := http.NewRequest(http.MethodGet, rs.URL+"/orders", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Sub string `json:"sub"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		t.Fatalf("upstream answered %d to an exchanged token", resp.StatusCode)
	}
	return out.Sub
}

func startExchangeProvider(t *testing.T, si *interop.SubjectIssuer) *interop.Provider {
	return interop.StartOIDCProvider(t, interop.ProviderOptions{
		Clients: []interop.Client{{ID: "gw", Secret: oauthtest.SecretBasic,
			GrantTypes: []string{exchange.GrantType, "client_credentials"}}},
		SubjectJWKS: si.JWKS, SubjectAudience: interop.SubjectAudience,
	})
}

// TestInteropExchangePerRequestSubjects: per-request subjects, verified
// against their issuer's JWKS, are exchanged at oidc-provider once each
// however many requests race, and every request's token reaches a
// verifying upstream as its own subject — two subjects never share one.
func TestInteropExchangePerRequestSubjects(t *testing.T) {
	t.Parallel()
	si := interop.NewSubjectIssuer(t)
	p := startExchangeProvider(t, si)
	rs := interop.StartResourceServer(t, interop.ResourceServerOptions{JWKSURL: p.JWKSURL, Issuer: p.Issuer,
		Audience: interop.DefaultResource, AllowBearer: true})
	cnt := oauthtest.NewCounter()
	e, err := exchange.New(exchange.Config{
		Config: oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "gw", ClientSecret: oauthtest.SecretBasic,
			Resource: interop.DefaultResource}, HTTPClient: cnt.Client()},
		SubjectHeader:      "X-User-Token",
		RequestedTokenType: exchange.TokenTypeAccessToken,
		Verify:             exchange.Verify{JWKSURL: si.URL, Audiences: []string{interop.SubjectAudience}},
	})
	if err != nil {
		t.Fatal(err)
	}
	const subjects, each = 8, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	tokenOwner := map[string]string{}
	tokens := make([]string, subjects)
	for i := range tokens {
		tokens[i] = si.Token(t, fmt.Sprintf("user-%d", i))
	}
	for i := range subjects * each {
		sub, subject := fmt.Sprintf("user-%d", i%subjects), tokens[i%subjects]
		wg.Go(func() {
			g, err := e.Cache().Get(context.Background(), subject)
			if err != nil {
				t.Error(err)
				return
			}
			if got := upstreamSub(t, rs, g.AccessToken); got != sub {
				t.Errorf("subject %s's token was accepted upstream as %s's", sub, got)
			}
			mu.Lock()
			defer mu.Unlock()
			if o, ok := tokenOwner[g.AccessToken]; ok && o != sub {
				t.Errorf("subjects %s and %s share a token", o, sub)
			}
			tokenOwner[g.AccessToken] = sub
		})
	}
	wg.Wait()
	if n := cnt.Get("/token"); n != subjects || len(tokenOwner) != subjects {
		t.Fatalf("%d exchanges and %d tokens for %d subjects, want one each", n, len(tokenOwner), subjects)
	}
	rejected := si.Token(t, "rejected-1")
	for range 3 {
		if _, err := e.Cache().Get(context.Background(), rejected); err == nil {
			t.Fatal("the provider's rejection was not passed on")
		} else if !errors.Is(err, tokencache.ErrSessionDead) {
			t.Fatalf("rejection: %v, want invalid_grant (the subject is refused)", err)
		}
	}
	if n := cnt.Get("/token"); n != subjects+1 {
		t.Errorf("a rejected subject was exchanged %d times in one negative window, want 1", n-subjects)
	}
}

// TestInteropExchangeSubjectFile: a subject file (a projected
// service-account token) is exchanged for a DPoP-bound token, and a
// rotated file is picked up by the next exchange.
func TestInteropExchangeSubjectFile(t *testing.T) {
	t.Parallel()
	si := interop.NewSubjectIssuer(t)
	p := startExchangeProvider(t, si)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(si.Token(t, "system:serviceaccount:shop:gateway")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, key, g := exchangeFile(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "gw", ClientSecret: oauthtest.SecretBasic,
		Resource: interop.DefaultResource}, DPoP: true}, file)
	cl := oauthtest.Claims(t, g.AccessToken)
	if g.TokenType != "DPoP" || oauthtest.JKT(t, g.AccessToken) != key.Thumbprint() || cl["sub"] != "system:serviceaccount:shop:gateway" || cl["aud"] != interop.DefaultResource {
		t.Fatalf("token type %s, claims %v", g.TokenType, cl)
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.WriteFile(file, []byte(si.Token(t, "system:serviceaccount:shop:gateway-2")), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(file, later, later)
	g, err := e.Refresh(context.Background(), key, "")
	if err != nil {
		t.Fatal(err)
	}
	if sub := oauthtest.Claims(t, g.AccessToken)["sub"]; sub != "system:serviceaccount:shop:gateway-2" {
		t.Fatalf("after rotating the subject file the token is for %v", sub)
	}
}

// TestInteropExchangeFreshAssertionPerRetry: a private_key_jwt client
// exchanging at a provider that demands DPoP nonces is challenged once and
// retries with a new client assertion (the provider remembers jti values:
// a reused assertion would be invalid_client), getting a DPoP-bound token.
func TestInteropExchangeFreshAssertionPerRetry(t *testing.T) {
	t.Parallel()
	si := interop.NewSubjectIssuer(t)
	signer, jwks := oauthtest.ClientKey(t)
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{
		RequireNonce: true,
		Clients: []interop.Client{{ID: "pkjwt", AuthMethod: "private_key_jwt", JWKS: jwks,
			GrantTypes: []string{exchange.GrantType}}},
		SubjectJWKS: si.JWKS, SubjectAudience: interop.SubjectAudience,
	})
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(si.Token(t, "spiffe://shop/gateway")), 0o600); err != nil {
		t.Fatal(err)
	}
	cnt := oauthtest.NewCounter()
	_, key, g := exchangeFile(t, oauth.Config{Settings: oauth.Settings{Endpoint: p.TokenEndpoint, ClientID: "pkjwt",
		Resource: interop.DefaultResource}, ClientKey: signer, ClientKeyID: "k1",
		DPoP: true, HTTPClient: cnt.Client()}, file)
	if n := cnt.Get("/token"); n != 2 {
		t.Errorf("%d token requests, want 2 (nonce challenge + one retry)", n)
	}
	if g.TokenType != "DPoP" || oauthtest.JKT(t, g.AccessToken) != key.Thumbprint() || oauthtest.Claims(t, g.AccessToken)["sub"] != "spiffe://shop/gateway" {
		t.Errorf("token %s, claims %v", g.TokenType, oauthtest.Claims(t, g.AccessToken))
	}
}

// exchangeFile builds an exchanger of the subject in file and runs its
// session login once, with a fresh DPoP key.
func exchangeFile(t *testing.T, cfg oauth.Config, file string) (*exchange.Exchanger, *dpop.Key, *tokencache.Grant) {
	t.Helper()
	e, err := exchange.New(exchange.Config{Config: cfg, SubjectFile: file})
	if err != nil {
		t.Fatal(err)
	}
	key := oauthtest.NewKey(t)
	g, err := e.AutoLogin()(context.Background(), key, "")
	if err != nil {
		t.Fatal(err)
	}
	return e, key, g
}
