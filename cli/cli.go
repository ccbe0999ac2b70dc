// Package cli adds `caddy inject-token …` to any Caddy build that links the
// inject_token module: log a session in (OTP or password), show its status,
// refresh, log out, and list or revoke the user's server-side sessions. It
// talks to the running Caddy through the admin API routes under
// /inject_token/, so it needs no access to storage or keys.
//
// Importing the package (blank import) registers the command. Run drives
// the same commands without Caddy's command line, for tests and embedding.
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

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// PasswordEnv is the environment variable `login --password` reads the
// password from; without it the password is the first line of stdin.
const PasswordEnv = "INJECT_TOKEN_PASSWORD"

// DefaultSession is the session name the commands use without --session.
const DefaultSession = "default"

const longHelp = `
Manages the sessions of the inject_token module in a running Caddy through
its admin API (routes under /inject_token/). The admin address is taken from
--address, else the CADDY_ADMIN environment variable, else localhost:2019.

  login    log a session in with a one-time code (--email or --phone) or a
           password (--password --email; the password is read from stdin or
           $INJECT_TOKEN_PASSWORD, never from a flag)
  status   show one session, or all sessions when none is named
  refresh  force a token refresh now
  logout   end the session (it stays logged out until the next login)
  list     list the user's server-side sessions (devices)
  revoke   end server-side sessions: all, others, mine, or one by --id

Every command accepts --json to print the admin API's JSON answer instead of
the human summary. Errors print the server's message and code and exit
non-zero.
`

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "inject-token",
		Usage: "login|status|refresh|logout|list|revoke [flags]",
		Short: "Manages inject_token sessions through the admin API",
		Long:  longHelp,
		CobraFunc: func(cmd *cobra.Command) {
			configure(cmd)
		},
	})
}

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
		Short:         "Manages inject_token sessions through the admin API",
		Long:          longHelp,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	configure(root)
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

func configure(cmd *cobra.Command) {
	o := &opts{}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.address, "address", "", "admin API address (default $CADDY_ADMIN or "+DefaultAddress+")")
	pf.BoolVar(&o.json, "json", false, "print the admin API's raw JSON answer")
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	cmd.AddCommand(loginCmd(o), statusCmd(o), refreshCmd(o), logoutCmd(o), listCmd(o), revokeCmd(o))
	for _, sub := range cmd.Commands() {
		// Flag errors mention the command; usage stays out of the way.
		sub.SilenceUsage = true
	}
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
	cmd.Flags().StringVarP(p, "session", "s", DefaultSession, "session name (the inject_token `session` subdirective)")
}

