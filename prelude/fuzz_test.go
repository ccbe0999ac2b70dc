package prelude

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/internal/fuzzhttp"
)

// FuzzResponse feeds a hostile server's answer (status, headers, body) to
// each call the gateway makes: the result is tokens that are there (see
// checkTokens), or an *Error with a kind and a text that never holds the
// secrets the request carried. Seeds in testdata/fuzz/FuzzResponse.
func FuzzResponse(f *testing.F) {
	const (
		refresh  = "rt-FUZZ-0123456789abcdef"
		access   = "at-FUZZ-0123456789abcdef"
		password = "pw-FUZZ-0123456789abcdef"
	)
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, op uint8, status int, header string, body []byte) {
		srv := fuzzhttp.Server{Status: status, Header: header, Body: body}
		cl, err := New("http://prelude.test", Options{HTTPClient: srv.Client(), MaxResponseBytes: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		var sent string // the secret this call carried: only it is known to be one
		switch op % 4 {
		case 0:
			var tok *Tokens
			sent = refresh
			if tok, err = cl.Refresh(ctx, key, refresh); err == nil {
				checkTokens(t, tok, body)
			}
		case 1:
			var list *SessionList
			sent = access
			if list, err = cl.ListSessions(ctx, access, 10, 0); err == nil && list.Sessions == nil {
				t.Fatal("listing succeeded with a nil list")
			}
		case 2:
			sent = password
			_, err = cl.LoginPassword(ctx, "a@b.c", password)
		case 3:
			sent = refresh
			err = cl.Revoke(ctx, key, refresh)
		}
		if err == nil {
			return
		}
		var pe *Error
		if !errors.As(err, &pe) || pe.Kind.String() == "unclassified" {
			t.Fatalf("not a classified *Error: %#v", err)
		}
		if strings.Contains(err.Error(), sent) {
			t.Fatalf("error text holds a secret: %s", err)
		}
	})
}

// checkTokens is what a successful refresh promises, as decided in
// TestSloppySuccess: an access_token member spelled exactly so, an expiry
// (possibly already past: Usable then says the cache will not hand the
// token out), and a refresh token only when the server sent one — "" keeps
// the presented one (the SDK 0.6.0 behaviour).
func checkTokens(t *testing.T, tok *Tokens, body []byte) {
	t.Helper()
	var members map[string]json.RawMessage
	if json.Unmarshal(body, &members) != nil || members["access_token"] == nil {
		t.Fatalf("refresh succeeded without an exact access_token member: %v", tok)
	}
	if tok.AccessToken == "" || tok.ExpiresAt.IsZero() {
		t.Fatalf("refresh succeeded without a token or an expiry: %v", tok)
	}
	if tok.Usable(tok.ExpiresAt) {
		t.Fatalf("a token is usable at its own expiry: %v", tok)
	}
}
