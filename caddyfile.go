package injecttoken

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
//		template       <name>          # instead of session: one session per user, made at run time
//		key            <placeholder>   # with template: the request's session key
//		max_resident   <n>
//		idle_timeout   <duration>
//		retention      <duration>
//		use_window     <duration>
//		max_refreshing <n>
//		per_user {                     # with template: the gateway logs each browser user in (docs/per-user.md)
//			path <path>  idle_timeout <d>  max_lifetime <d>
//			identity_header <header> <sub|email|phone|name|key>
//			throttle_account <n> <window>  throttle_address <n> <window>
//		}
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
//			grant         client_credentials|refresh_token|jwt_bearer|authorization_code
//			assertion_file <path>
//			redirect_uri  <url>                 (authorization_code)
//			authorize_param <name> <value>      (authorization_code)
//			scope         <scopes...>
//			resource      <uri...>
//			omit_resource_on_refresh
//			param         <name> <value>
//		}
//		token_exchange <token_endpoint | issuer_url> {
//			client_id, client_secret, client_key, auth, scope, resource, param  (as oauth2)
//			subject_file   <path> | subject_header <name>
//			subject_token_type | actor_token_type | requested_token_type <uri>
//			actor_file     <path>
//			verify jwks <url> | verify issuer <url> | verify audience <aud...> | verify off
//			cache_size <n>  negative_ttl <duration>  miss_rate <per second>
//		}
//		dpop ES256|EdDSA|off
//		allow_browser_origins <origin...>|*
//		seal_key          <key> | <module> { … }
//		seal_key_previous <key...>|unsealed
//	}
//
// Exactly one of prelude, oauth2 and token_exchange is required. session defaults to
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
		if seen[sub] && isTemplateOption(sub) {
			return d.Errf("%s already specified", sub)
		}
		if ok, err := h.unmarshalTemplate(d); ok {
			if err != nil {
				return err
			}
			seen[sub] = true
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

		case "token_exchange":
			t, err := parseTokenExchange(d)
			if err != nil {
				return err
			}
			h.TokenExchange = t

		case "dpop":
			var v string
			if !d.AllArgs(&v) || (v != "ES256" && v != "EdDSA" && v != "off") {
				return d.Errf("dpop: expected one of ES256, EdDSA or off")
			}
			h.DPoP = v

		case "dpop_key":
			src, err := unmarshalKeySource(d)
			if err != nil {
				return err
			}
			h.DPoPKey = src

		case "per_user":
			p, err := parsePerUser(d)
			if err != nil {
				return err
			}
			h.PerUser = p

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
			return d.Errf("unrecognized subdirective '%s' (expected session, template, key, max_resident, idle_timeout, retention, use_window, max_refreshing, per_user, prelude, oauth2, token_exchange, login, refresh_before, strip_header, dpop, dpop_key, allow_browser_origins, seal_key or seal_key_previous)", sub)
		}
	}
	switch n := btoi(h.Prelude != "") + btoi(h.OAuth2 != nil) + btoi(h.TokenExchange != nil); {
	case n == 0:
		return d.Err("inject_token: a backend is required: 'prelude <base_url>', 'oauth2 <token_endpoint> { ... }' or 'token_exchange <token_endpoint> { ... }'")
	case n > 1:
		return d.Err("inject_token: prelude, oauth2 and token_exchange cannot be combined; a session has one backend")
	case h.Prelude == "" && h.Login != nil:
		return d.Err("inject_token: login password is for the prelude backend; oauth2 and token_exchange log in with their grant")
	case h.Prelude != "" && h.DPoP == "off":
		return d.Err("inject_token: dpop off is for oauth2; Prelude always binds sessions to a DPoP key")
	}
	if err := h.TemplateSessions.check(h.Session, h.Login != nil, h.PerUser != nil); err != nil {
		return d.Errf("inject_token: %v", err)
	}
	if h.Template != "" && h.TokenExchange != nil {
		return d.Err("inject_token: token_exchange cannot be a template's backend")
	}
	return nil
}

// parseOAuth2 reads an oauth2 block; the dispenser is on "oauth2".
func parseOAuth2(d *caddyfile.Dispenser) (*OAuth2, error) {
	return parseOAuth2Block(d, "oauth2", nil)
}

