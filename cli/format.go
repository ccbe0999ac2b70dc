package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// now is the clock for relative times; tests may replace it.
var now = time.Now

func dur(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	return d.Round(time.Second).String()
}

// rel renders t relative to now: "in 23s", "12s ago", or "-".
func rel(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	d := t.Sub(now())
	if d >= 0 {
		return "in " + dur(d)
	}
	return dur(d) + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// expires renders the token's remaining lifetime as the server computed it.
func expires(st *Status) string {
	switch {
	case st.ExpiresAt == nil:
		return "no token"
	case st.SecondsLeft <= 0:
		return "expired"
	default:
		return "in " + dur(time.Duration(st.SecondsLeft)*time.Second)
	}
}

func lastRefresh(st *Status) string {
	if st.LastOutcome == "" {
		return "-"
	}
	return st.LastOutcome + " " + rel(st.LastRefresh)
}

func shortJKT(jkt string) string {
	if len(jkt) > 12 {
		return jkt[:12] + "…"
	}
	return orDash(jkt)
}

// printStatus writes one session as an aligned block.
func printStatus(w io.Writer, st *Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	fmt.Fprintf(tw, "session %s: %s\n", st.Session, orDash(st.State))
	if st.Reason != "" {
		row("reason", st.Reason)
	}
	row("user (sub)", orDash(st.Subject))
	row("session id", orDash(st.SessionID))
	tok := expires(st)
	if st.TokenType != "" {
		tok = st.TokenType + ", expires " + tok
		if st.ExpiresAt != nil {
			tok += " (" + st.ExpiresAt.Local().Format(time.RFC3339) + ")"
		}
	}
	row("access token", tok)
	if len(st.Scopes) > 0 {
		row("scopes", strings.Join(st.Scopes, " "))
	}
	row("next refresh", rel(st.NextRefresh))
	row("last refresh", fmt.Sprintf("%s (refreshed %d, adopted %d, waits %d)",
		lastRefresh(st), st.RefreshCount, st.AdoptCount, st.WaitCount))
	if st.LastError != "" {
		row("last error", st.LastError)
	}
	row("auto login", yesNo(st.AutoLogin))
	if st.OTPPending {
		row("otp login", "code sent, waiting for it: caddy inject-token login "+st.Session+" --code <code>")
	}
	if st.OTPFlow != "" {
		row("otp flow", otpFlow(st.OTPFlow))
	}
	if st.KeyThumbprint != "" {
		row("dpop key", st.KeyAlgorithm+" jkt="+st.KeyThumbprint)
	}
	if st.Backend != "" || st.BaseURL != "" {
		row("backend", strings.TrimSpace(st.Backend+" "+st.BaseURL))
	}
	tw.Flush()
}

// otpFlow names the one-time-code flow the server accepted: the fallback
// is worth knowing about, since the current flow was refused.
func otpFlow(flow string) string {
	switch flow {
	case "login_otp":
		return flow + " (current)"
	case "otp":
		return flow + " (documented fallback; the server refused login_otp)"
	}
	return flow
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// printStatusTable writes every session as one row.
func printStatusTable(w io.Writer, all []Status) {
	if len(all) == 0 {
		fmt.Fprintln(w, "No inject_token sessions are configured.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tSTATE\tSUB\tEXPIRES\tLAST REFRESH\tDPOP JKT")
	for i := range all {
		st := &all[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.Session, orDash(st.State), orDash(st.Subject),
			expires(st), lastRefresh(st), shortJKT(st.KeyThumbprint))
	}
	tw.Flush()
	for i := range all {
		if st := &all[i]; st.Reason != "" || st.LastError != "" {
			fmt.Fprintf(w, "%s: %s\n", st.Session, orDash(firstNonEmpty(st.LastError, st.Reason)))
		}
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func printLoggedIn(w io.Writer, st *Status) {
	fmt.Fprintf(w, "Logged in: session %q as %s (sid %s), %s token expires %s.\n",
		st.Session, orDash(st.Subject), orDash(st.SessionID), orDash(st.TokenType), expires(st))
}

// when renders an API timestamp in local time when it parses.
func when(s string) string {
	if s == "" {
		return "-"
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.Local().Format("2006-01-02 15:04")
	}
	return s
}

func printDevices(w io.Writer, l *DeviceList) {
	if len(l.Sessions) == 0 {
		fmt.Fprintf(w, "No sessions (total %d).\n", l.Total)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tDEVICE\tOS\tCOUNTRY\tCREATED\tLAST SEEN\tEXPIRES")
	for _, d := range l.Sessions {
		mark := " "
		if d.Current {
			mark = "*"
		}
		device := strings.TrimSpace(d.DeviceType + " " + d.DeviceModel)
		fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, d.ID, orDash(device), orDash(d.OSVersion),
			orDash(d.CountryCode), when(d.CreatedAt), when(d.LastSeenAt), when(d.ExpiresAt))
	}
	tw.Flush()
	first := l.Offset + 1
	fmt.Fprintf(w, "%d-%d of %d (* = this gateway's session)\n", first, l.Offset+len(l.Sessions), l.Total)
}

func printRevoked(w io.Writer, session, id string, r *RevokeResult) {
	what := map[string]string{
		"all":     "all sessions of the user",
		"others":  "all other sessions of the user",
		"mine":    "this session",
		"session": "session " + id,
	}[r.Target]
	if what == "" {
		what = r.Target
	}
	fmt.Fprintf(w, "Revoked %s.\n", what)
	if r.LocalCleared {
		fmt.Fprintf(w, "Session %q was cleared locally and stays logged out until the next login.\n", session)
	}
}
