package wire

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestNoPostRedirects(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/from", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/to", http.StatusFound)
	})
	mux.HandleFunc("/to", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "arrived by "+r.Method)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/loop", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	hc := NoPostRedirects(nil, 7*time.Second)
	if hc.Timeout != 7*time.Second {
		t.Errorf("default client timeout %v", hc.Timeout)
	}
	resp, err := hc.Post(srv.URL+"/from", "text/plain", strings.NewReader("secret"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("POST: status %d, want the 302 handed back", resp.StatusCode)
	}
	resp, err = hc.Get(srv.URL + "/from")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "arrived by GET" {
		t.Errorf("GET was not followed: %q", body)
	}
	if _, err := hc.Get(srv.URL + "/loop"); err == nil || !strings.Contains(err.Error(), "stopped after 10 redirects") {
		t.Errorf("redirect loop: %v", err)
	}

	// A given client is copied, not changed, and its own policy still
	// decides about GETs.
	errOwn := errors.New("own policy")
	own := &http.Client{Timeout: time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return errOwn }}
	hc = NoPostRedirects(own, 7*time.Second)
	if hc == own || hc.Timeout != time.Second {
		t.Errorf("given client not copied as is: timeout %v", hc.Timeout)
	}
	if _, err := hc.Get(srv.URL + "/from"); !errors.Is(err, errOwn) {
		t.Errorf("GET with own policy: %v", err)
	}
	resp, err = hc.Post(srv.URL+"/from", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("POST with own policy: status %d", resp.StatusCode)
	}
}

func post(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, strings.NewReader("grant_type=x"))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestDo(t *testing.T) {
	date := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", date.Format(http.TimeFormat))
		w.Header().Set("X-Seen", "yes")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "0123456789")
	}))
	defer srv.Close()

	var observed *http.Response
	before := time.Now()
	rep, written, err := Do(srv.Client(), post(t, srv.URL), 10, func(r *http.Response) { observed = r })
	if err != nil || !written {
		t.Fatalf("err %v, written %v", err, written)
	}
	if rep.Status != http.StatusTeapot || rep.Header.Get("X-Seen") != "yes" || string(rep.Body) != "0123456789" || rep.BodyErr != nil {
		t.Errorf("reply %+v", rep)
	}
	if !rep.Date.Equal(date) {
		t.Errorf("Date %v, want %v", rep.Date, date)
	}
	if rep.SentAt.Before(before) || rep.ReceivedAt.Before(rep.SentAt) {
		t.Errorf("SentAt %v, ReceivedAt %v", rep.SentAt, rep.ReceivedAt)
	}
	if observed == nil || observed.StatusCode != http.StatusTeapot {
		t.Error("observe did not see the response")
	}

	// One byte over the limit: the status stays, the body is refused.
	rep, _, err = Do(srv.Client(), post(t, srv.URL), 9, nil)
	if err != nil || rep.Status != http.StatusTeapot || rep.Body != nil || !errors.Is(rep.BodyErr, ErrTooLarge) {
		t.Errorf("over the limit: err %v, reply %+v", err, rep)
	}
}

func TestDoNoDate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil // suppress the automatic header
	}))
	defer srv.Close()
	rep, _, err := Do(srv.Client(), post(t, srv.URL), 10, nil)
	if err != nil || !rep.Date.IsZero() {
		t.Errorf("err %v, Date %v", err, rep.Date)
	}
}

// TestDoWritten tells "never written" (the server cannot have acted) from
// "written, no answer" (it may have).
func TestDoWritten(t *testing.T) {
	t.Run("connection_refused", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		_, written, err := Do(http.DefaultClient, post(t, url), 10, nil)
		if err == nil || written {
			t.Errorf("err %v, written %v", err, written)
		}
	})
	t.Run("cancelled_before_send", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		defer srv.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, written, err := Do(srv.Client(), post(t, srv.URL).WithContext(ctx), 10, nil)
		if !errors.Is(err, context.Canceled) || written {
			t.Errorf("err %v, written %v", err, written)
		}
	})
	t.Run("dropped_after_write", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
		}))
		defer srv.Close()
		_, written, err := Do(srv.Client(), post(t, srv.URL), 10, nil)
		if err == nil || !written {
			t.Errorf("err %v, written %v", err, written)
		}
	})
}

