package injecttoken

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("inject_token", parseCaddyfile)
	// Early, so the token is in place before handle/route blocks and
	// reverse_proxy run, but after basic_auth and forward_auth, which may
	// want to see the client's own Authorization header first.
	httpcaddyfile.RegisterDirectiveOrder("inject_token", httpcaddyfile.After, "request_header")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	inject_token [<matcher>] {
//		session        <name>
//		prelude        <base_url>
//		login password <email> <password>
//		refresh_before <duration>
//		strip_header   <name...>
//	}
//
// prelude is required. session defaults to "default"; refresh_before to
// 60s. strip_header may be repeated. Secrets should be given as runtime
// placeholders ({env.SVC_PASSWORD}, {file./run/secrets/pw}), which are
// resolved when the config loads and never written to the JSON config.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.Errf("inject_token takes no arguments on its line (found '%s'); configure it in a block", d.Val())
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "strip_header" {
			return d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "session":
			var name string
			if !d.AllArgs(&name) {
				return d.Errf("session: expected exactly one name, e.g. 'session billing'")
			}
			if !sessionNameRE.MatchString(name) {
				return d.Errf("invalid session name '%s': use 1-64 letters, digits, '.', '_' or '-'", name)
			}
			h.Session = name

		case "prelude":
			var base string
			if !d.AllArgs(&base) {
				return d.Errf("prelude: expected exactly one base URL, e.g. 'prelude https://acme.session.prelude.dev'")
			}
			// A placeholder is checked once it is resolved, at load time.
			if !strings.Contains(base, "{") {
				if err := checkBaseURL(base); err != nil {
					return d.Errf("prelude: %v", err)
				}
			}
			h.Prelude = base

		case "login":
			var method, email, password string
			if !d.AllArgs(&method, &email, &password) {
				return d.Errf("login: expected 'login password <email> <password>'")
			}
			if method != "password" {
				return d.Errf("login: unsupported method '%s' (expected 'login password <email> <password>')", method)
			}
			h.Login = &Login{Method: method, Email: email, Password: password}

		case "refresh_before":
			var v string
			if !d.AllArgs(&v) {
				return d.Errf("refresh_before: expected exactly one duration, e.g. 'refresh_before 60s'")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("refresh_before: invalid duration '%s': %v", v, err)
			}
			if dur <= 0 {
				return d.Errf("refresh_before: must be positive, got '%s'", v)
			}
			h.RefreshBefore = caddy.Duration(dur)

		case "strip_header":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.Errf("strip_header: expected at least one header name")
			}
			for _, n := range names {
				if !validHeaderName(n) {
					return d.Errf("strip_header: invalid header name '%s'", n)
				}
			}
			h.StripHeaders = append(h.StripHeaders, names...)

		default:
			return d.Errf("unrecognized subdirective '%s' (expected session, prelude, login, refresh_before or strip_header)", sub)
		}
	}
	if h.Prelude == "" {
		return d.Err("inject_token: the prelude subdirective (base URL of the Prelude Session API) is required")
	}
	return nil
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