// parseOAuth2Block reads a block named block with oauth2's options; extra,
// when set, is offered every other option first (it reports whether it
// took it).
func parseOAuth2Block(d *caddyfile.Dispenser, block string, extra func(opt string) (bool, error)) (*OAuth2, error) {
	o := &OAuth2{}
	if !d.NextArg() {
		return nil, d.Errf("%s: expected the token endpoint or issuer URL, e.g. '%s https://as.example.com { ... }'", block, block)
	}
	o.Endpoint = d.Val()
	if !strings.Contains(o.Endpoint, "{") {
		if err := checkBaseURL(o.Endpoint); err != nil {
			return nil, d.Errf("%s '%s': %v", block, o.Endpoint, err)
		}
	}
	if d.NextArg() {
		return nil, d.Errf("%s: unexpected '%s' after the URL; options go in a block", block, d.Val())
	}
	one := func(name string, dst *string, allowed ...string) error {
		if *dst != "" {
			return d.Errf("%s %s already specified", block, name)
		}
		if !d.AllArgs(dst) {
			return d.Errf("%s %s: expected exactly one value", block, name)
		}
		if len(allowed) > 0 && !slices.Contains(allowed, *dst) {
			return d.Errf("%s %s: '%s' is not one of %s", block, name, *dst, strings.Join(allowed, ", "))
		}
		return nil
	}
	// pair reads '<opt> <name> <value>' into *dst.
	pair := func(opt string, dst *map[string]string) error {
		var name, value string
		if !d.AllArgs(&name, &value) {
			return d.Errf("%s %s: expected '%s <name> <value>'", block, opt, opt)
		}
		if *dst == nil {
			*dst = map[string]string{}
		}
		(*dst)[name] = value
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		opt := d.Val()
		if extra != nil {
			ok, err := extra(opt)
			if err != nil {
				return nil, err
			}
			if ok {
				continue
			}
		}
		switch opt {
		case "client_id":
			err = one(opt, &o.ClientID)
		case "client_secret":
			err = one(opt, &o.ClientSecret)
		case "client_key":
			err = one(opt, &o.ClientKey)
		case "client_key_source":
			o.ClientKeySource, err = unmarshalKeySource(d)
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
			err = one(opt, &o.Grant, "client_credentials", "refresh_token", "jwt_bearer", "authorization_code")
		case "redirect_uri":
			err = one(opt, &o.RedirectURI)
		case "authorize_param":
			err = pair(opt, &o.AuthorizeParams)
		case "assertion_file":
			err = one(opt, &o.AssertionFile)
		case "resource":
			// One value keeps the JSON's "resource"; more go to
			// "resources".
			uris := d.RemainingArgs()
			if len(uris) == 0 {
				return nil, d.Errf("%s resource: expected at least one URI", block)
			}
			if o.Resource == "" {
				o.Resource, uris = uris[0], uris[1:]
			}
			o.Resources = append(o.Resources, uris...)
		case "omit_resource_on_refresh":
			if d.NextArg() {
				return nil, d.Errf("%s omit_resource_on_refresh takes no value", block)
			}
			o.OmitResourceOnRefresh = true
		case "scope":
			scopes := d.RemainingArgs()
			if len(scopes) == 0 {
				return nil, d.Errf("%s scope: expected at least one scope", block)
			}
			o.Scopes = append(o.Scopes, scopes...)
		case "param":
			err = pair(opt, &o.Params)
		default:
			if extra != nil {
				return nil, d.Errf("%s: unrecognized option '%s'", block, opt)
			}
			return nil, d.Errf("oauth2: unrecognized option '%s' (expected client_id, client_secret, client_key, client_key_source, auth, client_certificate, trusted_ca_cert, grant, assertion_file, redirect_uri, authorize_param, scope, resource, omit_resource_on_refresh or param)", opt)
		}
		if err != nil {
			return nil, err
		}
	}
	if o.ClientID == "" {
		return nil, d.Errf("%s: client_id is required", block)
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

// unmarshalKeySource reads `<option> <module> { … }` into the JSON of a
// module of the inject_token.dpop_keys namespace (such as pkcs11).
func unmarshalKeySource(d *caddyfile.Dispenser) (json.RawMessage, error) {
	return unmarshalModuleOption(d, "inject_token.dpop_keys")
}

// unmarshalModuleOption reads `<option> <module> { … }` into the JSON of
// a module of namespace, inlined as "source".
func unmarshalModuleOption(d *caddyfile.Dispenser, namespace string) (json.RawMessage, error) {
	opt := d.Val()
	if !d.NextArg() {
		return nil, d.Errf("%s: expected a key source module, e.g. '%s pkcs11 { … }'", opt, opt)
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, namespace+"."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(mod, "source", name, nil), nil
}
