package tokencache

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"go.uber.org/zap"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// The exactly-once protocol: a refresh token is presented at most once,
// across goroutines, reloads, restarts and instances sharing one storage.
// Every storage call of a refresh, in order (S = the session's state key,
// inject_token/<session>/state.json; C = its claims directory):
//
//	peek     Load S                    fresh token stored? adopt it, done
//	         Lock                      failure or timeout: transient, backoff
//	re-read  Load S                    failure: transient; newer format: refused
//	         pending result in memory? written first, only over the record it
//	           resolves (else dropped); an unchecked intent's claims first
//	         fresh now? adopt; logged out? log in (below) or report
//	         unresolved intent for S's refresh token? it may be spent: the
//	           session is given up (written logged out, access token kept)
//	         refresh token expired? never presented: given up the same way
//	intent   write(S: intent = hash of the refresh token) over the re-read
//	           (grants without a refresh token skip it)
//	         refused (another write came first): adopt what storage holds
//	         unknown outcome: kept in memory as "clear this intent", not presented
//	present  backend.Refresh           not acted: clear the intent; lost:
//	                                   given up; dead: given up, key dropped
//	result   write(S: the new grant) over the intent (retried ×3)
//	         refused: the grant is dropped and storage adopted; failed: kept
//	           in memory and written first next time
//	         Unlock
//
// write(next over r) is one of two, chosen by the storage:
//
//   - conditional (VersionedStorage): StoreIfVersion(S, next, version of
//     r). Refused or failed: Load S; next found (its generation and writer)
//     means it landed; r found means it did not; anything else is a fence.
//     Nothing else is needed: a refused write changes nothing. A steady
//     refresh is 6 calls: Load, Lock, Load, StoreIfVersion ×2, Unlock.
//   - claims (any other storage): List C (×3; pruned to the newest
//     claimsKept generations), Store C/<gen>.<instance> with gen above
//     every other instance's visible claim, Load S (the fence: r still
//     there?), Store S, and for an intent List C again: another instance's
//     claim at or above gen means it wrote after r was read, so the intent
//     may have overwritten its result and the session is given up
//     (contested). A failed Store S keeps its claim and is resolved by
//     Load S as above. Correct while List and Load are linearizable.
//
// Login (operator or automatic): Store the new DPoP key, backend login,
// write(S: new session) over the re-read, Delete the old key. An operator's
// Login or Logout retries a failed Load S; only a record that was read and
// cannot be decoded is replaced (keeping its version, and above the
// claims), so a storage hiccup never resets the generation.
//
// An intent found unresolved means the outcome of that presentation is
// unknown: the token is given up, never presented again.

// errFenced means storage no longer holds the record an operation read or
// wrote: another instance acted meanwhile, so the storage lock was lost.
var errFenced = errors.New("session state changed while this instance held the storage lock " +
	"(the lock was lost, e.g. after a stall longer than its lease); nothing presented or overwritten")

// contestedError means write claims show that another instance wrote the
// session after this operation read it, so this operation's intent may
// have overwritten newer state; the token it names is not presented.
type contestedError struct {
	gen, claimed int64 // this write's generation; the highest another writer claimed
}

func (e *contestedError) Error() string {
	return fmt.Sprintf("write claims show another instance wrote the session after this one read it "+
		"(generation %d claimed; this write: %d), so the refresh token is not presented", e.claimed, e.gen)
}

func (e *contestedError) Is(target error) bool { return target == errFenced }

// op is one state-changing operation (refresh, login, logout): the storage
// it pinned, its time limits and what it measured.
type op struct {
	c  *Cache
	st store // one storage for the whole operation: an intent and its outcome land in the same place
	id string
	// ctx bounds the whole operation. It is not cancelled by Close, so a
	// refresh that was sent always gets to store its rotated token.
	ctx context.Context
	// quit is cancelled by Close (and by a caller who gives up): it stops
	// waiting for the lock and anything not yet sent.
	quit  context.Context
	start time.Time
	rtt   time.Duration // token server round trips
	prev  time.Time     // expiry of the token being replaced (Event.Lead)
	// device is the X-Device-Id a refresh presents with (see device.go).
	device string
	// floor is a generation every later write of this operation goes
	// above: the highest one claimed when it stood down (see standDown).
	floor int64
	// operator marks an operator's call (Login, Logout): the admin layer
	// logs its outcome, so the engine does not log it again at INFO, and a
	// failure is the operator's answer, not a retry to schedule.
	operator bool
	// given is the DPoP key an adopted login was made with (see Adopt).
	given *dpop.Key
}

