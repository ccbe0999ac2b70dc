package injecttoken

import (
	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the inject_token app. It needs no configuration: every
// inject_token handler loads it, and Caddy starts it only when a config
// really runs (never for `caddy validate` or `caddy adapt`). Starting it
// starts the sessions' background refreshers, so validating a config never
// logs in or refreshes.
type App struct{}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "inject_token",
		New: func() caddy.Module { return new(App) },
	}
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
var _ caddy.App = (*App)(nil)
