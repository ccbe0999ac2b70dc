package peruser_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestOwnCookiesStayAtGateway: the legacy app gets its own cookies as the
// browser sent them, and none of the gateway's.
func TestOwnCookiesStayAtGateway(t *testing.T) {
	srv := newSandbox(t)
	s := newSite(t, srv, t.TempDir(), nil)
	b := newBrowser(t, s.URL)
	b.login(alice, alicePW, "/")
	u, _ := url.Parse(s.URL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "app", Value: "1"}, {Name: "theme", Value: "dark"}})
	st, w := b.whoami()
	if st != 200 {
		t.Fatalf("whoami: %d", st)
	}
	ck := w.Headers["Cookie"]
	if strings.Contains(ck, "inject_token") || !strings.Contains(ck, "app=1") || !strings.Contains(ck, "theme=dark") {
		t.Fatalf("cookies the app received: %q", ck)
	}
}
