// Package drills runs several Caddy processes on one real Redis (through
// interop/redisstore and a fault proxy per process) against the sandbox,
// and checks the engine's promise under faults: a refresh token is
// presented at most once, and a fault never costs the session.
//
// Token lifetimes are seconds long so the drills count lifetimes, not wall
// time: a "lifetime" is one access token's life from its issue to the
// refresh that replaces it, i.e. one refresh success at the sandbox.
package drills

import (
	"fmt"
	"testing"
	"time"
)

// Drill 1: three processes, one session, 20 lifetimes under load.
func TestDrillSteady(t *testing.T) {
	c := startCluster(t, clusterOptions{instances: 3, ttl: 2 * time.Second, refreshBefore: time.Second})
	base := c.sb.Stats()
	l := c.startLoad()
	start := time.Now()
	c.waitRefreshes(base.RefreshSuccesses+20, 90*time.Second)
	l.finish()
	elapsed := time.Since(start)
	c.logCounts("drill 1")
	tl := count(l.snapshot(), nil)
	t.Logf("drill 1: %v for 20 lifetimes; requests=%d ok=%d failed=%d %v", elapsed.Round(time.Millisecond), tl.total, tl.ok, tl.failed, tl.byStatus)
	c.assertExactlyOnce(base, 20)
	if tl.failed != 0 {
		t.Errorf("failed requests = %d, want 0 (%v)", tl.failed, tl.byStatus)
	}
}

// Drill 2: 50–200 ms on every Redis call of every process. Same figures,
// and no request fails, so every refresh finished before its token's end.
func TestDrillLatency(t *testing.T) {
	c := startCluster(t, clusterOptions{instances: 3, ttl: 3 * time.Second, refreshBefore: 2 * time.Second})
	for _, n := range c.nodes {
		n.proxy.setLatency(50*time.Millisecond, 200*time.Millisecond)
	}
	base := c.sb.Stats()
	l := c.startLoad()
	start := time.Now()
	c.waitRefreshes(base.RefreshSuccesses+20, 120*time.Second)
	l.finish()
	elapsed := time.Since(start)
	c.logCounts("drill 2")
	tl := count(l.snapshot(), nil)
	t.Logf("drill 2: %v for 20 lifetimes; requests=%d ok=%d failed=%d %v", elapsed.Round(time.Millisecond), tl.total, tl.ok, tl.failed, tl.byStatus)
	c.assertExactlyOnce(base, 20)
	if tl.failed != 0 {
		t.Errorf("failed requests = %d, want 0: a refresh did not finish before expiry (%v)", tl.failed, tl.byStatus)
	}
}

// Drill 3: one process partitioned from Redis for two lifetimes. It serves
// its valid token, then answers 503 with Retry-After (it cannot record an
// intent, so it must not present its refresh token), and adopts the shared
// session once the partition heals.
func TestDrillPartition(t *testing.T) {
	c := startCluster(t, clusterOptions{instances: 3, ttl: 2 * time.Second, refreshBefore: time.Second})
	l := c.startLoad()
	c.waitRefreshes(c.sb.Stats().RefreshSuccesses+2, 30*time.Second)
	victim := c.nodes[2]
	base := c.sb.Stats()
	partStart := time.Now()
	victim.proxy.setPartition(true)
	// Read after cutting: the victim cannot adopt a newer token now.
	st := c.status(victim)
	expiresAt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(st["expires_at"]))
	if err != nil {
		t.Fatalf("victim's token expiry %v: %v", st["expires_at"], err)
	}
	// Two lifetimes: two refreshes by the others, and two token lifetimes
	// of wall time, so the victim's token (issued before the partition)
	// has been expired for at least one of them.
	c.waitRefreshes(base.RefreshSuccesses+2, 60*time.Second)
	poll(10*time.Second, 50*time.Millisecond, func() bool { return time.Since(partStart) > 2*c.opts.ttl })
	victim.proxy.setPartition(false)
	healed := time.Now()
	recovered := poll(150*time.Second, 50*time.Millisecond, func() bool {
		return count(l.snapshot(), func(r result) bool { return r.node == 2 && r.start.After(healed) }).ok > 0
	})
	recovery := time.Since(healed)
	c.waitRefreshes(c.sb.Stats().RefreshSuccesses+1, 30*time.Second)
	l.finish()
	rs := l.snapshot()
	c.logCounts("drill 3")

	others := count(rs, func(r result) bool { return r.node != 2 })
	valid := count(rs, func(r result) bool {
		return r.node == 2 && r.start.After(partStart) && r.end.Before(expiresAt.Add(-300*time.Millisecond))
	})
	during := count(rs, func(r result) bool { return r.node == 2 && r.start.After(partStart) && r.end.Before(healed) })
	victimAll := count(rs, func(r result) bool { return r.node == 2 })
	t.Logf("drill 3: partition %v (token valid for %v of it); victim during partition: %d requests, %d ok with its valid token, %d × 503+Retry-After, %v",
		healed.Sub(partStart).Round(time.Millisecond), expiresAt.Sub(partStart).Round(time.Millisecond), during.total, valid.ok, during.unavailable, during.byStatus)
	t.Logf("drill 3: victim serving again %v after the partition healed; others: %d requests, %d failed", recovery.Round(time.Millisecond), others.total, others.failed)

	c.assertExactlyOnce(base, 2)
	if !recovered {
		t.Errorf("victim did not serve again within 150s of the partition healing")
	}
	if others.failed != 0 {
		t.Errorf("instances outside the partition failed %d requests (%v)", others.failed, others.byStatus)
	}
	if valid.failed != 0 {
		t.Errorf("victim failed %d requests while its token was still valid (%v)", valid.failed, valid.byStatus)
	}
	if during.unavailable == 0 {
		t.Errorf("victim never answered 503 with Retry-After after its token expired (%v)", during.byStatus)
	}
	if victimAll.failed != victimAll.unavailable {
		t.Errorf("victim failures other than 503+Retry-After: %v", victimAll.byStatus)
	}
}
