package sandbox

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The prelude_sandbox module's persistence (the `persist` option): users,
// sessions with their refresh tokens, and the signing key are kept in
// Caddy's storage under storagePrefix, so a restarted demo still knows the
// gateway's session (same user, same sid, no new login). Pending logins,
// nonces and counters are not kept. It is for demos: the stored refresh
// tokens and passwords are in the clear.

// storagePrefix is the sandbox's own corner of Caddy's storage.
const storagePrefix = "prelude_sandbox/"

// persistVersion is the stored format; another version is ignored.
const persistVersion = 1

type persistedState struct {
	Version    int                `json:"version"`
	SigningKey []byte             `json:"signing_key"` // ed25519 seed
	Users      []persistedUser    `json:"users"`
	Idents     map[string]string  `json:"identifiers"` // identifier → user id
	Sessions   []persistedSession `json:"sessions"`
}

type persistedUser struct {
	ID       string `json:"id"`
	Email    string `json:"email,omitempty"`
	Password string `json:"password,omitempty"`
}

type persistedSession struct {
	ID         string     `json:"id"`
	UserID     string     `json:"user_id"`
	JKT        string     `json:"jkt"`
	Current    string     `json:"current"`
	Spent      []string   `json:"spent,omitempty"` // earlier refresh tokens: reuse is still detected
	CreatedAt  time.Time  `json:"created_at"`
	LastSeenAt time.Time  `json:"last_seen_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	Revoked    bool       `json:"revoked,omitempty"`
	Device     deviceInfo `json:"device"`
}

// exportState returns the durable part of the sandbox's state.
func (s *Sandbox) exportState() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := persistedState{Version: persistVersion, SigningKey: s.signKey.Seed(), Idents: map[string]string{}}
	for _, u := range s.users {
		st.Users = append(st.Users, persistedUser{ID: u.id, Email: u.email, Password: u.password})
	}
	for ident, u := range s.userByIdent {
		st.Idents[ident] = u.id
	}
	spent := map[*session][]string{}
	for tok, sess := range s.refreshTokens {
		if tok != sess.current {
			spent[sess] = append(spent[sess], tok)
		}
	}
	for _, sess := range s.sessions {
		st.Sessions = append(st.Sessions, persistedSession{ID: sess.id, UserID: sess.user.id, JKT: sess.jkt,
			Current: sess.current, Spent: spent[sess], CreatedAt: sess.createdAt, LastSeenAt: sess.lastSeenAt,
			ExpiresAt: sess.expiresAt, Revoked: sess.revoked, Device: sess.device})
	}
	return json.Marshal(st)
}

// importState replaces users, sessions and the signing key with stored
// ones.
func (s *Sandbox) importState(data []byte) error {
	var st persistedState
	if err := json.Unmarshal(data, &st); err != nil {
		return err
	}
	if st.Version != persistVersion || len(st.SigningKey) != ed25519.SeedSize {
		return fmt.Errorf("unsupported stored state (version %d)", st.Version)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signKey = ed25519.NewKeyFromSeed(st.SigningKey)
	if err := s.initSigning(); err != nil {
		return err
	}
	s.users, s.userByIdent = map[string]*user{}, map[string]*user{}
	s.sessions, s.refreshTokens = map[string]*session{}, map[string]*session{}
	for _, pu := range st.Users {
		s.users[pu.ID] = &user{id: pu.ID, email: pu.Email, password: pu.Password}
	}
	for ident, id := range st.Idents {
		if u := s.users[id]; u != nil {
			s.userByIdent[ident] = u
		}
	}
	for _, ps := range st.Sessions {
		u := s.users[ps.UserID]
		if u == nil {
			continue
		}
		sess := &session{id: ps.ID, user: u, jkt: ps.JKT, current: ps.Current, createdAt: ps.CreatedAt,
			lastSeenAt: ps.LastSeenAt, expiresAt: ps.ExpiresAt, revoked: ps.Revoked, device: ps.Device}
		s.sessions[sess.id] = sess
		for _, tok := range append(ps.Spent, ps.Current) {
			if tok != "" {
				s.refreshTokens[tok] = sess
			}
		}
	}
	return nil
}

// persister saves one sandbox's state to Caddy's storage.
type persister struct {
	mu      sync.Mutex // one save at a time, so the last one is the newest
	storage certmagic.Storage
	key     string
	logger  *zap.Logger
}

func newPersister(ctx caddy.Context, name string, logger *zap.Logger) *persister {
	return &persister{storage: ctx.Storage(), key: storagePrefix + name + ".json", logger: logger}
}

// restore loads the stored state into sb, if there is one.
func (p *persister) restore(ctx caddy.Context, sb *Sandbox) error {
	data, err := p.storage.Load(ctx, p.key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("prelude_sandbox: loading %s: %w", p.key, err)
	}
	if err := sb.importState(data); err != nil {
		p.logger.Warn("ignoring stored sandbox state", zap.String("key", p.key), zap.Error(err))
		return nil
	}
	p.logger.Info("sandbox state restored", zap.String("key", p.key))
	return nil
}

// save stores sb's state after a request that may have changed it.
func (p *persister) save(r *http.Request, sb *Sandbox) {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	data, err := sb.exportState()
	if err == nil {
		err = p.storage.Store(r.Context(), p.key, data)
	}
	if err != nil {
		p.logger.Error("saving sandbox state", zap.String("key", p.key), zap.Error(err))
	}
}
