// Command caddy-bench is cmd/caddy plus bench/rawsign's bench_raw_sign
// handler, for bench/run.sh. Not for serving anything.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tokenwarden/caddy-inject-token"
	_ "github.com/tokenwarden/caddy-inject-token/interop/bench/rawsign"
)

func main() {
	caddycmd.Main()
}