// pendingWrite is a result that could not be stored yet. next may be
// written only over over, the record it resolves.
type pendingWrite struct {
	over, next record
	// outcome is reported once next is stored; "" for a resolved intent
	// (the server did not act), after which the refresh still has to run.
	outcome string
	// recheck: over is an intent whose write claims were never checked
	// (its store or listing failed); they are checked before next clears
	// it, since it may have overwritten newer state.
	recheck bool
}

func (c *Cache) newOp(ctx, quit context.Context) *op {
	return &op{c: c, st: c.store(), id: randomID(), ctx: ctx, quit: quit, start: c.clock.Now()}
}

// randomID is 72 random bits, base64url: an operation's or an instance's
// name in storage.
func randomID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// runOp runs fn under the process-wide op lock with a bounded context.
// parent's cancellation (and Close) stops fn only before anything is sent.
func (c *Cache) runOp(parent context.Context, fn func(*op) (*snapshot, error)) (*snapshot, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if c.ctx.Err() != nil {
		return nil, errClosed
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), c.cfg.LockTimeout+2*c.cfg.CallTimeout)
	defer cancel()
	quit, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(c.ctx, stop)()
	defer context.AfterFunc(parent, stop)()
	return fn(c.newOp(ctx, quit))
}

// stopped says why the operation must not go on, before it sends anything.
func (o *op) stopped() error {
	if o.c.ctx.Err() != nil {
		return errClosed
	}
	return o.quit.Err()
}

// lock takes the cluster-wide lock for this session; waiting is bounded by
// LockTimeout and ends at once on Close. The returned func releases it even
// if the operation's contexts end meanwhile.
func (o *op) lock() (func(), error) {
	c := o.c
	lctx, cancel := context.WithTimeout(o.quit, c.cfg.LockTimeout)
	defer cancel()
	t0 := c.clock.Now()
	if err := o.st.s.Lock(lctx, o.st.lockName()); err != nil {
		if serr := o.stopped(); serr != nil {
			return nil, serr
		}
		return nil, o.st.report("lock", fmt.Errorf("taking storage lock for session %q: %w", c.cfg.Name, err))
	}
	c.event(Event{Kind: EventLockWait, Duration: c.clock.Now().Sub(t0)})
	return func() {
		if err := o.st.s.Unlock(context.WithoutCancel(o.ctx), o.st.lockName()); err != nil {
			o.st.report("unlock", err)
			c.log().Warn("releasing storage lock", zap.String("session", c.cfg.Name), zap.Error(err))
		}
	}, nil
}

// nextGen is the generation of a record this operation writes over r:
// above r's, the storage version read with it and every generation this
// operation already had to go above.
func (o *op) nextGen(r *record) int64 { return max(r.Generation, r.ver, o.floor) + 1 }

// build is the one function that makes a record to write: content over
// over, at the next generation, written by this operation, in this
// binary's format. content.Intent is kept (only the intent sets one).
func (o *op) build(over *record, content record) *record {
	n := content
	n.Generation, n.Writer, n.Format, n.ver, n.unreadable = o.nextGen(over), o.id, recordFormat, 0, false
	return &n
}

// successor is r as the next write of this operation, intent cleared.
func (o *op) successor(r *record) *record {
	n := *r
	n.Intent = ""
	return o.build(r, n)
}

// write stores next only if storage still holds over (an unreadable record
// stands for whatever storage holds, since it cannot be compared). With
// conditional writes the storage compares versions; without, the write is
// claimed, fenced by a read and, for an intent, checked against the
// claims (writeClaimed).
func (o *op) write(over, next *record) error {
	if next.DeviceID == "" {
		next.DeviceID = o.c.deviceOf(over)
	}
	if next.Key == "" {
		next.Key = o.c.cfg.key
	}
	if vs := o.st.versioned(); vs != nil {
		return o.writeIf(vs, over, next)
	}
	return o.writeClaimed(over, next)
}