func TestReadBounded(t *testing.T) {
	for _, tc := range []struct {
		in    string
		limit int64
		err   error
	}{
		{"", 0, nil},
		{"abc", 3, nil},
		{"abcd", 3, ErrTooLarge},
		{"a", 0, ErrTooLarge},
	} {
		b, err := readBounded(strings.NewReader(tc.in), tc.limit)
		if !errors.Is(err, tc.err) || (err == nil && string(b) != tc.in) {
			t.Errorf("%q limit %d: %q, %v", tc.in, tc.limit, b, err)
		}
	}
	errRead := errors.New("read failed")
	if _, err := readBounded(iotest.ErrReader(errRead), 10); !errors.Is(err, errRead) {
		t.Errorf("read error: %v", err)
	}
	// An endless body is not buffered beyond limit+1.
	if _, err := readBounded(endless{}, 1<<10); !errors.Is(err, ErrTooLarge) {
		t.Errorf("endless body: %v", err)
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }

func TestScrub(t *testing.T) {
	long := strings.Repeat("é", MaxTextRunes+5)
	for _, tc := range []struct {
		in      string
		secrets []string
		want    string
	}{
		{"token abc is bad, abc!", []string{"abc"}, "token [redacted] is bad, [redacted]!"},
		{"a secret and a key", []string{"", "secret", "key"}, "a [redacted] and a [redacted]"},
		{"line1\nline2\r\x1b[31m\x00", nil, "line1 line2  [31m"},
		{"  padded\t", nil, "padded"},
		{long, nil, strings.Repeat("é", MaxTextRunes) + "…"},
		{strings.Repeat("x", MaxTextRunes), nil, strings.Repeat("x", MaxTextRunes)},
		// Replacement happens before truncation, so a secret across the
		// cut cannot leave a prefix behind.
		{strings.Repeat("x", MaxTextRunes-2) + "SECRET", []string{"SECRET"}, strings.Repeat("x", MaxTextRunes-2) + "[r…"},
	} {
		if got := Scrub(tc.in, tc.secrets); got != tc.want {
			t.Errorf("Scrub(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	local := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	server := local.Add(-10 * time.Minute) // skewed: HTTP-dates are read on the server's clock
	const limit = time.Hour
	for _, tc := range []struct {
		name, value, date string
		want              time.Duration
	}{
		{"absent", "", "", 0},
		{"seconds", "7", "", 7 * time.Second},
		{"spaces", " 120 ", "", 2 * time.Minute},
		{"zero", "0", "", 0},
		{"negative", "-5", "", 0},
		{"capped", "3601", "", limit},
		{"huge", "99999999999999", "", limit},
		{"garbage", "soon", "", 0},
		{"date_vs_server_clock", server.Add(30 * time.Second).Format(http.TimeFormat), server.Format(http.TimeFormat), 30 * time.Second},
		{"date_vs_local_clock", local.Add(30 * time.Second).Format(http.TimeFormat), "", 30 * time.Second},
		{"date_bad_server_clock", local.Add(30 * time.Second).Format(http.TimeFormat), "yesterday", 30 * time.Second},
		{"date_past", server.Add(-time.Minute).Format(http.TimeFormat), server.Format(http.TimeFormat), 0},
		{"date_far", local.Add(48 * time.Hour).Format(http.TimeFormat), "", limit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.value != "" {
				h.Set("Retry-After", tc.value)
			}
			if tc.date != "" {
				h.Set("Date", tc.date)
			}
			if got := RetryAfter(h, local, limit); got != tc.want {
				t.Errorf("RetryAfter(%q, Date %q) = %v, want %v", tc.value, tc.date, got, tc.want)
			}
		})
	}
}

func TestJWTClaims(t *testing.T) {
	seg := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	var claims struct {
		Exp float64 `json:"exp"`
		Sub string  `json:"sub"`
	}
	if !JWTClaims(seg(`{"alg":"none"}`)+"."+seg(`{"exp":1767268800,"sub":"me"}`)+".sig", &claims) ||
		claims.Exp != 1767268800 || claims.Sub != "me" {
		t.Errorf("claims %+v", claims)
	}
	for _, bad := range []string{
		"",
		"opaque-token",
		"a.b",
		"a." + seg(`{"exp":1}`) + ".c.d",
		"a.!!!.c",
		"a." + seg(`not json`) + ".c",
		"a." + seg(`{"exp":"soon"}`) + ".c", // wrong type for the target
	} {
		if JWTClaims(bad, &claims) {
			t.Errorf("JWTClaims(%q) accepted", bad)
		}
	}
}

func TestErrorText(t *testing.T) {
	for _, tc := range []struct {
		in   ErrorText
		want string
	}{
		{ErrorText{Pkg: "p", Op: "refresh", Kind: "transient"}, "p: refresh (transient)"},
		{
			ErrorText{Pkg: "p", Op: "refresh", Status: 429, Code: "slow_down", Texts: []string{"wait", "", "cause"}, Retry: 7 * time.Second, Kind: "transient"},
			"p: refresh: HTTP 429 slow_down: wait: cause (retry after 7s) (transient)",
		},
		{ErrorText{Pkg: "p", Op: "token", Code: "c", Texts: []string{"", "dial failed"}, Kind: "k"}, "p: token c: dial failed (k)"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestCheckURL(t *testing.T) {
	for _, tc := range []struct {
		raw        string
		allowQuery bool
		err        string // "" means accepted
	}{
		{"https://as.example/oauth2/token", false, ""},
		{"http://127.0.0.1:8080/prefix/", false, ""},
		{"https://as.example/token?tenant=1", true, ""},
		{"https://as.example/token?tenant=1", false, "must not have a query"},
		{"https://as.example/token?", false, "must not have a query"},
		{"https://as.example/token?q#f", false, "must not have a query"}, // query is checked first
		{"https://as.example/token#", true, "must not have a fragment"},
		{"https://as.example/token#frag", true, "must not have a fragment"},
		{"ftp://as.example/", true, `scheme must be http or https, got "ftp"`},
		{"as.example/token", true, `scheme must be http or https, got ""`},
		{"https:///token", true, "has no host"},
		{"https://user:pw@as.example/", true, "must not contain user info"},
		{"https://as.example/%zz", true, "does not parse"},
	} {
		u, err := CheckURL(tc.raw, tc.allowQuery)
		switch {
		case tc.err == "" && (err != nil || u.String() != tc.raw):
			t.Errorf("CheckURL(%q, %v) = %v, %v", tc.raw, tc.allowQuery, u, err)
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("CheckURL(%q, %v): error %v, want %q", tc.raw, tc.allowQuery, err, tc.err)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("error %q repeats the URL's password", err)
		}
	}
}

func TestRetryHint(t *testing.T) {
	h := http.Header{"Retry-After": {"7"}}
	for status, want := range map[int]time.Duration{429: 7 * time.Second, 503: 7 * time.Second, 500: 0, 502: 0, 400: 0, 200: 0} {
		r := &Reply{Status: status, Header: h}
		if got := r.RetryHint(time.Now(), time.Hour); got != want {
			t.Errorf("status %d: %v, want %v", status, got, want)
		}
	}
}
