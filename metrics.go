package injecttoken

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/caddy-inject-token/tokencache"
)

// Request results counted by caddy_inject_token_requests_total.
const (
	resultInjected    = "injected"    // a token was injected and the request forwarded
	resultUnavailable = "unavailable" // no valid token: answered 503
	resultRetried401  = "retried_401" // upstream said 401; retried once with a fresh token
)

// The collectors are created once and registered with every config's
// registry (caddy-craft §5), so their values survive reloads. Labels are
// session names and fixed outcome strings only.
var (
	refreshTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "inject_token",
		Name:      "refresh_total",
		Help:      "Token refresh and login attempts by session and outcome (refreshed, adopted, logged_in, transient, dead, lost, login_fail, logged_out).",
	}, []string{"session", "outcome"})

	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "inject_token",
		Name:      "requests_total",
		Help:      "Requests handled by inject_token by session and result (injected, unavailable, retried_401).",
	}, []string{"session", "result"})

	proofsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "inject_token",
		Name:      "dpop_proofs_total",
		Help:      "DPoP proofs signed by the inject_token transport for upstream requests, by session and kind (first, nonce_retry).",
	}, []string{"session", "kind"})

	expiryDesc = prometheus.NewDesc(
		"caddy_inject_token_token_expiry_timestamp_seconds",
		"Unix time at which the session's current access token expires (absent when it has none).",
		[]string{"session"}, nil)

	expiry = expiryCollector{}
)

// expiryCollector reports the expiry of every live session's token at
// scrape time, so the gauge is never stale and disappears with the session.
type expiryCollector struct{}

func (expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (expiryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range allSessions() {
		st := s.cache().Status()
		if st.ExpiresAt == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue,
			float64(st.ExpiresAt.UnixNano())/1e9, s.name)
	}
}

// registerMetrics registers the collectors with reg, tolerating the
// collectors already being there (another handler of the same config).
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{refreshTotal, requestsTotal, proofsTotal, upstreamRejections, expiry} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// observeRefresh is the tokencache Observe hook of a session.
func observeRefresh(name string) func(tokencache.Event) {
	return func(e tokencache.Event) {
		if e.Kind == tokencache.EventAttempt {
			refreshTotal.WithLabelValues(name, e.Outcome).Inc()
		}
	}
}

// countRequest counts one request's result.
func countRequest(session, result string) {
	requestsTotal.WithLabelValues(session, result).Inc()
}

// countProof counts one DPoP proof the transport signed.
func countProof(session, kind string) {
	proofsTotal.WithLabelValues(session, kind).Inc()
}

// Kinds of upstream answer counted by
// caddy_inject_token_upstream_rejections_total.
const (
	rejectionToken       = "token_rejected"       // the upstream refused the token (401)
	rejectionNonce       = "nonce_challenge"      // the upstream asked for a DPoP nonce
	rejectionRateLimited = "refresh_rate_limited" // a rejection whose refresh the 401 budget skipped
)

var upstreamRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "inject_token",
	Name:      "upstream_rejections_total",
	Help:      "Upstream answers that rejected or challenged the injected credential, by session and kind (token_rejected, nonce_challenge, refresh_rate_limited).",
}, []string{"session", "kind"})

// countUpstreamRejection counts one upstream rejection or challenge.
func countUpstreamRejection(session, kind string) {
	upstreamRejections.WithLabelValues(session, kind).Inc()
}
