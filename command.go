package injecttoken

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/tokenwarden/caddy-inject-token/cli"
)

// The `caddy inject-token` command comes with the module: any build that
// includes it (xcaddy --with, or a main package importing it) has the
// command, as reverse_proxy brings `caddy reverse-proxy`.
func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "inject-token",
		Usage: cli.Usage,
		Short: cli.Short,
		Long:  cli.Long,
		CobraFunc: func(cmd *cobra.Command) {
			cli.Configure(cmd)
		},
	})
}
