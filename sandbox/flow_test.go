package sandbox

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

type sessionList struct {
	Sessions []struct {
		ID         string `json:"id"`
		DeviceType string `json:"device_type"`
		CreatedAt  string `json:"created_at"`
		LastSeenAt string `json:"last_seen_at"`
		ExpiresAt  string `json:"expires_at"`
	} `json:"sessions"`
	Total, Limit, Offset int
}

func listSessions(t testing.TB, base, access, query string) sessionList {
	t.Helper()
	r := call(t, "GET", base+"/v1/session/me/list"+query, bearer(access), "")
	expect(t, r, http.StatusOK, "")
	var l sessionList
	r.decode(t, &l)
	return l
}

func TestFullFlow(t *testing.T) {
	srv := NewServer(t, Options{})
	phone := newClient(t, srv.URL)
	token, access := phone.login("flow@example.com", "")
	spent := []string{}
	for range 5 {
		next, nextAccess := phone.mustRefresh(token)
		spent = append(spent, token)
		token, access = next, nextAccess
	}
	claims, err := srv.VerifyAccessToken(access)
	if err != nil {
		t.Fatal(err)
	}
	if claims.Issuer != srv.URL || !strings.HasPrefix(claims.Subject, "usr_") || !strings.HasPrefix(claims.SessionID, "ses_") || claims.ID == "" {
		t.Fatalf("claims = %+v", claims)
	}
	l := listSessions(t, srv.URL, access, "")
	if l.Total != 1 || len(l.Sessions) != 1 || l.Sessions[0].ID != claims.SessionID || l.Limit != 10 || l.Offset != 0 {
		t.Fatalf("list = %+v", l)
	}
	for _, ts := range []string{l.Sessions[0].CreatedAt, l.Sessions[0].LastSeenAt, l.Sessions[0].ExpiresAt} {
		if _, err := time.Parse(time.RFC3339, ts); err != nil {
			t.Errorf("timestamp %q: %v", ts, err)
		}
	}

	laptop := newClient(t, srv.URL)
	_, laptopAccess := laptop.login("flow@example.com", "")
	if l := listSessions(t, srv.URL, laptopAccess, ""); l.Total != 2 {
		t.Fatalf("after second login total = %d, want 2", l.Total)
	}
	r := laptop.dpopCall("POST", "/v1/session/me/revoke?target=others", bearer(laptopAccess), "")
	expect(t, r, http.StatusNoContent, "")
	expect(t, phone.refresh(token), http.StatusUnauthorized, "unauthorized")
	if l := listSessions(t, srv.URL, laptopAccess, ""); l.Total != 1 {
		t.Fatalf("after revoke others total = %d, want 1", l.Total)
	}

	// Logout of the surviving session, then its token is dead too.
	laptopToken, _ := laptop.login("flow@example.com", "")
	expect(t, laptop.dpopCall("POST", "/v1/session/revoke", http.Header{"X-Refresh-Token": {laptopToken}}, ""), http.StatusNoContent, "")
	expect(t, laptop.refresh(laptopToken), http.StatusUnauthorized, "unauthorized")

	st := srv.Stats()
	if st.Logins != 3 || st.Revokes != 1 || st.RefreshSuccesses != 5 || st.ReuseEvents != 0 {
		t.Errorf("stats = %+v", st)
	}
	if st.Rejections["session_revoked"] != 2 {
		t.Errorf("rejections = %v", st.Rejections)
	}
}

func TestReuseRevokesSession(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	first, _ := cl.login("reuse@example.com", "")
	second, _ := cl.mustRefresh(first)
	newest, _ := cl.mustRefresh(second)

	expect(t, cl.refresh(first), http.StatusConflict, "token_reused")
	if got := srv.Stats().ReuseEvents; got != 1 {
		t.Fatalf("ReuseEvents = %d, want 1", got)
	}
	// The cascade killed the session, so even the newest token is dead.
	expect(t, cl.refresh(newest), http.StatusUnauthorized, "unauthorized")
	st := srv.Stats()
	if st.Rejections["refresh_token_reused"] != 1 || st.Rejections["session_revoked"] != 1 {
		t.Errorf("rejections = %v", st.Rejections)
	}
	expect(t, cl.refresh("never-issued"), http.StatusUnauthorized, "unauthorized")
	if srv.Stats().Rejections["unknown_refresh_token"] != 1 {
		t.Error("unknown token not counted")
	}
}