// writeIf is write on a storage with conditional writes. A refused or
// failed write is resolved by reading: the record this operation wrote
// (generation and writer) means an earlier attempt landed.
func (o *op) writeIf(vs VersionedStorage, over, next *record) error {
	err := o.st.saveIf(o.ctx, vs, next, over.ver)
	if err == nil {
		return nil
	}
	cur, lerr := o.st.load(o.ctx)
	switch {
	case lerr == nil && cur.sameWrite(next):
		next.ver = cur.ver
		return nil
	case errors.Is(err, errFenced):
		return errFenced
	case lerr == nil && !cur.sameWrite(over):
		return errFenced
	}
	return err // not applied (storage still holds over), or unknown: retried
}

// writeClaimed is write on a storage without conditional writes: list the
// claims (pruning old ones), claim a generation above every other
// instance's visible claim, read the fence, store, and for an intent list
// again (contested). A claim above the fence is an orphan of a crashed
// write or a writer in flight: going above it keeps an orphan from
// contesting, and a writer in flight still sees this claim (see
// contested). A store that fails keeps its claim and is resolved by
// reading.
func (o *op) writeClaimed(over, next *record) error {
	kept, _, err := o.st.claims(o.ctx)
	if err != nil {
		return err
	}
	for _, e := range kept {
		if e.writer != o.c.claimer && e.gen >= next.Generation {
			next.Generation = e.gen + 1
		}
	}
	o.floor = max(o.floor, next.Generation-1)
	if err := o.st.claim(o.ctx, next.Generation, o.c.claimer); err != nil {
		return err
	}
	if !over.unreadable {
		if err := o.check(over); err != nil {
			return err
		}
	}
	if err := o.st.save(o.ctx, next); err != nil {
		cur, lerr := o.st.load(o.ctx)
		switch {
		case lerr != nil || cur.sameWrite(over) || over.unreadable && !cur.sameWrite(next):
			return err
		case !cur.sameWrite(next):
			return errFenced
		}
	}
	if next.spent() {
		return o.st.contested(o.ctx, next.Generation, o.c.claimer)
	}
	return nil
}

// writeRetry is write for a record that must become durable: a failing
// storage write is tried three times; a fence is final.
func (o *op) writeRetry(over, next *record) error {
	var err error
	for range 3 {
		if err = o.write(over, next); err == nil || errors.Is(err, errFenced) {
			return err
		}
	}
	return err
}

// check reports errFenced unless storage holds want.
func (o *op) check(want *record) error {
	cur, err := o.st.load(o.ctx)
	if err != nil {
		return err
	}
	if !cur.sameWrite(want) {
		return errFenced
	}
	return nil
}

