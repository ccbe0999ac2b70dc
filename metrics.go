package injecttoken

import (
	"errors"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Request results counted by caddy_inject_token_requests_total.
const (
	resultInjected    = "injected"    // a token was injected and the request forwarded
	resultUnavailable = "unavailable" // no valid token: answered 503
	resultNoUser      = "no_user"     // a template's request without a session key: answered 401
	resultRetried401  = "retried_401" // upstream said 401; retried once with a fresh token
)

// Kinds of upstream answer counted by
// caddy_inject_token_upstream_rejections_total.
const (
	rejectionToken       = "token_rejected"       // the upstream refused the token (401)
	rejectionNonce       = "nonce_challenge"      // the upstream asked for a DPoP nonce
	rejectionRateLimited = "refresh_rate_limited" // a rejection whose refresh the 401 budget skipped
)

// labelOther stands for a reason or storage operation outside the fixed
// sets below, so a backend's new error cannot add label values.
const labelOther = "other"

// The label values every session's counters start with at zero. A counter
// series that first appears at 1 has no earlier sample, so increase() in an
// alert rule would miss that first event; starting at zero, it does not.
var (
	attemptOutcomes = []string{
		tokencache.OutcomeRefreshed, tokencache.OutcomeAdopted, tokencache.OutcomeLoggedIn,
		tokencache.OutcomeTransient, tokencache.OutcomeDead, tokencache.OutcomeUnknown,
		tokencache.OutcomeLoginFail, tokencache.OutcomeLoggedOut,
	}
	failureReasons = []string{
		tokencache.ReasonTimeout, tokencache.ReasonConnect, tokencache.ReasonStatus5xx,
		tokencache.ReasonRateLimited, tokencache.ReasonInvalidGrant, tokencache.ReasonTokenReused, tokencache.ReasonInvalidClient,
		tokencache.ReasonDPoPRejected, tokencache.ReasonNonce, tokencache.ReasonMalformedResponse,
		tokencache.ReasonStorage, tokencache.ReasonLostOutcome, tokencache.ReasonUnusableToken,
		tokencache.ReasonOther,
	}
	// storageOps are the operations tokencache names in Event.Op.
	storageOps     = []string{"load", "store", "lock", "unlock", "delete", labelOther}
	requestResults = []string{resultInjected, resultUnavailable, resultRetried401, resultNoUser}
	// proofKinds are the attempts the transport signs proofs for.
	proofKinds     = []string{proofFirst, proofNonceRetry}
	rejectionKinds = []string{rejectionToken, rejectionNonce, rejectionRateLimited}
)

// failedOutcomes are the attempt outcomes counted as refresh failures even
// when the engine gave no reason.
var failedOutcomes = []string{
	tokencache.OutcomeTransient, tokencache.OutcomeDead, tokencache.OutcomeUnknown, tokencache.OutcomeLoginFail,
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "inject_token", Name: name, Help: help,
	}, labels)
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "inject_token", Name: name, Help: help, Buckets: buckets,
	}, labels)
}

