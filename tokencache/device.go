package tokencache

import (
	"context"
	"crypto/rand"
)

// A session's device id is the random per-install identifier the Prelude
// Auth SDKs send as X-Device-Id: the gateway is one "install" per session.
// It is made once, stored in the session's record and kept across logins,
// refreshes and logouts, so the server sees one device for the session's
// whole life. It is never derived from the host: it identifies the
// session, not the machine, and says nothing about either.

type deviceIDKey struct{}

// DeviceID returns the device id the engine attached to ctx for a call to
// the token server (Backend.Refresh and Revoke, LoginFunc), or "" when ctx
// carries none. Backends that have no use for it ignore it.
func DeviceID(ctx context.Context) string {
	id, _ := ctx.Value(deviceIDKey{}).(string)
	return id
}

// WithDeviceID returns ctx carrying the session's device id, for calls to
// the token server made outside the engine on the session's behalf (an OTP
// login's first steps, listing or revoking its user's sessions).
func (c *Cache) WithDeviceID(ctx context.Context) context.Context {
	return ContextWithDeviceID(ctx, c.DeviceID())
}

// ContextWithDeviceID returns ctx carrying device id id (unchanged when id
// is ""), for a call made with a session's stored id by other means.
func ContextWithDeviceID(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, deviceIDKey{}, id)
}

// DeviceID returns the session's device id: the stored one, or, before the
// session has stored any, the one its next write will store.
func (c *Cache) DeviceID() string {
	if id := c.current().rec.DeviceID; id != "" {
		return id
	}
	return c.spareDevice
}

// deviceOf is the device id r keeps: its own, or a new one for a record
// written before device ids existed (or before any login).
func (c *Cache) deviceOf(r *record) string {
	if r != nil && r.DeviceID != "" {
		return r.DeviceID
	}
	return c.DeviceID()
}

// newDeviceID returns a random RFC 9562 version 4 UUID in lower case, the
// form the SDKs send.
func newDeviceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, v := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hex[v>>4], hex[v&0x0f])
	}
	return string(out)
}
