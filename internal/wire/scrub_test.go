package wire

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"html"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// secretKinds are the credentials a token request carries, with the
// characters that make encodings differ (+ / = & < " space).
var secretKinds = []struct{ name, value string }{
	{"password", `Sec&ret<Pw"2 y+/=`},
	{"client secret", "s3cr+t/=&x y"},
	{"client assertion", "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJndyJ9.c2lnbmF0dXJlLWJ5dGVzLTEyMw"},
	{"client key material", "MHcCAQEEIBx+key/D=bytes"},
	{"refresh token", "rt+abc/def=="},
	{"access token", "at.eyJzdWIiOiJ1In0.sig-_x"},
	{"OTP code", "483920"},
}

// echoStyles are the ways a server echoes a request into its error text.
var echoStyles = []struct {
	name string
	echo func(id, secret string) string
}{
	{"raw", func(_, s string) string { return "you sent " + s + " which is wrong" }},
	{"basic", func(id, s string) string {
		return "got Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+s))
	}},
	{"basic form-encoded", func(id, s string) string { // RFC 6749 §2.3.1
		return "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(s)))
	}},
	{"basic after %20", func(id, s string) string {
		return "authorization=Basic%20" + base64.StdEncoding.EncodeToString([]byte(id+":"+s))
	}},
	{"basic key=value", func(id, s string) string {
		return "basic=" + base64.URLEncoding.EncodeToString([]byte(id+":"+s))
	}},
	{"form", func(id, s string) string {
		return "body: " + url.Values{"client_id": {id}, "client_secret": {s}, "grant_type": {"refresh_token"}}.Encode()
	}},
	{"form lower hex", func(_, s string) string { return "x=" + lowerHex(url.QueryEscape(s)) + "&y=1" }},
	{"form mixed-case hex", func(_, s string) string {
		q := url.QueryEscape(s)
		if i := strings.LastIndex(q, "%"); i >= 0 {
			q = q[:i] + strings.ToLower(q[i:])
		}
		return "x=" + q
	}},
	{"path escape", func(_, s string) string { return "/v1/" + url.PathEscape(s) + "/x" }},
	{"json", func(_, s string) string { b, _ := json.Marshal(map[string]string{"password": s}); return string(b) }},
	{"json of form", func(_, s string) string {
		b, _ := json.Marshal(url.Values{"client_secret": {s}}.Encode())
		return "body " + string(b)
	}},
	{"html", func(_, s string) string { return "<pre>" + html.EscapeString(s) + "</pre>" }},
	{"go quoted", func(_, s string) string { return "value " + strconv.Quote(s) }},
	{"base64", func(_, s string) string {
		return "dump " + base64.StdEncoding.EncodeToString([]byte("secret="+s+"&a=b"))
	}},
	{"base64url raw", func(_, s string) string { return "dump " + base64.RawURLEncoding.EncodeToString([]byte(s)) }},
	{"hex of the form body", func(id, s string) string {
		return "request body " + hex.EncodeToString([]byte(url.Values{"client_id": {id}, "client_secret": {s}}.Encode()))
	}},
	{"hex upper case", func(_, s string) string { return "dump " + strings.ToUpper(hex.EncodeToString([]byte("pw="+s))) }},
	{"hex in lines of 40", func(_, s string) string {
		return "dump:\n" + lines(hex.EncodeToString([]byte("grant_type=password&password="+url.QueryEscape(s))), 40) + "\nend"
	}},
	{"hex after a hex word", func(_, s string) string { return "see cafe" + hex.EncodeToString([]byte(s)) }},
	{"double encoded", func(_, s string) string { return "x=" + url.QueryEscape(url.QueryEscape(s)) }},
	{"truncated by the server", func(_, s string) string { return "token " + s[:len(s)-1] }},
	{"control characters around", func(_, s string) string { return "\x1b[31m" + s + "\n" }},
}

// TestScrubEchoes: every echo style of every secret kind comes out of
// Scrub with the secret gone in any readable form; a plain description
// around it survives (or, when nothing can be cut out cleanly, the text is
// withheld as a whole).
func TestScrubEchoes(t *testing.T) {
	const id = "gw"
	for _, k := range secretKinds {
		for _, st := range echoStyles {
			if st.name == "truncated by the server" && len(k.value) <= minSecret {
				continue // a fragment of a short code is no credential
			}
			in := "invalid_client: " + st.echo(id, k.value)
			out := Scrub(in, []string{"unrelated-secret", k.value})
			for _, v := range decodings(out) {
				if strings.Contains(v, k.value) {
					t.Errorf("%s echoed %s: %q still reads %q (as %q)", k.name, st.name, out, k.value, v)
				}
			}
			if enc := st.echo(id, k.value); strings.Contains(out, enc) {
				t.Errorf("%s echoed %s: echo kept verbatim in %q", k.name, st.name, out)
			}
			if out != Withheld && !strings.HasPrefix(out, "invalid_client: ") {
				t.Errorf("%s echoed %s: description lost: %q", k.name, st.name, out)
			}
		}
	}
}

