package tokencache

import (
	"crypto"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Factory builds a backend from its settings: a JSON object whose shape the
// backend defines, with every placeholder already resolved, and env, what
// the process hands every backend besides text. It does no network I/O.
// Factories are the one way backends are constructed.
type Factory func(settings json.RawMessage, env Env) (Backend, error)

// Env is what a backend gets from the process that is not configuration
// text. Every field is optional.
type Env struct {
	// Nonces remembers the token server's DPoP nonces (and reports the
	// first one refused for its size); nil: the backend's own store.
	Nonces *dpop.NonceStore
	// ClientKey signs client assertions when the key never leaves its
	// keeper (an HSM): it replaces any key in the settings.
	ClientKey crypto.Signer
}

var registry struct {
	sync.RWMutex
	m map[string]Factory
}

// Register makes a backend available under name; a backend package calls
// it once, from init. It panics when name is taken: two backends under one
// name is a build mistake.
func Register(name string, f Factory) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[name]; dup {
		panic("tokencache: backend " + name + " registered twice")
	}
	if registry.m == nil {
		registry.m = map[string]Factory{}
	}
	registry.m[name] = f
}

// NewBackend builds the backend registered as name from its settings.
func NewBackend(name string, settings json.RawMessage, env Env) (Backend, error) {
	registry.RLock()
	f := registry.m[name]
	registry.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("unknown backend %q (registered: %v)", name, Backends())
	}
	return f(settings, env)
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	registry.RLock()
	defer registry.RUnlock()
	names := make([]string, 0, len(registry.m))
	for n := range registry.m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
