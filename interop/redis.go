package interop

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server process of a test's own, on 127.0.0.1 with its
// data directory in the test's temp dir. It is stopped when the test ends.
type Redis struct {
	// Addr is host:port; it stays the same across Kill and Start.
	Addr string

	t       testing.TB
	bin     string
	args    []string
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logTail *SyncBuffer
}

// RedisOptions configure StartRedis.
type RedisOptions struct {
	// Persist turns on the append-only file with an fsync per write, so a
	// killed server restarts with every acknowledged write. Off, a
	// restart loses everything.
	Persist bool
}

// StartRedis starts redis-server (Debian package redis-server) and waits
// until it accepts connections. Without the binary it skips the test with
// a loud banner, or fails it under $CI or $INTEROP_REQUIRE.
func StartRedis(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missingRedis(t, err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("redis: %v", err)
	}
	appendonly := "no"
	if opts.Persist {
		appendonly = "yes"
	}
	r := &Redis{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		bin:  bin,
		args: []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", t.TempDir(), "--save", "", "--appendonly", appendonly, "--appendfsync", "always",
			"--daemonize", "no", "--loglevel", "notice",
		},
		logTail: new(SyncBuffer),
	}
	r.Start()
	t.Cleanup(r.Kill)
	return r
}

// Start starts the server again after Kill, on the same port and data
// directory, and waits until it accepts connections.
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		r.t.Fatal("redis: Start while running")
	}
	cmd := exec.Command(r.bin, r.args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.t.Fatalf("redis: %v", err)
	}
	cmd.Stderr = r.logTail
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("redis: starting %s: %v", r.bin, err)
	}
	ready := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			fmt.Fprintln(r.logTail, sc.Text())
			if !signalled && strings.Contains(sc.Text(), "Ready to accept connections") {
				signalled = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case <-ready:
	case <-exited:
		r.t.Fatalf("redis: exited at start:\n%s", r.logTail)
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		r.t.Fatalf("redis: not ready after 20s:\n%s", r.logTail)
	}
	r.cmd, r.exited = cmd, exited
}

// Kill stops the server with SIGKILL (no chance to save anything) and
// waits until it has exited. Killing a stopped server does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
	r.cmd = nil
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before redis-server binds it; that fails the start loudly.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// missingRedis skips (or, under CI, fails) a test that needs redis-server.
func missingRedis(t testing.TB, err error) {
	t.Helper()
	banner := strings.Repeat("!", 72)
	msg := fmt.Sprintf("\n%s\n!! REDIS TEST NOT RUN: redis-server not found (%v)\n!! Install it (Debian: apt-get install redis-server); .ci/run does.\n%s", banner, err, banner)
	if os.Getenv("CI") != "" || os.Getenv("INTEROP_REQUIRE") != "" {
		t.Fatal(msg)
	}
	t.Log(msg)
	t.Skip("interop: redis-server not found")
}
