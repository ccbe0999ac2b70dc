package cli

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

// templatesCmd is `templates`: a template's sessions made at run time (one
// per user), through the routes under /inject_token/templates.
func templatesCmd(o *opts) *cobra.Command {
	var cursor string
	var limit int
	var revoke, erase, revokeAll bool
	cmd := &cobra.Command{
		Use:   "templates [<template> [<key>]]",
		Short: "List templates, a template's sessions (one page), or one session; revoke or erase one",
		Example: `  caddy inject-token templates
  caddy inject-token templates users --limit 50 [--cursor <next>]
  caddy inject-token templates users alice@example.com
  caddy inject-token templates users alice@example.com --revoke
  caddy inject-token templates users alice@example.com --erase
  caddy inject-token templates users --revoke-all`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if btoi(revoke)+btoi(erase)+btoi(revokeAll) > 1 {
				return errors.New("--revoke, --erase and --revoke-all exclude each other")
			}
			if (revoke || erase) && len(args) != 2 {
				return errors.New("--revoke and --erase need a template and a key")
			}
			if revokeAll && len(args) != 1 {
				return errors.New("--revoke-all needs a template (and no key)")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx, w := cmd.Context(), cmd.OutOrStdout()
			switch {
			case len(args) == 0:
				var out adminapi.TemplateList
				raw, err := c.doJSON(ctx, http.MethodGet, adminapi.TemplatesPath, nil, &out)
				if err != nil {
					return fmt.Errorf("templates: %w", err)
				}
				return o.emit(w, raw, func(w io.Writer) { printTemplates(w, out.Templates) })
			case revokeAll:
				var out adminapi.RevokeAllResult
				raw, err := c.doJSON(ctx, http.MethodPost, adminapi.TemplatePath(args[0], adminapi.RouteRevokeAll), nil, &out)
				if err != nil {
					return fmt.Errorf("revoke all of %s: %w", args[0], err)
				}
				return o.emit(w, raw, func(w io.Writer) { fmt.Fprintf(w, "%d sessions of %s revoked\n", out.Revoked, out.Template) })
			case len(args) == 1:
				q := url.Values{}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				if limit > 0 {
					q.Set("limit", strconv.Itoa(limit))
				}
				path := adminapi.TemplatePath(args[0], "/sessions")
				if len(q) > 0 {
					path += "?" + q.Encode()
				}
				var out adminapi.RuntimeSessionList
				raw, err := c.doJSON(ctx, http.MethodGet, path, nil, &out)
				if err != nil {
					return fmt.Errorf("sessions of %s: %w", args[0], err)
				}
				return o.emit(w, raw, func(w io.Writer) { printRuntimeSessions(w, out) })
			}
			t, key := args[0], args[1]
			method, suffix := http.MethodGet, ""
			switch {
			case revoke:
				method = http.MethodDelete
			case erase:
				method, suffix = http.MethodPost, adminapi.RouteErase
			}
			if method == http.MethodGet {
				var out adminapi.RuntimeSession
				raw, err := c.doJSON(ctx, method, adminapi.TemplateSessionPath(t, key, ""), nil, &out)
				if err != nil {
					return fmt.Errorf("session %s of %s: %w", key, t, err)
				}
				return o.emit(w, raw, func(w io.Writer) {
					printRuntimeSessions(w, adminapi.RuntimeSessionList{Sessions: []adminapi.RuntimeSession{out}})
				})
			}
			var out adminapi.EraseResult
			raw, err := c.doJSON(ctx, method, adminapi.TemplateSessionPath(t, key, suffix), nil, &out)
			if err != nil {
				return fmt.Errorf("session %s of %s: %w", key, t, err)
			}
			return o.emit(w, raw, func(w io.Writer) { fmt.Fprintf(w, "%s: %s\n", out.Key, out.Done) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&cursor, "cursor", "", "the page to list (the previous page's next cursor)")
	f.IntVar(&limit, "limit", 0, "page size (server default when 0)")
	f.BoolVar(&revoke, "revoke", false, "revoke the session (at its server; it stays listed, logged out)")
	f.BoolVar(&erase, "erase", false, "revoke the session, then delete every trace of it")
	f.BoolVar(&revokeAll, "revoke-all", false, "revoke every session of the template")
	return cmd
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func printTemplates(w io.Writer, ts []adminapi.Template) {
	if len(ts) == 0 {
		fmt.Fprintln(w, "no templates configured")
		return
	}
	for _, t := range ts {
		states := make([]string, 0, len(t.Counts))
		for s := range t.Counts {
			states = append(states, s)
		}
		sort.Strings(states)
		fmt.Fprintf(w, "%s  (%s %s)  resident %d", t.Name, t.Backend, t.BaseURL, t.Resident)
		for _, s := range states {
			fmt.Fprintf(w, ", %s %d", s, t.Counts[s])
		}
		fmt.Fprintln(w)
	}
}

func printRuntimeSessions(w io.Writer, l adminapi.RuntimeSessionList) {
	stamp := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, s := range l.Sessions {
		fmt.Fprintf(w, "%s  %s  sub %s  expires %s  last used %s\n", s.Key, s.State, orDash(s.Sub), stamp(s.ExpiresAt), stamp(s.LastUsed))
	}
	if l.Next != "" {
		fmt.Fprintf(w, "more: --cursor %s\n", l.Next)
	}
}
