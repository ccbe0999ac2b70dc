package wire

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

func TestRequestBuild(t *testing.T) {
	u, _ := url.Parse("https://as.example/oauth2/token?x=1")
	key, err := dpop.GenerateKey(dpop.ES256)
	if err != nil {
		t.Fatal(err)
	}
	nonces := new(dpop.NonceStore)
	nonces.Set(u, "n-1")
	iat := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	r := &Request{
		Method: http.MethodPost, URL: u,
		Body: []byte("a=b"), ContentType: "application/x-www-form-urlencoded",
		Header:    http.Header{"Authorization": {"Basic eA=="}, "Accept": {"text/html"}},
		UserAgent: "ua/1",
		Key:       key, Nonces: nonces, ProofTime: iat,
	}
	req, err := r.Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(req.Body)
	if req.Method != http.MethodPost || req.URL.String() != u.String() || string(body) != "a=b" {
		t.Errorf("request %s %s %q", req.Method, req.URL, body)
	}
	for k, want := range map[string]string{
		"Authorization": "Basic eA==",
		"Accept":        "application/json", // set over the caller's
		"User-Agent":    "ua/1",
		"Content-Type":  "application/x-www-form-urlencoded",
	} {
		if got := req.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	var proof struct {
		HTM   string  `json:"htm"`
		HTU   string  `json:"htu"`
		Nonce string  `json:"nonce"`
		IAT   float64 `json:"iat"`
		JTI   string  `json:"jti"`
	}
	if !JWTClaims(req.Header.Get("DPoP"), &proof) {
		t.Fatalf("DPoP header %q", req.Header.Get("DPoP"))
	}
	if proof.HTM != "POST" || proof.HTU != "https://as.example/oauth2/token" || proof.Nonce != "n-1" || int64(proof.IAT) != iat.Unix() || proof.JTI == "" {
		t.Errorf("proof claims %+v", proof)
	}

	// Every Build is a new proof.
	again, err := r.Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if again.Header.Get("DPoP") == req.Header.Get("DPoP") {
		t.Error("the same proof twice")
	}
}

func TestRequestBuildPlain(t *testing.T) {
	u, _ := url.Parse("https://as.example/.well-known/openid-configuration")
	req, err := (&Request{Method: http.MethodGet, URL: u, ContentType: "application/json", UserAgent: "ua/1"}).Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if req.Body != nil && req.Body != http.NoBody {
		t.Error("a body without Body")
	}
	if req.Header.Get("Content-Type") != "" || req.Header.Get("DPoP") != "" || req.Header.Get("Accept") != "application/json" {
		t.Errorf("headers %v", req.Header)
	}
	// Nonces is optional with a key.
	key, _ := dpop.GenerateKey(dpop.ES256)
	req, err = (&Request{Method: http.MethodGet, URL: u, Key: key}).Build(context.Background())
	if err != nil || req.Header.Get("DPoP") == "" {
		t.Errorf("proof without a nonce store: %v", err)
	}
	if _, err := (&Request{Method: "BAD METHOD", URL: u}).Build(context.Background()); err == nil {
		t.Error("invalid method accepted")
	}
}
