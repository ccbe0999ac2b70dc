package injecttoken

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/cli"
	"github.com/tokenwarden/caddy-inject-token/dpop"
	"github.com/tokenwarden/caddy-inject-token/prelude"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// TestCLIWalkthrough follows the README as a newcomer would, with the real
// CLI against the in-process Caddy: log in with a one-time code typed at
// the prompt, see requests reach the upstream with a token, list and revoke
// the user's sessions, log out.
func TestCLIWalkthrough(t *testing.T) {
	srv := sandboxtest.NewServer(t, sandbox.Options{})
	tester := gateway{storage: t.TempDir(), upstream: srv.URL, rewrite: "/whoami",
		block: "session walk\nprelude " + srv.URL}.start(t)
	run := func(stdin string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--address", "localhost:2999")
		if err := cli.Run(context.Background(), args, strings.NewReader(stdin), &out); err != nil {
			t.Fatalf("caddy inject-token %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	assertUnavailable(t, tester, "walk")

	// OTP login; the code is typed at the prompt (one line on stdin).
	out := run("123456\n", "login", "--session", "walk", "--email", "ops@example.com")
	if !strings.Contains(out, `Logged in: session "walk" as usr_`) {
		t.Fatalf("login output: %s", out)
	}
	who := getWhoami(t, tester)
	sub, _ := who.Claims["sub"].(string)
	if !strings.HasPrefix(sub, "usr_") {
		t.Fatalf("upstream saw claims %v", who.Claims)
	}
	if out := run("", "status", "walk"); !strings.Contains(out, sub) || !strings.Contains(out, "active") {
		t.Fatalf("status output: %s", out)
	}

	// A second device of the same user, then list (ours marked) and revoke it.
	cl := newSandboxLogin(t, srv.URL, "ops@example.com")
	var list struct {
		Sessions []struct {
			ID      string `json:"id"`
			Current bool   `json:"current"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(run("", "list", "--session", "walk", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Sessions) != 2 {
		t.Fatalf("listed %d sessions, want 2", len(list.Sessions))
	}
	for _, s := range list.Sessions {
		if s.Current != (s.ID == who.Claims["sid"]) {
			t.Fatalf("current flag wrong: %+v (ours %v)", list.Sessions, who.Claims["sid"])
		}
	}
	run("", "revoke", "--session", "walk", "--target", "others")
	if !cl.revoked() {
		t.Fatal("revoke --target others left the other device's session alive")
	}
	getWhoami(t, tester) // ours still works

	run("", "logout", "--session", "walk")
	if srv.Stats().Revokes != 1 {
		t.Fatal("logout did not revoke at the server")
	}
	assertUnavailable(t, tester, "walk")
}

// otherDevice is a second session of a sandbox user, logged in directly
// with the Prelude client as another device would.
type otherDevice struct {
	t   *testing.T
	cl  *prelude.Client
	key *dpop.Key
	rt  string
	sid string // the sid claim of its first access token
}

func newSandboxLogin(t *testing.T, baseURL, email string) *otherDevice {
	t.Helper()
	ctx := context.Background()
	cl, err := prelude.New(baseURL, prelude.Options{})
	if err != nil {
		t.Fatal(err)
	}
	vt, err := cl.StartOTP(ctx, prelude.EmailIdentifier(email))
	if err != nil {
		t.Fatal(err)
	}
	challenge, err := cl.CheckOTP(ctx, vt, sandbox.DefaultOTPCode)
	if err != nil {
		t.Fatal(err)
	}
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := cl.Finalize(ctx, key, challenge, "")
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		SID string `json:"sid"`
	}
	parts := strings.Split(toks.AccessToken, ".")
	if len(parts) != 3 {
		t.Fatal("access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.SID == "" {
		t.Fatalf("no sid in the access token: %v", err)
	}
	return &otherDevice{t: t, cl: cl, key: key, rt: toks.RefreshToken, sid: claims.SID}
}

// revoked reports whether the device's session can no longer refresh.
func (d *otherDevice) revoked() bool {
	_, err := d.cl.Refresh(context.Background(), d.key, d.rt)
	return errors.Is(err, tokencache.ErrSessionDead) || err != nil && strings.Contains(err.Error(), "unauthorized")
}
