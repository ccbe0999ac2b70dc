package dpop

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestClockStoreLearnsPerOrigin(t *testing.T) {
	var s ClockStore
	a, _ := url.Parse("https://A.example/x")
	b, _ := url.Parse("https://b.example/y")
	now := time.Now()
	s.Observe(a, now.Add(300*time.Second).UTC().Format(http.TimeFormat), now, false)
	if skew, ok := s.Skew(a); !ok || (skew+300*time.Second).Abs() > time.Second {
		t.Fatalf("a: %v %v, want about -300s", skew, ok)
	}
	if _, ok := s.Skew(b); ok {
		t.Fatal("b learned a's clock")
	}
	s.Observe(a, now.UTC().Format(http.TimeFormat), now.Add(200*time.Millisecond), false)
	if _, ok := s.Skew(a); ok || s.Len() != 0 {
		t.Fatal("an agreeing Date did not forget the offset")
	}
	s.Observe(a, "not a date", now, false)
	if s.Len() != 0 {
		t.Fatal("a bad Date was learned")
	}
	s.Observe(b, now.UTC().Format(http.TimeFormat), now, true)
	if skew, ok := s.Skew(b); !ok || skew != 0 {
		t.Fatalf("agreement not remembered: %v %v", skew, ok)
	}
}

func TestClockStoreBounded(t *testing.T) {
	clock := time.Now()
	s := ClockStore{now: func() time.Time { return clock }}
	for i := range MaxClockOrigins + 10 {
		u, _ := url.Parse(fmt.Sprintf("https://h%d.example", i))
		s.Set(u, time.Minute)
	}
	if s.Len() != MaxClockOrigins {
		t.Fatalf("Len = %d, want %d", s.Len(), MaxClockOrigins)
	}
	first, _ := url.Parse("https://h0.example")
	if _, ok := s.Skew(first); ok {
		t.Fatal("the least recently used origin was kept")
	}
	last, _ := url.Parse(fmt.Sprintf("https://h%d.example", MaxClockOrigins+9))
	clock = clock.Add(MaxClockAge + time.Second)
	if _, ok := s.Skew(last); ok {
		t.Fatal("an offset older than MaxClockAge was used")
	}
}
