package prelude

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

func TestNewValidatesBaseURL(t *testing.T) {
	for _, bad := range []string{
		"", "example.com", "/v1", "ftp://example.com", "http://", "https://u:p@example.com",
		"https://example.com/?x=1", "https://example.com/?", "https://example.com/#frag", "https://example.com/#",
		"http://[::1", // does not parse
	} {
		if _, err := New(bad, Options{}); err == nil {
			t.Errorf("New(%q) accepted", bad)
		}
	}
	for _, good := range []string{"https://app.session.prelude.dev", "https://app.session.prelude.dev/", "http://127.0.0.1:8080/prefix/"} {
		if _, err := New(good, Options{}); err != nil {
			t.Errorf("New(%q): %v", good, err)
		}
	}
}

// TestRequestShapes pins what goes on the wire for every call: paths below
// a prefixed base URL, headers, bodies, and DPoP proofs over the exact URL.
func TestRequestShapes(t *testing.T) {
	key := newKey(t)
	type seen struct {
		method, path, query, body string
		header                    http.Header
	}
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("DPoP") != "" {
			c := verifyProof(t, r)
			if c.ATH != "" {
				t.Errorf("proof on %s carries ath", r.URL.Path)
			}
		}
		got <- seen{r.Method, r.URL.Path, r.URL.RawQuery, string(b), r.Header.Clone()}
		switch r.URL.Path {
		case "/prefix/v1/session/otp":
			w.Header().Set("X-Verification-Token", testVerif)
			w.WriteHeader(http.StatusNoContent)
		case "/prefix/v1/session/otp/check", "/prefix/v1/session/login/email/password":
			_ = json.NewEncoder(w).Encode(map[string]string{"challenge_token": testChallenge})
		case "/prefix/v1/session/login/finalize", "/prefix/v1/session/refresh":
			writeTokens(w, "access", time.Now().Add(time.Minute).Unix(), testRotated)
		case "/prefix/v1/session/me/list":
			_, _ = io.WriteString(w, `{"sessions":[],"total":0,"limit":10,"offset":0}`)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL+"/prefix/", Options{UserAgent: "shape-test/1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	cases := []struct {
		name       string
		run        func() error
		method     string
		path       string
		query      string
		body       string // "" means no body and no Content-Type
		dpop       bool
		wantHeader map[string]string
	}{
		{"start_otp", func() error {
			v, err := c.StartOTP(ctx, EmailIdentifier("a@example.com"))
			if err == nil && v != testVerif {
				t.Errorf("verification token = %q", v)
			}
			return err
		}, "POST", "/prefix/v1/session/otp", "", `{"identifier":{"type":"email_address","value":"a@example.com"}}`, false, nil},
		{"check_otp", func() error {
			ct, err := c.CheckOTP(ctx, testVerif, "123456")
			if err == nil && ct != testChallenge {
				t.Errorf("challenge = %q", ct)
			}
			return err
		}, "POST", "/prefix/v1/session/otp/check", "", `{"code":"123456"}`, false, map[string]string{"X-Verification-Token": testVerif}},
		{"login_password", func() error {
			_, err := c.LoginPassword(ctx, "a@example.com", testPassword)
			return err
		}, "POST", "/prefix/v1/session/login/email/password", "", `{"identifier":"a@example.com","password":"` + testPassword + `"}`, false, nil},
		{"finalize", func() error {
			_, err := c.Finalize(ctx, key, testChallenge, testRefresh)
			return err
		}, "POST", "/prefix/v1/session/login/finalize", "", `{"challenge_token":"` + testChallenge + `"}`, true, map[string]string{"X-Refresh-Token": testRefresh}},
		{"finalize_first_login", func() error {
			_, err := c.Finalize(ctx, key, testChallenge, "")
			return err
		}, "POST", "/prefix/v1/session/login/finalize", "", `{"challenge_token":"` + testChallenge + `"}`, true, map[string]string{"X-Refresh-Token": ""}},
		{"refresh", func() error {
			_, err := c.Refresh(ctx, key, testRefresh)
			return err
		}, "POST", "/prefix/v1/session/refresh", "", "", true, map[string]string{"X-Refresh-Token": testRefresh}},
		{"revoke", func() error { return c.Revoke(ctx, key, testRefresh) },
			"POST", "/prefix/v1/session/revoke", "", "", true, map[string]string{"X-Refresh-Token": testRefresh}},
		{"list_default", func() error {
			_, err := c.ListSessions(ctx, testBearer, Unset, Unset)
			return err
		}, "GET", "/prefix/v1/session/me/list", "", "", false, map[string]string{"Authorization": "Bearer " + testBearer}},
		{"list_zero", func() error {
			_, err := c.ListSessions(ctx, testBearer, 0, 0)
			return err
		}, "GET", "/prefix/v1/session/me/list", "limit=0&offset=0", "", false, nil},
		{"list_paged", func() error {
			_, err := c.ListSessions(ctx, testBearer, 5, 10)
			return err
		}, "GET", "/prefix/v1/session/me/list", "limit=5&offset=10", "", false, nil},
		{"revoke_others", func() error { return c.RevokeSessions(ctx, testBearer, TargetOthers, "") },
			"POST", "/prefix/v1/session/me/revoke", "target=others", "", false, map[string]string{"Authorization": "Bearer " + testBearer}},
		{"revoke_one", func() error { return c.RevokeSessions(ctx, testBearer, TargetSession, "ses_1") },
			"POST", "/prefix/v1/session/me/revoke", "target=session&session_id=ses_1", "", false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err != nil {
				t.Fatal(err)
			}
			s := <-got
			if s.method != tc.method || s.path != tc.path || s.query != tc.query {
				t.Errorf("request %s %s?%s, want %s %s?%s", s.method, s.path, s.query, tc.method, tc.path, tc.query)
			}
			if strings.TrimSpace(s.body) != tc.body {
				t.Errorf("body %q, want %q", s.body, tc.body)
			}
			wantCT := "" // every POST is labelled JSON, bodiless ones too (as the SDK does)
			if tc.method == "POST" {
				wantCT = "application/json"
			}
			if ct := s.header.Get("Content-Type"); ct != wantCT {
				t.Errorf("Content-Type %q, want %q", ct, wantCT)
			}
			if s.header.Get("Accept") != "application/json" || s.header.Get("User-Agent") != "shape-test/1" {
				t.Errorf("Accept %q, User-Agent %q", s.header.Get("Accept"), s.header.Get("User-Agent"))
			}
			if ua := s.header.Get("X-SDK-User-Agent"); !strings.HasPrefix(ua, "caddy-inject-token/") || strings.Contains(ua, "Prelude/") {
				t.Errorf("X-SDK-User-Agent %q: want this module's own name", ua)
			}
			if has := len(s.header.Values("DPoP")) == 1; has != tc.dpop {
				t.Errorf("DPoP headers: %d, want proof: %v", len(s.header.Values("DPoP")), tc.dpop)
			}
			for k, v := range tc.wantHeader {
				if got := s.header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestNonceRetry: a use_dpop_nonce challenge is answered exactly once, with
// a fresh proof carrying the new nonce; later proofs reuse the nonce, and
// nonces from success responses replace it.
func TestNonceRetry(t *testing.T) {
	key := newKey(t)
	var mu sync.Mutex
	var jtis, nonces []string
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		claims := verifyProof(t, r)
		mu.Lock()
		jtis = append(jtis, claims.JTI)
		nonces = append(nonces, claims.Nonce)
		mu.Unlock()
		switch claims.Nonce {
		case "":
			w.Header().Set("DPoP-Nonce", "n1")
			writeError(w, http.StatusBadRequest, "use_dpop_nonce", "nonce required")
		case "n1":
			w.Header().Set("DPoP-Nonce", "n2") // rotated on success
			writeTokens(w, "access", time.Now().Add(time.Minute).Unix(), testRotated)
		case "n2":
			writeTokens(w, "access", time.Now().Add(time.Minute).Unix(), testRotated)
		}
	})
	if _, err := c.Refresh(context.Background(), key, testRefresh); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n.Load() != 2 || jtis[0] == jtis[1] {
		t.Fatalf("requests = %d, jtis %v: want 2 with fresh jti", n.Load(), jtis)
	}
	mu.Unlock()
	if _, err := c.Refresh(context.Background(), key, testRotated); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if n.Load() != 3 || nonces[2] != "n2" {
		t.Fatalf("requests = %d, nonces %v: want the success nonce reused without a challenge", n.Load(), nonces)
	}
}

func TestNonceRetryOnlyOnce(t *testing.T) {
	key := newKey(t)
	var i atomic.Int64
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("DPoP-Nonce", fmt.Sprintf("n%d", i.Add(1)))
		writeError(w, http.StatusBadRequest, "use_dpop_nonce", "")
	})
	_, err := c.Refresh(context.Background(), key, testRefresh)
	// Not acted on: the token cache retries later with a fresh proof.
	e := asError(t, err, KindTransient)
	if e.FailureReason() != "nonce" {
		t.Errorf("reason %q", e.FailureReason())
	}
	if e.Code != "use_dpop_nonce" || e.Status != 400 || n.Load() != 2 {
		t.Errorf("code %q status %d after %d requests; want use_dpop_nonce/400 after 2", e.Code, e.Status, n.Load())
	}
}

func TestNonceChallengeWithoutNonceIsNotRetried(t *testing.T) {
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusBadRequest, "use_dpop_nonce", "")
	})
	err := c.Revoke(context.Background(), newKey(t), testRefresh)
	asError(t, err, KindTransient)
	if n.Load() != 1 {
		t.Errorf("requests = %d, want 1", n.Load())
	}
}

