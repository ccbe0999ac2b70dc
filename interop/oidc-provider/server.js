// A real OAuth 2.0 authorization server for interop tests: panva's
// oidc-provider (an OpenID-certified implementation), configured for the
// flows this project's oauth package speaks — client_credentials and
// refresh_token grants, the authorization code grant with PKCE, PAR (RFC
// 9126) and DPoP-bound codes for the accounts in the config (login and
// consent through JSON interaction routes, see interaction), mutual TLS (RFC 8705, behind
// the Go test front that terminates TLS), DPoP (RFC 9449) with
// switchable nonce enforcement, resource indicators (RFC 8707) that yield
// JWT access tokens carrying cnf.jkt, revocation (RFC 7009) and
// introspection (RFC 7662).
//
// Usage: node server.js [config.json | '{"port":0,...}']
// or set INTEROP_CONFIG to the JSON. Config (all optional):
//
//   port           TCP port on 127.0.0.1; 0 (default) picks a free one
//   requireNonce   true: every DPoP proof must carry a server nonce
//   clients        oidc-provider client metadata objects (client_id,
//                  client_secret, token_endpoint_auth_method, jwks,
//                  grant_types, scope, ...); response_types default to []
//                  and grant_types to client_credentials + refresh_token
//   resources      { "<resource indicator>": { scope, accessTokenTTL } }:
//                  each becomes a resource server whose access tokens are
//                  ES256-signed JWTs with aud = the indicator
//   accessTokenTTL seconds, for tokens without a resource (default 600)
//   refreshTokenTTL seconds (default 86400)
//   clockOffset    seconds the server's clock runs ahead of the host's
//                  (negative: behind); every time it reads and the Date
//                  header it sends use the shifted clock
//   jwtBearerIssuers { "<iss>": <JWKS> }: issuers whose assertions the
//                  jwt-bearer grant accepts besides the client's own
//   accounts       { "<login>": { password, email, name } }: the users of
//                  the authorization code flow (login through the JSON
//                  interaction routes below; sub = the login)
//   par            false: no pushed authorization requests endpoint
//
// It listens on loopback only and prints "READY <issuer>" on stdout once it
// accepts connections (the Go helper in ../ waits for that line). The issuer
// is http://127.0.0.1:<port>, so endpoints are <issuer>/token,
// <issuer>/token/revocation, <issuer>/token/introspection, <issuer>/jwks.
//
// Token exchange (RFC 8693): with subjectJWKS in the config (the public
// keys subject tokens are signed with, and optionally subjectAudience), the
// grant urn:ietf:params:oauth:grant-type:token-exchange is registered. It
// verifies the subject_token (a JWT: signature, exp, aud), and issues an
// access token for the subject's sub — a JWT for the requested resource,
// DPoP-bound when the request carries a proof — with issued_token_type
// urn:ietf:params:oauth:token-type:access_token. A subject whose sub
// starts with "rejected" is refused with invalid_grant.
//
// Test-only endpoint (there is no user interaction to obtain a refresh
// token the normal way): POST /__test/refresh_token with JSON
// {"client_id": "...", "scope": "openid offline_access"} mints a refresh
// token for account "test-user" and answers {"refresh_token": "..."}.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { createLocalJWKSet, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';
import dpopValidate from 'oidc-provider/lib/helpers/validate_dpop.js';
import { applyDpopBinding } from 'oidc-provider/lib/helpers/grant_common.js';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

function loadConfig() {
  const raw = process.argv[2] ?? process.env.INTEROP_CONFIG ?? '{}';
  const text = raw.trim().startsWith('{') ? raw : fs.readFileSync(raw, 'utf8');
  return JSON.parse(text);
}

const cfg = loadConfig();

if (cfg.clockOffset) {
  // Shift every clock reading of this process, oidc-provider's and jose's
  // included (they use Date.now and new Date()).
  const offsetMs = cfg.clockOffset * 1000;
  const RealDate = Date;
  class ShiftedDate extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(RealDate.now() + offsetMs);
      else super(...args);
    }

    static now() { return RealDate.now() + offsetMs; }
  }
  globalThis.Date = ShiftedDate;
}

