// The sign-in providers of the e2e suite (tests/oauth_rig.rs starts one per target, on its own
// loopback port): `node oauth-rig.mjs <target origin>`; prints `ready <port>` on stdout, logs
// one line per request on stderr. Client secrets come in as OAUTH_RIG_SECRET_{LOCAL,DISCORD,EVIL}.
//
// - /oidc: a real, certified OpenID Connect provider (the npm package `oidc-provider`, pinned in
//   package.json), client `piano`, PKCE required, RS256 ID tokens; its development login form
//   takes any login name (the account is invented: sub = the name) and then asks for consent.
// - /discord: a stand-in for Discord's documented OAuth2 endpoints (discord.com cannot be
//   reached from the tests): authorize approves at once as the user the trial names with
//   `as=<id>:<username>[:<global name>[:<avatar hash>]]`, or answers access_denied with
//   `deny=1` (another value of deny: that error); the token endpoint takes HTTP Basic client
//   auth and a single-use code bound to the redirect URI and the PKCE challenge; users/@me
//   answers the profile.
// - /evil: an OpenID Connect provider that misbehaves on request (a certified provider cannot
//   be made to): authorize redirects back at once with a code remembering `mode`, and the
//   token endpoint returns an ID token crafted per mode (see idToken below), or fails
//   (token_500, token_garbage). Everything else
//   (client auth, PKCE, single-use codes) it does right, so a refusal is the mode's doing.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const origin = process.argv[2];
if (!origin) throw new Error('usage: oauth-rig.mjs <target origin>');
const secrets = {
  local: process.env.OAUTH_RIG_SECRET_LOCAL,
  discord: process.env.OAUTH_RIG_SECRET_DISCORD,
  evil: process.env.OAUTH_RIG_SECRET_EVIL,
};
const CLIENT_IDS = { local: 'piano', discord: '1234567890', evil: 'piano-evil' };
const callback = (id) => `${origin}/api/auth/oauth/${id}/callback`;
const log = (...a) => process.stderr.write(`${new Date().toISOString()} ${a.join(' ')}\n`);

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const sha256 = (s) => crypto.createHash('sha256').update(s).digest();
const random = () => b64u(crypto.randomBytes(24));
const now = () => Math.floor(Date.now() / 1000);

