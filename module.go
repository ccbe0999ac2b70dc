// Package injecttoken is a Caddy module that holds a logged-in session (a
// DPoP key and a refresh token), keeps a fresh access token cached, and
// injects it into upstream requests.
package injecttoken