func TestFailRefreshes(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("fail@example.com", "")
	srv.FailRefreshes(2)
	for range 2 {
		expect(t, cl.refresh(token), http.StatusServiceUnavailable, "internal")
	}
	// Not rotated: the same token works, exactly once.
	next, _ := cl.mustRefresh(token)
	srv.FailRefreshes(-1)
	for range 3 {
		expect(t, cl.refresh(next), http.StatusServiceUnavailable, "internal")
	}
	srv.FailRefreshes(0)
	cl.mustRefresh(next)
	st := srv.Stats()
	if st.Rejections["injected_failure"] != 5 || st.RefreshCalls != 7 || st.RefreshSuccesses != 2 || st.ReuseEvents != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestDropAfterRotate(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("drop@example.com", "")
	srv.DropAfterRotate(1)
	req, _ := http.NewRequest("POST", srv.URL+"/v1/session/refresh", nil)
	req.Header.Set("X-Refresh-Token", token)
	req.Header.Set("DPoP", proofFor(t, cl.key, "POST", srv.URL+"/v1/session/refresh", dpop.ProofOptions{}))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got a response (%d), want a dropped connection", resp.StatusCode)
	}
	if st := srv.Stats(); st.RefreshSuccesses != 1 {
		t.Fatalf("RefreshSuccesses = %d, want 1 (rotated server-side)", st.RefreshSuccesses)
	}
	// The token was rotated, so presenting it again is reuse.
	expect(t, cl.refresh(token), http.StatusConflict, "token_reused")
	if st := srv.Stats(); st.ReuseEvents != 1 {
		t.Fatalf("ReuseEvents = %d, want 1", st.ReuseEvents)
	}
}

// A fault after rotation spends the token (as a load balancer's 502 after
// the token server acted); a fault before it does not.
func TestFaultRefreshes(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("fault@example.com", "")
	for _, f := range []Fault{
		{Status: 429, Code: "rate_limited", RetryAfter: "3"},
		{Status: 503, RetryAfter: "3"},
		{Status: 401, Code: "invalid_dpop_proof"},
		{Status: 401, Code: "dpop_key_mismatch"},
		{Status: 401, Code: "missing_dpop_proof"},
	} {
		srv.FaultRefreshes(1, f)
		r := cl.refresh(token)
		if r.Status != f.Status || r.code() != f.Code || r.Header.Get("Retry-After") != f.RetryAfter {
			t.Errorf("%+v: got %v %v", f, r, r.Header)
		}
	}
	token, _ = cl.mustRefresh(token) // none of them spent it
	for _, status := range []int{500, 502, 504} {
		srv.FaultRefreshes(1, Fault{Status: status, AfterRotate: true})
		r := cl.refresh(token)
		if r.Status != status || r.code() != "" {
			t.Errorf("after rotate %d: got %v", status, r)
		}
		expect(t, cl.refresh(token), http.StatusConflict, "token_reused") // spent: reuse
		token, _ = cl.login("fault@example.com", "")
	}
	if st := srv.Stats(); st.ReuseEvents != 3 || st.RefreshSuccesses != 4 {
		t.Errorf("stats = %+v", st)
	}
}

