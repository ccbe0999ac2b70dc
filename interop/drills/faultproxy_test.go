package drills

import (
	"bytes"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// faultProxy is a TCP proxy on 127.0.0.1 between one Caddy and Redis that
// can add latency to every call, cut connections, and partition its client
// from Redis. It is the fault injector of the drills; Redis's protocol is
// request/response, so delaying each client→server chunk delays each call.
type faultProxy struct {
	addr   string
	target string
	ln     net.Listener

	mu          sync.Mutex
	conns       map[net.Conn]bool // both ends of every live pair
	partitioned bool
	healed      chan struct{} // closed when a partition ends
	minLat      time.Duration
	maxLat      time.Duration
	calls       int64 // client→server chunks forwarded
	// intercept, when set, sees every client→server chunk; a func it
	// returns runs just before the reply to that chunk is delivered.
	intercept func(req []byte) (beforeReply func())
	// stale: GETs are answered from replies (as a replica that stopped
	// replicating would) when one was recorded for the same request;
	// everything else still reaches Redis.
	stale   bool
	replies map[string][]byte // GET request → the latest reply Redis gave it
}

// pair is one proxied connection's pending interception.
type pair struct {
	mu          sync.Mutex
	beforeReply func()
	get         string // a GET forwarded: its reply is recorded (see stale)
}

func (c *pair) set(f func()) {
	c.mu.Lock()
	c.beforeReply = f
	c.mu.Unlock()
}

func (c *pair) take() func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.beforeReply
	c.beforeReply = nil
	return f
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{addr: ln.Addr().String(), target: target, ln: ln, conns: make(map[net.Conn]bool)}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *faultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *faultProxy) handle(client net.Conn) {
	if !p.track(client) {
		client.Close()
		return
	}
	defer p.untrack(client)
	// A partitioned client's new connections go nowhere: like dropped
	// packets, the client only learns from its own timeouts.
	if healed := p.partition(); healed != nil {
		<-healed
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	pr := new(pair)
	go func() { p.pipe(server, client, pr, true); done <- struct{}{} }()
	go func() { p.pipe(client, server, pr, false); done <- struct{}{} }()
	<-done
}

// pipe copies src to dst; upstream chunks get the configured latency, and
// during a partition nothing is forwarded in either direction.
func (p *faultProxy) pipe(dst, src net.Conn, pr *pair, upstream bool) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if healed := p.partition(); healed != nil {
				// Bytes sent into a partition are lost, and the
				// connection is dead to both ends once it heals.
				<-healed
				return
			}
			if upstream {
				p.delay()
				if f := p.interceptor(); f != nil {
					pr.set(f(buf[:n]))
				}
				if isGet(buf[:n]) {
					if reply := p.staleReply(buf[:n]); reply != nil {
						if _, werr := src.Write(reply); werr != nil {
							return
						}
						continue
					}
					pr.mu.Lock()
					pr.get = string(buf[:n])
					pr.mu.Unlock()
				}
			} else {
				if f := pr.take(); f != nil {
					f()
				}
				pr.mu.Lock()
				if pr.get != "" {
					p.record(pr.get, buf[:n])
					pr.get = ""
				}
				pr.mu.Unlock()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// isGet reports whether req is one Redis GET (go-redis sends one command
// per chunk unless it pipelines, which the storage module does not).
func isGet(req []byte) bool { return bytes.HasPrefix(req, []byte("*2\r\n$3\r\nget\r\n")) }

// staleReply is the recorded reply to req while the proxy plays a stale
// replica, else nil.
func (p *faultProxy) staleReply(req []byte) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stale {
		return nil
	}
	return p.replies[string(req)]
}

func (p *faultProxy) record(req string, reply []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.replies == nil {
		p.replies = make(map[string][]byte)
	}
	p.replies[req] = bytes.Clone(reply)
}

// setStale makes the proxy answer GETs as a replica that stopped
// replicating now would (true), or as Redis again (false).
func (p *faultProxy) setStale(on bool) {
	p.mu.Lock()
	p.stale = on
	p.mu.Unlock()
}

// partition returns a channel that closes when the current partition ends,
// or nil when there is none.
func (p *faultProxy) partition() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.partitioned {
		return p.healed
	}
	return nil
}

func (p *faultProxy) delay() {
	p.mu.Lock()
	p.calls++
	lo, hi := p.minLat, p.maxLat
	p.mu.Unlock()
	if hi <= 0 {
		return
	}
	d := lo
	if hi > lo {
		d += rand.N(hi - lo)
	}
	// The fault being injected, not synchronisation.
	time.Sleep(d)
}

func (p *faultProxy) interceptor() func([]byte) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.intercept
}

// setIntercept installs (or, with nil, removes) an interceptor.
func (p *faultProxy) setIntercept(f func(req []byte) (beforeReply func())) {
	p.mu.Lock()
	p.intercept = f
	p.mu.Unlock()
}

// setLatency delays every call by a uniform random time in [lo, hi].
func (p *faultProxy) setLatency(lo, hi time.Duration) {
	p.mu.Lock()
	p.minLat, p.maxLat = lo, hi
	p.mu.Unlock()
}

// callCount is how many client→server chunks (≈ Redis calls) were forwarded.
func (p *faultProxy) callCount() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// cut closes every connection through the proxy; new ones work.
func (p *faultProxy) cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = make(map[net.Conn]bool)
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// setPartition starts (true) or heals (false) a partition: while it lasts,
// nothing passes and new connections hang; healing drops every connection
// that lived through it, as a real partition's dead peers would be.
func (p *faultProxy) setPartition(on bool) {
	p.mu.Lock()
	switch {
	case on && !p.partitioned:
		p.partitioned, p.healed = true, make(chan struct{})
	case !on && p.partitioned:
		p.partitioned = false
		close(p.healed)
	}
	p.mu.Unlock()
}

func (p *faultProxy) close() {
	p.ln.Close()
	p.setPartition(false)
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}
