// Package cli adds `caddy inject-token …` to any Caddy build that links the
// inject_token module: log a session in (OTP or password), show its status,
// refresh, log out, and list or revoke the user's server-side sessions. It
// talks to the running Caddy through the admin API routes under
// /inject_token/, so it needs no access to storage or keys.
//
// The inject_token module registers the command (command.go in the root
// package) with Configure; Run drives the same commands without Caddy's
// command line, for tests and embedding.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tokenwarden/caddy-inject-token/adminapi"
)

// PasswordEnv is the environment variable `login --password` reads the
// password from; without it the password is the first line of stdin.
const PasswordEnv = "INJECT_TOKEN_PASSWORD"

// DefaultSession is the session name the commands use without --session.
const DefaultSession = "default"

// Usage, Short and Long describe the command for Caddy's help.
const (
	Usage = "login|status|refresh|logout|list|revoke [<session>] [flags] | templates [<template> [<key>]]"
	Short = "Manages inject_token sessions through the admin API"
	Long  = `
Manages the sessions of the inject_token module in a running Caddy through
its admin API (routes under /inject_token/). The admin address is taken from
--address, else the CADDY_ADMIN environment variable, else localhost:2019.
Every command takes the session name as its first argument (or --session);
without one it uses "default" (status: all sessions).

  login    log a session in with a one-time code (--email or --phone, then
           --code or the prompt; --code alone finishes a code already sent),
           a password (--password --email; the password is read from stdin
           or $INJECT_TOKEN_PASSWORD, never from a flag), or an oauth2
           refresh token (--refresh-token, read from stdin or
           $INJECT_TOKEN_REFRESH_TOKEN)
  status   show one session, or all sessions when none is named
  refresh  force a token refresh now
  logout   end the session (it stays logged out until the next login)
  list     list the user's server-side sessions (devices)
  revoke   end server-side sessions: all, others, mine, or one by --id
  templates  a template's sessions made at run time (one per user): list
           templates, one page of a template's sessions (--cursor, --limit),
           one session by key; --revoke or --erase it, --revoke-all

Every command accepts --json to print the admin API's JSON answer instead of
the human summary; on failure it prints the API's error JSON (with its code
and HTTP status). Errors print the server's message and code and exit
non-zero.
`
)

// Run executes one inject-token command line (args without the leading
// "inject-token", e.g. {"status", "demo", "--address", "localhost:2019"}).
// It reads prompts' answers from in and writes output and prompts to out.
// The returned error is what the command line prints before exiting
// non-zero; nil means success.
func Run(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	return RunIO(ctx, args, in, out, out)
}

// RunIO is Run with a separate writer for prompts and notes (stderr on the
// command line), so that --json output on out stays parseable.
func RunIO(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) error {
	root := &cobra.Command{
		Use:           "inject-token",
		Short:         Short,
		Long:          Long,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	Configure(root)
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	return root.ExecuteContext(ctx)
}

// opts are the flags every command shares.
type opts struct {
	address string
	json    bool
}

// Configure adds the subcommands and shared flags to cmd, the
// `inject-token` command.
func Configure(cmd *cobra.Command) {
	o := &opts{}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.address, "address", "", "admin API address (default $CADDY_ADMIN or "+DefaultAddress+")")
	pf.BoolVar(&o.json, "json", false, "print the admin API's raw JSON answer")
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	cmd.AddCommand(loginCmd(o), statusCmd(o), refreshCmd(o), logoutCmd(o), listCmd(o), revokeCmd(o), templatesCmd(o))
	for _, sub := range cmd.Commands() {
		// Flag errors mention the command; usage stays out of the way.
		sub.SilenceUsage = true
		run := sub.RunE
		sub.RunE = func(c *cobra.Command, args []string) error {
			err := run(c, args)
			if err != nil && o.json {
				printErrorJSON(c.OutOrStdout(), err)
			}
			return err
		}
	}
}

// printErrorJSON prints a failure as JSON for --json: the admin API's
// error with its code and HTTP status, or {"error"} for a failure that
// never reached it.
func printErrorJSON(w io.Writer, err error) {
	var ae *APIError
	if !errors.As(err, &ae) {
		b, _ := json.Marshal(map[string]string{"error": err.Error()})
		_ = writeJSON(w, b)
		return
	}
	b, _ := json.Marshal(struct {
		Error      string `json:"error"`
		Code       string `json:"code"`
		HTTPStatus int    `json:"http_status"`
		RetryAfter string `json:"retry_after,omitempty"`
	}{ae.Message, ae.Code, ae.HTTPStatus, ae.RetryAfter})
	_ = writeJSON(w, b)
}

