package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// idleBackend is a token server that is never reached: the sessions of
// the memory benchmark hold valid tokens and are only read.
type idleBackend struct{}

var errIdle = &Failure{Class: ClassDidNotAct, Message: "benchmark backend"}

func (idleBackend) Refresh(context.Context, *dpop.Key, string) (*Grant, error) { return nil, errIdle }
func (idleBackend) Revoke(context.Context, *dpop.Key, string) error            { return errIdle }
func (idleBackend) AutoLogin() LoginFunc                                       { return nil }

// jwtFixture is a distinct unsigned-looking JWT of about size bytes with
// the claims a Prelude or OAuth access token carries.
func jwtFixture(size int, i int) string {
	enc := base64.RawURLEncoding
	head := enc.EncodeToString([]byte(`{"alg":"ES256","typ":"at+jwt","kid":"k1"}`))
	sig := make([]byte, 64)
	_, _ = rand.Read(sig)
	claims := map[string]any{
		"iss": "https://auth.example.com", "sub": fmt.Sprintf("usr_%012d", i), "sid": fmt.Sprintf("ses_%012d", i),
		"aud": "https://api.example.com", "scope": "openid profile email", "iat": 1796600000, "exp": 1796603600,
		"jti": strconv.Itoa(i), "cnf": map[string]any{"jkt": strings.Repeat("x", 43)},
	}
	body, _ := json.Marshal(claims)
	tok := head + "." + enc.EncodeToString(body) + "." + enc.EncodeToString(sig)
	if pad := size - len(tok); pad > 0 {
		claims["ext"] = strings.Repeat("p", pad*3/4)
		body, _ = json.Marshal(claims)
		tok = head + "." + enc.EncodeToString(body) + "." + enc.EncodeToString(sig)
	}
	return tok
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkRuntimeSessionMemory loads stored run-time sessions (DPoP-bound,
// each with its own P-256 key and a 1 KB JWT) into one Runtime, uses each
// once, and reports the heap they hold after GC: bytes per resident
// session, with and without the token's own bytes. 10,000 sessions;
// INJECT_TOKEN_SESSIONS=100000 for the drill in docs/runtime-sessions.md.
// Run with -benchtime 1x.
func BenchmarkRuntimeSessionMemory(b *testing.B) {
	n := 10_000
	if s := os.Getenv("INJECT_TOKEN_SESSIONS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	tmpl, keys, tokenBytes := storedSessions(b, n)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		rt, err := NewRuntime(tmpl)
		if err != nil {
			b.Fatal(err)
		}
		before := heapInUse()
		for _, k := range keys {
			tok, err := rt.Token(ctx, k)
			if err != nil {
				b.Fatal(err)
			}
			if tok.Key == nil {
				b.Fatal("DPoP key not loaded")
			}
		}
		held := float64(heapInUse()) - float64(before)
		if rt.Resident() != n {
			b.Fatalf("resident = %d, want %d", rt.Resident(), n)
		}
		if f := os.Getenv("INJECT_TOKEN_HEAP_PROFILE"); f != "" {
			writeHeapProfile(b, f)
		}
		b.ReportMetric(held/float64(n), "B/session")
		b.ReportMetric((held-float64(tokenBytes))/float64(n), "B/session-excl-token")
		rt.Close()
	}
}

// The fixture really is a 1 KB JWT the engine decodes.
func TestJWTFixture(t *testing.T) {
	tok := jwtFixture(1024, 7)
	if len(tok) < 1000 || len(tok) > 1050 {
		t.Fatalf("fixture is %d bytes", len(tok))
	}
	if _, claims := decodeJWT(tok); claims["sub"] != "usr_000000000007" {
		t.Fatalf("claims = %v", claims)
	}
}

// writeHeapProfile writes the heap in use now to file, to see what a
// resident session is made of (go tool pprof -sample_index=inuse_space).
func writeHeapProfile(b *testing.B, file string) {
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// storedSessions stores n logged-in run-time sessions of one template
// (each with its own P-256 key and a 1 KB JWT) in file storage in memory,
// and returns the template, their keys and the bytes of their tokens.
func storedSessions(b *testing.B, n int) (Template, []string, int) {
	dir, err := os.MkdirTemp("/dev/shm", "tokencache-bench")
	if err != nil {
		dir = b.TempDir()
	} else {
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	storage := &certmagic.FileStorage{Path: dir}
	tmpl := Template{Name: "users", Secret: []byte("benchmark-secret-0123456789"), Storage: storage,
		Backend: idleBackend{}, MaxResident: n}
	ctx := context.Background()
	now := time.Now()
	keys := make([]string, n)
	var tokenBytes int
	for i := range n {
		keys[i] = fmt.Sprintf("user%07d@example.com", i)
		st := store{s: storage, sub: tmpl.sub(keys[i]), now: time.Now}
		k, err := dpop.GenerateKey("")
		if err != nil {
			b.Fatal(err)
		}
		if err := st.saveKey(ctx, k); err != nil {
			b.Fatal(err)
		}
		jwt := jwtFixture(1024, i)
		tokenBytes += len(jwt)
		rec := &record{State: StateActive, KeyThumbprint: k.Thumbprint(), RefreshToken: "rt_" + randomID(),
			AccessToken: jwt, TokenType: "DPoP", IssuedAt: now, Expiry: now.Add(time.Hour),
			DeviceID: newDeviceID(), Key: keys[i], Generation: 1, Writer: randomID(), Format: recordFormat}
		if err := st.save(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
	return tmpl, keys, tokenBytes
}

// BenchmarkRuntimeToken is the engine's share of the hot path: a token
// for one of 10,000 resident sessions in rotation (lookup by key, LRU
// touch, use noted) against the one-session baseline (Cache.Token), in the
// same run.
func BenchmarkRuntimeToken(b *testing.B) {
	const n = 10_000
	tmpl, keys, _ := storedSessions(b, n)
	ctx := context.Background()
	rt, err := NewRuntime(tmpl)
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	for _, k := range keys {
		if _, err := rt.Token(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
	// A named session's cache over a stored session: no scheduler hooks.
	named, err := New(Config{Name: "named", Storage: tmpl.Storage, Backend: idleBackend{}, sub: tmpl.sub(keys[1])})
	if err != nil {
		b.Fatal(err)
	}
	defer named.Close()
	b.Run("named-session", func(b *testing.B) {
		for b.Loop() {
			if _, err := named.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	c, _ := rt.Session(keys[0])
	b.Run("one-runtime-session", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("10000-keys", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := rt.Token(ctx, keys[i%n]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
