package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"html"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Everything a token server says in an error is untrusted text that may
// hold request material: proxies, WAFs and debug builds echo the request
// (its form body, its Authorization header, its JSON) back in a message or
// error_description. Scrub is the one function such text passes through
// before it is stored in an error, and so before it reaches a log line, the
// admin API or a status. It recognises each secret in every form an echo
// gives it, and withholds the whole text when a secret survives anyway.

// Redacted replaces a secret in scrubbed text.
const Redacted = "[redacted]"

// Withheld replaces the whole text when a secret could not be cut out of it.
const Withheld = "[server text withheld: it quoted request credentials]"

// minSecret is the shortest secret recognised inside encoded runs (base64)
// and as a truncated tail: shorter strings would match by chance.
const minSecret = 6

// maxScrubInput bounds the text examined. What is kept is MaxTextRunes,
// but cutting before scrubbing could split a secret so that its first half
// survives; cutting this far out, no scrubbing can shrink what precedes
// the cut into the kept part (each redaction keeps ≥ 10 runes per secret).
const maxScrubInput = 64 << 10

// Scrub makes server- or library-provided text safe for an error string and
// a log line: every non-empty secret is replaced by Redacted in each form
// an echo gives it — raw, URL query or form encoded (%XX in either case, +
// for space), path escaped, JSON string escaped (\u0026 …), HTML escaped,
// Go quoted, base64 (standard and URL, padded or not) or hex (either case,
// also broken into lines) of the secret or of anything containing it, such
// as a Basic "id:secret" or a whole form body — and the text is
// withheld altogether if a secret can still be read out of it after
// decoding. Control characters (log injection) become spaces, the result
// is cut to MaxTextRunes runes (marked by "…") and trimmed.
func Scrub(s string, secrets []string) string {
	if len(s) > maxScrubInput {
		s = s[:maxScrubInput]
	}
	// Control characters become spaces first: done after redaction, a
	// secret echoed with a tab for its space would come out whole.
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	var forms []string
	for _, sec := range secrets {
		if sec != "" {
			forms = append(forms, encodings(sec)...)
		}
	}
	if len(forms) > 0 {
		// Longest first, so a form containing another (a JSON escape of a
		// form encoding) is cut out whole.
		slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
		forms = slices.Compact(forms)
		for _, f := range forms {
			s = strings.ReplaceAll(s, f, Redacted)
		}
		s = scrubBase64(s, forms)
		s = scrubHex(s, forms)
		s = scrubTail(s, forms)
		if readable(s, secrets) {
			return Withheld
		}
	}
	return bound(s)
}

// encodings returns the forms in which sec appears in echoed request
// material.
func encodings(sec string) []string {
	q := url.QueryEscape(sec)
	p := url.PathEscape(sec)
	out := []string{sec, q, lowerHex(q), p, lowerHex(p),
		strings.ReplaceAll(q, "+", "%20"), jsonEscape(sec, true), jsonEscape(sec, false),
		html.EscapeString(sec), strings.Trim(strconv.Quote(sec), `"`)}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		out = append(out, enc.EncodeToString([]byte(sec)))
	}
	// A JSON echo of form-encoded material (a debug body dump).
	out = append(out, jsonEscape(q, true))
	return out
}

// lowerHex lowercases the hex digits of %XX escapes.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = toLower(b[i+1]), toLower(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func toLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// jsonEscape is sec as it appears inside a JSON string, with or without
// encoding/json's HTML escaping (\u0026 for &, \u003c for <, …).
func jsonEscape(sec string, escapeHTML bool) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(sec) // a string always encodes
	return strings.TrimSuffix(strings.TrimSuffix(b.String(), "\n"), `"`)[1:]
}

// isBase64Char reports whether c is in the standard or URL base64
// alphabet (padding aside).
func isBase64Char(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '+' || c == '/' || c == '-' || c == '_'
}

// scrubBase64 redacts every base64 run that decodes to something holding a
// secret form, such as "Basic " + base64("id:secret") (where RFC 6749 has
// id and secret form-encoded first). A run may start with unrelated
// characters (an echoed "%20" leaves "20" before it), so each of the four
// alignments is tried.
func scrubBase64(s string, forms []string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		if !isBase64Char(s[i]) {
			b.WriteByte(s[i])
			i++
			continue
		}
		j := i
		for j < len(s) && isBase64Char(s[j]) {
			j++
		}
		// Padding ends a run; an "=" inside one is a form's key=value.
		for j < len(s) && s[j] == '=' {
			j++
		}
		if run := s[i:j]; len(run) >= minSecret && decodesToSecret(run, forms) {
			b.WriteString(Redacted)
		} else {
			b.WriteString(run)
		}
		i = j
	}
	return b.String()
}

