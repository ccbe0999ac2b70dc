package sandbox

import (
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("prelude_sandbox", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("prelude_sandbox", httpcaddyfile.Before, "respond")
}

// registry holds the running sandboxes by name. Users, sessions and the
// signing key must outlive a config reload, or every reload would log the
// demo's clients out.
var registry = caddy.NewUsagePool()

// pooled adapts a Sandbox to the pool, which wants a Destructor; a Sandbox
// holds nothing that needs releasing.
type pooled struct{ *Sandbox }

func (pooled) Destruct() error { return nil }

// Lookup returns the sandbox a running Caddy config serves under name
// ("default" when the Caddyfile gave none), so a test driving Caddy can use
// the knobs and Stats.
func Lookup(name string) (*Sandbox, bool) {
	var found *Sandbox
	registry.Range(func(key, value any) bool {
		if key == name {
			found = value.(pooled).Sandbox
			return false
		}
		return true
	})
	return found, found != nil
}

// Handler is the http.handlers.prelude_sandbox module: it serves the
// sandbox routes and passes every other path outside /v1/session/ to the
// next handler.
type Handler struct {
	// Name selects the sandbox state to serve; handlers with the same name
	// share users, sessions and keys. Default "default".
	Name string `json:"name,omitempty"`
	// AccessTokenTTL is the access-token lifetime; at least 1s. Default 60s.
	AccessTokenTTL caddy.Duration `json:"access_token_ttl,omitempty"`
	// RequireNonce turns on DPoP nonce mode.
	RequireNonce bool `json:"require_nonce,omitempty"`
	// StepUpGrantedFor is how long a scope granted by step-up stays in the
	// session's access tokens (the step-up config's granted_for). Default
	// 12h.
	StepUpGrantedFor caddy.Duration `json:"step_up_granted_for,omitempty"`
	// Persist keeps users, sessions and the signing key in Caddy's storage
	// (under prelude_sandbox/), so a restarted demo keeps its logins.
	Persist bool `json:"persist,omitempty"`
	// AllowedOrigins are the origins (scheme://host[:port]) of web pages
	// that may call the sandbox cross-origin with credentials, as the
	// official web SDK does from the app's own site; "*" allows any. The
	// allowed origin is echoed, never a wildcard.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`
	// Users are password users to create (or whose password to reset) at
	// provisioning, besides the demo user: for demos with several users.
	Users []User `json:"users,omitempty"`

	sb       *Sandbox
	attached bool // this handler holds a pool reference to release
	logger   *zap.Logger
	persist  *persister
}

// User is a sandbox password user.
type User struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.prelude_sandbox",
		New: func() caddy.Module { return new(Handler) },
	}
}

func (h *Handler) poolKey() string {
	if h.Name == "" {
		return "default"
	}
	return h.Name
}

// Provision attaches to the named sandbox, creating it on first use. An
// existing one takes this config's settings: the newest config wins.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.Validate(); err != nil {
		return err
	}
	opts := Options{AccessTokenTTL: time.Duration(h.AccessTokenTTL), RequireNonce: h.RequireNonce, AllowedOrigins: h.AllowedOrigins,
		StepUpGrantedFor: time.Duration(h.StepUpGrantedFor)}
	if h.Persist {
		h.persist = newPersister(ctx, h.poolKey(), h.logger)
	}
	v, loaded, err := registry.LoadOrNew(h.poolKey(), func() (caddy.Destructor, error) {
		sb, err := New(opts)
		if err == nil && h.persist != nil {
			err = h.persist.restore(ctx, sb)
		}
		return pooled{sb}, err
	})
	if err != nil {
		return err
	}
	h.sb, h.attached = v.(pooled).Sandbox, true
	for _, u := range h.Users {
		h.sb.AddUser(u.Email, u.Password)
	}
	if loaded {
		h.sb.SetAccessTokenTTL(opts.AccessTokenTTL)
		h.sb.SetRequireNonce(opts.RequireNonce)
		h.sb.SetStepUpGrantedFor(opts.StepUpGrantedFor)
		h.sb.SetAllowedOrigins(opts.AllowedOrigins)
	}
	h.logger.Info("prelude sandbox ready", zap.String("name", h.poolKey()), zap.Bool("reused", loaded),
		zap.String("demo_user", DemoEmail), zap.String("otp_code", DefaultOTPCode))
	return nil
}

// Validate rejects settings the sandbox cannot honour.
func (h *Handler) Validate() error {
	for _, o := range h.AllowedOrigins {
		if u, err := url.Parse(o); o != "*" && (err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "") {
			return fmt.Errorf("prelude_sandbox: allowed_origins %q is not an origin (scheme://host[:port]) or *", o)
		}
	}
	if ttl := time.Duration(h.AccessTokenTTL); ttl != 0 && ttl < time.Second {
		return fmt.Errorf("prelude_sandbox: access_token_ttl %v is below 1s", ttl)
	}
	if d := time.Duration(h.StepUpGrantedFor); d < 0 {
		return fmt.Errorf("prelude_sandbox: step_up_granted_for %v is negative", d)
	}
	return nil
}

// Cleanup releases this config's hold on the sandbox. Provision may have
// failed before attaching, in which case there is nothing to release.
func (h *Handler) Cleanup() error {
	if !h.attached {
		return nil
	}
	// h.sb stays set: requests still draining from the old config use it.
	h.attached = false
	_, err := registry.Delete(h.poolKey())
	return err
}

// ServeHTTP serves sandbox routes and passes other paths on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.sb.serve(w, r) {
		if h.persist != nil {
			h.persist.save(r, h.sb)
		}
		return nil
	}
	return next.ServeHTTP(w, r)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	prelude_sandbox [<matcher>] {
//	    name             <name>
//	    access_token_ttl <duration>
//	    require_nonce
//	    step_up_granted_for <duration>
//	    persist
//	    allowed_origins  <origin...>
//	    user             <email> <password>   # repeatable
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("%s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "name":
			if !d.AllArgs(&h.Name) {
				return d.ArgErr()
			}
		case "access_token_ttl":
			if err := durationArg(d, &h.AccessTokenTTL); err != nil {
				return err
			}
		case "step_up_granted_for":
			if err := durationArg(d, &h.StepUpGrantedFor); err != nil {
				return err
			}
		case "require_nonce":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.RequireNonce = true
		case "allowed_origins":
			h.AllowedOrigins = d.RemainingArgs()
			if len(h.AllowedOrigins) == 0 {
				return d.ArgErr()
			}
		case "persist":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Persist = true
		case "user":
			var u User
			if !d.AllArgs(&u.Email, &u.Password) {
				return d.Errf("user: expected 'user <email> <password>'")
			}
			h.Users = append(h.Users, u)
			delete(seen, sub) // repeatable
		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	if err := h.Validate(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// durationArg reads the one duration argument of the current subdirective.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name, v := d.Val(), ""
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("invalid %s %q: %v", name, v, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(helper.Dispenser)
	return h, err
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ http.Handler                = (*Sandbox)(nil)
)
