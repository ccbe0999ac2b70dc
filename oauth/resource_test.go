package oauth_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/oauth"
)

// TestResourceIndicators: every configured resource travels as its own
// "resource" parameter (RFC 8707 §2), on the grant and on refresh, unless
// OmitResourceOnRefresh leaves them off refresh requests only.
func TestResourceIndicators(t *testing.T) {
	var mu sync.Mutex
	var forms []url.Values
	base, _ := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		forms = append(forms, r.PostForm)
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"access_token": testAccess, "token_type": "Bearer", "expires_in": 60, "refresh_token": testRefresh})
	})
	last := func() url.Values {
		mu.Lock()
		defer mu.Unlock()
		return forms[len(forms)-1]
	}
	want := []string{"https://a.example/", "https://b.example/api", "urn:example:c"}
	cfg := oauth.Config{Settings: oauth.Settings{Endpoint: base + "/token", ClientID: "c", ClientSecret: secretBasic,
		Resource: want[0], Resources: want[1:]}}
	ctx := context.Background()

	if _, err := newClient(t, cfg).Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("client_credentials resource = %q, want %q", got, want)
	}
	cfg.Grant = oauth.GrantRefreshToken
	if _, err := newClient(t, cfg).Token(ctx, nil, testRefresh); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("refresh resource = %q, want %q", got, want)
	}
	cfg.OmitResourceOnRefresh = true
	if _, err := newClient(t, cfg).Token(ctx, nil, testRefresh); err != nil {
		t.Fatal(err)
	}
	if got, ok := last()["resource"]; ok {
		t.Errorf("refresh with OmitResourceOnRefresh sent resource %q", got)
	}
	cfg.Grant = oauth.GrantClientCredentials
	if _, err := newClient(t, cfg).Token(ctx, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := last()["resource"]; !slices.Equal(got, want) {
		t.Errorf("OmitResourceOnRefresh dropped resource from the grant itself: %q", got)
	}
}

func TestResourceMustBeAbsoluteURI(t *testing.T) {
	for _, bad := range []string{"api", "/relative", "https://a.example/#frag"} {
		_, err := oauth.New(oauth.Config{Settings: oauth.Settings{Endpoint: "https://as.example/token", ClientID: "c", Resources: []string{bad}}})
		if err == nil {
			t.Errorf("resource %q accepted", bad)
		}
	}
}
