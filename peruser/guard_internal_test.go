package peruser

import (
	"strconv"
	"testing"
	"time"
)

func TestAddressKey(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.7":           "198.51.100.7",
		"::ffff:198.51.100.7":    "198.51.100.7",
		"2001:db8::11":           "2001:db8::/64",
		"2001:db8::ffff:1:2":     "2001:db8::/64",
		"2001:db8:0:1::11":       "2001:db8:0:1::/64",
		"fe80::1%eth0":           "fe80::/64",
		"not an address":         "not an address",
		"2001:db8:1:2:3:4:5:6":   "2001:db8:1:2::/64",
		"2001:0db8:0001:0002::9": "2001:db8:1:2::/64",
	} {
		if got := addressKey(in); got != want {
			t.Errorf("addressKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLimiterBounded: a spray of fresh keys never grows a limiter past
// maxLimiterKeys, and take/give keep each key's count.
func TestLimiterBounded(t *testing.T) {
	now := time.Now()
	l := newLimiter(2, time.Minute)
	for i := range maxLimiterKeys + 5000 {
		l.take(strconv.Itoa(i), now)
	}
	if n := len(l.m); n > maxLimiterKeys {
		t.Fatalf("%d keys kept", n)
	}
	if l.take("k", now) != 0 || l.take("k", now) != 0 || l.take("k", now) == 0 {
		t.Fatal("2 per window")
	}
	l.give("k", now)
	if l.take("k", now) != 0 {
		t.Fatal("a given-back event still counted")
	}
	if l.take("k", now.Add(time.Minute)) != 0 {
		t.Fatal("a new window")
	}
}