func loginCmd(o *opts) *cobra.Command {
	var session, email, phone, code string
	var password bool
	cmd := &cobra.Command{
		Use:   "login (--email <address> | --phone <number>) [--code <code>] | --password --email <address> | refresh-token",
		Short: "Log a session in with a one-time code or a password",
		Long: `Logs the session in and stores it in Caddy's storage; the running gateway
uses it immediately.

One-time code: --email or --phone sends a code; pass it with --code, or type
it when prompted (it is read as one line from stdin).

Password: --password --email <address>. The password is taken from the
` + PasswordEnv + ` environment variable if set, else from the first line of
stdin (not echoed on a terminal). It is never accepted as a flag value,
because command lines are visible to other users in ps.

Refresh token (oauth2 sessions with grant refresh_token): "login
refresh-token" reads the initial refresh token from $` + RefreshTokenEnv + ` or the
first line of stdin, for the same reason.`,
		Example: `  caddy inject-token login --session demo --email demo@example.com
  caddy inject-token login --session demo --phone +33612345678 --code 123456
  printf '%s\n' "$PASSWORD" | caddy inject-token login --session demo --password --email demo@example.com
  printf '%s\n' "$RT" | caddy inject-token login --session api refresh-token`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 1 && args[0] == "refresh-token" {
				return nil
			}
			if len(args) > 0 {
				// Do not echo the argument: it may be a password typed as
				// "--password secret".
				return errors.New("login takes no arguments; the password, if any, is read from stdin or $" + PasswordEnv)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if email != "" || phone != "" || password || code != "" {
					return errors.New("login refresh-token takes no --email, --phone, --password or --code")
				}
				return loginRefreshToken(cmd, o, session)
			}
			switch {
			case email != "" && phone != "":
				return errors.New("give either --email or --phone, not both")
			case password && phone != "":
				return errors.New("password login takes --email, not --phone")
			case password && code != "":
				return errors.New("--code is for one-time-code login; drop it with --password")
			case email == "" && phone == "":
				return errors.New("--email or --phone is required")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if password {
				pw, err := readPassword(cmd.InOrStdin(), cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				st, raw, err := c.LoginPassword(ctx, session, email, pw)
				if err != nil {
					return fmt.Errorf("login %q: %w", session, err)
				}
				return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
			}
			to := email
			if to == "" {
				to = phone
			}
			if _, err := c.StartOTP(ctx, session, email, phone); err != nil {
				return fmt.Errorf("login %q: sending a code to %s: %w", session, to, err)
			}
			if code == "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "A code was sent to %s. Enter it: ", to)
				code, err = readLine(cmd.InOrStdin())
				if !isTerminal(cmd.InOrStdin()) {
					// The answer came from a pipe: end the prompt's line.
					fmt.Fprintln(cmd.ErrOrStderr())
				}
				if err != nil {
					return fmt.Errorf("reading the code: %w", err)
				}
				if code == "" {
					return errors.New("no code entered")
				}
			}
			st, raw, err := c.CheckOTP(ctx, session, code)
			if err != nil {
				return fmt.Errorf("login %q: checking the code: %w", session, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printLoggedIn(w, st) })
		},
	}
	sessionFlag(cmd, &session)
	f := cmd.Flags()
	f.StringVar(&email, "email", "", "email address to log in with")
	f.StringVar(&phone, "phone", "", "phone number to log in with (one-time code only)")
	f.StringVar(&code, "code", "", "the one-time code (prompted for when absent)")
	f.BoolVar(&password, "password", false, "log in with a password read from stdin or $"+PasswordEnv)
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
func loginRefreshToken(cmd *cobra.Command, o *opts, session string) error {
	rt, err := readSecret(cmd.InOrStdin(), cmd.ErrOrStderr(), RefreshTokenEnv, "refresh token")
	if err != nil {
		return err
	}
	c, err := o.client()
	if err != nil {
		return err
	}
	st, raw, err := c.LoginRefreshToken(cmd.Context(), session, rt)
	if err != nil {
		return fmt.Errorf("login %q: %w", session, err)
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
		Use:   "status [session]",
		Short: "Show one session, or all sessions",
		Example: `  caddy inject-token status
  caddy inject-token status demo --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if session != "" && session != args[0] {
					return fmt.Errorf("session named twice: %q and --session %q", args[0], session)
				}
				session = args[0]
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			if session == "" {
				all, raw, err := c.Sessions(cmd.Context())
				if err != nil {
					return fmt.Errorf("listing sessions: %w", err)
				}
				return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printStatusTable(w, all) })
			}
			st, raw, err := c.Status(cmd.Context(), session)
			if err != nil {
				return fmt.Errorf("session %q: %w", session, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printStatus(w, st) })
		},
	}
	cmd.Flags().StringVarP(&session, "session", "s", "", "session name (default: all sessions)")
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
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			st, raw, err := action(c, cmd.Context(), session)
			if err != nil {
				return fmt.Errorf("%s %q: %w", name, session, err)
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
		Use:   "list",
		Short: "List the user's server-side sessions (* marks this one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 || offset < 0 {
				return errors.New("--limit and --offset must not be negative")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			list, raw, err := c.List(cmd.Context(), session, limit, offset)
			if err != nil {
				return fmt.Errorf("list %q: %w", session, err)
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
var RevokeTargets = []string{"all", "others", "mine", "session"}

func revokeCmd(o *opts) *cobra.Command {
	var session, target, id string
	cmd := &cobra.Command{
		Use:   "revoke --target all|others|mine|session [--id <ses_…>]",
		Short: "End server-side sessions of the logged-in user",
		Long: `Ends server-side sessions of the user the session is logged in as:

  all      every session of the user, this one included
  others   every session except this one
  mine     this session only (same effect as logout at the server)
  session  the one session named by --id (see "list")

When this session is among the revoked ones it is cleared locally and stays
logged out until the next login.`,
		Example: `  caddy inject-token revoke --session demo --target others
  caddy inject-token revoke --session demo --target session --id ses_01abc`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch target {
			case "":
				return errors.New("--target is required: " + strings.Join(RevokeTargets, ", "))
			case "session":
				if id == "" {
					return errors.New("--target session needs --id <session id> (see the list command)")
				}
			case "all", "others", "mine":
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
			res, raw, err := c.Revoke(cmd.Context(), session, target, id)
			if err != nil {
				return fmt.Errorf("revoke %q: %w", session, err)
			}
			return o.emit(cmd.OutOrStdout(), raw, func(w io.Writer) { printRevoked(w, session, id, res) })
		},
	}
	sessionFlag(cmd, &session)
	cmd.Flags().StringVar(&target, "target", "", "what to revoke: "+strings.Join(RevokeTargets, "|"))
	cmd.Flags().StringVar(&id, "id", "", "server-side session id, with --target session")
	return cmd
}