// TestNonceRememberedFromErrors: a nonce on an error that is not a nonce
// challenge is still used by the next proof.
func TestNonceRememberedFromErrors(t *testing.T) {
	key := newKey(t)
	var last atomic.Value
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		last.Store(verifyProof(t, r).Nonce)
		w.Header().Set("DPoP-Nonce", "from-500")
		writeError(w, 500, "internal", "")
	})
	_, _ = c.Refresh(context.Background(), key, testRefresh)
	_, _ = c.Refresh(context.Background(), key, testRefresh)
	if last.Load() != "from-500" {
		t.Errorf("second proof nonce = %q, want from-500", last.Load())
	}
}

func TestExpiresAtForms(t *testing.T) {
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name   string
		value  any
		access string
	}{
		{"unix_int", exp.Unix(), "a"},
		{"unix_float", float64(exp.Unix()), "a"},
		{"rfc3339", exp.UTC().Format(time.RFC3339), "a"},
		{"rfc3339_offset", exp.In(time.FixedZone("x", 7200)).Format(time.RFC3339), "a"},
		{"digits_string", fmt.Sprint(exp.Unix()), "a"},
		{"missing_jwt_exp", nil, fakeJWT(map[string]any{"exp": exp.Unix()})},
		{"garbage_jwt_exp", "soon", fakeJWT(map[string]any{"exp": exp.Unix()})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-Refresh-Token-Expires-At", exp.Add(24*time.Hour).UTC().Format(time.RFC3339))
				writeTokens(w, tc.access, tc.value, testRotated)
			})
			tok, err := c.Refresh(context.Background(), newKey(t), testRefresh)
			if err != nil {
				t.Fatal(err)
			}
			if !tok.ExpiresAt.Equal(exp) || !tok.RefreshExpiresAt.Equal(exp.Add(24*time.Hour)) {
				t.Errorf("expiry %v / %v, want %v / +24h", tok.ExpiresAt, tok.RefreshExpiresAt, exp)
			}
			if tok.AccessToken != tc.access || tok.RefreshToken != testRotated {
				t.Errorf("tokens not returned as sent")
			}
		})
	}
}