// The collectors are created once and registered with every config's
// registry (caddy-craft §5), so their values survive reloads; a session's
// series are deleted when the session is destroyed (forgetSessionMetrics).
// Labels are session names and fixed strings only.
var (
	refreshTotal = counterVec("refresh_total",
		"Token refresh and login attempts by session and outcome (refreshed, adopted, logged_in, transient, dead, lost, login_fail, logged_out).",
		"session", "outcome")

	refreshFailures = counterVec("refresh_failures_total",
		"Failed refresh and login attempts by session and reason (timeout, connect, status_5xx, rate_limited, invalid_grant, token_reused, invalid_client, dpop_rejected, nonce, malformed_response, storage, lost_outcome, unusable_token, other).",
		"session", "reason")

	refreshDuration = histogramVec("refresh_duration_seconds",
		"Token server round trip of each refresh or login attempt, nonce and clock-skew retries included, by session and outcome.",
		[]float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		"session", "outcome")

	// A lead at or below zero means the old token expired before its
	// replacement arrived: the le="0" bucket counts those.
	refreshLead = histogramVec("refresh_lead_seconds",
		"How long before the previous access token's expiry each successful refresh finished, by session. A shrinking lead is the early warning.",
		[]float64{0, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		"session")

	lockWait = histogramVec("storage_lock_wait_seconds",
		"Time spent waiting for the session's storage lock, by session. Long waits mean another instance holds it.",
		[]float64{.001, .01, .1, .5, 1, 2.5, 5, 10, 30},
		"session")

	storageErrors = counterVec("storage_errors_total",
		"Failed storage operations by session and op (load, store, lock, unlock, delete, other).",
		"session", "op")

	requestsTotal = counterVec("requests_total",
		"Requests handled by inject_token by session and result (injected, unavailable, retried_401).",
		"session", "result")

	proofsTotal = counterVec("dpop_proofs_total",
		"DPoP proofs signed by the inject_token transport for upstream requests, by session and kind (first, nonce_retry).",
		"session", "kind")

	upstreamRejections = counterVec("upstream_rejections_total",
		"Upstream answers that rejected or challenged the injected credential, by session and kind (token_rejected, nonce_challenge, refresh_rate_limited).",
		"session", "kind")

	loginThrottled = counterVec("login_throttled_total",
		"Per-user logins refused at the gateway by template and by what was over its limit (account, address).",
		"template", "by")

	live = sessionCollector{}
)

// sessionVecs are the collectors whose series belong to one session each.
var sessionVecs = []interface {
	prometheus.Collector
	DeletePartialMatch(prometheus.Labels) int
}{refreshTotal, refreshFailures, refreshDuration, refreshLead, lockWait, storageErrors,
	requestsTotal, proofsTotal, upstreamRejections}

// Gauges read from the live sessions at scrape time.
var (
	expiryDesc = prometheus.NewDesc(
		"caddy_inject_token_token_expiry_timestamp_seconds",
		"Unix time at which the session's current access token expires (absent when it has none).",
		[]string{"session"}, nil)
	stateDesc = prometheus.NewDesc(
		"caddy_inject_token_session_state",
		"1 for the session's current state (active, logged_out, login_failed, …); one series per session.",
		[]string{"session", "state"}, nil)
	autoLoginDesc = prometheus.NewDesc(
		"caddy_inject_token_auto_login_enabled",
		"1 when the session logs in by itself once logged out (configured login, not paused by a logout or rejected credentials), else 0.",
		[]string{"session"}, nil)
	refreshBeforeDesc = prometheus.NewDesc(
		"caddy_inject_token_refresh_before_seconds",
		"The session's configured refresh_before: how long before expiry its token is refreshed (at most half the token's lifetime).",
		[]string{"session"}, nil)
	templateSessionsDesc = prometheus.NewDesc(
		"caddy_inject_token_template_sessions",
		"Sessions of a template held in memory, by state (a template's sessions in storage but not in memory are not counted). Labelled by template, never by user.",
		[]string{"template", "state"}, nil)
)

// sessionCollector reports every live session's state and token expiry at
// scrape time, so these gauges are never stale and disappear with the
// session.
type sessionCollector struct{}

func (sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- expiryDesc
	ch <- stateDesc
	ch <- autoLoginDesc
	ch <- refreshBeforeDesc
	ch <- templateSessionsDesc
}

func (sessionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range allSessions() {
		st := s.cache().Status()
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, 1, s.name, st.State)
		ch <- prometheus.MustNewConstMetric(autoLoginDesc, prometheus.GaugeValue, boolValue(st.AutoLogin), s.name)
		ch <- prometheus.MustNewConstMetric(refreshBeforeDesc, prometheus.GaugeValue,
			s.settings().refreshBefore.Seconds(), s.name)
		if st.ExpiresAt != nil {
			ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue,
				float64(st.ExpiresAt.UnixNano())/1e9, s.name)
		}
	}
	for _, t := range allTemplates() {
		for state, n := range t.runtime().Counts() {
			ch <- prometheus.MustNewConstMetric(templateSessionsDesc, prometheus.GaugeValue, float64(n), t.name, state)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerMetrics registers the collectors with reg, tolerating the
// collectors already being there (another handler of the same config).
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	cs := []prometheus.Collector{live, loginThrottled}
	for _, v := range sessionVecs {
		cs = append(cs, v)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// observeRefresh is the tokencache Observe hook of a session. It also
// starts the session's counters at zero (see attemptOutcomes).
func observeRefresh(name string) func(tokencache.Event) {
	initSessionMetrics(name)
	return func(e tokencache.Event) { observe(name, e) }
}

func initSessionMetrics(name string) {
	for _, c := range []struct {
		vec    *prometheus.CounterVec
		values []string
	}{
		{refreshTotal, attemptOutcomes},
		{refreshFailures, failureReasons},
		{storageErrors, storageOps},
		{requestsTotal, requestResults},
		{proofsTotal, proofKinds},
		{upstreamRejections, rejectionKinds},
	} {
		for _, v := range c.values {
			c.vec.WithLabelValues(name, v)
		}
	}
	refreshLead.WithLabelValues(name)
	lockWait.WithLabelValues(name)
}

// observe records one engine event of session name.
func observe(name string, e tokencache.Event) {
	switch e.Kind {
	case tokencache.EventAttempt:
		refreshTotal.WithLabelValues(name, e.Outcome).Inc()
		refreshDuration.WithLabelValues(name, e.Outcome).Observe(e.Duration.Seconds())
		if e.Lead != 0 { // zero: there was no previous token
			refreshLead.WithLabelValues(name).Observe(e.Lead.Seconds())
		}
		if e.Reason != "" || slices.Contains(failedOutcomes, e.Outcome) {
			refreshFailures.WithLabelValues(name, oneOf(e.Reason, failureReasons, tokencache.ReasonOther)).Inc()
		}
	case tokencache.EventLockWait:
		lockWait.WithLabelValues(name).Observe(e.Duration.Seconds())
	case tokencache.EventStorageError:
		storageErrors.WithLabelValues(name, oneOf(e.Op, storageOps, labelOther)).Inc()
	case tokencache.EventState:
		// Nothing to record: session_state and auto_login_enabled are read
		// from the session's Status at scrape time, which cannot be stale
		// or outlive the session.
	}
}

// oneOf returns v if it is in the fixed set, else other.
func oneOf(v string, set []string, other string) string {
	if slices.Contains(set, v) {
		return v
	}
	return other
}

// forgetSessionMetrics deletes every series of a destroyed session, so a
// session gone from the config stops being exported. The pool drops a
// session before destroying it, and closing its cache can take a while: a
// session of the same name created meanwhile keeps the series, which are
// its own.
func forgetSessionMetrics(name string) {
	if _, live := lookupSession(name); !live {
		deleteSeries(name)
	}
}

// forgetTemplateMetrics deletes the series of a destroyed template (its
// sessions' counters are labelled with its name), unless a template of
// that name is live again.
func forgetTemplateMetrics(name string) {
	if _, live := lookupTemplate(name); !live {
		deleteSeries(name)
		loginThrottled.DeletePartialMatch(prometheus.Labels{"template": name})
	}
}

// deleteSeries deletes every per-session series labelled session=name.
func deleteSeries(name string) {
	match := prometheus.Labels{"session": name}
	for _, v := range sessionVecs {
		v.DeletePartialMatch(match)
	}
}

// countRequest counts one request's result.
func countRequest(session, result string) {
	requestsTotal.WithLabelValues(session, result).Inc()
}

// The kind label of dpop_proofs_total.
const (
	proofFirst      = "first"
	proofNonceRetry = "nonce_retry"
)

// countProof counts one DPoP proof the transport signed.
func countProof(session, kind string) {
	proofsTotal.WithLabelValues(session, kind).Inc()
}

// countUpstreamRejection counts one upstream rejection or challenge.
func countUpstreamRejection(session, kind string) {
	upstreamRejections.WithLabelValues(session, kind).Inc()
}
