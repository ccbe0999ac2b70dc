// Package redistest runs a redis-server of a test's own, for the tests of
// packages in this module that need a real Redis. (interop has a fuller
// one, with restarts, for the drills; this one is kept apart so that the
// root module does not depend on interop, which may become a module of
// its own.)
package redistest

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Start starts redis-server (Debian package redis-server) on a free
// 127.0.0.1 port with its data in tb's temp dir, waits until it accepts
// connections and returns its host:port. It is killed when tb ends.
// Without the binary the test is skipped, or failed under $CI.
func Start(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("redis-server not found (apt-get install redis-server): %v", err)
		}
		tb.Skipf("REDIS TEST NOT RUN: redis-server not found (apt-get install redis-server): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--dir", tb.TempDir(),
		"--save", "", "--appendonly", "no", "--daemonize", "no")
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting %s: %v", bin, err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			tb.Fatal("redis-server exited at start")
		}
	case <-time.After(20 * time.Second):
		tb.Fatal("redis-server not ready after 20s")
	}
	return net.JoinHostPort("127.0.0.1", port)
}
