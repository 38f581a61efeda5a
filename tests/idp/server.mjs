// Test OpenID provider for the pedm-ssh end-to-end tests (oidc-provider 9.13.x).
//
// Start:   IDP_CLIENT_SECRET=s node tests/idp/server.mjs
// Env:     IDP_ISSUER        issuer URL to advertise (default http://127.0.0.1:<own port>);
//                            may point at a proxy in front of this server: every request's Host
//                            is rewritten to the issuer's, so endpoint URLs follow the issuer.
//          IDP_PORT          port to listen on, 127.0.0.1 only (default 0 = a free port)
//          IDP_CLIENT_ID     (default pedm-ca)
//          IDP_CLIENT_SECRET (required)
//          IDP_DEVICE_FLOW   "1" enables the RFC 8628 device flow for the client
// Ready:   exactly one JSON line on stdout, {"issuer":"…","port":N}; nothing else is ever
//          written to stdout (library notices are sent to stderr).
//
// Browser sign-in over plain HTTP (one cookie jar per user, never follow the final redirect):
//   GET  {authorization_endpoint}?…          -> 303 /interaction/<uid>
//   GET  /interaction/<uid>                  -> 200 login form (optional)
//   POST /interaction/<uid>/login  login=ID  -> 303 {issuer}/auth/<uid>   (unknown login: 400)
//   GET  {issuer}/auth/<uid>                 -> 303 http://127.0.0.1:PORT/callback?code=…&state=…&iss=…
// Consent is given automatically at login (a Grant for the requested scopes); an interaction whose
// prompt is "consent" (user already signed in) is auto-consented by GET /interaction/<uid>.
//
// Device flow over plain HTTP (after POST {device_authorization_endpoint} gave a user_code):
//   GET  {issuer}/device                     -> 200 page; read <input type="hidden" name="xsrf" value="…">
//        (GET {issuer}/device?user_code=… instead returns an auto-submit form carrying the same xsrf)
//   POST {issuer}/device  xsrf=…&user_code=… -> 200 confirmation page (same xsrf in it)
//   POST {issuer}/device  xsrf=…&user_code=…&confirm=yes
//                                            -> 303 /interaction/<uid>
//   POST /interaction/<uid>/login  login=ID  -> 303 {issuer}/device/<uid>
//   GET  {issuer}/device/<uid>               -> 200 "Sign-in Success" page
// The polling client then gets its tokens from the token endpoint. Device-flow ID tokens carry
// neither nonce nor auth_time.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

// oidc-provider prints notices with console.info (stdout): keep stdout for the ready line only.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
process.stdout.on('error', () => {}); // the reader may go away; never die of EPIPE on stdout

function fail(message) {
  console.error(`test-idp: ${message}`);
  process.exit(2);
}

const clientId = process.env.IDP_CLIENT_ID || 'pedm-ca';
const clientSecret = process.env.IDP_CLIENT_SECRET;
if (!clientSecret) fail('IDP_CLIENT_SECRET is required');
const deviceFlow = process.env.IDP_DEVICE_FLOW === '1';
const listenPort = Number.parseInt(process.env.IDP_PORT || '0', 10);
if (!Number.isInteger(listenPort) || listenPort < 0 || listenPort > 65535) fail(`bad IDP_PORT ${process.env.IDP_PORT}`);

// Users: login id -> identity. The account id (and so `sub`) is `sub-<login>`.
const USERS = {};
function user(login, groups, extra = {}) {
  USERS[login] = {
    sub: `sub-${login}`,
    preferred_username: login,
    name: login,
    email: `${login}@example.com`,
    email_verified: true,
    groups,
    ...extra,
  };
}
user('alice', ['eng', 'oncall']);
user('bob', ['eng']);
user('carol', ['security']);
user('erin', ['eng', 'security']);
user('dave', ['contractors']);
user('mallory', ['eng'], { email: 'mallory@evil.example', email_verified: false });
user('hostile-root', ['eng'], { preferred_username: 'root' });
user('hostile-comma', ['eng'], { preferred_username: 'alice,root' });
user('hostile-dots', ['eng'], { preferred_username: '../x' });
user('hostile-newline', ['eng'], { preferred_username: 'eve\nroot' });
user('hostile-dbadmin', ['eng'], { preferred_username: 'db-admin' });
const ACCOUNTS = new Map(Object.values(USERS).map((u) => [u.sub, u]));

let provider; // set once listening; no request can arrive before the ready line
let providerCallback;
let issuerUrl;
let mountPath = ''; // the issuer's path, when it has one ('' for http://host:port)

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function page(res, status, title, body) {
  const html = `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>\n<body><h1>${escapeHtml(title)}</h1>\n${body}\n</body></html>\n`;
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(html));
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// A grant covering what the interaction asks for: requested OIDC scopes, plus whatever the
// consent prompt still reports missing.
async function grantFor(details, accountId) {
  const { params, prompt } = details;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
    if (grant && grant.accountId !== accountId) grant = undefined;
  }
  if (!grant) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (typeof params.scope === 'string' && params.scope) {
    grant.addOIDCScope(params.scope);
  }
  const missing = prompt?.details || {};
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