// SkipRotation answers a new access token without X-Refresh-Token; the
// presented token stays current.
func TestSkipRotation(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	token, _ := cl.login("skip@example.com", "")
	srv.SkipRotation(2)
	for range 2 {
		r := cl.refresh(token)
		expect(t, r, http.StatusOK, "")
		var g struct {
			AccessToken string `json:"access_token"`
		}
		r.decode(t, &g)
		if g.AccessToken == "" || r.Header.Get("X-Refresh-Token") != "" || r.Header.Get("X-Refresh-Token-Expires-At") != "" {
			t.Fatalf("unrotated answer: %v %v", r, r.Header)
		}
	}
	cl.mustRefresh(token)
	if st := srv.Stats(); st.ReuseEvents != 0 || st.RefreshSuccesses != 3 {
		t.Errorf("stats = %+v", st)
	}
}

// Errors carry the envelope's type; requests are recorded.
func TestErrorTypeAndRecordedRequests(t *testing.T) {
	srv := NewServer(t, Options{})
	r := call(t, "POST", srv.URL+"/v1/session/refresh", http.Header{"X-Test": {"1"}}, "")
	var env map[string]string
	r.decode(t, &env)
	if env["code"] != "missing_dpop_proof" || env["type"] != "unauthorized" || env["message"] == "" {
		t.Errorf("envelope = %v", env)
	}
	r = call(t, "GET", srv.URL+"/v1/session/me/list?limit=0&offset=0", nil, "")
	r.decode(t, &env)
	if env["code"] != "invalid_pagination_limit" || env["type"] != "bad_request" {
		t.Errorf("envelope = %v", env)
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[0].Path != "/v1/session/refresh" || reqs[0].Header.Get("X-Test") != "1" ||
		reqs[1].Method != "GET" || reqs[1].RawQuery != "limit=0&offset=0" {
		t.Errorf("recorded %+v", reqs)
	}
}

func TestConcurrentRefreshesAreCounted(t *testing.T) {
	srv := NewServer(t, Options{})
	const n = 4
	clients, tokens := make([]*client, n), make([]string, n)
	for i := range n {
		clients[i] = newClient(t, srv.URL)
		tokens[i], _ = clients[i].login("inflight@example.com", "")
	}
	srv.SetRefreshLatency(300 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if r := clients[i].refresh(tokens[i]); r.Status != http.StatusOK {
				t.Errorf("refresh %d: %v", i, r)
			}
		})
	}
	wg.Wait()
	st := srv.Stats()
	if st.MaxRefreshInFlight < 2 || st.MaxRefreshInFlight > n || st.RefreshSuccesses != n {
		t.Errorf("stats = %+v, want MaxRefreshInFlight in [2,%d]", st, n)
	}
}

func TestWhoami(t *testing.T) {
	clock := newFakeClock()
	srv := NewServer(t, Options{AccessTokenTTL: time.Second, Now: clock.Now})
	cl := newClient(t, srv.URL)
	cl.now = clock.Now
	_, access := cl.login("whoami@example.com", "")

	hdr := bearer(access)
	hdr.Set("X-Injected", "yes")
	r := call(t, "GET", srv.URL+"/whoami", hdr, "")
	expect(t, r, http.StatusOK, "")
	var who struct {
		Claims  map[string]any    `json:"claims"`
		Headers map[string]string `json:"headers"`
	}
	r.decode(t, &who)
	if who.Headers["X-Injected"] != "yes" || who.Headers["Authorization"] != "Bearer "+access || who.Claims["sid"] == "" {
		t.Fatalf("whoami = %+v", who)
	}
	if _, ok := who.Claims["scope"]; !ok {
		t.Error("scope claim missing")
	}

	assertRefused := func(name, token string) {
		t.Helper()
		r := call(t, "GET", srv.URL+"/whoami", bearer(token), "")
		expect(t, r, http.StatusUnauthorized, "unauthorized")
		if got := r.Header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
			t.Errorf("%s: WWW-Authenticate = %q", name, got)
		}
	}
	parts := strings.Split(access, ".")
	tamperedSig := parts[0] + "." + parts[1] + "." + flip(parts[2])
	assertRefused("tampered signature", tamperedSig)
	forgedPayload := parts[0] + "." + b64json(t, map[string]any{"sub": "usr_admin", "sid": "ses_x", "exp": clock.Now().Add(time.Hour).Unix(), "nbf": 0}) + "." + parts[2]
	assertRefused("tampered payload", forgedPayload)
	other := NewServer(t, Options{Now: clock.Now})
	_, foreign := (&client{t: t, base: other.URL, key: cl.key, now: clock.Now}).login("whoami@example.com", "")
	assertRefused("other sandbox's key", foreign)

	clock.Advance(time.Second)
	assertRefused("expired", access)
	if _, err := srv.VerifyAccessToken(access); !errors.Is(err, jwt.ErrExpired) {
		t.Errorf("VerifyAccessToken(expired) = %v", err)
	}

	r = call(t, "GET", srv.URL+"/whoami", nil, "")
	expect(t, r, http.StatusUnauthorized, "unauthorized")
	if r.Header.Get("WWW-Authenticate") == "" {
		t.Error("no WWW-Authenticate without credentials")
	}
}