function signingKeys() {
  // Fresh keys per run: tests fetch them from /jwks like any resource server.
  // ES256 only (RSA key generation would slow every start); clients
  // default to ES256 id tokens accordingly.
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [{ ...ec, kid: `ec-${crypto.randomUUID()}`, alg: 'ES256', use: 'sig' }];
}

function clientMetadata(c) {
  return {
    response_types: [],
    redirect_uris: [],
    grant_types: ['client_credentials', 'refresh_token'],
    ...c,
  };
}

const resources = cfg.resources ?? { 'http://api.test': { scope: 'api:read api:write' } };

function resourceServerInfo(indicator) {
  const rs = resources[indicator];
  if (!rs) {
    throw new errors.InvalidTarget(`unknown resource ${indicator}`);
  }
  return {
    scope: rs.scope ?? 'api:read',
    audience: indicator,
    accessTokenTTL: rs.accessTokenTTL ?? cfg.accessTokenTTL ?? 600,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'ES256' } },
  };
}

// RFC 7523 §2.1 JWT bearer grant, which oidc-provider leaves to the
// deployment (registerGrantType). The assertion is an ES256 JWT signed by
// the client itself (iss = sub = client_id, a key of the client's jwks) or
// by an issuer in cfg.jwtBearerIssuers ({ "<iss>": <JWKS> }: a Kubernetes
// cluster, a SPIFFE trust domain); aud must be the token endpoint or the
// issuer, exp in the future, and a jti is accepted once. The client
// authenticates as for any grant. The token is a client_credentials-style
// access token for the requested resource.
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const seenAssertions = new Set();

function verifyES256(jwk, parts) {
  try {
    const key = crypto.createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, format: 'jwk' });
    return crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(parts[2], 'base64url'));
  } catch {
    return false;
  }
}

async function jwtBearerGrant(ctx) {
  const { client, params, provider } = ctx.oidc;
  const fail = (msg) => { throw new errors.InvalidGrant(msg); };
  const parts = String(params.assertion ?? '').split('.');
  if (parts.length !== 3) fail('assertion is not a compact JWS');
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    fail('assertion does not decode');
  }
  if (header.alg !== 'ES256') fail('assertion alg must be ES256');
  const own = claims.iss === client.clientId;
  if (own && claims.sub !== client.clientId) fail('a client-signed assertion must have sub = client_id');
  const keys = (own ? client.jwks?.keys : cfg.jwtBearerIssuers?.[claims.iss]?.keys) ?? [];
  if (!keys.some((jwk) => verifyES256(jwk, parts))) fail(`assertion signature does not verify for issuer ${claims.iss}`);
  const auds = [].concat(claims.aud ?? []);
  if (!auds.includes(ctx.oidc.urlFor('token')) && !auds.includes(provider.issuer)) fail('assertion aud is neither the token endpoint nor the issuer');
  if (!(claims.exp > Date.now() / 1000)) fail('assertion expired');
  if (!claims.sub) fail('assertion has no sub');
  if (claims.jti) {
    const key = `${claims.iss} ${claims.jti}`;
    if (seenAssertions.has(key)) fail('assertion jti replayed');
    seenAssertions.add(key);
  }
  const token = new provider.ClientCredentials({ client, scope: params.scope || undefined });
  const resource = [].concat(params.resource ?? []);
  if (resource.length > 1) throw new errors.InvalidTarget('one resource per request');
  if (resource.length === 1) {
    const info = resourceServerInfo(resource[0]);
    token.resourceServer = new provider.ResourceServer(resource[0], info);
    const allowed = new Set(info.scope.split(' '));
    token.scope = (params.scope ?? '').split(' ').filter((s) => allowed.has(s)).join(' ') || undefined;
  }
  ctx.jwtBearerSubject = claims.sub; // read by extraTokenClaims
  ctx.body = {
    access_token: await token.save(),
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}

