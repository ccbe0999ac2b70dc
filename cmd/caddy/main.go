// Command caddy is Caddy with the standard modules, the inject_token module
// (which brings the `caddy inject-token` command) and the prelude_sandbox
// module, so `go run ./cmd/caddy run --config Caddyfile.example` works
// without xcaddy. A production build leaves the sandbox out: see the
// README's install section (xcaddy).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tokenwarden/caddy-inject-token"
	_ "github.com/tokenwarden/caddy-inject-token/redisstorage"
	_ "github.com/tokenwarden/caddy-inject-token/sandbox"
)

func main() {
	caddycmd.Main()
}
