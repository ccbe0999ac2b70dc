package drills

import (
	"bytes"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

// Drill 8 (issue 19, schedule 1 on Redis): one instance reads through a
// stale replica. It is stopped after taking the lease and re-reading the
// record, and from that moment its fault proxy answers every GET it had
// answered before with the reply it gave then, as a replica that stopped
// replicating would: the record, the lock's value. It stays stopped past
// its lease while the others refresh twice, and reads stale for two more
// refreshes after it resumes. Whatever it reads, it presents no refresh
// token the others spent (its conditional write of an intent compares the
// version on the primary, which moved on), and the session survives:
// reuse 0, one login, and it serves again once the replica catches up.
//
// The claims this schedule broke (a listing from a cache hid the other
// writer's claims: reuse 1) are not needed on this storage; tokencache's
// TestScheduleStaleListing runs the schedule on both kinds of storage,
// with the guard removed as well.
func TestDrillStaleReplica(t *testing.T) {
	// As in drill 4: a short lease, and reads that may take 10 s, so the
	// stop looks like a pause, not a timed-out read.
	c := startCluster(t, clusterOptions{instances: 3, ttl: lifetime, refreshBefore: refreshBefore,
		lockTTL: time.Second, redisTimeout: 10 * time.Second})
	l := c.startLoad()
	c.waitRefreshes(c.sb.Stats().RefreshSuccesses+1, 30*time.Second)
	victim := c.stopAtReread(func(n *node) { n.proxy.setStale(true) })
	vi := slices.Index(c.nodes, victim)
	l.pause(vi, true)
	atStop := c.sb.Stats()
	moved := poll(3*c.opts.ttl, 20*time.Millisecond, func() bool {
		st := c.sb.Stats()
		return st.RefreshSuccesses+st.Logins-atStop.RefreshSuccesses-atStop.Logins >= 2
	})
	victim.signal(t, syscall.SIGCONT)
	resumed := time.Now()
	l.pause(vi, false)
	c.waitRefreshes(c.sb.Stats().RefreshSuccesses+2, 60*time.Second)
	staleFor := time.Since(resumed)
	victim.proxy.setStale(false)
	caughtUp := time.Now()
	recovery := c.waitServing(victim, 60*time.Second)
	c.waitRefreshes(c.sb.Stats().RefreshSuccesses+2, 60*time.Second)
	l.finish()
	c.logCounts("drill 8")
	rs := l.snapshot()
	others := count(rs, func(r result) bool { return r.node != vi })
	after := count(rs, func(r result) bool { return r.node == vi && r.start.After(caughtUp.Add(recovery)) })
	log, _ := os.ReadFile(victim.logPath)
	t.Logf("drill 8: %s stopped at its re-read, then read a stale replica (others moved on while it was stopped: %v; stale %v); fenced: %v; others: %d requests, %d failed %v; %s serving again %v after the replica caught up, then %d requests, %d failed",
		victim.name, moved, staleFor.Round(time.Millisecond), bytes.Contains(log, []byte("session state changed")),
		others.total, others.failed, others.byStatus, victim.name, recovery.Round(time.Millisecond), after.total, after.failed)
	c.assertExactlyOnce(atStop, 4, 1)
	if others.failed != 0 {
		t.Errorf("instances reading Redis itself failed %d requests (%v)", others.failed, others.byStatus)
	}
}
