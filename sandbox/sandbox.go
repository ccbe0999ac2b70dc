package sandbox

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// Defaults that tests and the demo rely on.
const (
	// DefaultAccessTokenTTL matches the ≈60 s lifetime observed in production.
	DefaultAccessTokenTTL = 60 * time.Second
	// DefaultOTPCode is the code every OTP verification expects.
	DefaultOTPCode = "123456"
	// DemoEmail and DemoPassword are the seeded password user.
	DemoEmail    = "demo@example.com"
	DemoPassword = "demo-password"

	// sessionLifetime is the absolute refresh-token expiry; long enough that
	// no test meets it by accident.
	sessionLifetime = 30 * 24 * time.Hour
	// challengeLifetime and verificationLifetime bound the login steps.
	challengeLifetime    = 5 * time.Minute
	verificationLifetime = 10 * time.Minute
	// maxBody bounds every request body: nothing legitimate comes close.
	maxBody = 64 << 10
)

// Options configure a Sandbox. The zero value is usable.
type Options struct {
	// AccessTokenTTL is the access-token lifetime; 0 means 60 s. Values
	// down to 1 s are allowed so tests can reach expiry quickly.
	AccessTokenTTL time.Duration
	// RequireNonce turns on nonce mode: every DPoP proof must carry the
	// current (or previous) server nonce.
	RequireNonce bool
	// AllowedOrigins are the origins (scheme://host[:port]) of pages that
	// may call the sandbox cross-origin, as the web SDK does from the app's
	// own site; "*" allows any. Others get no CORS headers.
	AllowedOrigins []string
	// StepUpGrantedFor is how long a step-up scope stays in the session's
	// access tokens once granted (the step-up config's granted_for); 0
	// means 12 h, the docs' example of 43200 s.
	StepUpGrantedFor time.Duration
	// Now is the sandbox's clock (token times, DPoP iat window, Date
	// header); nil means time.Now. AdvanceClock shifts it further.
	Now func() time.Time
}

// Sandbox is a strict in-memory stand-in for the Prelude Auth frontend
// API. It implements http.Handler and is safe for concurrent use.
type Sandbox struct {
	clock    func() time.Time
	offset   atomic.Int64 // AdvanceClock, nanoseconds
	verifier *dpop.Verifier

	signKey ed25519.PrivateKey
	kid     string
	signer  jose.Signer
	jwks    jose.JSONWebKeySet

	routes map[string]route

	// mu guards everything below: the model is small, so one lock keeps
	// token spending, reuse detection and revocation trivially atomic.
	mu            sync.Mutex
	ttl           time.Duration
	requireNonce  bool
	nonce         [2]string // current, previous
	users         map[string]*user
	userByIdent   map[string]*user // identifier value → user
	verifications map[string]*verification
	challenges    map[string]*challenge // jti → state
	stepUps       map[string]*stepUp    // challenge_id → state
	grantedFor    time.Duration
	sessions      map[string]*session
	refreshTokens map[string]*session // every token ever issued, spent ones too
	lastOTP       map[string]string
	rejections    map[string]int64
	faults        int   // FaultRefreshes
	fault         Fault //
	skipRotation  int
	dropAfter     int
	noCurrentOTP  bool
	origins       map[string]bool // SetAllowedOrigins
	requests      []Request
	latency       time.Duration

	refreshCalls, refreshSuccesses, maxInFlight, inFlight atomic.Int64
	reuseEvents, logins, revokes                          atomic.Int64
}

type user struct {
	id       string
	email    string
	password string
}

type verification struct {
	user      *user
	code      string
	expires   time.Time
	viaCookie bool    // current flow (cookie); else documented (X-Verification-Token)
	stepUp    *stepUp // the step-up challenge this OTP verifies; nil for a login
}

// challenge tracks single use; expiry lives in the token's exp.
type challenge struct {
	user *user
	used bool
}

type session struct {
	id         string
	user       *user
	jkt        string // the DPoP key pinned at finalize
	current    string // the one refresh token that may still be spent
	createdAt  time.Time
	lastSeenAt time.Time
	expiresAt  time.Time
	revoked    bool
	device     deviceInfo
	scopes     map[string]time.Time // granted step-up scope → until
}

