package injecttoken

import (
	"errors"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// setTemplateLimits copies the options the engine's Template gained for
// run-time sessions at scale.
func setTemplateLimits(tpl *tokencache.Template, opts TemplateSessions) {}

// updateRuntime swaps rt's settings in place.
func updateRuntime(rt *tokencache.Runtime, tpl tokencache.Template) error {
	return errors.New("in-place update not available")
}