// lines breaks s into lines of n characters.
func lines(s string, n int) string {
	var b strings.Builder
	for len(s) > n {
		b.WriteString(s[:n] + "\n")
		s = s[n:]
	}
	b.WriteString(s)
	return b.String()
}

// hexViews decodes every hex run of out, its spaces removed, in both
// alignments.
func hexViews(out string) []string {
	var views []string
	// Scrub joins hex across what it turns into spaces: spaces and
	// control characters (line breaks).
	joined := strings.Map(func(r rune) rune {
		if r == ' ' || unicode.IsControl(r) {
			return -1
		}
		return r
	}, out)
	for _, run := range strings.FieldsFunc(joined, func(r rune) bool { return !isHex(byte(r)) || r > 0x7f }) {
		for off := 0; off < 2 && off < len(run); off++ {
			r := run[off:]
			if b, err := hex.DecodeString(r[:len(r)/2*2]); err == nil {
				views = append(views, string(b))
			}
		}
	}
	return views
}

// decodings are what a reader of out could decode it to.
func decodings(out string) []string {
	views := append([]string{out}, hexViews(out)...)
	if u, err := url.QueryUnescape(out); err == nil {
		views = append(views, u)
	}
	for _, f := range strings.FieldsFunc(out, func(r rune) bool { return r == ' ' || r == '=' || r == '%' }) {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(f); err == nil {
				views = append(views, string(b))
			}
		}
	}
	var s string
	if json.Unmarshal([]byte(`"`+out+`"`), &s) == nil {
		views = append(views, s)
	}
	return append(views, html.UnescapeString(out))
}

// TestScrubKeepsWhatIsNotSecret: no secrets, or text without them, passes
// unchanged (apart from control characters and length).
func TestScrubKeepsWhatIsNotSecret(t *testing.T) {
	in := `invalid_grant: refresh token expired (code=E42, see https://as.example/docs?a=b%20c)`
	if got := Scrub(in, []string{"rt+abc/def==", "s3cr+t/=&x y"}); got != in {
		t.Errorf("Scrub changed text without secrets: %q", got)
	}
}

// FuzzScrub: whatever a server wraps a secret in, the scrubbed text does
// not hold it, and it stays bounded. (A secret that Scrub's own markers
// could spell is left out: a server cannot make those.)
func FuzzScrub(f *testing.F) {
	f.Add("got Basic Z3c6U1VQRVItQ0xJRU5ULVNFQ1JFVC00Mg==", "SUPER-CLIENT-SECRET-42")
	f.Add("client_secret=s3cr%2Bt%2F%3D%26x+y&refresh_token=rt%2Babc%2Fdef%3D%3D", "s3cr+t/=&x y")
	f.Add(`"password":"Sec\u0026ret\u003cPw\"2"`, `Sec&ret<Pw"2`)
	f.Add("x\tyzzy-secret", "x yzzy-secret")
	f.Add("dump 7061737377;6f72643d53555045522d434c49454e542d5345435245542d3432", "SUPER-CLIENT-SECRET-42")
	f.Add("body: 636C69656E745F7365637265743D73336372\n2B742F3D2678207926783D31", "s3cr+t/=&x y")
	f.Add("see cafe 73 33 63 72 2b 74 2f 3d 26 78 20 79", "s3cr+t/=&x y")
	f.Fuzz(func(t *testing.T, text, secret string) {
		if len(secret) < minSecret || strings.TrimSpace(secret) != secret ||
			strings.Contains(Redacted+Withheld+"…", secret) {
			return
		}
		out := Scrub(text, []string{secret})
		if strings.Contains(out, secret) {
			t.Fatalf("Scrub(%q, %q) = %q", text, secret, out)
		}
		for _, v := range hexViews(out) {
			if strings.Contains(v, secret) {
				t.Fatalf("Scrub(%q, %q) = %q: hex still reads the secret", text, secret, out)
			}
		}
		if n := len([]rune(out)); n > MaxTextRunes+1 {
			t.Fatalf("%d runes", n)
		}
	})
}

func TestPrefixAtEnd(t *testing.T) {
	for _, tc := range []struct {
		s, f string
		want int
	}{
		{"token abcde", "abcdef", 5},
		{"token abcdef", "abcdef", 0}, // whole: not a truncation (ReplaceAll's)
		{"aaab", "aab", 0},
		{"xaabaa", "aabaab", 5},
		{"abab", "ababc", 4},
		{"", "abc", 0},
		{"abc", "", 0},
	} {
		if got := prefixAtEnd(tc.s, tc.f); got != tc.want {
			t.Errorf("prefixAtEnd(%q, %q) = %d, want %d", tc.s, tc.f, got, tc.want)
		}
	}
}
