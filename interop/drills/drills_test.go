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
