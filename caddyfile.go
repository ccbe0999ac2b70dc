package injecttoken

import (
	"slices"
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
//		oauth2 <token_endpoint | issuer_url> {
//			client_id     <id>
//			client_secret <secret>
//			client_key    <pem>
//			auth          basic|post|private_key_jwt|tls_client_auth|self_signed_tls_client_auth|none
//			client_certificate <cert> <key>
//			trusted_ca_cert <pem_file>
//			grant         client_credentials|refresh_token|jwt_bearer
//			assertion_file <path>
//			scope         <scopes...>
//			resource      <uri...>
//			omit_resource_on_refresh
//			param         <name> <value>
//		}
//		dpop ES256|EdDSA|off
//		allow_browser_origins <origin...>|*
//		seal_key          <key>
//		seal_key_previous <key...>|unsealed
//	}
//
// Exactly one of prelude and oauth2 is required. session defaults to
// "default"; refresh_before to
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
		if ok, err := h.unmarshalSealing(d); ok {
			if err != nil {
				return err
			}
			continue
		}
		if seen[sub] && sub != "strip_header" && sub != "allow_browser_origins" {
			return d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "session":
			var name string
			if !d.AllArgs(&name) {
				return d.Errf("session: expected exactly one name, e.g. 'session billing'")
			}
			if !validSessionName(name) {
				return d.Errf("invalid session name '%s': %s", name, sessionNameHint)
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
					return d.Errf("prelude '%s': %v", base, err)
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

		case "oauth2":
			o, err := parseOAuth2(d)
			if err != nil {
				return err
			}
			h.OAuth2 = o

		case "dpop":
			var v string
			if !d.AllArgs(&v) || (v != "ES256" && v != "EdDSA" && v != "off") {
				return d.Errf("dpop: expected one of ES256, EdDSA or off")
			}
			h.DPoP = v

		case "allow_browser_origins":
			origins := d.RemainingArgs()
			if len(origins) == 0 {
				return d.Errf("allow_browser_origins: expected at least one origin (scheme://host[:port]) or *")
			}
			for _, o := range origins {
				if o != "*" && !strings.Contains(o, "{") {
					if err := checkOrigin(o); err != nil {
						return d.Errf("allow_browser_origins: %v", err)
					}
				}
			}
			h.AllowBrowserOrigins = append(h.AllowBrowserOrigins, origins...)

		default:
			return d.Errf("unrecognized subdirective '%s' (expected session, prelude, oauth2, login, refresh_before, strip_header, dpop, allow_browser_origins, seal_key or seal_key_previous)", sub)
		}
	}
	switch {
	case h.Prelude == "" && h.OAuth2 == nil:
		return d.Err("inject_token: a backend is required: 'prelude <base_url>' or 'oauth2 <token_endpoint> { ... }'")
	case h.Prelude != "" && h.OAuth2 != nil:
		return d.Err("inject_token: prelude and oauth2 cannot both be set; a session has one backend")
	case h.OAuth2 != nil && h.Login != nil:
		return d.Err("inject_token: login password is for the prelude backend; oauth2 logs in with its grant")
	case h.Prelude != "" && h.DPoP == "off":
		return d.Err("inject_token: dpop off is for oauth2; Prelude always binds sessions to a DPoP key")
	}
	return nil
}

// parseOAuth2 reads an oauth2 block; the dispenser is on "oauth2".
func parseOAuth2(d *caddyfile.Dispenser) (*OAuth2, error) {
	o := &OAuth2{}
	if !d.NextArg() {
		return nil, d.Errf("oauth2: expected the token endpoint or issuer URL, e.g. 'oauth2 https://as.example.com { ... }'")
	}
	o.Endpoint = d.Val()
	if !strings.Contains(o.Endpoint, "{") {
		if err := checkBaseURL(o.Endpoint); err != nil {
			return nil, d.Errf("oauth2 '%s': %v", o.Endpoint, err)
		}
	}
	if d.NextArg() {
		return nil, d.Errf("oauth2: unexpected '%s' after the URL; options go in a block", d.Val())
	}
	one := func(name string, dst *string, allowed ...string) error {
		if *dst != "" {
			return d.Errf("oauth2 %s already specified", name)
		}
		if !d.AllArgs(dst) {
			return d.Errf("oauth2 %s: expected exactly one value", name)
		}
		if len(allowed) > 0 && !slices.Contains(allowed, *dst) {
			return d.Errf("oauth2 %s: '%s' is not one of %s", name, *dst, strings.Join(allowed, ", "))
		}
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "client_id":
			err = one(opt, &o.ClientID)
		case "client_secret":
			err = one(opt, &o.ClientSecret)
		case "client_key":
			err = one(opt, &o.ClientKey)
		case "auth":
			err = one(opt, &o.Auth, "basic", "post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth", "none")
		case "client_certificate":
			if o.ClientCertificate != "" {
				return nil, d.Errf("oauth2 client_certificate already specified")
			}
			if !d.AllArgs(&o.ClientCertificate, &o.ClientCertificateKey) {
				return nil, d.Errf("oauth2 client_certificate: expected 'client_certificate <cert_file> <key_file>'")
			}
		case "trusted_ca_cert":
			err = one(opt, &o.TrustedCACert)
		case "grant":
			err = one(opt, &o.Grant, "client_credentials", "refresh_token", "jwt_bearer")
		case "assertion_file":
			err = one(opt, &o.AssertionFile)
		case "resource":
			// One value keeps the JSON's "resource"; more go to
			// "resources".
			uris := d.RemainingArgs()
			if len(uris) == 0 {
				return nil, d.Errf("oauth2 resource: expected at least one URI")
			}
			if o.Resource == "" {
				o.Resource, uris = uris[0], uris[1:]
			}
			o.Resources = append(o.Resources, uris...)
		case "omit_resource_on_refresh":
			if d.NextArg() {
				return nil, d.Errf("oauth2 omit_resource_on_refresh takes no value")
			}
			o.OmitResourceOnRefresh = true
		case "scope":
			scopes := d.RemainingArgs()
			if len(scopes) == 0 {
				return nil, d.Errf("oauth2 scope: expected at least one scope")
			}
			o.Scopes = append(o.Scopes, scopes...)
		case "param":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return nil, d.Errf("oauth2 param: expected 'param <name> <value>'")
			}
			if o.Params == nil {
				o.Params = map[string]string{}
			}
			o.Params[name] = value
		default:
			return nil, d.Errf("oauth2: unrecognized option '%s' (expected client_id, client_secret, client_key, auth, client_certificate, trusted_ca_cert, grant, assertion_file, scope, resource, omit_resource_on_refresh or param)", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if o.ClientID == "" {
		return nil, d.Errf("oauth2: client_id is required")
	}
	return o, nil
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
