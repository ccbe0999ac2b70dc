package injecttoken

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/tokenwarden/caddy-inject-token/oauth"
	"github.com/tokenwarden/caddy-inject-token/seal"
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
		{"oauth2 endpoint", "{env.IT_SECRET_PART}", Handler{OAuth2: &OAuth2{Settings: oauth.Settings{Endpoint: "{env.IT_SECRET_PART}", ClientID: "gw"}}}},
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

// TestSealKeyConfig: seal keys come from placeholders, decode to 32 bytes,
// and every mistake is a clear error that never quotes a resolved key.
func TestSealKeyConfig(t *testing.T) {
	good := sealKey(t, "IT_SK_GOOD")
	t.Setenv("IT_SK_SHORT", "c2hvcnQta2V5LXZhbHVl")
	t.Setenv("IT_SK_JUNK", "not base64 at all: SECRET-JUNK")
	for _, tc := range []struct {
		name string
		s    Sealing
		want string
	}{
		{"literal", Sealing{SealKey: "c2hvcnQta2V5LXZhbHVl"}, "must be given as a placeholder"},
		{"short", Sealing{SealKey: "{env.IT_SK_SHORT}"}, "seal_key {env.IT_SK_SHORT}: seal key must be 32 bytes"},
		{"junk", Sealing{SealKey: "{env.IT_SK_JUNK}"}, "seal key is not base64"},
		{"unset", Sealing{SealKey: "{env.IT_SK_UNSET}"}, "seal_key: evaluated placeholder {env.IT_SK_UNSET} is empty"},
		{"previous alone", Sealing{SealKeyPrevious: []string{"{env.IT_SK_GOOD}"}}, "seal_key_previous without seal_key"},
		{"bad previous", Sealing{SealKey: "{env.IT_SK_GOOD}", SealKeyPrevious: []string{"{env.IT_SK_SHORT}"}}, "seal_key_previous {env.IT_SK_SHORT}"},
	} {
		_, err := tc.s.sealer(caddy.Context{}, caddy.NewReplacer(), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			continue
		}
		for _, v := range []string{"c2hvcnQta2V5LXZhbHVl", "SECRET-JUNK", "short-key-value"} {
			if strings.Contains(err.Error(), v) && tc.name != "literal" {
				t.Errorf("%s: error quotes a resolved key: %v", tc.name, err)
			}
		}
	}
	app, err := seal.New(good)
	if err != nil {
		t.Fatal(err)
	}
	if sl, err := (&Sealing{}).sealer(caddy.Context{}, caddy.NewReplacer(), app); err != nil || sl != app {
		t.Errorf("without its own key a session takes the app's: %v, %v", sl, err)
	}
	sl, err := (&Sealing{SealKey: "{env.IT_SK_GOOD}", SealKeyPrevious: []string{"unsealed"}}).sealer(caddy.Context{}, caddy.NewReplacer(), app)
	if err != nil || sl == app || !sl.AcceptPlain {
		t.Errorf("own key with unsealed: %+v, %v", sl, err)
	}
}

// TestSealKeyCaddyfile: the subdirectives and the global option parse into
// the JSON fields, and mistakes name their line.
func TestSealKeyCaddyfile(t *testing.T) {
	in := `{
	inject_token {
		seal_key {env.A}
		seal_key_previous {env.B} unsealed
	}
}
http://localhost {
	inject_token {
		prelude https://p.example
		seal_key {file./run/k}
	}
}`
	out, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"inject_token":{"seal_key":"{env.A}","seal_key_previous":["{env.B}","unsealed"]}`,
		`"handler":"inject_token","prelude":"https://p.example","seal_key":"{file./run/k}"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, out)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"{\n\tinject_token {\n\t\tseal_key\n\t}\n}\n", "seal_key: expected one key"},
		{"{\n\tinject_token {\n\t\tbogus 1\n\t}\n}\n", "unrecognized global option 'bogus'"},
		{"http://localhost {\n\tinject_token {\n\t\tprelude https://p\n\t\tseal_key {env.A}\n\t\tseal_key {env.B}\n\t}\n}\n", "seal_key already specified, at Caddyfile:5"},
		{"http://localhost {\n\tinject_token {\n\t\tprelude https://p\n\t\tseal_key_previous\n\t}\n}\n", "seal_key_previous: expected at least one key"},
		// A block after the argument names a key source module.
		{"{\n\tinject_token {\n\t\tseal_key nosuch {\n\t\t\tx 1\n\t\t}\n\t}\n}\n", "inject_token.seal_keys.nosuch"},
		{"{\n\tinject_token {\n\t\tseal_key {env.A} {env.B}\n\t}\n}\n", "seal_key: expected one key"},
	} {
		_, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(tc.in), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.want)
		}
	}
}
