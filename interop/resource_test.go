package interop_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/interop"
	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

const secret = "cs-SECRET-interop-0123456789"

// setup starts the provider and a resource server that trusts it, and
// fetches a DPoP-bound token for key (and a Bearer one).
func setup(t *testing.T, rsOpts interop.ResourceServerOptions) (rs *interop.ResourceServer, key *dpop.Key, bound, bearer *tokencache.Grant) {
	t.Helper()
	p := interop.StartOIDCProvider(t, interop.ProviderOptions{Clients: []interop.Client{{ID: "svc", Secret: secret}}})
	rsOpts.JWKSURL, rsOpts.Issuer, rsOpts.Audience = p.JWKSURL, p.Issuer, interop.DefaultResource
	rs = interop.StartResourceServer(t, rsOpts)
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	for _, useDPoP := range []bool{true, false} {
		c, err := oauth.New(oauth.Config{Settings: oauth.Settings{Endpoint: p.Issuer, ClientID: "svc", ClientSecret: secret,
			Resource: interop.DefaultResource, Scopes: []string{"api:read"}}, DPoP: useDPoP})
		if err != nil {
			t.Fatal(err)
		}
		g, err := c.Token(context.Background(), key, "")
		if err != nil {
			t.Fatal(err)
		}
		if useDPoP {
			bound = g
		} else {
			bearer = g
		}
	}
	return rs, key, bound, bearer
}

// call sends method url with the given Authorization and DPoP headers and
// returns status, WWW-Authenticate and body.
func call(t *testing.T, method, url, authz, proof string) (int, string, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body
}

func mustProof(t *testing.T, k *dpop.Key, method, url string, opts dpop.ProofOptions) string {
	t.Helper()
	p, err := k.Proof(method, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResourceServerWithRealTokens(t *testing.T) {
	rs, key, bound, bearer := setup(t, interop.ResourceServerOptions{})
	if bound.TokenType != "DPoP" || bearer.TokenType != "Bearer" {
		t.Fatalf("token types %q / %q", bound.TokenType, bearer.TokenType)
	}
	target := rs.URL + "/items/a%2Fb?x=1"
	authz := "DPoP " + bound.AccessToken
	withToken := dpop.ProofOptions{AccessToken: bound.AccessToken}

	// Accepted: a proof over the URL as sent (query ignored, escaping kept).
	good := mustProof(t, key, "GET", target, withToken)
	status, _, body := call(t, "GET", target, authz, good)
	if status != 200 {
		t.Fatalf("correct request: %d %s", status, body)
	}
	var echo struct {
		ClientID          string `json:"client_id"`
		HTU, Method, Path string
		Headers           map[string][]string
	}
	_ = json.Unmarshal(body, &echo)
	if echo.ClientID != "svc" || echo.Method != "GET" || echo.Path != "/items/a%2Fb" || echo.HTU != rs.URL+"/items/a%2Fb" {
		t.Errorf("echo = %+v", echo)
	}
	if got := echo.Headers["Authorization"]; len(got) != 1 || got[0] != "DPoP" {
		t.Errorf("echoed Authorization = %q, want only the scheme", got)
	}

	other, _ := dpop.GenerateKey(dpop.ES256)
	rejections := []struct {
		name, method, authz, proof, reason, code string
	}{
		{"replayed proof", "GET", authz, good, "jti_replay", "invalid_dpop_proof"},
		{"wrong htu", "GET", authz, mustProof(t, key, "GET", rs.URL+"/other", withToken), "htu_mismatch", "invalid_dpop_proof"},
		{"wrong method", "POST", authz, mustProof(t, key, "GET", target, withToken), "htm_mismatch", "invalid_dpop_proof"},
		{"missing ath", "GET", authz, mustProof(t, key, "GET", target, dpop.ProofOptions{}), "ath_mismatch", "invalid_dpop_proof"},
		{"other key", "GET", authz, mustProof(t, other, "GET", target, withToken), "key_mismatch", "invalid_dpop_proof"},
		{"no proof", "GET", authz, "", interop.ReasonProofCount, "invalid_dpop_proof"},
		{"bound token as Bearer", "GET", "Bearer " + bound.AccessToken, "", interop.ReasonBearerNotAllowed, "invalid_token"},
		{"forged token", "GET", "DPoP " + bound.AccessToken[:len(bound.AccessToken)-4] + "AAAA", mustProof(t, key, "GET", target, withToken), interop.ReasonInvalidToken, "invalid_token"},
		{"no token", "GET", "", "", interop.ReasonMissingToken, ""},
	}
	for _, tc := range rejections {
		t.Run(tc.name, func(t *testing.T) {
			before := rs.Stats()[tc.reason]
			status, challenge, body := call(t, tc.method, target, tc.authz, tc.proof)
			if status != 401 {
				t.Fatalf("status %d, want 401 (%s)", status, body)
			}
			if !strings.HasPrefix(challenge, "DPoP ") || (tc.code != "" && !strings.Contains(challenge, `error="`+tc.code+`"`)) {
				t.Errorf("WWW-Authenticate = %q, want DPoP error=%q", challenge, tc.code)
			}
			if got := rs.Stats()[tc.reason]; got != before+1 {
				t.Errorf("stats[%s] = %d, want %d; all: %v", tc.reason, got, before+1, rs.Stats())
			}
		})
	}
	if rs.Stats()[interop.ReasonAccepted] != 1 {
		t.Errorf("accepted = %d, want 1", rs.Stats()[interop.ReasonAccepted])
	}
}

func TestResourceServerBearerAndNonce(t *testing.T) {
	rs, key, bound, bearer := setup(t, interop.ResourceServerOptions{AllowBearer: true, RequireNonce: true})
	target := rs.URL + "/r"

	if status, _, body := call(t, "GET", target, "Bearer "+bearer.AccessToken, ""); status != 200 {
		t.Errorf("unbound Bearer token with AllowBearer: %d %s", status, body)
	}
	// RFC 9449 §7.2: a bound token must not work as a plain Bearer token.
	if status, _, _ := call(t, "GET", target, "Bearer "+bound.AccessToken, ""); status != 401 || rs.Stats()[interop.ReasonBoundAsBearer] != 1 {
		t.Errorf("bound token as Bearer: %d, stats %v", status, rs.Stats())
	}

	// Nonce mode: first proof is challenged with a nonce, the retry with
	// it is accepted.
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("Authorization", "DPoP "+bound.AccessToken)
	req.Header.Set("DPoP", mustProof(t, key, "GET", target, dpop.ProofOptions{AccessToken: bound.AccessToken}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	nonce := resp.Header.Get("DPoP-Nonce")
	if resp.StatusCode != 401 || nonce == "" || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="use_dpop_nonce"`) {
		t.Fatalf("no nonce challenge: %d %q %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), nonce)
	}
	proof := mustProof(t, key, "GET", target, dpop.ProofOptions{AccessToken: bound.AccessToken, Nonce: nonce})
	if status, _, body := call(t, "GET", target, "DPoP "+bound.AccessToken, proof); status != 200 {
		t.Errorf("with nonce: %d %s", status, body)
	}
	bogus := mustProof(t, key, "GET", target, dpop.ProofOptions{AccessToken: bound.AccessToken, Nonce: "made-up"})
	if status, _, _ := call(t, "GET", target, "DPoP "+bound.AccessToken, bogus); status != 401 {
		t.Errorf("made-up nonce accepted")
	}
	if got := rs.Stats()[interop.ReasonNonceChallenge]; got != 2 {
		t.Errorf("nonce challenges = %d, want 2", got)
	}
}
