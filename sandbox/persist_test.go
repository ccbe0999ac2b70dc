package sandbox

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestPersistedStateRestores: a sandbox rebuilt from exported state keeps
// the session (the current refresh token still works, same sid, tokens
// signed before still verify) and still detects reuse of a spent token.
func TestPersistedStateRestores(t *testing.T) {
	srv := NewServer(t, Options{})
	cl := newClient(t, srv.URL)
	spent, _ := cl.login("persist@example.com", "")
	current, access := cl.mustRefresh(spent)
	before, err := srv.VerifyAccessToken(access)
	if err != nil {
		t.Fatal(err)
	}
	data, err := srv.Sandbox.exportState()
	if err != nil {
		t.Fatal(err)
	}

	restored, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := restored.importState(data); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(restored)
	t.Cleanup(ts.Close)
	if _, err := restored.VerifyAccessToken(access); err != nil {
		t.Errorf("a token signed before the restart does not verify: %v", err)
	}
	cl2 := newClient(t, ts.URL)
	cl2.key = cl.key
	_, access2 := cl2.mustRefresh(current)
	after, err := restored.VerifyAccessToken(access2)
	if err != nil || after.SessionID != before.SessionID || after.Subject != before.Subject {
		t.Fatalf("after restore: %+v, %v; want sid %s sub %s", after, err, before.SessionID, before.Subject)
	}
	expect(t, cl2.refresh(spent), http.StatusConflict, "token_reused")
	if st := restored.Stats(); st.ReuseEvents != 1 || st.Logins != 0 {
		t.Errorf("stats after restore: %+v", st)
	}
}