// New returns a Sandbox with a fresh signing key and the demo user.
func New(opts Options) (*Sandbox, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sandbox: generating signing key: %w", err)
	}
	s := &Sandbox{
		clock:         opts.Now,
		signKey:       priv,
		requireNonce:  opts.RequireNonce,
		users:         make(map[string]*user),
		userByIdent:   make(map[string]*user),
		verifications: make(map[string]*verification),
		challenges:    make(map[string]*challenge),
		stepUps:       make(map[string]*stepUp),
		sessions:      make(map[string]*session),
		refreshTokens: make(map[string]*session),
		lastOTP:       make(map[string]string),
		rejections:    make(map[string]int64),
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	s.SetAccessTokenTTL(opts.AccessTokenTTL)
	s.SetStepUpGrantedFor(opts.StepUpGrantedFor)
	s.SetAllowedOrigins(opts.AllowedOrigins)
	if err := s.initSigning(); err != nil {
		return nil, err
	}
	s.verifier = dpop.NewVerifier(0)
	s.verifier.Now = s.now
	s.nonce[0] = randomToken()
	s.routes = s.routeTable()
	s.AddUser(DemoEmail, DemoPassword)
	return s, nil
}

func (s *Sandbox) now() time.Time {
	return s.clock().Add(time.Duration(s.offset.Load()))
}

// Stats is a snapshot of what the sandbox has seen, for test assertions.
type Stats struct {
	// RefreshCalls counts every /refresh request; RefreshSuccesses those
	// that rotated the token (DropAfterRotate ones included: the server
	// side succeeded).
	RefreshCalls, RefreshSuccesses int64
	// MaxRefreshInFlight is the most /refresh handlers that ever ran at
	// once, injected latency included: >1 means a client failed to
	// coalesce concurrent refreshes.
	MaxRefreshInFlight int64
	// ReuseEvents counts spent refresh tokens presented again (each one
	// revoked its session).
	ReuseEvents int64
	// Logins counts successful finalize calls; Revokes successful /revoke
	// (logout) calls.
	Logins, Revokes int64
	// Rejections counts refused requests by reason label (see doc.go). A
	// nonce challenge counts under "use_dpop_nonce" and under the dpop
	// reason that caused it.
	Rejections map[string]int64
}

// Stats returns a snapshot of the counters.
func (s *Sandbox) Stats() Stats {
	s.mu.Lock()
	rej := maps.Clone(s.rejections)
	s.mu.Unlock()
	return Stats{
		RefreshCalls:       s.refreshCalls.Load(),
		RefreshSuccesses:   s.refreshSuccesses.Load(),
		MaxRefreshInFlight: s.maxInFlight.Load(),
		ReuseEvents:        s.reuseEvents.Load(),
		Logins:             s.logins.Load(),
		Revokes:            s.revokes.Load(),
		Rejections:         rej,
	}
}

// SetAccessTokenTTL changes the lifetime of access tokens issued from now
// on; d ≤ 0 restores the 60 s default.
func (s *Sandbox) SetAccessTokenTTL(d time.Duration) {
	if d <= 0 {
		d = DefaultAccessTokenTTL
	}
	locked(&s.mu, &s.ttl, d)
}

// SetStepUpGrantedFor changes how long step-up scopes granted from now on
// last; d ≤ 0 restores the 12 h default.
func (s *Sandbox) SetStepUpGrantedFor(d time.Duration) {
	if d <= 0 {
		d = DefaultStepUpGrantedFor
	}
	locked(&s.mu, &s.grantedFor, d)
}

// SetRequireNonce turns nonce mode on or off.
func (s *Sandbox) SetRequireNonce(on bool) {
	locked(&s.mu, &s.requireNonce, on)
}

// SetRefreshLatency delays every /refresh by d while it counts as in
// flight, which widens the window in which uncoalesced refreshes overlap.
func (s *Sandbox) SetRefreshLatency(d time.Duration) {
	locked(&s.mu, &s.latency, d)
}

// DropAfterRotate makes the next n successful refreshes rotate the token
// and then drop the connection unanswered, so the client never learns the
// new token: the outcome-unknown case a client must survive.
func (s *Sandbox) DropAfterRotate(n int) {
	locked(&s.mu, &s.dropAfter, n)
}

// DisableCurrentOTPLogin makes the current OTP login paths
// (/v1/session/login/otp…) answer 404, as a server that only has the
// documented flow would, so clients can be seen falling back.
func (s *Sandbox) DisableCurrentOTPLogin(off bool) {
	locked(&s.mu, &s.noCurrentOTP, off)
}

func (s *Sandbox) currentOTPOff() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.noCurrentOTP
}

