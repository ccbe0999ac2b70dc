package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// DefaultResource is the resource indicator the provider knows when
// ProviderOptions.Resources is nil. Its access tokens are ES256 JWTs with
// aud = DefaultResource and scopes api:read / api:write.
const DefaultResource = "http://api.test"

// ProviderOptions configure StartOIDCProvider.
type ProviderOptions struct {
	// Clients are registered at start.
	Clients []Client
	// RequireNonce makes the provider demand a server nonce in every DPoP
	// proof (answering 400 use_dpop_nonce first). Nonces are handed out
	// either way.
	RequireNonce bool
	// Resources maps resource indicators to the scopes their resource
	// server accepts (space-separated). nil means {DefaultResource:
	// "api:read api:write"}.
	Resources map[string]string
	// ClockOffset puts the provider's clock this far ahead of the host's
	// (behind when negative), to the second: token times, the DPoP iat
	// window and the Date header all read it.
	ClockOffset time.Duration
	// JWTBearerIssuers are the issuers (iss → public keys) whose
	// assertions the jwt-bearer grant accepts besides the client's own
	// (iss = sub = client_id, verified with the client's JWKS): a
	// Kubernetes cluster, a SPIFFE trust domain. Assertions are ES256.
	JWTBearerIssuers map[string]*jose.JSONWebKeySet
	// AccessTokenTTL and RefreshTokenTTL default to 10 minutes and 1 day.
	AccessTokenTTL, RefreshTokenTTL time.Duration
	// SubjectJWKS, when set, registers the RFC 8693 token exchange grant:
	// subject (and actor) tokens must be JWTs signed by one of these keys,
	// and for SubjectAudience when set. The access token issued is for the
	// subject's sub (see oidc-provider/server.js).
	SubjectJWKS     *jose.JSONWebKeySet
	SubjectAudience string
	// Accounts are the users who can log in through the authorization
	// code flow (see Provider.Authorize); their sub is the login.
	Accounts map[string]Account
	// NoPAR turns pushed authorization requests (RFC 9126) off: the
	// metadata then advertises no pushed_authorization_request_endpoint.
	NoPAR bool
	// StartTimeout bounds waiting for the READY line (and npm ci, when it
	// runs); default 2 minutes.
	StartTimeout time.Duration
}

// Account is a user of the provider.
type Account struct {
	Password string `json:"password"`
	Email    string `json:"email,omitempty"`
	Name     string `json:"name,omitempty"`
}

// JWTBearer is the RFC 7523 jwt-bearer grant type, registered in the
// provider (server.js) for Client.GrantTypes.
const JWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// Client is one client registration at the provider.
type Client struct {
	// ID is the client_id.
	ID string
	// Secret is required for client_secret_basic and client_secret_post.
	Secret string
	// AuthMethod is the token_endpoint_auth_method: "client_secret_basic"
	// (default), "client_secret_post", "private_key_jwt" or "none".
	AuthMethod string
	// JWKS holds the client's public keys, for private_key_jwt.
	JWKS *jose.JSONWebKeySet
	// GrantTypes default to client_credentials and refresh_token; the
	// jwt-bearer grant is JWTBearer.
	GrantTypes []string
	// Scope is the space-separated scopes the client may request
	// (default "api:read api:write openid offline_access").
	Scope string
	// TLSSubjectDN is tls_client_auth_subject_dn, for AuthMethod
	// "tls_client_auth" (e.g. "CN=gateway" for TestCA.Issue(t, "gateway")).
	TLSSubjectDN string
	// CertificateBound asks for access tokens bound to the client
	// certificate (tls_client_certificate_bound_access_tokens, RFC 8705
	// §3): they carry cnf x5t#S256.
	CertificateBound bool
	// RedirectURIs make the client one of the authorization code flow:
	// response_types ["code"], and GrantTypes default to
	// authorization_code and refresh_token.
	RedirectURIs []string
	// RequirePAR sets require_pushed_authorization_requests.
	RequirePAR bool
}