func decodesToSecret(run string, forms []string) bool {
	for off := 0; off < 4 && off < len(run); off++ {
		r := strings.TrimRight(run[off:], "=")
		if len(r)%4 == 1 { // not a whole number of bytes: a stray character
			r = r[:len(r)-1]
		}
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			dec, err := enc.DecodeString(r)
			if err != nil {
				continue
			}
			for _, f := range forms {
				if len(f) >= minSecret && strings.Contains(string(dec), f) {
					return true
				}
			}
		}
	}
	return false
}

// scrubHex redacts every hex run (either case) that decodes to something
// holding a secret form: a server dumping its request body in hex. A dump
// is often broken into lines, which Scrub has turned into spaces by now, so
// a run continues across spaces when hex follows them. The run may start
// with an unrelated hex letter ("see abcd…"), so both alignments are tried.
func scrubHex(s string, forms []string) string {
	var b strings.Builder
	var digits []byte
	for i := 0; i < len(s); {
		if !isHex(s[i]) {
			b.WriteByte(s[i])
			i++
			continue
		}
		digits = digits[:0]
		j, end := i, i // end: just past the run's last hex digit
		for j < len(s) {
			if isHex(s[j]) {
				digits = append(digits, s[j])
				j++
				end = j
				continue
			}
			k := j
			for k < len(s) && s[k] == ' ' {
				k++
			}
			if k == j || k == len(s) || !isHex(s[k]) {
				break
			}
			j = k
		}
		if len(digits) >= 2*minSecret && hexHoldsSecret(digits, forms) {
			b.WriteString(Redacted)
		} else {
			b.WriteString(s[i:end])
		}
		i = end
	}
	return b.String()
}

func hexHoldsSecret(digits []byte, forms []string) bool {
	dec := make([]byte, len(digits)/2)
	for off := 0; off < 2; off++ {
		n := (len(digits) - off) / 2
		if _, err := hex.Decode(dec[:n], digits[off:off+2*n]); err != nil {
			continue
		}
		for _, f := range forms {
			if len(f) >= minSecret && bytes.Contains(dec[:n], []byte(f)) {
				return true
			}
		}
	}
	return false
}

// scrubTail redacts a secret the server cut short at the end of its text
// (a description truncated to its own limit): a tail of at least minSecret
// characters that begins one of the forms.
func scrubTail(s string, forms []string) string {
	for _, f := range forms {
		if n := prefixAtEnd(s, f); n >= minSecret {
			return s[:len(s)-n] + Redacted
		}
	}
	return s
}

// prefixAtEnd is the length of the longest proper prefix of f that s ends
// with, in linear time (Knuth-Morris-Pratt): secrets and texts may be long.
func prefixAtEnd(s, f string) int {
	if len(f) < 2 {
		return 0
	}
	fail := make([]int, len(f)) // fail[i]: longest proper border of f[:i+1]
	for i, k := 1, 0; i < len(f); i++ {
		for k > 0 && f[i] != f[k] {
			k = fail[k-1]
		}
		if f[i] == f[k] {
			k++
		}
		fail[i] = k
	}
	k := 0
	for i := max(0, len(s)-len(f)+1); i < len(s); i++ {
		for k > 0 && (k == len(f)-1 || s[i] != f[k]) {
			k = fail[k-1]
		}
		if s[i] == f[k] {
			k++
		}
	}
	return k
}

// readable reports whether a secret can still be read out of s once its
// escapes are undone (percent and + encoding, JSON and HTML escapes, in
// either order): the safety net for combinations no form above covers.
func readable(s string, secrets []string) bool {
	views := []string{s}
	for range 2 {
		for _, v := range views {
			views = append(views, unescapeURL(v), unescapeJSON(v), html.UnescapeString(v))
		}
	}
	for _, sec := range secrets {
		if len(sec) < minSecret && sec != "" {
			continue // too short to tell from chance once decoded
		}
		for _, v := range views {
			if sec != "" && strings.Contains(v, sec) {
				return true
			}
		}
	}
	return false
}

// unescapeURL undoes %XX (either case) and + leniently: a broken escape
// stays as it is.
func unescapeURL(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '+':
			b.WriteByte(' ')
		case s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unescapeJSON undoes JSON string escapes (\uXXXX, \", \\, \/, \n …)
// leniently: a broken escape stays as it is.
func unescapeJSON(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch c := s[i+1]; c {
		case 'u':
			if i+6 <= len(s) {
				if v, err := strconv.ParseUint(s[i+2:i+6], 16, 16); err == nil {
					b.WriteRune(rune(v))
					i += 5
					continue
				}
			}
			b.WriteByte(s[i])
		case '"', '\\', '/':
			b.WriteByte(c)
			i++
		case 'n', 't', 'r', 'b', 'f':
			b.WriteByte(' ')
			i++
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// bound cuts s to MaxTextRunes runes (marked by "…") and trims it.
func bound(s string) string {
	out := make([]rune, 0, min(len(s), MaxTextRunes+1))
	for _, r := range s {
		if len(out) == MaxTextRunes {
			out = append(out, '…')
			break
		}
		out = append(out, r)
	}
	return strings.TrimSpace(string(out))
}