func TestRefreshExpiryHeaderTolerated(t *testing.T) {
	for _, hdr := range []string{"", "next tuesday", "2026-13-45T99:00:00Z"} {
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
			if hdr != "" {
				w.Header().Set("X-Refresh-Token-Expires-At", hdr)
			}
			writeTokens(w, "a", time.Now().Add(time.Minute).Unix(), testRotated)
		})
		tok, err := c.Refresh(context.Background(), newKey(t), testRefresh)
		if err != nil {
			t.Fatalf("header %q: %v", hdr, err)
		}
		if !tok.RefreshExpiresAt.IsZero() || tok.RefreshToken != testRotated {
			t.Errorf("header %q: refresh expiry %v", hdr, tok.RefreshExpiresAt)
		}
	}
}

// TestClockSkew: a server whose clock is an hour behind. Expiries are moved
// onto the local clock, and later proofs are dated on the server's clock.
func TestClockSkew(t *testing.T) {
	const skew = time.Hour
	var mu sync.Mutex
	var iats []int64
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		iats = append(iats, proofIAT(r))
		mu.Unlock()
		serverNow := time.Now().Add(-skew)
		w.Header().Set("Date", serverNow.UTC().Format(http.TimeFormat))
		w.Header().Set("X-Refresh-Token-Expires-At", serverNow.Add(48*time.Hour).UTC().Format(time.RFC3339))
		writeTokens(w, "a", serverNow.Add(time.Minute).Unix(), testRotated)
	})
	key := newKey(t)
	tok, err := c.Refresh(context.Background(), key, testRefresh)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(tok.ExpiresAt); d < 57*time.Second || d > 62*time.Second {
		t.Errorf("access token expires in %v on the local clock, want ≈60s", d)
	}
	if d := time.Until(tok.RefreshExpiresAt); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("refresh token expires in %v, want ≈48h", d)
	}
	if _, err := c.Refresh(context.Background(), key, testRotated); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if d := time.Duration(iats[0]-iats[1]) * time.Second; d < skew-2*time.Second || d > skew+2*time.Second {
		t.Errorf("second proof iat moved by %v, want ≈%v", d, skew)
	}
}

// proofIAT reads the iat of r's proof without verifying it
// (the skewed server would reject the first, unskewed proof).
func proofIAT(r *http.Request) int64 {
	parts := strings.Split(r.Header.Get("DPoP"), ".")
	if len(parts) != 3 {
		return 0
	}
	var c dpop.Claims
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	_ = json.Unmarshal(b, &c)
	return c.IAT
}

func TestSubSecondSkewIgnored(t *testing.T) {
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat)) // truncated: up to 1 s "behind"
		writeTokens(w, "a", exp.Unix(), testRotated)
	})
	tok, err := c.Refresh(context.Background(), newKey(t), testRefresh)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.ExpiresAt.Equal(exp) {
		t.Errorf("expiry %v, want uncorrected %v", tok.ExpiresAt, exp)
	}
}