// refresh is the refresh operation: peek, lock, re-read, then adopt, log
// in, or refresh with a fenced write-ahead intent.
func (o *op) refresh() (*snapshot, error) {
	c := o.c
	if c.pending.Load() == nil {
		// Cheap peek without the lock: another instance may have refreshed.
		if rec, err := o.st.load(o.ctx); err == nil && c.acceptable(rec, o.start) {
			return o.adopt(rec)
		}
	}
	unlock, err := o.lock()
	if err != nil {
		if errors.Is(err, errClosed) {
			return nil, err
		}
		return nil, o.fail(OutcomeTransient, ReasonStorage, err)
	}
	defer unlock()

	rec, err := o.st.load(o.ctx)
	if err != nil {
		return nil, o.fail(OutcomeTransient, ReasonStorage, err)
	}
	rec, s, err := o.resolvePending(rec)
	if s != nil || err != nil {
		return s, err
	}
	if c.acceptable(rec, c.clock.Now()) {
		return o.adopt(rec)
	}
	if rec.State != StateActive {
		return o.loginOrReport(rec)
	}
	key, err := c.keyFor(o, rec)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errKeyBroken) || rec.KeyThumbprint == "" {
			return o.kill(rec, "DPoP key unavailable: "+err.Error(), false, OutcomeDead, ReasonOther)
		}
		return nil, o.fail(OutcomeTransient, ReasonStorage, err) // a storage hiccup; the key is still there
	}
	if rec.spent() {
		return o.kill(rec, "an earlier refresh was interrupted after sending; its refresh token may be spent and is not presented again", true, OutcomeUnknown, ReasonLostOutcome)
	}
	if err := o.stopped(); err != nil {
		return nil, err
	}
	if rec.RefreshToken != "" && !rec.RefreshExpiry.IsZero() && !c.clock.Now().Before(rec.RefreshExpiry) {
		// Presenting it would only be refused, and some servers take an
		// expired token for a reuse and end the session: the access token
		// keeps serving until its own expiry while the session logs in.
		return o.kill(rec, "the refresh token expired", true, OutcomeDead, ReasonRefreshExpired)
	}
	over := rec
	// Write-ahead: record that this refresh token is about to be presented.
	// Grants without one (client_credentials) spend nothing and skip it.
	if rec.RefreshToken != "" {
		n := *rec
		n.Intent = tokenHash(rec.RefreshToken)
		intent := o.build(rec, n)
		err := o.write(rec, intent)
		if err == nil && o.st.versioned() == nil {
			// Read it back: if another instance wrote in between, both
			// may believe they hold the lock; neither may present.
			if err = o.check(intent); err != nil && !errors.Is(err, errFenced) {
				// Stored and uncontested: clear it on the next attempt.
				c.pending.Store(&pendingWrite{over: *intent, next: *o.successor(intent)})
				return o.fenced(err)
			}
		}
		if ce, ok := errors.AsType[*contestedError](err); ok {
			return o.standDown(intent, ce)
		}
		if err != nil {
			if !errors.Is(err, errFenced) {
				// The intent may or may not be stored, and without
				// conditional writes its claims are not checked yet: the
				// next attempt finds it by its writer, checks the claims,
				// and clears it (it was never presented).
				c.pending.Store(&pendingWrite{over: *intent, next: *o.successor(intent), recheck: o.st.versioned() == nil})
			}
			return o.fenced(err)
		}
		over = intent
	}
	o.prev = rec.Expiry
	o.device = c.deviceOf(over)
	grant, err := o.present(key, rec.RefreshToken)
	switch {
	case err == nil:
		return o.storeGrant(over, grant)
	case errors.Is(err, ErrOutcomeUnknown):
		return o.kill(over, "refresh response lost; the refresh token may have been rotated and is given up: "+err.Error(), true, OutcomeUnknown, ReasonLostOutcome)
	case errors.Is(err, ErrSessionDead):
		return o.kill(over, err.Error(), false, OutcomeDead, reasonOf(err, ReasonInvalidGrant))
	}
	// The backend says the server did not act: the refresh token is still
	// ours, so the intent is resolved by clearing it.
	if over != rec {
		cleared := o.successor(over)
		if werr := o.writeRetry(over, cleared); werr != nil && !errors.Is(werr, errFenced) {
			c.pending.Store(&pendingWrite{over: *over, next: *cleared})
		}
	}
	if errors.Is(err, ErrCredentialsRejected) {
		return nil, o.credentialsRejected(err)
	}
	return nil, o.fail(OutcomeTransient, reasonOf(err, ReasonOther), err)
}

// standDown ends a refresh whose intent may have overwritten newer state.
// The state it overwrote is gone and the intent names a token that may be
// spent, so the session is given up (and logged in again when configured),
// with generations above every claim so that stale claims do not contest
// the writes that follow.
func (o *op) standDown(intent *record, ce *contestedError) (*snapshot, error) {
	o.floor = max(o.floor, ce.claimed)
	return o.kill(intent, ce.Error()+"; the session is given up", true, OutcomeUnknown, ReasonLostOutcome)
}

// present spends refreshToken at the token server.
func (o *op) present(key *dpop.Key, refreshToken string) (*Grant, error) {
	c := o.c
	cctx, cancel := context.WithTimeout(o.ctx, c.cfg.CallTimeout)
	defer cancel()
	t0 := c.clock.Now()
	g, err := c.cfg.Backend.Refresh(ContextWithDeviceID(cctx, o.device), key, refreshToken)
	o.rtt += c.clock.Now().Sub(t0)
	return received(g, err, true)
}