// sessionName resolves the session a command acts on: its one positional
// argument or --session (they must agree), else def.
func sessionName(args []string, flag, def string) (string, error) {
	switch {
	case len(args) == 0 && flag != "":
		return flag, nil
	case len(args) == 0:
		return def, nil
	case flag != "" && flag != args[0]:
		return "", fmt.Errorf("session named twice: %q and --session %q", args[0], flag)
	}
	return args[0], nil
}

func (o *opts) client() (*Client, error) {
	return NewClient(ResolveAddress(o.address))
}

// emit prints raw JSON when --json is set, otherwise calls human.
func (o *opts) emit(w io.Writer, raw []byte, human func(io.Writer)) error {
	if o.json {
		return writeJSON(w, raw)
	}
	human(w)
	return nil
}

func writeJSON(w io.Writer, raw []byte) error {
	// Indent keeps the server's field order; anything that is not JSON is
	// passed through untouched.
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		_, err = w.Write(raw)
		return err
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
}

// isTerminal reports whether r is an interactive terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func sessionFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVarP(p, "session", "s", "", "session name, instead of the argument (default \""+DefaultSession+"\")")
}

func loginCmd(o *opts) *cobra.Command {
	var session, email, phone, code string
	var password, refreshToken bool
	cmd := &cobra.Command{
		Use:   "login [<session>] [(--email <address> | --phone <number>) [--code <code>] | --code <code> | --password --email <address> | --refresh-token]",
		Short: "Log a session in with its configured credentials, a one-time code, a password or a refresh token",
		Long: `Logs the session in and stores it in Caddy's storage; the running gateway
uses it immediately.

Without flags: with the credentials in the session's configuration (oauth2
client_credentials, or a Prelude login password), which also turns its
automatic login back on after a logout.

One-time code: --email or --phone sends a code; pass it with --code, or type
it when prompted (it is read as one line from stdin). --code alone finishes
a login whose code was already sent (status shows "otp login: code sent").

Password: --password --email <address>. The password is taken from the
` + PasswordEnv + ` environment variable if set, else from the first line of
stdin (not echoed on a terminal). It is never accepted as a flag value,
because command lines are visible to other users in ps.

Refresh token (oauth2 sessions with grant refresh_token): --refresh-token
reads the initial refresh token from $` + RefreshTokenEnv + ` or the first line
of stdin, for the same reason.`,
		Example: `  caddy inject-token login api
  caddy inject-token login demo --email demo@example.com
  caddy inject-token login demo --phone +33612345678 --code 123456
  caddy inject-token login demo --code 123456
  printf '%s\n' "$PASSWORD" | caddy inject-token login demo --password --email demo@example.com
  printf '%s\n' "$RT" | caddy inject-token login api --refresh-token`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := sessionName(args, session, DefaultSession)
			if err != nil {
				return err
			}
			switch {
			case refreshToken && (email != "" || phone != "" || password || code != ""):
				return errors.New("--refresh-token takes no --email, --phone, --password or --code")
			case email != "" && phone != "":
				return errors.New("give either --email or --phone, not both")
			case password && phone != "":
				return errors.New("password login takes --email, not --phone")
			case password && code != "":
				return errors.New("--code is for one-time-code login; drop it with --password")
			case password && email == "":
				return errors.New("password login needs --email")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if !refreshToken && !password && email == "" && phone == "" && code == "" {
				st, raw, err := c.Login(ctx, name)
				if err != nil {
					return fmt.Errorf("login %s: %w", name, err)
				}
				return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
			}
			if password || refreshToken {
				// A password typed after --password (a bool flag) lands
				// in args: never echo an argument that is not a session.
				if len(args) == 1 {
					if err := knownSession(ctx, c, name); err != nil {
						return err
					}
				}
				if refreshToken {
					return loginRefreshToken(cmd, o, c, name)
				}
				pw, err := readPassword(cmd.InOrStdin(), cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				st, raw, err := c.LoginPassword(ctx, name, email, pw)
				if err != nil {
					return fmt.Errorf("login %s: %w", name, err)
				}
				return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
			}
			if email != "" || phone != "" {
				to := email + phone
				if _, err := c.StartOTP(ctx, name, email, phone); err != nil {
					return fmt.Errorf("login %s: %w", name, err)
				}
				if code == "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "A code was sent to %s. Enter it: ", to)
					code, err = readLine(cmd.InOrStdin())
					if !isTerminal(cmd.InOrStdin()) {
						// The answer came from a pipe: end the prompt's line.
						fmt.Fprintln(cmd.ErrOrStderr())
					}
					if err != nil {
						return fmt.Errorf("reading the code: %w (finish later: caddy inject-token login %s --code <code>)", err, name)
					}
					if code == "" {
						return fmt.Errorf("no code entered (finish later: caddy inject-token login %s --code <code>)", name)
					}
				}
			}
			st, raw, err := c.CheckOTP(ctx, name, code)
			if err != nil {
				return fmt.Errorf("login %s: %w", name, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
		},
	}
	sessionFlag(cmd, &session)
	f := cmd.Flags()
	f.StringVar(&email, "email", "", "email address to log in with")
	f.StringVar(&phone, "phone", "", "phone number to log in with (one-time code only)")
	f.StringVar(&code, "code", "", "the one-time code (prompted for when absent; alone, finishes a code already sent)")
	f.BoolVar(&password, "password", false, "log in with a password read from stdin or $"+PasswordEnv)
	f.BoolVar(&refreshToken, "refresh-token", false, "oauth2: start from a refresh token read from stdin or $"+RefreshTokenEnv)
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		// pflag quotes the offending value; for "--password=<secret>" that
		// would print the secret.
		if strings.Contains(err.Error(), `"--password"`) || strings.Contains(err.Error(), "-password") {
			return errors.New("--password takes no value; the password is read from stdin or $" + PasswordEnv)
		}
		return err
	})
	return cmd
}