// AdvanceClock moves the sandbox clock forward by d, so a test can expire
// access tokens without sleeping. DPoP proofs are judged by the same clock;
// clients that correct for skew from the Date header keep working.
func (s *Sandbox) AdvanceClock(d time.Duration) {
	s.offset.Add(int64(d))
}

// locked sets one knob under mu.
func locked[T any](mu *sync.Mutex, p *T, v T) {
	mu.Lock()
	*p = v
	mu.Unlock()
}

// RevokeSession ends a session server-side, as an admin or another device
// would. It reports whether an active session was revoked.
func (s *Sandbox) RevokeSession(sid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[sid]
	if !ok || sess.revoked {
		return false
	}
	sess.revoked = true
	return true
}

// AddUser creates a password user, or resets the password of an existing
// one, and returns its id.
func (s *Sandbox) AddUser(email, password string) (userID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userFor(normalizeIdentifier(email))
	u.email = normalizeIdentifier(email)
	u.password = password
	return u.id
}

// LastOTP returns the code most recently sent to identifier (an email
// address or phone number), or "" if none was sent.
func (s *Sandbox) LastOTP(identifier string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastOTP[normalizeIdentifier(identifier)]
}

// userFor returns the user owning ident, creating it on first sight the way
// OTP login does. Callers hold mu.
func (s *Sandbox) userFor(ident string) *user {
	if u, ok := s.userByIdent[ident]; ok {
		return u
	}
	u := &user{id: "usr_" + randomID()}
	s.users[u.id] = u
	s.userByIdent[ident] = u
	return u
}

// ServeHTTP answers the sandbox routes and a 404 envelope for anything else.
func (s *Sandbox) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.serve(w, r) {
		s.writeError(w, errNotFound("no such route"))
	}
}

// serve answers r if its path is a sandbox route and reports whether it did,
// so the Caddy handler can pass other paths on.
func (s *Sandbox) serve(w http.ResponseWriter, r *http.Request) bool {
	rt, ok := s.routes[r.URL.Path]
	if !ok || (s.currentOTPOff() && strings.HasPrefix(r.URL.Path, "/v1/session/login/otp")) {
		// Inside the API's own prefix a wrong path is a client bug worth a
		// loud 404; elsewhere it may belong to a neighbouring Caddy handler.
		if !strings.HasPrefix(r.URL.Path, "/v1/session/") {
			return false
		}
		s.record(r)
		s.writeError(w, errNotFound("no such route"))
		return true
	}
	s.record(r)
	// Clients derive clock skew from Date, so it must follow the sandbox
	// clock rather than the wall clock net/http would use.
	w.Header().Set("Date", s.now().UTC().Format(http.TimeFormat))
	if s.cors(w, r, rt) {
		return true
	}
	if r.Method != rt.method {
		w.Header().Set("Allow", rt.method)
		s.writeError(w, apiErr(http.StatusMethodNotAllowed, "method_not_allowed", "use "+rt.method))
		return true
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := rt.handle(w, r); err != nil {
		s.writeError(w, err)
	}
	return true
}

type route struct {
	method string
	handle func(http.ResponseWriter, *http.Request) *apiError
}

func (s *Sandbox) routeTable() map[string]route {
	post := func(h func(http.ResponseWriter, *http.Request) *apiError) route { return route{http.MethodPost, h} }
	get := func(h func(http.ResponseWriter, *http.Request) *apiError) route { return route{http.MethodGet, h} }
	return map[string]route{
		"/v1/session/login/otp":            post(s.handleLoginOTP),
		"/v1/session/login/otp/check":      post(s.handleLoginOTPCheck),
		"/v1/session/login/otp/retry":      post(s.handleLoginOTPRetry),
		"/v1/session/otp":                  post(s.handleOTP),
		"/v1/session/otp/check":            post(s.handleOTPCheck),
		"/v1/session/otp/retry":            post(s.handleOTPRetry),
		"/v1/session/login/email/password": post(s.handlePassword),
		"/v1/session/login/finalize":       post(s.handleFinalize),
		"/v1/session/refresh":              post(s.handleRefresh),
		"/v1/session/revoke":               post(s.handleRevoke),
		"/v1/session/me/list":              get(s.handleMeList),
		"/v1/session/me/revoke":            post(s.handleMeRevoke),
		"/v1/session/stepup/request":       post(s.handleStepUpRequest),
		"/v1/session/stepup/continue":      post(s.handleStepUpContinue),
		"/.well-known/jwks.json":           get(s.handleJWKS),
		"/whoami":                          get(s.handleWhoami),
	}
}
