package injecttoken

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeFirstScreen: the README stays short, shows both set-up
// commands near its top, runs the same test command as .ci/run, and links
// every page under docs/ (reference material moved there stays reachable).
func TestReadmeFirstScreen(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	lines := strings.Split(readme, "\n")
	if len(lines) > 251 {
		t.Errorf("README has %d lines; reference material belongs in docs/", len(lines)-1)
	}
	const demo = "go run ./cmd/caddy run --config Caddyfile.example"
	ci, err := os.ReadFile(".ci/run")
	if err != nil {
		t.Fatal(err)
	}
	ciLines := strings.Split(strings.TrimSpace(string(ci)), "\n")
	testCmd := ciLines[len(ciLines)-1] // .ci/run ends with the test command
	firstScreen := strings.Join(lines[:min(len(lines), 50)], "\n")
	for _, cmd := range []string{demo, testCmd} {
		if !strings.Contains(firstScreen, "\n"+cmd+"\n") {
			t.Errorf("the README's first 50 lines lack the command %q", cmd)
		}
	}
	pages, err := filepath.Glob("docs/*.md")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs pages: %v", err)
	}
	for _, p := range pages {
		if !strings.Contains(readme, "]("+p+")") {
			t.Errorf("README does not link %s", p)
		}
	}
	if !regexp.MustCompile(`(?m)^SPDX-License-Identifier: Apache-2.0`).MatchString(readme) {
		t.Error("README lacks the SPDX line")
	}
	if _, err := os.Stat("LICENSE"); err != nil {
		t.Error(err)
	}
}