// fenced ends an operation whose write or read-back failed before anything
// was presented.
func (o *op) fenced(err error) (*snapshot, error) {
	if errors.Is(err, errFenced) {
		o.c.log().Warn("not refreshing", zap.String("session", o.c.cfg.Name), zap.Error(err))
		return o.adoptLatest(err)
	}
	return nil, o.fail(OutcomeTransient, ReasonStorage, err)
}

// storeGrant makes a refreshed grant durable over the intent it resolves.
func (o *op) storeGrant(over *record, g *Grant) (*snapshot, error) {
	c := o.c
	next := o.successor(over)
	applyGrant(next, g, c.clock.Now())
	if g.RefreshToken == "" && over.RefreshToken != "" {
		// The server kept the refresh token (Prelude's SDKs read a missing
		// X-Refresh-Token so): it stays the one to present, and writing
		// next clears the intent that would otherwise mark it spent.
		c.log().Debug("refresh token not rotated", zap.String("session", c.cfg.Name))
	}
	err := o.writeRetry(over, next)
	switch {
	case errors.Is(err, errFenced):
		c.log().Error("refreshed, but storage moved on meanwhile; the new tokens are dropped rather than written over newer state",
			zap.String("session", c.cfg.Name), zap.Error(err))
		return o.adoptLatest(err)
	case err != nil:
		// The new refresh token exists only in memory: keep it for the
		// next attempt and hand out nothing until it is durable.
		c.pending.Store(&pendingWrite{over: *over, next: *next, outcome: OutcomeRefreshed})
		return nil, o.fail(OutcomeTransient, ReasonStorage, fmt.Errorf("refreshed but could not store the rotated refresh token: %w", err))
	}
	return o.install(next, c.current().key, OutcomeRefreshed, ""), nil
}

// resolvePending writes a result still held in memory, but only over the
// very record it resolves: if anything else happened to the session
// meanwhile (another instance gave the token up and logged in again, an
// operator logged out), storage wins and the result is dropped. It returns
// the record the operation goes on with, or the snapshot it ended with.
func (o *op) resolvePending(rec *record) (*record, *snapshot, error) {
	c := o.c
	p := c.pending.Load()
	if p == nil {
		return rec, nil, nil
	}
	if !rec.sameWrite(&p.over) {
		c.log().Warn("dropping a result that could not be stored in time; storage has moved on",
			zap.String("session", c.cfg.Name))
		c.pending.Store(nil)
		return rec, nil, nil
	}
	// The version storage holds beside it, which an unconfirmed write
	// never learnt.
	p.over.ver = rec.ver
	if p.recheck {
		err := o.st.contested(o.ctx, p.over.Generation, c.claimer)
		if ce, ok := errors.AsType[*contestedError](err); ok {
			c.pending.Store(nil)
			s, err := o.standDown(&p.over, ce)
			return nil, s, err
		}
		if err != nil {
			return nil, nil, o.fail(OutcomeTransient, ReasonStorage, err)
		}
		p.recheck = false
	}
	if err := o.writeRetry(&p.over, &p.next); err != nil {
		return nil, nil, o.fail(OutcomeTransient, ReasonStorage, err)
	}
	c.pending.Store(nil)
	if p.outcome == "" {
		return &p.next, nil, nil
	}
	return nil, o.install(&p.next, c.recordKey(o, &p.next), p.outcome, ""), nil
}

// flushPending tries once to store a result held in memory (Close).
func (o *op) flushPending() error {
	unlock, err := o.lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := o.st.load(o.ctx)
	if err != nil {
		return err
	}
	_, _, err = o.resolvePending(rec)
	return err
}

// applyGrant puts g into r, which becomes active; the refresh token is kept
// when the server did not rotate it.
func applyGrant(r *record, g *Grant, now time.Time) {
	r.State, r.Reason = StateActive, ""
	r.AccessToken, r.TokenType, r.Expiry, r.IssuedAt = g.AccessToken, g.TokenType, g.Expiry, now
	if g.RefreshToken != "" {
		r.RefreshToken, r.RefreshExpiry = g.RefreshToken, g.RefreshExpiry
	}
}

