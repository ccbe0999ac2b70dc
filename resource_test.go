package injecttoken

import (
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