// TestMalformedSuccess: a 2xx the client cannot use means the server may
// have rotated: the outcome is unknown for POSTs, transient for GETs.
func TestMalformedSuccess(t *testing.T) {
	good := time.Now().Add(time.Minute).Unix()
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"not_json", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Refresh-Token", testRotated)
			_, _ = io.WriteString(w, "<html>ok</html>")
		}},
		{"truncated_json", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Refresh-Token", testRotated)
			_, _ = io.WriteString(w, `{"access_token":"a","expires_at":`)
		}},
		{"no_access_token", func(w http.ResponseWriter, r *http.Request) { writeTokens(w, "", good, testRotated) }},
		{"names_in_other_case", func(w http.ResponseWriter, r *http.Request) {
			// CI's FuzzResponse finding 9c30edfb2e39a0f8: encoding/json would
			// have matched these names; the SDKs read data.access_token.
			w.Header().Set("X-Refresh-Token", testRotated)
			_, _ = io.WriteString(w, `{"ACCess_token":"0","eXpires_At":"1"}`)
		}},
		{"wrong_types", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Refresh-Token", testRotated)
			_, _ = io.WriteString(w, `{"access_token":42,"expires_at":true}`)
		}},
		{"huge_body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Refresh-Token", testRotated)
			_, _ = io.WriteString(w, `{"access_token":"`+strings.Repeat("a", 2<<20)+`"}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := misbehaving(t, tc.h)
			tok, err := c.Refresh(context.Background(), newKey(t), testRefresh)
			if tok != nil {
				t.Errorf("tokens returned with error")
			}
			e := asError(t, err, KindUnknownOutcome)
			if e.Status != 200 {
				t.Errorf("status %d", e.Status)
			}
			_, err = Backend{Client: c}.Refresh(context.Background(), newKey(t), testRefresh)
			if !errors.Is(err, tokencache.ErrOutcomeUnknown) {
				t.Errorf("backend error %v does not wrap ErrOutcomeUnknown", err)
			}
		})
	}
	t.Run("list_not_json", func(t *testing.T) {
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "nope") })
		_, err := c.ListSessions(context.Background(), testBearer, 0, 0)
		asError(t, err, KindTransient)
	})
	t.Run("otp_without_verification_token", func(t *testing.T) {
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
		_, err := c.StartOTP(context.Background(), PhoneIdentifier("+33600000000"))
		asError(t, err, KindUnknownOutcome)
	})
	t.Run("challenge_missing", func(t *testing.T) {
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, `{}`) })
		_, err := c.LoginPassword(context.Background(), "a@example.com", testPassword)
		asError(t, err, KindUnknownOutcome)
	})
}

// TestSloppySuccess is how a 2xx token answer is read when it is odd but
// carries an access token: expires_at as a number (Unix seconds, the
// current API) or a string (RFC 3339, the older API, or decimal seconds);
// an expiry in the past or none readable anywhere keeps the answer — its
// rotated refresh token is the live one — but says, through Usable, that
// the cache will not hand the access token out.
func TestSloppySuccess(t *testing.T) {
	now := time.Now()
	later := now.Add(time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name      string
		expiresAt any // nil: absent
		access    string
		want      time.Time // zero: expired on arrival
	}{
		{"number", later.Unix(), "opaque", later},
		{"rfc3339_string", later.UTC().Format(time.RFC3339), "opaque", later},
		{"decimal_string", strconv.FormatInt(later.Unix(), 10), "opaque", later},
		{"past", now.Add(-time.Hour).Unix(), "opaque", time.Time{}},
		{"unix_1", "1", "opaque", time.Time{}},
		{"absent_no_jwt", nil, "opaque", time.Time{}},
		{"garbage", "soon", "opaque", time.Time{}},
		{"absent_jwt_exp", nil, fakeJWT(map[string]any{"exp": later.Unix()}), later},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
				writeTokens(w, tc.access, tc.expiresAt, testRotated)
			})
			tok, err := c.Refresh(context.Background(), newKey(t), testRefresh)
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if tok.RefreshToken != testRotated {
				t.Errorf("rotated refresh token lost")
			}
			if usable := tok.Usable(time.Now()); usable != !tc.want.IsZero() {
				t.Errorf("Usable = %v, want %v (expiry %v)", usable, !usable, tok.ExpiresAt)
			}
			if !tc.want.IsZero() && !tok.ExpiresAt.Equal(tc.want) {
				t.Errorf("expiry %v, want %v", tok.ExpiresAt, tc.want)
			}
		})
	}
}

// TestErrorClassification is the decided list of answers that prove the
// server did not act on a refresh (transient: the token may be presented
// again); everything else after the request was written is outcome
// unknown, except the session verdicts.
func TestErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		status     int
		retryAfter string
		body       string
		want       Kind
		code       string
		message    string
		class      error // the tokencache sentinel the backend error wraps; nil: none (retry)
		reason     string
	}{
		{401, "", `{"code":"unauthorized","message":"expired","type":"unauthorized"}`, KindDead, "unauthorized", "expired", tokencache.ErrSessionDead, "invalid_grant"},
		{401, "", `not json`, KindDead, "", "", tokencache.ErrSessionDead, "invalid_grant"},
		{409, "", `{"code":"token_reused","display_message":"already used"}`, KindDead, "token_reused", "already used", tokencache.ErrSessionDead, "token_reused"},
		// The proof is checked before the token: not acted on.
		{400, "", `{"code":"invalid_dpop_proof"}`, KindTransient, "invalid_dpop_proof", "", nil, "dpop_rejected"},
		{401, "", `{"code":"invalid_dpop_proof"}`, KindTransient, "invalid_dpop_proof", "", nil, "dpop_rejected"},
		{401, "", `{"code":"missing_dpop_proof"}`, KindTransient, "missing_dpop_proof", "", nil, "dpop_rejected"},
		{400, "", `{"code":"use_dpop_nonce"}`, KindTransient, "use_dpop_nonce", "", nil, "nonce"},
		{401, "", `{"code":"dpop_key_mismatch"}`, KindKeyMismatch, "dpop_key_mismatch", "", nil, "dpop_rejected"},
		{429, "", `{"code":"rate_limited"}`, KindTransient, "rate_limited", "", nil, "rate_limited"},
		{503, "5", `{"code":"internal"}`, KindTransient, "internal", "", nil, "status_5xx"},
		// Anything else after the request was written: outcome unknown.
		{503, "", `{"code":"internal"}`, KindUnknownOutcome, "internal", "", tokencache.ErrOutcomeUnknown, "status_5xx"},
		{500, "", `{"code":"internal"}`, KindUnknownOutcome, "internal", "", tokencache.ErrOutcomeUnknown, "status_5xx"},
		{502, "", "<html><body>Bad Gateway</body></html>", KindUnknownOutcome, "", "", tokencache.ErrOutcomeUnknown, "status_5xx"},
		{504, "", "upstream timed out", KindUnknownOutcome, "", "", tokencache.ErrOutcomeUnknown, "status_5xx"},
		{400, "", `{"code":"bad_request","type":"bad_request"}`, KindUnknownOutcome, "bad_request", "", tokencache.ErrOutcomeUnknown, "other"},
		{403, "", `{"code":"forbidden","message":"no"}`, KindUnknownOutcome, "forbidden", "no", tokencache.ErrOutcomeUnknown, "other"},
		{404, "", ``, KindUnknownOutcome, "", "", tokencache.ErrOutcomeUnknown, "other"},
		{400, "", `{"error":"invalid_request","error_description":"rfc style"}`, KindUnknownOutcome, "invalid_request", "rfc style", tokencache.ErrOutcomeUnknown, "other"},
		{307, "", ``, KindUnknownOutcome, "", "", tokencache.ErrOutcomeUnknown, "other"},
	} {
		t.Run(fmt.Sprintf("%d_%s_%s", tc.status, tc.code, tc.retryAfter), func(t *testing.T) {
			c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status == 307 {
					w.Header().Set("Location", "/elsewhere")
				}
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			_, err := c.Refresh(context.Background(), newKey(t), testRefresh)
			e := asError(t, err, tc.want)
			if e.Status != tc.status || e.Code != tc.code || e.Message != tc.message {
				t.Errorf("got status %d code %q message %q", e.Status, e.Code, e.Message)
			}
			_, err = Backend{Client: c}.Refresh(context.Background(), newKey(t), testRefresh)
			for _, class := range []error{tokencache.ErrSessionDead, tokencache.ErrOutcomeUnknown, tokencache.ErrCredentialsRejected} {
				if errors.Is(err, class) != (class == tc.class) {
					t.Errorf("backend error %v: wraps %v = %v, want class %v", err, class, errors.Is(err, class), tc.class)
				}
			}
			var re tokencache.ReasonError
			if !errors.As(err, &re) || re.FailureReason() != tc.reason {
				t.Errorf("reason = %v, want %q", re, tc.reason)
			}
		})
	}
}

// The same answers on calls that spend nothing: 5xx is transient, other
// 4xx a refusal; a refused password is KindCredentials.
func TestErrorClassificationWithoutSpending(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   Kind
	}{
		{500, `{"code":"internal"}`, KindTransient},
		{502, `bad gateway`, KindTransient},
		{400, `{"code":"bad_request"}`, KindCaller},
		{401, `{"code":"unauthorized","type":"unauthorized"}`, KindCredentials},
	} {
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		})
		_, err := c.LoginPassword(context.Background(), "a@example.com", testPassword)
		e := asError(t, err, tc.want)
		_, err = PasswordLogin(c, "a@example.com", testPassword)(context.Background(), newKey(t), "")
		if errors.Is(err, tokencache.ErrCredentialsRejected) != (tc.want == KindCredentials) {
			t.Errorf("%d: PasswordLogin error %v", tc.status, err)
		}
		if tc.want == KindCredentials && (e.FailureReason() != "invalid_client" || e.Type != "unauthorized") {
			t.Errorf("reason %q type %q", e.FailureReason(), e.Type)
		}
	}
}

// TestHugeErrorBody: an oversized error body is not read past the limit and
// the status still classifies the error.
func TestHugeErrorBody(t *testing.T) {
	var wrote atomic.Int64
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(503)
		chunk := []byte(strings.Repeat("x", 64<<10))
		for range 1024 { // 64 MiB unless the client hangs up
			n, err := w.Write(chunk)
			wrote.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	_, err := c.Refresh(context.Background(), newKey(t), testRefresh)
	e := asError(t, err, KindUnknownOutcome) // 503 without Retry-After
	if e.Code != "" || e.Status != 503 || len(e.Error()) > 300 {
		t.Errorf("error %q", e.Error())
	}
}

func TestRetryAfter(t *testing.T) {
	serverNow := time.Now().Add(-10 * time.Minute) // skewed: the HTTP-date is read on the server's clock
	for _, tc := range []struct {
		status int
		header string
		want   time.Duration
	}{
		{429, "7", 7 * time.Second},
		{503, "120", 2 * time.Minute},
		{503, serverNow.Add(30 * time.Second).UTC().Format(http.TimeFormat), 30 * time.Second},
		{429, "", 0},
		{429, "-5", 0},
		{429, "soon", 0},
		{429, "99999999999999", maxRetryAfter},
		{500, "7", 0}, // only 429 and 503 carry the hint
	} {
		t.Run(fmt.Sprintf("%d_%s", tc.status, tc.header), func(t *testing.T) {
			c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Date", serverNow.UTC().Format(http.TimeFormat))
				if tc.header != "" {
					w.Header().Set("Retry-After", tc.header)
				}
				writeError(w, tc.status, "rate_limited", "slow down")
			})
			_, err := Backend{Client: c}.Refresh(context.Background(), newKey(t), testRefresh)
			want := KindTransient
			if tc.status == 500 {
				want = KindUnknownOutcome // a 500 does not prove the server did not act
			}
			e := asError(t, err, want)
			var ra tokencache.RetryAfterError
			if !errors.As(err, &ra) || ra.RetryAfter() != tc.want || e.RetryDelay != tc.want {
				t.Errorf("retry after %v, want %v", e.RetryDelay, tc.want)
			}
		})
	}
}

// TestTransportFailures distinguishes "never sent" from "sent, no answer".
func TestTransportFailures(t *testing.T) {
	key := newKey(t)
	t.Run("connection_refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		u := srv.URL
		srv.Close()
		c, err := New(u, Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Refresh(context.Background(), key, testRefresh)
		asError(t, err, KindTransient)
		_, err = Backend{Client: c}.Refresh(context.Background(), key, testRefresh)
		if errors.Is(err, tokencache.ErrOutcomeUnknown) || errors.Is(err, tokencache.ErrSessionDead) {
			t.Errorf("backend error %v", err)
		}
	})
	t.Run("cancelled_before_send", func(t *testing.T) {
		c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.Refresh(ctx, key, testRefresh)
		asError(t, err, KindTransient)
		if !errors.Is(err, context.Canceled) || n.Load() != 0 {
			t.Errorf("err %v, requests %d", err, n.Load())
		}
	})
	hangUp := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.Close()
	}
	t.Run("dropped_after_write", func(t *testing.T) {
		c, _ := misbehaving(t, hangUp)
		_, err := c.Refresh(context.Background(), key, testRefresh)
		asError(t, err, KindUnknownOutcome)
		_, err = Backend{Client: c}.Refresh(context.Background(), key, testRefresh)
		if !errors.Is(err, tokencache.ErrOutcomeUnknown) {
			t.Errorf("backend error %v does not wrap ErrOutcomeUnknown", err)
		}
	})
	t.Run("dropped_get_is_transient", func(t *testing.T) {
		c, _ := misbehaving(t, hangUp)
		_, err := c.ListSessions(context.Background(), testBearer, 0, 0)
		asError(t, err, KindTransient)
	})
	t.Run("cancelled_while_waiting", func(t *testing.T) {
		arrived := make(chan struct{})
		release := make(chan struct{})
		defer close(release)
		c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			close(arrived)
			<-release
		})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := c.Refresh(ctx, key, testRefresh)
			errc <- err
		}()
		<-arrived
		cancel()
		err := <-errc
		asError(t, err, KindUnknownOutcome)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%v does not wrap context.Canceled", err)
		}
	})
}

// TestSecretsNeverInErrors: a hostile server echoes everything it received
// into its error message; nothing secret may come out in the error.
func TestSecretsNeverInErrors(t *testing.T) {
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		echo := strings.Join([]string{string(b), r.Header.Get("X-Refresh-Token"),
			r.Header.Get("X-Verification-Token"), r.Header.Get("Authorization")}, "\n")
		writeError(w, 400, "bad_request\n"+echo, echo)
	})
	ctx, key := context.Background(), newKey(t)
	_, err1 := c.Refresh(ctx, key, testRefresh)
	_, err2 := c.Finalize(ctx, key, testChallenge, testRefresh)
	_, err3 := c.LoginPassword(ctx, "a@example.com", testPassword)
	_, err4 := c.CheckOTP(ctx, testVerif, "123456")
	_, err5 := c.ListSessions(ctx, testBearer, 0, 0)
	err6 := c.RevokeSessions(ctx, testBearer, TargetAll, "")
	err7 := c.Revoke(ctx, key, testRefresh)
	for i, err := range []error{err1, err2, err3, err4, err5, err6, err7} {
		want := KindCaller
		if i == 0 {
			want = KindUnknownOutcome // a 400 on a refresh does not prove the server did not act
		}
		e := asError(t, err, want)
		if !strings.Contains(e.Message, "[redacted]") || strings.ContainsAny(e.Message+e.Code, "\n\r") {
			t.Errorf("message not scrubbed: %q", e.Message)
		}
	}
}

func TestTokensNeverPrinted(t *testing.T) {
	tok := Tokens{AccessToken: testBearer, RefreshToken: testRotated, ExpiresAt: time.Now()}
	wrapped := struct {
		T  Tokens
		TP *Tokens
	}{tok, &tok}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%T %v"} {
		outs = append(outs, fmt.Sprintf(verb, tok), fmt.Sprintf(verb, &tok), fmt.Sprintf(verb, wrapped))
	}
	noSecrets(t, outs...)
	if !strings.Contains(fmt.Sprint(tok), "[redacted]") {
		t.Errorf("String() = %q", tok.String())
	}
}

// TestArgumentsCheckedBeforeSending: bad arguments never reach the server.
func TestArgumentsCheckedBeforeSending(t *testing.T) {
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	ctx, key := context.Background(), newKey(t)
	errs := []error{
		c.RevokeSessions(ctx, testBearer, "everyone", ""),
		c.RevokeSessions(ctx, testBearer, TargetSession, ""),
		c.RevokeSessions(ctx, testBearer, TargetOthers, "ses_1"),
		c.RevokeSessions(ctx, "", TargetMine, ""),
		c.Revoke(ctx, nil, testRefresh),
		c.Revoke(ctx, key, ""),
	}
	_, err := c.StartOTP(ctx, Identifier{Type: "username", Value: "x"})
	errs = append(errs, err)
	_, err = c.StartOTP(ctx, EmailIdentifier(""))
	errs = append(errs, err)
	_, err = c.Refresh(ctx, key, "")
	errs = append(errs, err)
	_, err = c.Finalize(ctx, nil, testChallenge, "")
	errs = append(errs, err)
	_, err = c.CheckOTP(ctx, testVerif, "")
	errs = append(errs, err)
	_, err = c.LoginPassword(ctx, "a@example.com", "")
	errs = append(errs, err)
	for i, err := range errs {
		if e := asError(t, err, KindCaller); e.Status != 0 {
			t.Errorf("%d: status %d", i, e.Status)
		}
	}
	if n.Load() != 0 {
		t.Errorf("%d requests reached the server", n.Load())
	}
}

// TestPostRedirectNotFollowed: a redirected refresh must not carry the
// refresh token to the redirect target.
func TestPostRedirectNotFollowed(t *testing.T) {
	var target atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/session/refresh", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { target.Add(1) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	// A caller-supplied client that follows redirects is tamed too.
	c, err := New(srv.URL, Options{HTTPClient: &http.Client{}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Refresh(context.Background(), newKey(t), testRefresh)
	if e := asError(t, err, KindUnknownOutcome); e.Status != 307 || target.Load() != 0 {
		t.Errorf("status %d, redirect target hit %d times", e.Status, target.Load())
	}
}

func TestListSessionsDecoding(t *testing.T) {
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"sessions":[
			{"id":"ses_1","device_type":"mobile","device_model":"iPhone15,2","os_version":"17.4","country_code":"FR",
			 "created_at":"2026-01-01T00:00:00Z","last_seen_at":"2026-01-02T00:00:00Z","expires_at":"2026-02-01T00:00:00Z"},
			{"id":"ses_2","created_at":"","last_seen_at":"garbage","expires_at":1767225600,"future_field":true}
		],"total":12,"limit":2,"offset":4}`)
	})
	list, err := c.ListSessions(context.Background(), testBearer, 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	if list.Total != 12 || list.Limit != 2 || list.Offset != 4 || len(list.Sessions) != 2 {
		t.Fatalf("list %+v", list)
	}
	s0, s1 := list.Sessions[0], list.Sessions[1]
	if s0.ID != "ses_1" || s0.DeviceType != "mobile" || s0.DeviceModel != "iPhone15,2" || s0.OSVersion != "17.4" ||
		s0.CountryCode != "FR" || !s0.CreatedAt.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) ||
		!s0.LastSeenAt.Equal(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)) || !s0.ExpiresAt.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("session 0: %+v", s0)
	}
	if !s1.CreatedAt.IsZero() || !s1.LastSeenAt.IsZero() || s1.ExpiresAt.Unix() != 1767225600 {
		t.Errorf("session 1: %+v", s1)
	}
	out, _ := json.Marshal(list.Sessions)
	want := `[{"id":"ses_1","device_type":"mobile","device_model":"iPhone15,2","os_version":"17.4","country_code":"FR",` +
		`"created_at":"2026-01-01T00:00:00Z","last_seen_at":"2026-01-02T00:00:00Z","expires_at":"2026-02-01T00:00:00Z"},` +
		`{"id":"ses_2","expires_at":"` + time.Unix(1767225600, 0).Format(time.RFC3339Nano) + `"}]`
	if string(out) != want {
		t.Errorf("re-emitted\n%s\nwant\n%s", out, want)
	}
}