const server = http.createServer();
server.listen(cfg.port ?? 0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    clients: (cfg.clients ?? []).map(clientMetadata),
    jwks: { keys: signingKeys() },
    clientDefaults: {
      grant_types: ['client_credentials', 'refresh_token'],
      id_token_signed_response_alg: 'ES256',
      response_types: [],
    },
    // The jwt-bearer grant's access tokens name the assertion's subject.
    extraTokenClaims: async (ctx) => (ctx.jwtBearerSubject ? { assertion_sub: ctx.jwtBearerSubject } : undefined),
    findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => accountClaims(sub) }),
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    // The ID token carries the scopes' claims itself (not only userinfo),
    // as many providers do: the gateway reads email and name from it.
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    conformIdTokenClaims: false,
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none',
      'tls_client_auth', 'self_signed_tls_client_auth'],
    // Rotate on every use so clients must persist the new refresh token and
    // reuse is detected (invalid_grant, grant revoked).
    rotateRefreshToken: true,
    ttl: {
      AccessToken: cfg.accessTokenTTL ?? 600,
      ClientCredentials: cfg.accessTokenTTL ?? 600,
      RefreshToken: cfg.refreshTokenTTL ?? 86400,
      Grant: cfg.refreshTokenTTL ?? 86400,
    },
    features: {
      // Login and consent are this file's own JSON interaction routes
      // (interaction below), driven by the Go tests over plain HTTP.
      devInteractions: { enabled: false },
      pushedAuthorizationRequests: { enabled: cfg.par !== false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      dPoP: {
        enabled: true,
        // A nonce secret makes the server hand out DPoP-Nonce values (on
        // successes too); requireNonce decides whether they are enforced.
        nonceSecret: crypto.randomBytes(32),
        requireNonce: () => cfg.requireNonce === true,
      },
      // RFC 8705. The Go test front (interop.StartMTLSFront) terminates TLS
      // and passes the client's certificate as URL-escaped PEM in
      // X-Client-Cert, with X-Client-Cert-Verified: SUCCESS when it chains
      // to the test's CA, as TLS-terminating proxies do. Loopback only: a
      // client reaching this port directly could claim any certificate.
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx) => {
          const h = ctx.get('x-client-cert');
          return h ? decodeURIComponent(h) : undefined;
        },
        certificateAuthorized: (ctx) => ctx.get('x-client-cert-verified') === 'SUCCESS',
        certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
          && new crypto.X509Certificate(decodeURIComponent(ctx.get('x-client-cert'))).subject === expected,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => resourceServerInfo(indicator),
      },
    },
  });

  if (cfg.subjectJWKS) {
    registerTokenExchange(provider, createLocalJWKSet(cfg.subjectJWKS));
  }
  provider.registerGrantType(JWT_BEARER, jwtBearerGrant, ['assertion', 'scope', 'resource'], ['resource']);

  // Why a request failed, for the Go helper to print when a test fails.
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  provider.on('grant.error', (_ctx, err) => console.error('grant.error', err.message, err.error_detail ?? ''));

  const callback = provider.callback();
  server.on('request', (req, res) => {
    // Node writes Date from its own (unshifted) clock unless one is set.
    res.setHeader('Date', new Date().toUTCString());
    if (req.url.startsWith('/interaction/')) {
      interaction(provider, req, res);
      return;
    }
    if (req.method === 'POST' && req.url === '/__test/refresh_token') {
      mintRefreshToken(provider, req, res);
      return;
    }
    callback(req, res);
  });

  process.stdout.write(`READY ${issuer}\n`);
});

function registerTokenExchange(provider, subjectKeys) {
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { params, client } = ctx.oidc;
    if (params.subject_token_type !== JWT_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token_type must be a JWT');
    }
    if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('only access tokens are issued');
    }
    let sub;
    try {
      ({ payload: { sub } } = await jwtVerify(params.subject_token, subjectKeys, { audience: cfg.subjectAudience }));
    } catch (err) {
      throw new errors.InvalidGrant(`subject_token: ${err.code ?? 'invalid'}`);
    }
    if (!sub || sub.startsWith('rejected')) {
      throw new errors.InvalidGrant('subject not allowed');
    }
    let act;
    if (params.actor_token) {
      ({ payload: { sub: act } } = await jwtVerify(params.actor_token, subjectKeys).catch(() => {
        throw new errors.InvalidGrant('actor_token');
      }));
    }
    const resource = params.resource ?? Object.keys(resources)[0];
    const rs = resources[resource];
    if (!rs) {
      throw new errors.InvalidTarget(`unknown resource ${resource}`);
    }
    const at = new provider.AccessToken({ accountId: sub, client, gty: 'token_exchange', scope: params.scope ?? rs.scope });
    at.resourceServer = new provider.ResourceServer(resource, {
      scope: rs.scope ?? 'api:read',
      audience: resource,
      accessTokenTTL: rs.accessTokenTTL ?? cfg.accessTokenTTL ?? 600,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'ES256' } },
    });
    if (act) {
      at.extra = { act: { sub: act } };
    }
    await applyDpopBinding(provider, ctx, await dpopValidate(provider, ctx), at);
    const value = await at.save();
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: at.tokenType,
      expires_in: at.expiration,
      scope: at.scope,
    };
  }, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'resource', 'scope', 'audience']);
}

