package injecttoken

import (
	"strings"
	"testing"
)

// TestConfigErrorsQuoteConfiguredText: a config error quotes what the
// operator wrote, never what a placeholder resolved to (it may be a secret
// or a path the config deliberately keeps out of the JSON).
func TestConfigErrorsQuoteConfiguredText(t *testing.T) {
	t.Setenv("IT_SECRET_PART", "/resolved-SECRET-value")
	for _, tc := range []struct {
		name, configured string
		h                Handler
	}{
		{"prelude scheme", "ftp://SECRETHOST{env.IT_SECRET_PART}", Handler{Prelude: "ftp://SECRETHOST{env.IT_SECRET_PART}"}},
		{"prelude query", "https://h{env.IT_SECRET_PART}?q", Handler{Prelude: "https://h{env.IT_SECRET_PART}?q"}},
		{"oauth2 endpoint", "{env.IT_SECRET_PART}", Handler{OAuth2: &OAuth2{Endpoint: "{env.IT_SECRET_PART}", ClientID: "gw"}}},
	} {
		_, err := tc.h.resolve()
		if err == nil {
			t.Fatalf("%s: resolved without error", tc.name)
		}
		if strings.Contains(err.Error(), "resolved-SECRET-value") || !strings.Contains(err.Error(), `"`+tc.configured+`"`) {
			t.Errorf("%s: error %q should quote %q and not its resolved value", tc.name, err, tc.configured)
		}
	}
}
