package cli

import (
	"strings"
	"testing"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

// The text status says which one-time-code flow the server accepted, once
// an OTP login was started, and says nothing about it before.
func TestStatusTextShowsOTPFlow(t *testing.T) {
	for flow, want := range map[string]string{
		"login_otp": "otp flow login_otp (current)",
		"otp":       "otp flow otp (documented fallback",
		"":          "",
	} {
		var b strings.Builder
		printStatus(&b, &Status{OTPFlow: flow, Engine: adminapi.Engine{Session: "demo", State: "active"}})
		out := strings.Join(strings.Fields(b.String()), " ")
		if want == "" && strings.Contains(out, "otp flow") || !strings.Contains(out, want) {
			t.Errorf("otp_flow %q:\n%s", flow, out)
		}
	}
}
