package tokencache

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// Factory builds a backend from its settings: a JSON object whose shape the
// backend defines, with every placeholder already resolved. It does no
// network I/O. Factories are the one way backends are constructed.
type Factory func(settings json.RawMessage) (Backend, error)

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
func NewBackend(name string, settings json.RawMessage) (Backend, error) {
	registry.RLock()
	f := registry.m[name]
	registry.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("unknown backend %q (registered: %v)", name, Backends())
	}
	return f(settings)
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
