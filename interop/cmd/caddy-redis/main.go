// Command caddy-redis is the Caddy the drills in interop/drills run
// several processes of on one Redis: cmd/caddy's modules, the Redis
// storage module users deploy (storage inject_token_redis, package
// redisstorage) and the inject-token command. It is not a supported build.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tokenwarden/caddy-inject-token"
	_ "github.com/tokenwarden/caddy-inject-token/cli"
	_ "github.com/tokenwarden/caddy-inject-token/redisstorage"
	_ "github.com/tokenwarden/caddy-inject-token/sandbox"
)

func main() {
	caddycmd.Main()
}
