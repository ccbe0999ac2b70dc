package injecttoken

import (
	"bytes"
	"errors"
	"github.com/tokenwarden/caddy-inject-token/adminapi"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Fuzz targets for what an operator (a Caddyfile) and an admin API client
// feed this package. Seeds live in testdata/fuzz/<target>; CI runs each
// target for a few seconds (.ci/run).

// maxFuzzConfig bounds a fuzzed Caddyfile: real ones are small, and the
// parsers' cost grows with the input, not with anything hidden in it.
const maxFuzzConfig = 4 << 10

// fuzzTokens tokenizes input like a Caddyfile; ok is false for input the
// lexer itself refuses (Caddy's business, not ours).
func fuzzTokens(input string) ([]caddyfile.Token, bool) {
	if len(input) > maxFuzzConfig {
		return nil, false
	}
	tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
	return tokens, err == nil && len(tokens) > 0
}

// assertLocated fails unless err says where in the Caddyfile it is.
func assertLocated(t *testing.T, err error) {
	t.Helper()
	if err.Error() == "" || !strings.Contains(err.Error(), ", at Caddyfile:") {
		t.Fatalf("Caddyfile error without a location: %q", err)
	}
}

// FuzzHandlerCaddyfile: the inject_token directive (and global option)
// either parses into a
// handler whose provision-free validation (placeholder resolution, URL
// checks, building the backend client) gives a clear answer, or fails with
// an error that names its line. Never a panic.
func FuzzHandlerCaddyfile(f *testing.F) {
	f.Fuzz(func(t *testing.T, input string) {
		tokens, ok := fuzzTokens(input)
		if !ok {
			return
		}
		// The same text as the inject_token global option.
		if _, err := parseGlobalOption(caddyfile.NewDispenser(slices.Clone(tokens)), nil); err != nil {
			assertLocated(t, err)
		}
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			assertLocated(t, err)
			return
		}
		// {file.*} reads whatever path the fuzzer names (devices, FIFOs):
		// that is the operator's own choice in a real config.
		if strings.Contains(input, "{file.") {
			return
		}
		if h.Session == "" {
			h.Session = DefaultSession
		}
		if !validSessionName(h.Session) {
			t.Fatalf("parser accepted session name %q", h.Session)
		}
		if _, err := h.resolve(); err != nil && err.Error() == "" {
			t.Fatal("empty validation error")
		}
		if _, err := h.Sealing.sealer(caddy.Context{}, caddy.NewReplacer(), nil); err != nil && err.Error() == "" {
			t.Fatal("empty seal key error")
		}
	})
}

// FuzzTransportCaddyfile: transport inject_token parses (its own options
// and every http transport option) into a transport whose own validation
// gives a clear answer, or fails with an error that names its line.
func FuzzTransportCaddyfile(f *testing.F) {
	f.Fuzz(func(t *testing.T, input string) {
		tokens, ok := fuzzTokens(input)
		if !ok {
			return
		}
		tr := new(Transport)
		if err := tr.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			if err.Error() == "" {
				t.Fatal("empty parse error")
			}
			return
		}
		if err := tr.validate(); err != nil && err.Error() == "" {
			t.Fatal("empty validation error")
		}
	})
}

// FuzzAdminRequest: the admin API's request decoding — routing by path and
// method, the strict JSON body decoder for each body shape the handlers
// read, and the limit/offset query integers — answers every bad request
// with a client error that has a status and a message.
//
// The body shapes are the admin API's wire types (package adminapi), the
// same the handlers decode.
func FuzzAdminRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		if len(body) > 2*maxAdminBody {
			return
		}
		req, err := http.NewRequest(method, "http://localhost:2019/", bytes.NewReader(body))
		if err != nil {
			return
		}
		req.URL.Path, req.URL.RawQuery, _ = strings.Cut(target, "?")
		// No session is live in the fuzz workers, so routing ends in a
		// listing (nil error) or a 4xx before any handler runs.
		if _, err := dispatch(req, strings.TrimPrefix(req.URL.Path, "/inject_token"), "fuzz"); err != nil && !isClientError(err) {
			t.Fatalf("dispatch(%s %q) = %v, want a 4xx", method, target, err)
		}
		for _, v := range []any{
			&adminapi.PasswordLogin{}, &adminapi.OTPStart{}, &adminapi.OTPCheck{},
			&adminapi.RefreshTokenLogin{}, &adminapi.Revoke{},
		} {
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
			err := decodeBody(r, v)
			if err == nil {
				continue
			}
			if !isClientError(err) {
				t.Fatalf("decodeBody: %v, want a 4xx", err)
			}
		}
		q := req.URL.Query()
		for _, name := range []string{"limit", "offset"} {
			if _, err := queryInt(q.Get(name), name); err != nil && !isClientError(err) {
				t.Fatalf("queryInt(%q): %v", q.Get(name), err)
			}
		}
	})
}

func isClientError(err error) bool {
	var oe *opError
	return errors.As(err, &oe) && oe.status >= 400 && oe.status < 500 && oe.msg != ""
}
