// Command caddy-redis is cmd/caddy plus the test-only Redis storage
// (storage redis_test, package interop/redisstore). The drills in
// interop/drills build it to run several Caddy processes on one Redis; it
// is not a supported build.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tokenwarden/caddy-inject-token"
	_ "github.com/tokenwarden/caddy-inject-token/cli"
	_ "github.com/tokenwarden/caddy-inject-token/interop/redisstore"
	_ "github.com/tokenwarden/caddy-inject-token/sandbox"
)

func main() {
	caddycmd.Main()
}