// mintRefreshToken stands in for an authorization-code login (which would
// need a browser): it creates a grant and a refresh token exactly as the
// provider would after consent.
function mintRefreshToken(provider, req, res) {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', async () => {
    try {
      const { client_id: clientId, scope = 'openid offline_access' } = JSON.parse(body || '{}');
      const client = await provider.Client.find(clientId);
      if (!client) throw new Error('unknown client');
      const accountId = 'test-user';
      const grant = new provider.Grant({ accountId, clientId });
      grant.addOIDCScope(scope);
      // Consent to every resource server, as a login with resource
      // indicators would, so refresh requests may name one.
      for (const [resource, { scope: rscope }] of Object.entries(resources)) {
        grant.addResourceScope(resource, rscope);
      }
      const grantId = await grant.save();
      const rt = new provider.RefreshToken({
        accountId, client, grantId, scope, gty: 'authorization_code',
        resource: Object.keys(resources).length === 1 ? Object.keys(resources)[0] : Object.keys(resources),
      });
      const value = await rt.save();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ refresh_token: value }));
    } catch (err) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(err.message ?? err) }));
    }
  });
}

// accountClaims are an account's claims: cfg.accounts' email and name for
// the accounts configured there, only sub for any other (client-less
// tests mint grants for "test-user").
function accountClaims(sub) {
  const a = cfg.accounts?.[sub];
  return a ? { sub, email: a.email, email_verified: true, name: a.name } : { sub };
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 1 << 16) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

// interaction serves the login and consent steps of the authorization
// code flow as a JSON API, for tests that drive them over HTTP:
//   GET  /interaction/<uid>         → {"uid", "prompt": "login"|"consent", "client_id"}
//   POST /interaction/<uid>/login   form login=<account>&password=<pw>
//                                   (cfg.accounts; 401 invalid_login otherwise)
//   POST /interaction/<uid>/consent grants what the client asked for
//   POST /interaction/<uid>/abort   form error_description=<text>: the
//                                   client gets error=access_denied with it
// Each POST that succeeds answers 303 back into the provider, which
// continues the flow (the next prompt, or the redirect to the client).
async function interaction(provider, req, res) {
  const m = req.url.match(/^\/interaction\/([\w-]+)(?:\/(login|consent|abort))?$/);
  const json = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  try {
    if (!m || (req.method === 'GET') === Boolean(m[2])) {
      json(404, { error: 'not_found' });
      return;
    }
    const details = await provider.interactionDetails(req, res);
    if (!m[2]) {
      json(200, { uid: details.uid, prompt: details.prompt.name, client_id: details.params.client_id });
      return;
    }
    const form = await readForm(req);
    if (m[2] === 'login') {
      const login = form.get('login');
      const account = cfg.accounts?.[login];
      if (!account || form.get('password') !== account.password) {
        json(401, { error: 'invalid_login' });
        return;
      }
      await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
      return;
    }
    if (m[2] === 'abort') {
      await provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: form.get('error_description') ?? 'denied',
      }, { mergeWithLastSubmission: false });
      return;
    }
    const { prompt: { details: missing }, params, session: { accountId } } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
  } catch (err) {
    console.error('interaction', err);
    json(400, { error: String(err.name ?? 'error'), error_description: String(err.message ?? err) });
  }
}

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
