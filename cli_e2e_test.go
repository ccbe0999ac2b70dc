package injecttoken

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/cli"
	"github.com/tokenwarden/caddy-inject-token/sandbox"
	"github.com/tokenwarden/caddy-inject-token/sandboxtest"
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
	if !cl.Revoked() {
		t.Fatal("revoke --target others left the other device's session alive")
	}
	getWhoami(t, tester) // ours still works

	run("", "logout", "--session", "walk")
	if srv.Stats().Revokes != 1 {
		t.Fatal("logout did not revoke at the server")
	}
	assertUnavailable(t, tester, "walk")
}