// kill marks the session logged out with reason, over the record over.
// When keepAccess is true the current access token keeps serving until it
// expires (the session may still be alive server-side; only the refresh
// token is lost), unless an upstream rejected it.
func (o *op) kill(over *record, reason string, keepAccess bool, outcome, why string) (*snapshot, error) {
	c := o.c
	content := record{State: StateLoggedOut, Reason: reason, KeyThumbprint: over.KeyThumbprint}
	if keepAccess && !c.isRejected(over.AccessToken) {
		content.AccessToken, content.TokenType, content.Expiry, content.IssuedAt = over.AccessToken, over.TokenType, over.Expiry, over.IssuedAt
	}
	if why == ReasonTokenReused {
		// Not a routine end: the server saw one of this session's refresh
		// tokens twice, and the engine presents each once.
		reason = "the server revoked the session for refresh token reuse (token_reused): " + reason
		content.Reason = reason
		c.log().Error("session revoked by the server for refresh token reuse; another party may hold its tokens, or storage was restored from an old copy",
			zap.String("session", c.cfg.Name), zap.String("reason", reason))
	} else {
		c.log().Warn("session ended", zap.String("session", c.cfg.Name), zap.String("reason", reason))
	}
	next := o.build(over, content)
	if err := o.writeRetry(over, next); err != nil {
		return o.fenced(err)
	}
	o.install(next, c.recordKey(o, next), outcome, why)
	c.setErr(errors.New(reason))
	return o.loginOrReport(next)
}

// adopt installs a record another instance wrote.
func (o *op) adopt(rec *record) (*snapshot, error) {
	key, err := o.c.keyFor(o, rec)
	if err != nil && rec.State == StateActive {
		return nil, o.fail(OutcomeTransient, ReasonStorage, err)
	}
	return o.install(rec, key, OutcomeAdopted, ""), nil
}

// adoptLatest installs whatever storage holds after this operation lost a
// fence, and reports cause unless that gave a fresh token.
func (o *op) adoptLatest(cause error) (*snapshot, error) {
	rec, err := o.st.load(o.ctx)
	if err != nil {
		return nil, o.fail(OutcomeTransient, ReasonStorage, err)
	}
	s, err := o.adopt(rec)
	if err != nil {
		return nil, err
	}
	if !s.fresh(o.c.clock.Now()) {
		return s, cause
	}
	return s, nil
}

// acceptable reports whether a stored record can be adopted instead of
// refreshing: active, fresh for a while, and neither the token an upstream
// rejected nor the one a forced refresh must replace.
func (c *Cache) acceptable(rec *record, now time.Time) bool {
	if rec.State != StateActive || rec.AccessToken == "" {
		return false
	}
	c.mu.Lock()
	excluded := rec.AccessToken == c.rejected || rec.AccessToken == c.forced
	c.mu.Unlock()
	if excluded {
		return false
	}
	return now.Before(refreshAt(rec.IssuedAt, rec.Expiry, c.cfg.RefreshBefore)) && now.Add(minUsable).Before(rec.Expiry)
}

// keyFor returns the DPoP key the record is bound to, from memory when the
// current snapshot already holds it.
func (c *Cache) keyFor(o *op, rec *record) (*dpop.Key, error) {
	if k := c.current().key; k != nil && k.Thumbprint() == rec.KeyThumbprint {
		return k, nil
	}
	if rec.KeyThumbprint == "" {
		return nil, errors.New("no DPoP key recorded")
	}
	return o.st.loadKey(o.ctx, rec.KeyThumbprint)
}

// recordKey is the key rec is bound to, or nil when it has none or it
// cannot be loaded (the record then serves no DPoP-bound token).
func (c *Cache) recordKey(o *op, rec *record) *dpop.Key {
	if rec.KeyThumbprint == "" {
		return nil
	}
	k, err := c.keyFor(o, rec)
	if err != nil {
		return nil
	}
	return k
}
