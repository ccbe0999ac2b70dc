package injecttoken

import (
	"github.com/caddyserver/caddy/v2"

	"github.com/tokenwarden/caddy-inject-token/seal"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the inject_token app. Every inject_token handler loads it, and
// Caddy starts it only when a config really runs (never for `caddy
// validate` or `caddy adapt`). Starting it starts the sessions' background
// refreshers, so validating a config never logs in or refreshes. Its only
// configuration is the default sealing of every session's storage (the
// inject_token global option); a handler may set its own.
type App struct {
	Sealing

	sealer *seal.Sealer
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "inject_token",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision resolves the seal keys.
func (a *App) Provision(ctx caddy.Context) error {
	var err error
	a.sealer, err = a.Sealing.sealer(ctx, caddy.NewReplacer(), nil)
	return err
}

// Start starts the background refresher of every live session.
func (App) Start() error {
	for _, s := range allSessions() {
		s.start()
	}
	return nil
}

// Stop does nothing: sessions stop when the last config using them is
// cleaned up, so a reload keeps them running.
func (App) Stop() error { return nil }

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