// flip changes the first character of a base64url string.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// Challenge tokens and access tokens are both signed by the sandbox key;
// neither may pass as the other.
func TestTokenConfusion(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	challenge := demoChallenge(t, srv.URL)
	expect(t, call(t, "GET", srv.URL+"/whoami", bearer(challenge), ""), http.StatusUnauthorized, "unauthorized")
	_, access := cl.finalize(challenge, "")
	r := cl.dpopCall("POST", "/v1/session/login/finalize", nil, `{"challenge_token":"`+access+`"}`)
	expect(t, r, http.StatusUnauthorized, "invalid_challenge_token")
}

// The JWKS alone is enough to verify an access token, as a resource server
// would.
func TestJWKSVerifiesAccessTokens(t *testing.T) {
	srv := NewServer(t, Options{})
	_, access := newClient(t, srv.URL).login("jwks@example.com", "")
	r := call(t, "GET", srv.URL+"/.well-known/jwks.json", nil, "")
	expect(t, r, http.StatusOK, "")
	var set jose.JSONWebKeySet
	r.decode(t, &set)
	tok, err := jwt.ParseSigned(access, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	keys := set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 || !keys[0].IsPublic() {
		t.Fatalf("kid %q not in JWKS %s", tok.Headers[0].KeyID, r.Body)
	}
	var c AccessClaims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		t.Fatal(err)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: srv.URL, Time: time.Now()}, 0); err != nil {
		t.Fatal(err)
	}
}

// A session is bound to the X-Device-Id it was created with: the same id
// refreshes and lists, another id or none is refused without spending the
// refresh token, which keeps working from the right device.
func TestDeviceIDBindsSession(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	dev := func(id string) http.Header {
		if id == "" {
			return http.Header{}
		}
		return http.Header{"X-Device-Id": {id}}
	}
	r := cl.dpopCall("POST", "/v1/session/login/finalize", dev("dev-a"), fmt.Sprintf(`{"challenge_token":%q}`, demoChallenge(t, srv.URL)))
	expect(t, r, http.StatusOK, "")
	refresh, access := cl.grant(r)

	refreshFrom := func(id string) reply {
		h := dev(id)
		h.Set("X-Refresh-Token", refresh)
		return cl.dpopCall("POST", "/v1/session/refresh", h, "")
	}
	expect(t, refreshFrom("dev-b"), http.StatusUnauthorized, "unauthorized")
	expect(t, refreshFrom(""), http.StatusUnauthorized, "unauthorized")
	h := dev("dev-b")
	h.Set("Authorization", "Bearer "+access)
	expect(t, call(t, "GET", srv.URL+"/v1/session/me/list", h, ""), http.StatusUnauthorized, "unauthorized")
	if got := srv.Stats().Rejections["device_changed"]; got != 3 {
		t.Fatalf("device_changed rejections = %d, want 3", got)
	}
	r = refreshFrom("dev-a")
	expect(t, r, http.StatusOK, "")
	if srv.Stats().ReuseEvents != 0 {
		t.Fatal("a refused device spent the token")
	}
}
