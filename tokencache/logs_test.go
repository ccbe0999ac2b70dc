package tokencache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// observed is a cache whose log lines the test reads.
func (e *env) observed(mod func(*tokencache.Config)) (*tokencache.Cache, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	c := e.cache(func(cfg *tokencache.Config) {
		cfg.Logger = zap.New(core)
		if mod != nil {
			mod(cfg)
		}
	})
	return c, logs
}

// infoLines are the INFO lines with message msg.
func infoLines(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool {
		return e.Level == zapcore.InfoLevel && e.Message == msg
	}).All()
}

// saysWho fails unless every line names the session, its user and its
// Prelude session and says until when the token is valid.
func saysWho(t *testing.T, what string, lines []observer.LoggedEntry, tok *tokencache.Token) {
	t.Helper()
	for _, l := range lines {
		m := l.ContextMap()
		if m["session"] != "test" || m["sub"] != tok.Subject || m["sid"] != tok.SessionID || tok.Subject == "" || tok.SessionID == "" {
			t.Errorf("%s line does not say who: %v", what, m)
		}
		if _, ok := m["expires_at"].(time.Time); !ok {
			t.Errorf("%s line has no expiry: %v", what, m)
		}
	}
}

// noSecrets fails if a log line carries any of secrets.
func noSecrets(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, l := range logs.All() {
		line := l.Message
		for k, v := range l.ContextMap() {
			line += " " + k + "=" + toString(v)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				t.Errorf("a secret in the log: %q", l.Message)
			}
		}
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if s, ok := v.(interface{ String() string }); ok {
		return s.String()
	}
	return ""
}

// The engine's own work — an automatic login, a background refresh, an
// adoption of another instance's token — is logged once at INFO, saying
// who and until when, never the token.
func TestEngineLogsLoginRefreshAdoptionOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, aLogs := e.observed(func(cfg *tokencache.Config) { cfg.Login = e.passwordLogin() })
	e.advanceUntil("automatic login", 50*time.Millisecond, func() bool { return a.Status().State == tokencache.StateActive })
	first := mustToken(t, a)
	logins := infoLines(aLogs, "session logged in")
	if len(logins) != 1 {
		t.Fatalf("%d INFO login lines; want 1: %v", len(logins), aLogs.All())
	}
	saysWho(t, "login", logins, first)

	b, bLogs := e.observed(nil)
	e.advanceUntil("a refresh and an adoption", time.Second, func() bool {
		sa, sb := a.Status(), b.Status()
		return sa.RefreshCount+sb.RefreshCount >= 1 && sa.AdoptCount+sb.AdoptCount >= 1
	})
	tokens := map[*tokencache.Cache]*tokencache.Token{a: mustToken(t, a), b: mustToken(t, b)}
	adopted := 0
	for c, logs := range map[*tokencache.Cache]*observer.ObservedLogs{a: aLogs, b: bLogs} {
		st := c.Status()
		refreshed := infoLines(logs, "token refreshed")
		adoptions := infoLines(logs, "adopted the token another instance stored")
		if int64(len(refreshed)) != st.RefreshCount || int64(len(adoptions)) > st.AdoptCount {
			t.Errorf("%d refresh and %d adoption lines for %d refreshes and %d adoptions",
				len(refreshed), len(adoptions), st.RefreshCount, st.AdoptCount)
		}
		adopted += len(adoptions)
		saysWho(t, "refresh", refreshed, tokens[c])
		saysWho(t, "adoption", adoptions, tokens[c])
	}
	if adopted == 0 {
		t.Error("no adoption logged")
	}
	noSecrets(t, aLogs, first.Value, tokens[a].Value, demoPassword)
	noSecrets(t, bLogs, first.Value, tokens[b].Value, demoPassword)
}

// An operator's login or refresh is logged by the admin layer; the engine
// does not log it again at INFO, and an operator's failed login is their
// answer, not "token refresh failed … retry_in".
func TestEngineLeavesOperatorCallsToTheAdminLog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c, logs := e.observed(nil)
	e.login(c)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(infoLines(logs, "session logged in")) + len(infoLines(logs, "token refreshed")); n != 0 {
		t.Fatalf("%d INFO lines from the engine for an operator's calls: %v", n, logs.All())
	}
	before := c.Status()
	wrong := e.clk.login(prelude.PasswordLogin(e.cl, demoEmail, "wrong-password"))
	if err := c.Login(context.Background(), wrong); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	for _, l := range logs.All() {
		if _, retry := l.ContextMap()["retry_in"]; retry || l.Level >= zapcore.WarnLevel {
			t.Errorf("operator's failed login logged as %s %q %v", l.Level, l.Message, l.ContextMap())
		}
	}
	// Nothing is retried, and the session the operator had keeps its schedule.
	if after := c.Status(); after.State != tokencache.StateActive || !after.NextRefresh.Equal(*before.NextRefresh) {
		t.Errorf("after a failed operator login: state %s, next refresh %v (was %v)", after.State, after.NextRefresh, before.NextRefresh)
	}
	noSecrets(t, logs, "wrong-password", demoPassword)
}

// A refresh answered without a rotated refresh token keeps the current one:
// logged at debug, the intent cleared, and the token presented again
// without being taken for a spent one.
func TestUnrotatedRefreshClearsIntent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c, logs := e.observed(nil)
	e.login(c)
	e.srv.SkipRotation(1)
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatalf("unrotated refresh: %v", err)
	}
	if n := logs.FilterMessage("refresh token not rotated").FilterLevelExact(zapcore.DebugLevel).Len(); n != 1 {
		t.Errorf("%d debug lines saying the refresh token was not rotated; want 1", n)
	}
	if rec := e.stored(); rec["intent"] != nil || rec["state"] != tokencache.StateActive {
		t.Fatalf("after an unrotated refresh storage holds state %v, intent %v", rec["state"], rec["intent"])
	}
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatalf("refresh with the kept token: %v", err)
	}
	if st := e.srv.Stats(); st.ReuseEvents != 0 || st.Logins != 1 || st.RefreshSuccesses != 2 {
		t.Fatalf("stats %+v", st)
	}
	if n := logs.FilterMessage("refresh token not rotated").Len(); n != 1 {
		t.Errorf("%d lines about an unrotated token after a rotated refresh; want 1", n)
	}
}
