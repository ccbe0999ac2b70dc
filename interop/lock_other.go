//go:build !unix

package interop

// lockFile is a no-op where flock is unavailable: concurrent test processes
// may then race on npm ci, so pre-install with "npm ci" there.
func lockFile(string) (func(), error) { return func() {}, nil }