// MarshalJSON renders the registration as oidc-provider client metadata.
func (c Client) MarshalJSON() ([]byte, error) {
	m := map[string]any{"client_id": c.ID}
	method := c.AuthMethod
	if method == "" {
		method = "client_secret_basic"
	}
	m["token_endpoint_auth_method"] = method
	if c.Secret != "" {
		m["client_secret"] = c.Secret
	}
	if c.JWKS != nil {
		m["jwks"] = c.JWKS
	}
	if len(c.RedirectURIs) > 0 {
		m["redirect_uris"] = c.RedirectURIs
		m["response_types"] = []string{"code"}
		m["grant_types"] = []string{"authorization_code", "refresh_token"}
	}
	if c.RequirePAR {
		m["require_pushed_authorization_requests"] = true
	}
	if len(c.GrantTypes) > 0 {
		m["grant_types"] = c.GrantTypes
	}
	if c.TLSSubjectDN != "" {
		m["tls_client_auth_subject_dn"] = c.TLSSubjectDN
	}
	if c.CertificateBound {
		m["tls_client_certificate_bound_access_tokens"] = true
	}
	m["scope"] = c.Scope
	if c.Scope == "" {
		m["scope"] = "api:read api:write openid offline_access email profile"
	}
	return json.Marshal(m)
}

// Provider is a running oidc-provider. Its endpoints are on 127.0.0.1.
type Provider struct {
	// Issuer is http://127.0.0.1:<port>.
	Issuer string
	// TokenEndpoint, RevocationEndpoint, IntrospectionEndpoint and JWKSURL
	// are the provider's endpoints (as its metadata advertises them).
	TokenEndpoint, RevocationEndpoint, IntrospectionEndpoint, JWKSURL string

	stderr *SyncBuffer
}

// JWKS fetches the provider's public signing keys.
func (p *Provider) JWKS(ctx context.Context) (*jose.JSONWebKeySet, error) {
	return fetchJWKS(ctx, http.DefaultClient, p.JWKSURL)
}

// MintRefreshToken returns a fresh refresh token of account "test-user"
// for clientID, as an authorization-code login would have issued it (the
// server has a test-only endpoint for this; there is no browser here).
func (p *Provider) MintRefreshToken(t testing.TB, clientID string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"client_id": clientID})
	resp, err := http.Post(p.Issuer+"/__test/refresh_token", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("interop: minting refresh token: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&out); err != nil || out.RefreshToken == "" {
		t.Fatalf("interop: minting refresh token: HTTP %d %s %v", resp.StatusCode, out.Error, err)
	}
	return out.RefreshToken
}

// Logs returns what the node process wrote to stderr so far (warnings,
// stack traces).
func (p *Provider) Logs() string { return p.stderr.String() }

// ServerDir is the directory holding server.js and package.json: found
// from this source file, so it works from any package's tests in this
// module.
func ServerDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "oidc-provider")
}

// StartOIDCProvider starts panva's oidc-provider (interop/oidc-provider/
// server.js) on a free 127.0.0.1 port and stops it when the test ends.
//
// It needs node on PATH. Without it the test is skipped with a loud
// banner, unless $CI or $INTEROP_REQUIRE is set, in which case it fails:
// CI must not report an interop suite green that never ran. When
// node_modules is missing (a fresh clone), it runs "npm ci --no-audit
// --no-fund" first, serialised across test processes by a lock file.
func StartOIDCProvider(t testing.TB, opts ProviderOptions) *Provider {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		missing(t, "node is not on PATH", err)
	}
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	deadline := time.Now().Add(timeout)
	dir := ServerDir()
	if err := ensureModules(dir, deadline); err != nil {
		missing(t, "npm ci failed", err)
	}

	cfg, err := json.Marshal(serverConfig(opts))
	if err != nil {
		t.Fatalf("interop: %v", err)
	}
	// One start at a time per test process: a start is seconds of CPU
	// (node compiles oidc-provider's module graph), and a dozen parallel
	// tests starting at once beside the drills on two cores once left one
	// without READY for the whole timeout. Serving stays concurrent.
	startSlot <- struct{}{}
	defer func() { <-startSlot }()
	deadline = time.Now().Add(timeout) // the wait for the slot is not the start's
	cmd := exec.Command(node, "server.js", string(cfg))
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("interop: %v", err)
	}
	p := &Provider{stderr: new(SyncBuffer)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("interop: starting node: %v", err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("interop: oidc-provider stderr:\n%s", p.Logs())
		}
	})

	ready := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if issuer, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				select {
				case ready <- issuer:
				default: // only the first READY counts
				}
			}
		}
		_ = cmd.Wait()
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case p.Issuer = <-ready:
	case <-exited:
		t.Fatalf("interop: oidc-provider exited before READY:\n%s", p.Logs())
	case <-timer.C:
		t.Fatalf("interop: oidc-provider not READY within %s:\n%s", timeout, p.Logs())
	}
	p.TokenEndpoint = p.Issuer + "/token"
	p.RevocationEndpoint = p.Issuer + "/token/revocation"
	p.IntrospectionEndpoint = p.Issuer + "/token/introspection"
	p.JWKSURL = p.Issuer + "/jwks"
	return p
}