// knownSession checks that name is a configured session without showing
// name in the error: it may be a secret typed in the wrong place.
func knownSession(ctx context.Context, c *Client, name string) error {
	all, _, err := c.Sessions(ctx)
	if err != nil {
		return fmt.Errorf("listing sessions: %w", err)
	}
	for _, st := range all {
		if st.Session == name {
			return nil
		}
	}
	return errors.New("login: the argument is not a configured session (not shown: it may be a secret; " +
		"passwords and refresh tokens are read from stdin or the environment, never from arguments)")
}

// readLine reads one line, without its line ending and surrounding spaces.
func readLine(in io.Reader) (string, error) {
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		if errors.Is(err, io.EOF) {
			return "", errors.New("no input (stdin is empty)")
		}
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// readPassword returns $INJECT_TOKEN_PASSWORD if set, else reads a line
// from in: without echo when in is a terminal, else the first line as is
// (only the line ending is removed; spaces may belong to the password).
func readPassword(in io.Reader, prompt io.Writer) (string, error) {
	return readSecret(in, prompt, PasswordEnv, "password")
}

// RefreshTokenEnv is the environment variable `login refresh-token` reads
// the refresh token from; without it the token is the first line of stdin.
const RefreshTokenEnv = "INJECT_TOKEN_REFRESH_TOKEN"

// loginRefreshToken hands an initial refresh token to an oauth2 session.
func loginRefreshToken(cmd *cobra.Command, o *opts, c *Client, session string) error {
	rt, err := readSecret(cmd.InOrStdin(), cmd.ErrOrStderr(), RefreshTokenEnv, "refresh token")
	if err != nil {
		return err
	}
	st, raw, err := c.LoginRefreshToken(cmd.Context(), session, rt)
	if err != nil {
		return fmt.Errorf("login %s: %w", session, err)
	}
	return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
}

// readSecret returns $env if set, else reads a line from in: without echo
// when in is a terminal, else the first line as is (only the line ending
// is removed; spaces may belong to the secret).
func readSecret(in io.Reader, prompt io.Writer, env, what string) (string, error) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		return v, nil
	}
	if isTerminal(in) {
		f := in.(*os.File)
		fmt.Fprintf(prompt, "%s%s: ", strings.ToUpper(what[:1]), what[1:])
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("reading the %s: %w", what, err)
		}
		if len(b) == 0 {
			return "", fmt.Errorf("empty %s", what)
		}
		return string(b), nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the %s from stdin: %w", what, err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("no %s: pipe it on stdin or set $%s", what, env)
	}
	return line, nil
}

