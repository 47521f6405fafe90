// A real OAuth2 authorization server for regcred's tests: oidc-provider with
// the client-credentials grant, strict client authentication (one client per
// method), token introspection and revocation (RFC 7009, advertised in
// discovery), and a configurable token lifetime.
//
//   PORT=0 TOKEN_TTL=30 CLIENT_SECRET=... node server.mjs
//
// With TLS_CERT and TLS_KEY (PEM files) it serves https; with TLS_CLIENT_CA
// as well it demands a client certificate signed by that CA (mutual TLS).
//
// With MOUNT_PATH (e.g. /realms/team-a) the provider is mounted there, its
// issuer carrying the path (as Keycloak, Okta and Auth0 publish theirs), and
// the root's /.well-known/openid-configuration is another tenant's document:
// issuer .../realms/other, revocation_endpoint .../realms/other/revoke. What
// reaches /realms/other/ is counted ("foreign_requests") and answered 200.
//
// Prints `LISTENING <port>` once it accepts connections. GET /_stats answers
// {"token_requests": n, "tokens_issued": n} so tests can count mints.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const ttl = Number(process.env.TOKEN_TTL || 30);
const secret = process.env.CLIENT_SECRET;
if (!secret) {
  console.error('CLIENT_SECRET is required');
  process.exit(2);
}

const stats = { token_requests: 0, tokens_issued: 0, foreign_requests: 0 };
const mount = (process.env.MOUNT_PATH || '').replace(/\/$/, '');

const client = (id, method) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  token_endpoint_auth_method: method,
  scope: 'registry:pull',
});

const tls = process.env.TLS_CERT && process.env.TLS_KEY;
const scheme = tls ? 'https' : 'http';

function start(issuerPort) {
  const provider = new Provider(`${scheme}://127.0.0.1:${issuerPort}${mount}`, {
    clients: [client('regcred-basic', 'client_secret_basic'), client('regcred-post', 'client_secret_post')],
    features: {
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      devInteractions: { enabled: false },
    },
    scopes: ['registry:pull'],
    ttl: { ClientCredentials: ttl },
  });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/_stats') {
      ctx.body = stats;
      return;
    }
    await next();
    if (ctx.path === '/token') {
      stats.token_requests += 1;
      if (ctx.status === 200) stats.tokens_issued += 1;
    }
  });
  return provider;
}

// The issuer URL must carry the real port, so bind first, then mount.
import http from 'node:http';
import https from 'node:https';
import fs from 'node:fs';
let server;
if (tls) {
  const options = { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) };
  if (process.env.TLS_CLIENT_CA) {
    Object.assign(options, { ca: fs.readFileSync(process.env.TLS_CLIENT_CA), requestCert: true, rejectUnauthorized: true });
  }
  server = https.createServer(options);
} else {
  server = http.createServer();
}
server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  const provider = start(actual);
  const callback = provider.callback();
  const json = (res, body) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(body));
  };
  server.on('request', (req, res) => {
    if (!mount) return callback(req, res);
    const path = req.url.split('?')[0];
    if (path === '/.well-known/openid-configuration') {
      const other = `${scheme}://127.0.0.1:${actual}/realms/other`;
      return json(res, { issuer: other, token_endpoint: `${other}/token`, revocation_endpoint: `${other}/revoke` });
    }
    if (path.startsWith('/realms/other/')) {
      stats.foreign_requests += 1;
      return json(res, {});
    }
    if (path === '/_stats') return json(res, stats);
    if (path === mount || path.startsWith(`${mount}/`)) {
      req.originalUrl = req.url;
      req.url = req.url.slice(mount.length) || '/';
      return callback(req, res);
    }
    res.statusCode = 404;
    return res.end();
  });
  console.log(`LISTENING ${actual}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