// startSlot serialises provider starts within one test process (see
// StartOIDCProvider).
var startSlot = make(chan struct{}, 1)

// serverConfig is the JSON server.js reads.
func serverConfig(opts ProviderOptions) map[string]any {
	res := map[string]any{}
	if opts.Resources == nil {
		opts.Resources = map[string]string{DefaultResource: "api:read api:write"}
	}
	for r, scope := range opts.Resources {
		res[r] = map[string]string{"scope": scope}
	}
	cfg := map[string]any{
		"port":         0,
		"requireNonce": opts.RequireNonce,
		"clients":      append([]Client{}, opts.Clients...),
		"resources":    res,
	}
	if opts.ClockOffset != 0 {
		cfg["clockOffset"] = int(opts.ClockOffset / time.Second)
	}
	if opts.SubjectJWKS != nil {
		cfg["subjectJWKS"] = opts.SubjectJWKS
		if opts.SubjectAudience != "" {
			cfg["subjectAudience"] = opts.SubjectAudience
		}
	}
	if len(opts.JWTBearerIssuers) > 0 {
		cfg["jwtBearerIssuers"] = opts.JWTBearerIssuers
	}
	if len(opts.Accounts) > 0 {
		cfg["accounts"] = opts.Accounts
	}
	if opts.NoPAR {
		cfg["par"] = false
	}
	if opts.AccessTokenTTL > 0 {
		cfg["accessTokenTTL"] = int(opts.AccessTokenTTL / time.Second)
	}
	if opts.RefreshTokenTTL > 0 {
		cfg["refreshTokenTTL"] = int(opts.RefreshTokenTTL / time.Second)
	}
	return cfg
}

// missing skips (or, under CI, fails) a test that cannot run the provider.
func missing(t testing.TB, what string, err error) {
	t.Helper()
	banner := strings.Repeat("!", 72)
	msg := fmt.Sprintf("\n%s\n!! INTEROP TEST NOT RUN: %s (%v)\n!! Install Node.js ≥ 20.19 and run: cd interop/oidc-provider && npm ci\n%s", banner, what, err, banner)
	if os.Getenv("CI") != "" || os.Getenv("INTEROP_REQUIRE") != "" {
		t.Fatal(msg)
	}
	t.Log(msg)
	t.Skip("interop: " + what)
}

// installMu serialises npm ci within one test process; the lock file does
// it across the processes `go test ./...` runs in parallel.
var installMu sync.Mutex

// ensureModules runs npm ci in dir unless oidc-provider is installed.
func ensureModules(dir string, deadline time.Time) error {
	installed := func() bool {
		_, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json"))
		return err == nil
	}
	if installed() {
		return nil
	}
	installMu.Lock()
	defer installMu.Unlock()
	unlock, err := lockFile(filepath.Join(dir, "node_modules.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	if installed() { // another process installed while we waited
		return nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(out))
	}
	if !installed() {
		return errors.New("npm ci succeeded but node_modules/oidc-provider is missing")
	}
	return nil
}

// SyncBuffer is a bytes.Buffer safe for a writer goroutine (exec's stderr
// copier) and readers; tests that run processes use it for their output.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