func TestBackendAdapters(t *testing.T) {
	exp := time.Now().Add(time.Minute).Truncate(time.Second)
	var finalizeSawPrevious atomic.Value
	c, _ := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case pathLoginPassword:
			var b map[string]string
			_ = json.NewDecoder(r.Body).Decode(&b)
			if b["password"] != testPassword {
				writeError(w, 401, "unauthorized", "bad credentials")
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"challenge_token": testChallenge})
		case pathFinalize:
			finalizeSawPrevious.Store(r.Header.Get("X-Refresh-Token"))
			w.Header().Set("X-Refresh-Token-Expires-At", exp.Add(time.Hour).Format(time.RFC3339))
			writeTokens(w, testBearer, exp.Unix(), testRotated)
		case pathRevoke:
			writeError(w, 401, "unauthorized", "already revoked")
		}
	})
	g, err := PasswordLogin(c, "a@example.com", testPassword)(context.Background(), newKey(t), testRefresh)
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken != testBearer || g.TokenType != "Bearer" || !g.Expiry.Equal(exp) || g.RefreshToken != testRotated ||
		!g.RefreshExpiry.Equal(exp.Add(time.Hour)) || finalizeSawPrevious.Load() != testRefresh {
		t.Errorf("grant %+v (previous forwarded: %v)", g, finalizeSawPrevious.Load())
	}
	_, err = PasswordLogin(c, "a@example.com", "wrong-password")(context.Background(), newKey(t), "")
	if !errors.Is(err, tokencache.ErrCredentialsRejected) || errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("wrong password: %v", err)
	}
	if err := (Backend{Client: c}).Revoke(context.Background(), newKey(t), testRefresh); !errors.Is(err, tokencache.ErrSessionDead) {
		t.Errorf("revoke of a dead session: %v", err)
	}
	if _, err := (Backend{}).Refresh(context.Background(), newKey(t), testRefresh); err == nil {
		t.Error("Backend without Client did not fail")
	}
	if (*Tokens)(nil).Grant() != nil {
		t.Error("nil Tokens gave a Grant")
	}
}