func statusCmd(o *opts) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   "status [<session>]",
		Short: "Show one session, or all sessions",
		Example: `  caddy inject-token status
  caddy inject-token status demo --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := sessionName(args, session, "")
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			if name == "" {
				all, raw, err := c.Sessions(cmd.Context())
				if err != nil {
					return fmt.Errorf("status: %w", err)
				}
				return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printStatusTable(w, all) })
			}
			st, raw, err := c.Status(cmd.Context(), name)
			if err != nil {
				return fmt.Errorf("status %s: %w", name, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printStatus(w, st) })
		},
	}
	cmd.Flags().StringVarP(&session, "session", "s", "", "session name, instead of the argument (default: all sessions)")
	return cmd
}

func refreshCmd(o *opts) *cobra.Command {
	return sessionActionCmd(o, "refresh", "Refresh the session's access token now", (*Client).Refresh, "")
}

func logoutCmd(o *opts) *cobra.Command {
	return sessionActionCmd(o, "logout", "Log the session out (no automatic login until the next login)",
		(*Client).Logout, "Session %q logged out.\n")
}

// sessionActionCmd is a command that POSTs to one session and prints the
// resulting status, after headline (a format taking the session name) if
// one is given.
func sessionActionCmd(o *opts, name, short string,
	action func(*Client, context.Context, string) (*Status, []byte, error), headline string) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   name + " [<session>]",
		Short: short,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sess, err := sessionName(args, session, DefaultSession)
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			st, raw, err := action(c, cmd.Context(), sess)
			if err != nil {
				return fmt.Errorf("%s %s: %w", name, sess, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) {
				if headline != "" {
					fmt.Fprintf(w, headline, st.Session)
				}
				printStatus(w, st)
			})
		},
	}
	sessionFlag(cmd, &session)
	return cmd
}

func listCmd(o *opts) *cobra.Command {
	var session string
	var limit, offset int
	cmd := &cobra.Command{
		Use:   "list [<session>]",
		Short: "List the user's server-side sessions (* marks this one)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := sessionName(args, session, DefaultSession)
			if err != nil {
				return err
			}
			if limit < 0 || offset < 0 {
				return errors.New("--limit and --offset must not be negative")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			list, raw, err := c.List(cmd.Context(), name, limit, offset)
			if err != nil {
				return fmt.Errorf("list %s: %w", name, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printDevices(w, list) })
		},
	}
	sessionFlag(cmd, &session)
	cmd.Flags().IntVar(&limit, "limit", 0, "page size (server default when 0)")
	cmd.Flags().IntVar(&offset, "offset", 0, "number of sessions to skip")
	return cmd
}

// RevokeTargets are the accepted values of revoke --target.
var RevokeTargets = []string{adminapi.TargetAll, adminapi.TargetOthers, adminapi.TargetMine, adminapi.TargetSession}

func revokeCmd(o *opts) *cobra.Command {
	var session, target, id string
	cmd := &cobra.Command{
		Use:   "revoke [<session>] --target all|others|mine|session [--id <ses_…>]",
		Short: "End server-side sessions of the logged-in user",
		Long: `Ends server-side sessions of the user the session is logged in as:

  all      every session of the user, this one included
  others   every session except this one
  mine     this session only (same effect as logout at the server)
  session  the one session named by --id (see "list")

When this session is among the revoked ones it is cleared locally and stays
logged out until the next login.`,
		Example: `  caddy inject-token revoke demo --target others
  caddy inject-token revoke demo --target session --id ses_01abc`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := sessionName(args, session, DefaultSession)
			if err != nil {
				return err
			}
			switch target {
			case "":
				return errors.New("--target is required: " + strings.Join(RevokeTargets, ", "))
			case adminapi.TargetSession:
				if id == "" {
					return errors.New("--target session needs --id <session id> (see the list command)")
				}
			case adminapi.TargetAll, adminapi.TargetOthers, adminapi.TargetMine:
				if id != "" {
					return fmt.Errorf("--id goes with --target session, not --target %s", target)
				}
			default:
				return fmt.Errorf("unknown --target %q: want one of %s", target, strings.Join(RevokeTargets, ", "))
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			res, raw, err := c.Revoke(cmd.Context(), name, target, id)
			if err != nil {
				return fmt.Errorf("revoke %s: %w", name, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printRevoked(w, name, id, res) })
		},
	}
	sessionFlag(cmd, &session)
	cmd.Flags().StringVar(&target, "target", "", "what to revoke: "+strings.Join(RevokeTargets, "|"))
	cmd.Flags().StringVar(&id, "id", "", "server-side session id, with --target session")
	return cmd
}
