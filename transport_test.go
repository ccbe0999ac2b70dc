package injecttoken

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// The request variable that carries the token to the transport prints
// without the token, whatever a config does with {http.vars.*}.
func TestCredentialPrintsNoSecret(t *testing.T) {
	// The credential holds no token at all; what it refers to (the
	// session, its nonces) must not be printed through it either.
	c := &credential{name: "s", sess: newSession("s")}
	c.sess.rsNonces.Set(&url.URL{Scheme: "https", Host: "x"}, "secret-token-value")
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, "secret-token-value") {
			t.Fatalf("credential printed its token: %s", s)
		}
	}
}

// A transport whose Provision fails is cleaned up without having counted
// itself, so the live count (which decides whether DPoP requests may be
// forwarded) stays right across a failed reload.
func TestFailedTransportProvisionKeepsCount(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	before := liveTransports.Load()
	tr := &Transport{Origin: "not a url"}
	if err := tr.Provision(ctx); err == nil {
		t.Fatal("bad origin accepted")
	}
	if err := tr.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if got := liveTransports.Load(); got != before {
		t.Fatalf("live transports %d → %d after a failed provision", before, got)
	}
}