func TestClockSkewEstimate(t *testing.T) {
	date := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		local time.Duration // local clock at receipt, relative to Date
		want  time.Duration
	}{
		{0, 0},
		{999 * time.Millisecond, 0},                // same second: agreeing clocks
		{1300 * time.Millisecond, 0},               // slow transit, still under the resolution
		{-400 * time.Millisecond, 0},               // local slightly behind
		{3 * time.Second, 2500 * time.Millisecond}, // local ahead
		{-time.Hour, -time.Hour - 500*time.Millisecond},
	} {
		if got := clockSkew(date.Add(tc.local), date); got != tc.want {
			t.Errorf("local %v after Date: skew %v, want %v", tc.local, got, tc.want)
		}
	}
}

// TestSkewRetry: a server an hour behind rejects the first proof's iat; the
// response's Date reveals the skew and one re-dated proof gets through.
func TestSkewRetry(t *testing.T) {
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		serverNow := time.Now().Add(-time.Hour)
		w.Header().Set("Date", serverNow.UTC().Format(http.TimeFormat))
		if d := time.Unix(proofIAT(r), 0).Sub(serverNow); d.Abs() > 5*time.Second {
			writeError(w, 401, "invalid_dpop_proof", "iat outside the accepted window")
			return
		}
		writeTokens(w, "a", serverNow.Add(time.Minute).Unix(), testRotated)
	})
	if _, err := c.Refresh(context.Background(), newKey(t), testRefresh); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 {
		t.Errorf("requests = %d, want 2 (one re-dated retry)", n.Load())
	}
}

// TestSkewRetryOnlyWhenSkewChanged: a proof rejected while the clocks agree
// is not retried (the key really is wrong), and a server whose Date keeps
// jumping gets one retry only.
func TestSkewRetryOnlyWhenSkewChanged(t *testing.T) {
	c, n := misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, 401, "invalid_dpop_proof", "")
	})
	_, err := c.Refresh(context.Background(), newKey(t), testRefresh)
	if asError(t, err, KindTransient); n.Load() != 1 {
		t.Errorf("requests = %d, want 1", n.Load())
	}

	var jump atomic.Int64
	c, n = misbehaving(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().Add(time.Duration(jump.Add(1))*time.Hour).UTC().Format(http.TimeFormat))
		writeError(w, 401, "invalid_dpop_proof", "")
	})
	_, err = c.Refresh(context.Background(), newKey(t), testRefresh)
	if asError(t, err, KindTransient); n.Load() != 2 {
		t.Errorf("requests = %d, want 2", n.Load())
	}
}
