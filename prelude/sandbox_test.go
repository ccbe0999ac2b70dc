package prelude

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Integration tests against the strict sandbox: every request is checked
// the way the real service would (DPoP htm/htu/iat/jti, key pinning,
// rotation and reuse detection), so passing here means the wire format is
// right, not just self-consistent.

func sandboxClient(t *testing.T, opts sandbox.Options) (*sandboxtest.Server, *Client) {
	t.Helper()
	srv := sandboxtest.NewServer(t, opts)
	c, err := New(srv.URL+"/", Options{})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// login is a password login of the demo user bound to a fresh key.
func login(t *testing.T, c *Client) (*dpop.Key, *Tokens) {
	t.Helper()
	key := newKey(t)
	ct, err := c.LoginPassword(context.Background(), sandbox.DemoEmail, sandbox.DemoPassword)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := c.Finalize(context.Background(), key, ct, "")
	if err != nil {
		t.Fatal(err)
	}
	return key, tok
}

// sessionID is the sid claim of a sandbox access token.
func sessionID(t *testing.T, srv *sandboxtest.Server, accessToken string) string {
	t.Helper()
	claims, err := srv.VerifyAccessToken(accessToken)
	if err != nil {
		t.Fatalf("access token does not verify: %v", err)
	}
	return claims.SessionID
}

func TestSandboxOTPLogin(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{AccessTokenTTL: 90 * time.Second})
	ctx := context.Background()
	for _, id := range []Identifier{EmailIdentifier("otp-user@example.com"), PhoneIdentifier("+33612345678")} {
		vt, err := c.StartOTP(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.CheckOTP(ctx, vt, "000000")
		if e := asError(t, err, KindCaller); e.Code != "bad_check_code" {
			t.Errorf("wrong code: %v", err)
		}
		ct, err := c.CheckOTP(ctx, vt, srv.LastOTP(id.Value))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := c.Finalize(ctx, newKey(t), ct, "")
		if err != nil {
			t.Fatal(err)
		}
		sessionID(t, srv, tok.AccessToken)
		if d := time.Until(tok.ExpiresAt); d < 85*time.Second || d > 91*time.Second {
			t.Errorf("access token lifetime %v, want ≈90s", d)
		}
		if d := time.Until(tok.RefreshExpiresAt); d < 29*24*time.Hour {
			t.Errorf("refresh token lifetime %v", d)
		}
		// The challenge is single use.
		_, err = c.Finalize(ctx, newKey(t), ct, "")
		if e := asError(t, err, KindDead); e.Code != "token_reused" {
			t.Errorf("second finalize: %v", err)
		}
	}
	_, err := c.StartOTP(ctx, PhoneIdentifier("0612345678"))
	if e := asError(t, err, KindCaller); e.Code != "invalid_identifier" {
		t.Errorf("non-E.164 phone: %v", err)
	}
}

func TestSandboxPasswordLogin(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	g, err := PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)(context.Background(), newKey(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if g.TokenType != "Bearer" || g.RefreshToken == "" || g.Expiry.IsZero() || g.RefreshExpiry.IsZero() {
		t.Errorf("grant incomplete: type %q, expiry %v, refresh expiry %v", g.TokenType, g.Expiry, g.RefreshExpiry)
	}
	sessionID(t, srv, g.AccessToken)

	_, err = PasswordLogin(c, sandbox.DemoEmail, "not-the-password")(context.Background(), newKey(t), "")
	if !errors.Is(err, tokencache.ErrCredentialsRejected) {
		t.Errorf("wrong password: %v", err)
	}
	asError(t, err, KindCredentials)
	if st := srv.Stats(); st.Logins != 1 {
		t.Errorf("logins = %d", st.Logins)
	}
}

func TestSandboxRefreshRotates(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	key, first := login(t, c)
	second, err := c.Refresh(ctx, key, first.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if second.RefreshToken == first.RefreshToken || second.AccessToken == first.AccessToken {
		t.Fatal("refresh did not rotate")
	}
	if sessionID(t, srv, second.AccessToken) != sessionID(t, srv, first.AccessToken) {
		t.Error("refresh changed the session")
	}
	third, err := c.Refresh(ctx, key, second.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// A spent token is dead, and presenting it ends the session for
	// everyone: the newest token dies with it.
	_, err = c.Refresh(ctx, key, first.RefreshToken)
	asError(t, err, KindDead)
	_, err = Backend{Client: c}.Refresh(ctx, key, third.RefreshToken)
	if !errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("refresh after reuse: %v", err)
	}
	if st := srv.Stats(); st.ReuseEvents != 1 || st.RefreshSuccesses != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestSandboxWrongKey: the session is pinned to the finalize key.
func TestSandboxWrongKey(t *testing.T) {
	_, c := sandboxClient(t, sandbox.Options{})
	key, tok := login(t, c)
	_, err := c.Refresh(context.Background(), newKey(t), tok.RefreshToken)
	if e := asError(t, err, KindKeyMismatch); e.Code != "dpop_key_mismatch" || !strings.Contains(e.Error(), "bug") {
		t.Errorf("foreign key: %v", err)
	}
	// Reported, not a reason to log in again: no tokencache class.
	_, err = Backend{Client: c}.Refresh(context.Background(), newKey(t), tok.RefreshToken)
	if errors.Is(err, tokencache.ErrSessionDead) || errors.Is(err, tokencache.ErrOutcomeUnknown) {
		t.Errorf("backend: %v", err)
	}
	// The rejected proof did not spend the token.
	if _, err := c.Refresh(context.Background(), key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
}

func TestSandboxNonceMode(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{RequireNonce: true})
	ctx := context.Background()
	challenges := func() int64 { return srv.Stats().Rejections["use_dpop_nonce"] }

	key, tok := login(t, c) // first proof has no nonce: one challenge, one retry
	if n := challenges(); n != 1 {
		t.Fatalf("nonce challenges after login = %d, want 1", n)
	}
	for range 3 { // nonces from 2xx responses keep the client current
		var err error
		if tok, err = c.Refresh(ctx, key, tok.RefreshToken); err != nil {
			t.Fatal(err)
		}
	}
	if n := challenges(); n != 1 {
		t.Errorf("nonce challenges after refreshes = %d, want still 1", n)
	}

	// A second client sharing the NonceStore starts with a current nonce;
	// one with its own store pays exactly one challenge.
	shared, err := New(srv.URL, Options{Nonces: c.nonces})
	if err != nil {
		t.Fatal(err)
	}
	if tok, err = shared.Refresh(ctx, key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if n := challenges(); n != 1 {
		t.Errorf("shared store: challenges = %d, want 1", n)
	}
	fresh, err := New(srv.URL, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if tok, err = fresh.Refresh(ctx, key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Revoke(ctx, key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if n := challenges(); n != 2 {
		t.Errorf("fresh store: challenges = %d, want 2", n)
	}
	if st := srv.Stats(); st.ReuseEvents != 0 || st.Revokes != 1 {
		t.Errorf("a nonce retry must not look like token reuse: %+v", st)
	}
}

// TestSandboxNotActedIsTransient: answers that prove the server did not
// act leave the token presentable.
func TestSandboxNotActedIsTransient(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	key, tok := login(t, c)
	srv.FaultRefreshes(2, sandbox.Fault{Status: 503, RetryAfter: "1", Code: "internal"})
	_, err := c.Refresh(ctx, key, tok.RefreshToken)
	if e := asError(t, err, KindTransient); e.Status != 503 || e.Code != "internal" || e.Type != "internal" {
		t.Errorf("injected failure: %v", err)
	}
	_, err = Backend{Client: c}.Refresh(ctx, key, tok.RefreshToken)
	if err == nil || errors.Is(err, tokencache.ErrSessionDead) || errors.Is(err, tokencache.ErrOutcomeUnknown) {
		t.Errorf("backend: %v", err)
	}
	// The token was not burned.
	if _, err := c.Refresh(ctx, key, tok.RefreshToken); err != nil {
		t.Fatalf("refresh after transient failures: %v", err)
	}
	if st := srv.Stats(); st.ReuseEvents != 0 {
		t.Errorf("reuse events %d", st.ReuseEvents)
	}
}

func TestSandboxDropAfterRotateIsUnknownOutcome(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	key, tok := login(t, c)
	srv.DropAfterRotate(1)
	_, err := Backend{Client: c}.Refresh(ctx, key, tok.RefreshToken)
	if !errors.Is(err, tokencache.ErrOutcomeUnknown) {
		t.Fatalf("dropped refresh: %v", err)
	}
	asError(t, err, KindUnknownOutcome)
	// Why the token must be treated as spent: the server did rotate.
	if st := srv.Stats(); st.RefreshSuccesses != 1 {
		t.Errorf("server-side successes %d", st.RefreshSuccesses)
	}
}

func TestSandboxRevokedSessionIsDead(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	key, tok := login(t, c)
	if !srv.RevokeSession(sessionID(t, srv, tok.AccessToken)) {
		t.Fatal("sandbox did not revoke")
	}
	_, err := Backend{Client: c}.Refresh(context.Background(), key, tok.RefreshToken)
	if !errors.Is(err, tokencache.ErrSessionDead) {
		t.Fatalf("revoked session: %v", err)
	}
	if e := asError(t, err, KindDead); e.Status != 401 {
		t.Errorf("status %d", e.Status)
	}
}

func TestSandboxLogout(t *testing.T) {
	_, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	key, tok := login(t, c)
	b := Backend{Client: c}
	if err := b.Revoke(ctx, key, tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Refresh(ctx, key, tok.RefreshToken); !errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("refresh after logout: %v", err)
	}
	if err := b.Revoke(ctx, key, tok.RefreshToken); !errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("second logout: %v", err)
	}
}

// TestSandboxReloginRevokesPrevious: finalize forwards the previous
// session's refresh token so re-logins do not pile up sessions.
func TestSandboxReloginRevokesPrevious(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	oldKey, old := login(t, c)
	newKey := newKey(t)
	g, err := PasswordLogin(c, sandbox.DemoEmail, sandbox.DemoPassword)(ctx, newKey, old.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Refresh(ctx, oldKey, old.RefreshToken)
	asError(t, err, KindDead)
	list, err := c.ListSessions(ctx, g.AccessToken, Unset, Unset)
	if err != nil {
		t.Fatal(err)
	}
	if list.Total != 1 || list.Sessions[0].ID != sessionID(t, srv, g.AccessToken) {
		t.Errorf("sessions after re-login: %+v", list)
	}
	if _, err := c.Refresh(ctx, newKey, g.RefreshToken); err != nil {
		t.Errorf("new session: %v", err)
	}
}

func TestSandboxListAndRevokeSessions(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	ctx := context.Background()
	type sess struct {
		key *dpop.Key
		tok *Tokens
		id  string
	}
	var all []sess
	for range 5 {
		k, tok := login(t, c)
		all = append(all, sess{k, tok, sessionID(t, srv, tok.AccessToken)})
	}
	alive := func(s sess) bool {
		t.Helper()
		tok, err := c.Refresh(ctx, s.key, s.tok.RefreshToken)
		if err != nil {
			asError(t, err, KindDead)
			return false
		}
		*s.tok = *tok
		return true
	}
	me := all[0].tok.AccessToken

	// Paging: 2 + 2 + 1, oldest first, no overlaps.
	var ids []string
	for offset := 0; offset < 5; offset += 2 {
		page, err := c.ListSessions(ctx, me, 2, offset)
		if err != nil {
			t.Fatal(err)
		}
		if page.Total != 5 || page.Limit != 2 || page.Offset != offset {
			t.Errorf("page at %d: total %d limit %d offset %d", offset, page.Total, page.Limit, page.Offset)
		}
		for _, s := range page.Sessions {
			ids = append(ids, s.ID)
			if s.CreatedAt.IsZero() || s.ExpiresAt.IsZero() || s.DeviceType == "" {
				t.Errorf("session %+v incomplete", s)
			}
		}
	}
	for _, s := range all {
		if !slices.Contains(ids, s.id) {
			t.Errorf("session %s missing from pages %v", s.id, ids)
		}
	}
	def, err := c.ListSessions(ctx, me, Unset, Unset)
	if err != nil || def.Limit != 10 || len(def.Sessions) != 5 {
		t.Errorf("default page: %+v, %v", def, err)
	}
	_, err = c.ListSessions(ctx, me, 101, 0)
	if e := asError(t, err, KindCaller); e.Code != "invalid_pagination_limit" {
		t.Errorf("limit 101: %v", err)
	}

	// target=session ends exactly that session.
	if err := c.RevokeSessions(ctx, me, TargetSession, all[4].id); err != nil {
		t.Fatal(err)
	}
	err = c.RevokeSessions(ctx, me, TargetSession, "ses_doesnotexist")
	if e := asError(t, err, KindCaller); e.Code != "not_found" {
		t.Errorf("unknown session: %v", err)
	}
	// target=mine ends only the caller's.
	if err := c.RevokeSessions(ctx, all[3].tok.AccessToken, TargetMine, ""); err != nil {
		t.Fatal(err)
	}
	if alive(all[4]) || alive(all[3]) || !alive(all[2]) {
		t.Fatal("session/mine revoked the wrong sessions")
	}
	// target=others keeps only the caller's.
	if err := c.RevokeSessions(ctx, me, TargetOthers, ""); err != nil {
		t.Fatal(err)
	}
	if !alive(all[0]) || alive(all[1]) || alive(all[2]) {
		t.Fatal("others revoked the wrong sessions")
	}
	list, err := c.ListSessions(ctx, all[0].tok.AccessToken, Unset, Unset)
	if err != nil || list.Total != 1 || list.Sessions[0].ID != all[0].id {
		t.Errorf("after others: %+v, %v", list, err)
	}
	// target=all includes the caller; its access token then stops working
	// on /me routes because its session is gone.
	if err := c.RevokeSessions(ctx, all[0].tok.AccessToken, TargetAll, ""); err != nil {
		t.Fatal(err)
	}
	if alive(all[0]) {
		t.Error("all left the caller alive")
	}
	_, err = c.ListSessions(ctx, all[0].tok.AccessToken, Unset, Unset)
	asError(t, err, KindDead)
}

// TestSandboxClockJump: the sandbox clock jumps an hour ahead (its Date
// header follows); the first proof is outside its iat window, the client
// learns the skew from the rejection and the session survives.
func TestSandboxClockJump(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{AccessTokenTTL: time.Minute})
	ctx := context.Background()
	key, tok := login(t, c)
	srv.AdvanceClock(time.Hour)
	tok, err := c.Refresh(ctx, key, tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh after clock jump: %v", err)
	}
	if d := time.Until(tok.ExpiresAt); d < 55*time.Second || d > 61*time.Second {
		t.Errorf("expiry on the local clock is %v away, want ≈60s", d)
	}
	if _, err := c.Refresh(ctx, key, tok.RefreshToken); err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	if n := srv.Stats().Rejections["iat_window"]; n != 1 {
		t.Errorf("iat rejections = %d, want 1", n)
	}
}

// TestSandboxConcurrentSessions: one Client shared by many sessions at
// once (run with -race).
func TestSandboxConcurrentSessions(t *testing.T) {
	srv, c := sandboxClient(t, sandbox.Options{})
	const sessions, rounds = 8, 5
	errs := make(chan error, sessions)
	for range sessions {
		key, tok := login(t, c)
		go func() {
			var err error
			for range rounds {
				if tok, err = c.Refresh(context.Background(), key, tok.RefreshToken); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range sessions {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if st := srv.Stats(); st.RefreshSuccesses != sessions*rounds || st.ReuseEvents != 0 {
		t.Errorf("stats %+v", st)
	}
}
