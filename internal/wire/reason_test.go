package wire

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestHasRetryAfter(t *testing.T) {
	for v, want := range map[string]bool{
		"0": true, "120": true, " 7 ": true, time.Now().UTC().Format(http.TimeFormat): true,
		"": false, "-1": false, "soon": false, "1.5": false,
	} {
		h := http.Header{}
		if v != "" {
			h.Set("Retry-After", v)
		}
		if got := HasRetryAfter(h); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

func TestReason(t *testing.T) {
	timeout := &os.SyscallError{Syscall: "read", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		status int
		cause  error
		want   string
	}{
		{429, nil, "rate_limited"},
		{500, nil, "status_5xx"},
		{503, nil, "status_5xx"},
		{200, errors.New("bad json"), "malformed_response"},
		{404, nil, "other"},
		{0, nil, "other"},
		{0, fmt.Errorf("wrapped: %w", context.DeadlineExceeded), "timeout"},
		{0, timeout, "timeout"},
		{0, syscall.ECONNREFUSED, "connect"},
		{0, errors.New("connection reset by peer"), "connect"},
	} {
		if got := Reason(tc.status, tc.cause); got != tc.want {
			t.Errorf("Reason(%d, %v) = %q, want %q", tc.status, tc.cause, got, tc.want)
		}
	}
}