async function interactionGet(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'Wrong interaction', '<p>interaction cookie mismatch</p>');
  const { prompt } = details;
  if (prompt.name === 'consent') {
    const grantId = await grantFor(details, details.session.accountId);
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (prompt.name !== 'login') {
    return page(res, 400, 'Unsupported prompt', `<p>prompt ${escapeHtml(prompt.name)}</p>`);
  }
  const action = `${mountPath}/interaction/${encodeURIComponent(uid)}/login`;
  return page(res, 200, 'Sign in', `<form method="post" action="${escapeHtml(action)}">
<label>Login <input type="text" name="login" autofocus autocomplete="off"></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign in</button>
</form>`);
}

async function interactionLogin(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'Wrong interaction', '<p>interaction cookie mismatch</p>');
  const form = await readForm(req);
  const login = form.get('login') || '';
  const account = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
  if (!account) {
    return page(res, 400, 'Sign-in refused', `<p>unknown user ${escapeHtml(login)}</p>`);
  }
  const accountId = account.sub;
  const grantId = await grantFor(details, accountId);
  return provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

function handler(req, res) {
  // Strip the issuer's path (if any) and make oidc-provider build every URL from the issuer,
  // whatever host:port the request actually reached.
  if (mountPath) {
    if (req.url === mountPath || req.url.startsWith(`${mountPath}/`) || req.url.startsWith(`${mountPath}?`)) {
      req.originalUrl = req.url;
      req.url = req.url.slice(mountPath.length) || '/';
    } else {
      return page(res, 404, 'Not found', '');
    }
  }
  req.headers.host = issuerUrl.host;
  delete req.headers['x-forwarded-host'];
  if (issuerUrl.protocol === 'https:') req.headers['x-forwarded-proto'] = 'https';
  else delete req.headers['x-forwarded-proto'];

  const path = req.url.split('?')[0];
  const m = /^\/interaction\/([^/]+)(\/login)?$/.exec(path);
  if (m) {
    let uid;
    try {
      uid = decodeURIComponent(m[1]);
    } catch {
      return page(res, 400, 'Bad request', '');
    }
    let work;
    if (!m[2] && req.method === 'GET') work = interactionGet(req, res, uid);
    else if (m[2] && req.method === 'POST') work = interactionLogin(req, res, uid);
    else return page(res, 405, 'Method not allowed', '');
    work.catch((err) => {
      console.error(`test-idp: interaction ${req.method} ${path}: ${err?.name}: ${err?.message}`);
      if (!res.headersSent) {
        const status = err?.statusCode && err.statusCode < 500 ? err.statusCode : 500;
        page(res, status, 'Interaction failed', `<p>${escapeHtml(err?.name)}: ${escapeHtml(err?.message)}</p>`);
      } else {
        res.destroy();
      }
    });
    return undefined;
  }
  return providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  try {
    handler(req, res);
  } catch (err) {
    console.error(`test-idp: ${req.method} ${req.url}: ${err?.stack || err}`);
    if (!res.headersSent) page(res, 500, 'Server error', '');
  }
});
server.on('error', (err) => fail(`listen: ${err.message}`));

server.listen(listenPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = process.env.IDP_ISSUER || `http://127.0.0.1:${port}`;
  try {
    issuerUrl = new URL(issuer);
  } catch {
    fail(`bad IDP_ISSUER ${issuer}`);
  }
  if (issuerUrl.search || issuerUrl.hash || issuer.endsWith('/')) {
    fail(`IDP_ISSUER must have no query, fragment or trailing slash: ${issuer}`);
  }
  mountPath = issuerUrl.pathname === '/' ? '' : issuerUrl.pathname;

  // Fresh signing key per start: read the running provider's /jwks.
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };
  jwk.kid = crypto.createHash('sha256').update(jwk.n).digest('base64url').slice(0, 16);

  const grantTypes = ['authorization_code'];
  if (deviceFlow) grantTypes.push('urn:ietf:params:oauth:grant-type:device_code');

  provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      application_type: 'native',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: grantTypes,
      response_types: ['code'],
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [jwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', 'email', 'profile', 'groups'],
    claims: {
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'name'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    responseTypes: ['code'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: deviceFlow },
      revocation: { enabled: true },
    },
    interactions: {
      url: (_ctx, interaction) => `${mountPath}/interaction/${interaction.uid}`,
    },
    ttl: {
      AuthorizationCode: 60,
      IdToken: 600,
    },
    async findAccount(_ctx, sub) {
      const account = ACCOUNTS.get(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...account, sub };
        },
      };
    },
  });
  // An https issuer (a TLS proxy in front): trust the X-Forwarded-Proto set above.
  provider.proxy = issuerUrl.protocol === 'https:';
  providerCallback = provider.callback();
  provider.on('server_error', (_ctx, err) => console.error(`test-idp: server_error: ${err?.stack || err}`));
  for (const event of ['authorization.error', 'grant.error', 'code_verification.error', 'device_resume.error', 'resume.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => console.error(`test-idp: ${event}: ${err?.name}: ${err?.message}${err?.error_detail ? ` (${err.error_detail})` : ''}`));
  }

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});
