package sandbox

import (
	"errors"
	"net/http"

	"github.com/tokenwarden/caddy-inject-token/dpop"
)

// checkProof verifies the request's DPoP proof. jkt, when set, is the key
// the session pinned; required says whether a missing proof is an error
// (finalize, refresh, revoke) or fine (the /me routes, where only some SDKs
// send one, but a proof that is sent must still be valid).
func (s *Sandbox) checkProof(w http.ResponseWriter, r *http.Request, jkt string, required bool) (*dpop.Verified, *apiError) {
	proof, aerr := singleProof(r, required)
	if aerr != nil || proof == "" {
		return nil, aerr
	}
	exp := dpop.Expect{Method: r.Method, URL: requestURL(r), Thumbprint: jkt}
	s.mu.Lock()
	nonceMode, current, previous := s.requireNonce, s.nonce[0], s.nonce[1]
	s.mu.Unlock()
	if nonceMode {
		exp.Nonce = func(n string) bool { return n == current || (previous != "" && n == previous) }
	}
	v, err := s.verifier.Verify(proof, exp)
	if err == nil {
		if nonceMode {
			w.Header().Set("DPoP-Nonce", s.rotateNonce())
		}
		return v, nil
	}
	reason := dpop.Reason(err)
	switch {
	case errors.Is(err, dpop.ErrNonceMissing), errors.Is(err, dpop.ErrNonceInvalid):
		// Counted twice on purpose: tests ask both "how many nonce
		// challenges" and "why".
		s.countRejection(reason)
		w.Header().Set("DPoP-Nonce", s.rotateNonce())
		return nil, apiErr(http.StatusBadRequest, "use_dpop_nonce", "resend the proof with the nonce in the DPoP-Nonce header")
	case errors.Is(err, dpop.ErrKeyMismatch):
		return nil, &apiError{http.StatusUnauthorized, "dpop_key_mismatch", reason, "proof is not signed by the key bound to this session"}
	}
	return nil, invalidProof(reason, err.Error())
}

// singleProof returns r's one DPoP header, "" if there is none and none
// is required.
func singleProof(r *http.Request, required bool) (string, *apiError) {
	proofs := r.Header.Values("DPoP")
	switch {
	case len(proofs) == 0 && required:
		return "", apiErr(http.StatusUnauthorized, "missing_dpop_proof", "a DPoP proof is required")
	case len(proofs) == 0:
		return "", nil
	case len(proofs) > 1:
		return "", invalidProof("multiple_dpop_proofs", "exactly one DPoP header is allowed")
	}
	return proofs[0], nil
}

func invalidProof(reason, msg string) *apiError {
	return &apiError{http.StatusUnauthorized, "invalid_dpop_proof", reason, msg}
}

// rotateNonce issues a fresh nonce. The previous one stays valid so that a
// client racing one rotation is not bounced, but a client that ignores
// DPoP-Nonce on successes falls behind after two.
func (s *Sandbox) rotateNonce() string {
	n := randomToken()
	s.mu.Lock()
	s.nonce[1], s.nonce[0] = s.nonce[0], n
	s.mu.Unlock()
	return n
}