function send(res, status, body, headers = {}) {
  const json = typeof body !== 'string';
  res.writeHead(status, {
    'content-type': json ? 'application/json' : 'text/plain; charset=utf-8',
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(json ? JSON.stringify(body) : body);
}

function redirect(res, url) {
  res.writeHead(302, { location: url, 'cache-control': 'no-store' });
  res.end();
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('body too large');
  }
  return new URLSearchParams(body);
}

// RFC 6749 2.3.1: `Basic base64(urlencode(id):urlencode(secret))`.
function basicAuth(req) {
  const m = /^Basic (.+)$/i.exec(req.headers.authorization || '');
  if (!m) return null;
  const text = Buffer.from(m[1], 'base64').toString();
  const i = text.indexOf(':');
  if (i < 0) return null;
  const dec = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
  return { id: dec(text.slice(0, i)), secret: dec(text.slice(i + 1)) };
}

function bearer(req) {
  const m = /^Bearer (.+)$/i.exec(req.headers.authorization || '');
  return m ? m[1] : null;
}

// The checks an authorization request must pass at Discord and at the evil provider alike;
// an unusable client or redirect URI is answered here (never redirected), as providers do.
function checkAuthorize(res, q, id, scope) {
  if (q.get('client_id') !== CLIENT_IDS[id] || q.get('redirect_uri') !== callback(id)) {
    send(res, 400, `${id}: unknown client_id or unregistered redirect_uri`);
    return false;
  }
  const back = (error) => {
    const u = new URL(callback(id));
    u.searchParams.set('error', error);
    if (q.get('state')) u.searchParams.set('state', q.get('state'));
    redirect(res, u.href);
    return false;
  };
  const scopes = (q.get('scope') || '').split(' ');
  if (q.get('response_type') !== 'code' || !scopes.includes(scope) || !q.get('state')) {
    return back('invalid_request');
  }
  if (q.get('code_challenge_method') !== 'S256' || !/^[A-Za-z0-9_-]{43}$/.test(q.get('code_challenge') || '')) {
    return back('invalid_request');
  }
  // deny=1: the player said no; any other value is the error the provider answers.
  if (q.get('deny')) return back(q.get('deny') === '1' ? 'access_denied' : q.get('deny'));
  return true;
}

// A code's exchange: client auth (Basic only), single use, redirect URI and PKCE verifier.
async function exchange(req, res, id, codes) {
  const form = await readForm(req);
  const client = basicAuth(req);
  if (!client || client.id !== CLIENT_IDS[id] || client.secret !== secrets[id]) {
    return send(res, 401, { error: 'invalid_client' });
  }
  if (form.get('grant_type') !== 'authorization_code') {
    return send(res, 400, { error: 'unsupported_grant_type' });
  }
  const grant = codes.get(form.get('code') || '');
  // Single use: a code is forgotten at its first exchange, whatever the outcome.
  codes.delete(form.get('code') || '');
  const verifier = form.get('code_verifier') || '';
  if (
    !grant ||
    grant.expires < Date.now() ||
    grant.redirectUri !== form.get('redirect_uri') ||
    b64u(sha256(verifier)) !== grant.challenge
  ) {
    log(id, 'token: invalid_grant');
    return send(res, 400, { error: 'invalid_grant' });
  }
  return grant;
}

function issueCode(q, codes, extra) {
  const code = random();
  codes.set(code, {
    redirectUri: q.get('redirect_uri'),
    challenge: q.get('code_challenge'),
    expires: Date.now() + 60_000,
    ...extra,
  });
  const u = new URL(q.get('redirect_uri'));
  u.searchParams.set('code', code);
  u.searchParams.set('state', q.get('state'));
  return u.href;
}

// --- Discord (stand-in) ---------------------------------------------------------------------

const discordCodes = new Map();
const discordTokens = new Map();

async function discord(req, res, url) {
  const q = url.searchParams;
  const path = url.pathname.slice('/discord'.length);
  if (req.method === 'GET' && path === '/oauth2/authorize') {
    if (!checkAuthorize(res, q, 'discord', 'identify')) return;
    const [userId, username, globalName, avatar] = (q.get('as') || '').split(':');
    if (!/^\d{1,20}$/.test(userId || '') || !username) {
      return send(res, 400, 'the Discord stand-in signs in as as=<id>:<username>[:<global name>[:<avatar>]]');
    }
    const user = { id: userId, username, global_name: globalName || null, avatar: avatar || null, discriminator: '0' };
    return redirect(res, issueCode(q, discordCodes, { user }));
  }
  if (req.method === 'POST' && path === '/api/oauth2/token') {
    const grant = await exchange(req, res, 'discord', discordCodes);
    if (!grant) return;
    const access = random();
    discordTokens.set(access, grant.user);
    return send(res, 200, {
      access_token: access,
      token_type: 'Bearer',
      expires_in: 604800,
      refresh_token: random(),
      scope: 'identify',
    });
  }
  if (req.method === 'GET' && path === '/api/users/@me') {
    const user = discordTokens.get(bearer(req) || '');
    if (!user) return send(res, 401, { message: '401: Unauthorized', code: 0 });
    return send(res, 200, user);
  }
  if (req.method === 'GET' && path.startsWith('/cdn/avatars/')) {
    // A 1x1 transparent PNG, so a browser showing the avatar gets a picture.
    const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==', 'base64');
    return send(res, 200, png.toString('latin1'), { 'content-type': 'image/png' });
  }
  send(res, 404, { message: '404: Not Found', code: 0 });
}

// --- the misbehaving OpenID Connect provider ------------------------------------------------

const evilKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const evilEd = crypto.generateKeyPairSync('ed25519');
const evilCodes = new Map();
const evilTokens = new Map();
const MODES = new Set([
  'ok', 'eddsa', 'other_key', 'alg_none', 'hs256', 'wrong_aud', 'wrong_iss', 'expired',
  'future_iat', 'bad_nonce', 'unknown_kid', 'userinfo_other_sub', 'token_500', 'token_garbage',
]);

function jws(header, claims, sign) {
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
  return `${input}.${b64u(sign(Buffer.from(input)))}`;
}

// The ID token of each mode; `ok` and `eddsa` are valid, each other one breaks one rule.
function idToken(issuer, grant) {
  const t = now();
  const claims = {
    iss: issuer, sub: grant.sub, aud: CLIENT_IDS.evil, exp: t + 300, iat: t, auth_time: t,
    nonce: grant.nonce,
  };
  const rs256 = (key) => (input) => crypto.sign('sha256', input, key);
  const rsa = { alg: 'RS256', typ: 'JWT', kid: 'evil-rsa' };
  switch (grant.mode) {
    case 'eddsa':
      return jws({ alg: 'EdDSA', typ: 'JWT', kid: 'evil-ed' }, claims, (i) => crypto.sign(null, i, evilEd.privateKey));
    case 'other_key': // a key not in the JWKS, under the JWKS key's kid
      return jws(rsa, claims, rs256(otherKey.privateKey));
    case 'unknown_kid':
      return jws({ ...rsa, kid: 'not-in-jwks' }, claims, rs256(otherKey.privateKey));
    case 'alg_none':
      return `${b64u(JSON.stringify({ alg: 'none', typ: 'JWT', kid: 'evil-rsa' }))}.${b64u(JSON.stringify(claims))}.`;
    case 'hs256': { // the key-confusion attack: HMAC keyed with the public key's bytes
      const pem = evilKey.publicKey.export({ type: 'spki', format: 'pem' });
      return jws({ ...rsa, alg: 'HS256' }, claims, (i) => crypto.createHmac('sha256', pem).update(i).digest());
    }
    case 'wrong_aud':
      return jws(rsa, { ...claims, aud: 'someone-else' }, rs256(evilKey.privateKey));
    case 'wrong_iss':
      return jws(rsa, { ...claims, iss: `${issuer}-not` }, rs256(evilKey.privateKey));
    case 'expired':
      return jws(rsa, { ...claims, exp: t - 3600, iat: t - 7200 }, rs256(evilKey.privateKey));
    case 'future_iat':
      return jws(rsa, { ...claims, iat: t + 3600, exp: t + 7200 }, rs256(evilKey.privateKey));
    case 'bad_nonce':
      return jws(rsa, { ...claims, nonce: random() }, rs256(evilKey.privateKey));
    default: // ok, userinfo_other_sub
      return jws(rsa, claims, rs256(evilKey.privateKey));
  }
}

async function evil(req, res, url, base) {
  const issuer = `${base}/evil`;
  const q = url.searchParams;
  const path = url.pathname.slice('/evil'.length);
  if (path === '/.well-known/openid-configuration') {
    return send(res, 200, {
      issuer,
      authorization_endpoint: `${issuer}/authorize`,
      token_endpoint: `${issuer}/token`,
      userinfo_endpoint: `${issuer}/userinfo`,
      jwks_uri: `${issuer}/jwks`,
      response_types_supported: ['code'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['RS256', 'EdDSA'],
      code_challenge_methods_supported: ['S256'],
      token_endpoint_auth_methods_supported: ['client_secret_basic'],
    });
  }
  if (path === '/jwks') {
    const rsa = { ...evilKey.publicKey.export({ format: 'jwk' }), kid: 'evil-rsa', alg: 'RS256', use: 'sig' };
    const ed = { ...evilEd.publicKey.export({ format: 'jwk' }), kid: 'evil-ed', alg: 'EdDSA', use: 'sig' };
    return send(res, 200, { keys: [rsa, ed] });
  }
  if (req.method === 'GET' && path === '/authorize') {
    if (!checkAuthorize(res, q, 'evil', 'openid')) return;
    const mode = q.get('mode') || 'ok';
    if (!MODES.has(mode) || !q.get('nonce')) return send(res, 400, `evil: unknown mode ${mode} or no nonce`);
    const sub = q.get('as') || `evil-${random()}`;
    return redirect(res, issueCode(q, evilCodes, { mode, sub, nonce: q.get('nonce') }));
  }
  if (req.method === 'POST' && path === '/token') {
    const grant = await exchange(req, res, 'evil', evilCodes);
    if (!grant) return;
    // A provider in trouble: an error of its own, or an answer that is not a token response.
    if (grant.mode === 'token_500') return send(res, 500, { error: 'server_error' });
    if (grant.mode === 'token_garbage') return send(res, 200, '<html>maintenance</html>', { 'content-type': 'text/html' });
    const access = random();
    evilTokens.set(access, grant);
    log('evil: token for mode', grant.mode);
    return send(res, 200, { access_token: access, token_type: 'Bearer', expires_in: 3600, id_token: idToken(issuer, grant) });
  }
  if (path === '/userinfo') {
    const grant = evilTokens.get(bearer(req) || '');
    if (!grant) return send(res, 401, { error: 'invalid_token' });
    const sub = grant.mode === 'userinfo_other_sub' ? `${grant.sub}-other` : grant.sub;
    return send(res, 200, { sub, preferred_username: grant.sub, name: `Evil ${grant.sub}` });
  }
  send(res, 404, { error: 'not_found' });
}

// --- the real OpenID Connect provider ---------------------------------------------------------

function localProvider(base) {
  const jwk = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const provider = new Provider(`${base}/oidc`, {
    clients: [
      {
        client_id: CLIENT_IDS.local,
        client_secret: secrets.local,
        redirect_uris: [callback('local')],
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    pkce: { required: () => true },
    scopes: ['openid', 'profile'],
    claims: { openid: ['sub'], profile: ['preferred_username', 'name', 'picture'] },
    // Any login name is an account: sub is the name, so signing in again finds it.
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            preferred_username: sub,
            name: `Local ${sub}`,
            picture: `${base}/oidc-pictures/${encodeURIComponent(sub)}.png`,
          };
        },
      };
    },
    cookies: { keys: [random()] },
    jwks: { keys: [{ ...jwk, kid: 'local-rsa', alg: 'RS256', use: 'sig' }] },
    features: { devInteractions: { enabled: true } },
  });
  provider.on('server_error', (_ctx, err) => log('oidc: server_error', err.stack));
  provider.on('grant.error', (_ctx, err) => log('oidc: grant.error', err.message, err.error_description || ''));
  provider.on('authorization.error', (_ctx, err) => log('oidc: authorization.error', err.message, err.error_description || ''));
  return provider.callback();
}

// --- one server ------------------------------------------------------------------------------

let base = '';
let oidc = null;
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, base);
  res.on('finish', () => log(req.method, url.pathname, res.statusCode));
  try {
    if (url.pathname === '/oidc' || url.pathname.startsWith('/oidc/')) {
      // Mounted under /oidc: the provider sees the rest (and finds its mount in originalUrl).
      req.originalUrl = req.url;
      req.url = req.url.slice('/oidc'.length) || '/';
      return oidc(req, res);
    }
    if (url.pathname.startsWith('/discord/')) return await discord(req, res, url);
    if (url.pathname.startsWith('/evil/')) return await evil(req, res, url, base);
    send(res, 404, { error: 'not_found' });
  } catch (e) {
    log('error', e.stack);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
  }
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  base = `http://127.0.0.1:${port}`;
  oidc = localProvider(base);
  process.stdout.write(`ready ${port}\n`);
});
// The harness stops the rig with SIGTERM (and kills it with the tests).
process.on('SIGTERM', () => process.exit(0));
