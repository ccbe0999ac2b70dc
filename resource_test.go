package injecttoken

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestCaddyfileResources: one resource keeps the JSON's "resource" (the
// golden adapt files hold it); more go to "resources", in order; the
// switch that leaves them off refresh requests takes no value.
func TestCaddyfileResources(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		oauth2 https://as.example/token {
			client_id c
			resource https://a.example/ https://b.example/
			resource urn:c
			omit_resource_on_refresh
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	o := h.OAuth2
	if o.Resource != "https://a.example/" || !slices.Equal(o.Resources, []string{"https://b.example/", "urn:c"}) || !o.OmitResourceOnRefresh {
		t.Errorf("parsed %+v", o)
	}
	for _, tc := range []struct{ input, want string }{
		{"inject_token {\n oauth2 https://as.b {\n  client_id c\n  resource\n }\n}", "oauth2 resource: expected at least one URI"},
		{"inject_token {\n oauth2 https://as.b {\n  client_id c\n  omit_resource_on_refresh yes\n }\n}", "omit_resource_on_refresh takes no value"},
	} {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error = %v, want %q", err, tc.want)
		}
	}
}

// TestReloadWithOtherResourceReplacesToken: scope, resource and audience
// are part of what a held token is for. A reload that changes the resource
// makes the next request carry a token issued for the new one, never the
// old token (which would still have an hour to live).
func TestReloadWithOtherResourceReplacesToken(t *testing.T) {
	as := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": strings.ReplaceAll("for-"+strings.Join(r.PostForm["resource"], "+")+"-"+r.PostForm.Get("audience"), ":", "."),
			"token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(as.Close)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(r.Header.Get("Authorization")))
	}))
	t.Cleanup(upstream.Close)
	dir := t.TempDir()
	config := func(options string) string {
		return siteConfig(dir, fmt.Sprintf(`inject_token {
		session resource-reload
		oauth2 %s/token {
			client_id gw
			client_secret s
			%s
		}
		dpop off
	}
	reverse_proxy %s`, as.URL, options, upstream.URL))
	}
	tester := startConfig(t, config("resource urn:a"))
	get := func() string {
		t.Helper()
		status, _, body := do(t, tester.Client, http.MethodGet, "http://localhost:9080/x", nil)
		if status != http.StatusOK {
			t.Fatalf("status %d %s", status, body)
		}
		return string(body)
	}
	if got := get(); got != "Bearer for-urn.a-" {
		t.Fatalf("first token %q", got)
	}
	for _, step := range []struct{ options, want string }{
		{"resource urn:b", "Bearer for-urn.b-"},
		{"resource urn:b\n\t\t\tparam audience x", "Bearer for-urn.b-x"},
		{"resource urn:b urn:c\n\t\t\tparam audience x", "Bearer for-urn.b+urn.c-x"},
	} {
		tester.InitServer(config(step.options), "caddyfile")
		if got := get(); got != step.want {
			t.Errorf("after reload to %q: upstream got %q, want %q", step.options, got, step.want)
		}
	}
}

// TestCaddyfileJWTBearer: grant jwt_bearer with its assertion file.
func TestCaddyfileJWTBearer(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`inject_token {
		oauth2 https://as.example/token {
			client_id c
			grant jwt_bearer
			assertion_file /var/run/secrets/tokens/gateway
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.OAuth2.Grant != "jwt_bearer" || h.OAuth2.AssertionFile != "/var/run/secrets/tokens/gateway" {
		t.Errorf("parsed %+v", h.OAuth2)
	}
}
