// Connection and authentication (SPEC §1, §2) with the real socket.io-client 4 and 2.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import ioV2 from 'socket.io-client-v2';
import { startGateway, connect, connectV2, refused, request, next, token, SECRET, BIN } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway(); });
after(async () => { await gw.stop(); });

test('auth.token is accepted and connected carries every field', async () => {
  const t = token('alice', { claims: { email: 'a@example.com', name: 'Alice' } });
  const { socket, hello } = await connect(gw.url, { auth: { token: t } });
  try {
    assert.equal(hello.sessionId, socket.id);
    assert.equal(hello.userId, 'alice');
    assert.deepEqual(hello.user, { userId: 'alice', email: 'a@example.com', name: 'Alice', role: 'user' });
    assert.ok(hello.authorizedChannels.includes('user:alice'));
    assert.ok(hello.authorizedChannels.includes('announcements'));
    assert.ok(!hello.authorizedChannels.includes('system:*'));
    assert.equal(typeof hello.serverTime, 'number');
    assert.ok(Math.abs(hello.serverTime - Date.now()) < 60000);
  } finally { socket.close(); }
});

test('query token and Authorization header are token sources', async () => {
  const q = await connect(gw.url, { query: { token: token('bob') } });
  assert.equal(q.hello.userId, 'bob');
  q.socket.close();
  const h = await connect(gw.url, { extraHeaders: { Authorization: `Bearer ${token('carol')}` } });
  assert.equal(h.hello.userId, 'carol');
  h.socket.close();
  const ws = await connect(gw.url, { transports: ['websocket'], extraHeaders: { Authorization: `Bearer ${token('dave')}` } });
  assert.equal(ws.hello.userId, 'dave');
  ws.socket.close();
});

test('the first token found wins: auth.token before query before header', async () => {
  const { socket, hello } = await connect(gw.url, {
    auth: { token: token('first') },
    query: { token: token('second') },
    extraHeaders: { Authorization: `Bearer ${token('third')}` },
  });
  assert.equal(hello.userId, 'first');
  socket.close();
  const bad = await refused(gw.url, { auth: { token: 'garbage' }, query: { token: token('second') } });
  assert.equal(bad.message, 'Authentication failed: malformed token');
});

test('userId claim is used when sub is absent; admin role is reported', async () => {
  const now = Math.floor(Date.now() / 1000);
  const t = jwt.sign({ userId: 'u-42', role: 'admin', exp: now + 60 }, SECRET);
  const { socket, hello } = await connect(gw.url, { auth: { token: t } });
  assert.equal(hello.userId, 'u-42');
  assert.equal(hello.user.role, 'admin');
  assert.ok(hello.authorizedChannels.includes('user:*'));
  assert.ok(hello.authorizedChannels.includes('user:u-42'));
  assert.ok(hello.authorizedChannels.includes('system:*'));
  socket.close();
});

test('anonymous sockets are accepted by default', async () => {
  const { socket, hello } = await connect(gw.url);
  assert.equal(hello.userId, null);
  assert.equal(hello.user, null);
  assert.deepEqual(hello.authorizedChannels, ['announcements']);
  socket.close();
});

test('bad tokens are refused with the exact reason, never downgraded to anonymous', async () => {
  const cases = [
    [token('x', { ttl: -10 }), 'Authentication failed: token expired'],
    [token('x', { secret: 'another-secret' }), 'Authentication failed: invalid signature'],
    ['not.a.jwt', 'Authentication failed: malformed token'],
    ['garbage', 'Authentication failed: malformed token'],
  ];
  for (const [t, message] of cases) {
    const err = await refused(gw.url, { auth: { token: t } });
    assert.equal(err.message, message);
  }
});

test('alg none is refused', async () => {
  const now = Math.floor(Date.now() / 1000);
  const none = jwt.sign({ sub: 'mallory', role: 'admin', exp: now + 60 }, null, { algorithm: 'none' });
  const err = await refused(gw.url, { auth: { token: none } });
  assert.match(err.message, /^Authentication failed: /);
});

test('a token without exp is refused', async () => {
  const t = jwt.sign({ sub: 'x' }, SECRET);
  const err = await refused(gw.url, { auth: { token: t } });
  assert.match(err.message, /^Authentication failed: /);
});

test('ALLOW_ANONYMOUS=false refuses sockets without a token', async () => {
  const strict = await startGateway({ ALLOW_ANONYMOUS: 'false' });
  try {
    const err = await refused(strict.url);
    assert.equal(err.message, 'Authentication required');
    const ok = await connect(strict.url, { auth: { token: token('alice') } });
    assert.equal(ok.hello.userId, 'alice');
    ok.socket.close();
  } finally { await strict.stop(); }
});

test('issuer and audience are checked when configured', async () => {
  const g = await startGateway({ JWT_ISSUER: 'https://issuer.example', JWT_AUDIENCE: 'gateway' });
  try {
    const good = token('alice', { claims: { iss: 'https://issuer.example', aud: 'gateway' } });
    const ok = await connect(g.url, { auth: { token: good } });
    assert.equal(ok.hello.userId, 'alice');
    ok.socket.close();
    const wrongIss = token('alice', { claims: { iss: 'https://evil.example', aud: 'gateway' } });
    assert.equal((await refused(g.url, { auth: { token: wrongIss } })).message, 'Authentication failed: invalid issuer');
    const wrongAud = token('alice', { claims: { iss: 'https://issuer.example', aud: 'other' } });
    assert.equal((await refused(g.url, { auth: { token: wrongAud } })).message, 'Authentication failed: invalid audience');
  } finally { await g.stop(); }
});

test('JWT_SECRET_PREVIOUS keeps old tokens valid during rotation', async () => {
  const g = await startGateway({ JWT_SECRET: 'new-secret-xyz', JWT_SECRET_PREVIOUS: SECRET });
  try {
    const old = await connect(g.url, { auth: { token: token('alice') } });
    assert.equal(old.hello.userId, 'alice');
    old.socket.close();
    const fresh = await connect(g.url, { auth: { token: token('bob', { secret: 'new-secret-xyz' }) } });
    assert.equal(fresh.hello.userId, 'bob');
    fresh.socket.close();
    const err = await refused(g.url, { auth: { token: token('eve', { secret: 'unknown' }) } });
    assert.equal(err.message, 'Authentication failed: invalid signature');
  } finally { await g.stop(); }
});

test('RS256 and ES256 public keys; HS256 signed with the public key is refused', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-keys-'));
  for (const [alg, type, opts] of [['RS256', 'rsa', { modulusLength: 2048 }], ['ES256', 'ec', { namedCurve: 'P-256' }]]) {
    const { publicKey, privateKey } = generateKeyPairSync(type, {
      ...opts,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
    const file = path.join(dir, `${alg}.pem`);
    writeFileSync(file, publicKey);
    const g = await startGateway({ JWT_PUBLIC_KEY_FILE: file, JWT_ALGORITHM: alg, JWT_SECRET: '' });
    try {
      const now = Math.floor(Date.now() / 1000);
      const good = jwt.sign({ sub: 'alice', exp: now + 60 }, privateKey, { algorithm: alg });
      const ok = await connect(g.url, { auth: { token: good } });
      assert.equal(ok.hello.userId, 'alice');
      ok.socket.close();
      // Algorithm confusion: an HS256 token whose "secret" is the public key.
      const forged = jwt.sign({ sub: 'mallory', role: 'admin', exp: now + 60 }, Buffer.from(publicKey), { algorithm: 'HS256' });
      const err = await refused(g.url, { auth: { token: forged } });
      assert.match(err.message, /^Authentication failed: /);
    } finally { await g.stop(); }
  }
});

test('polling-only and websocket-only v4 clients', async () => {
  for (const transports of [['polling'], ['websocket']]) {
    const { socket, hello } = await connect(gw.url, { transports, auth: { token: token('alice') } });
    assert.equal(hello.sessionId, socket.id);
    assert.deepEqual(await request(socket, 'no-such-event'), { success: false, error: 'Unknown event', code: 'NOT_FOUND' });
    socket.close();
  }
});

test('socket.io-client 2.x (Engine.IO 3) over polling and websocket', async () => {
  for (const transports of [['polling'], ['websocket'], ['polling', 'websocket']]) {
    const { socket, hello } = await connectV2(gw.url, { transports, query: { token: token('old-client') } });
    assert.equal(hello.userId, 'old-client');
    // A 2.x client's socket.id is its Engine.IO session id; over polling that is the private id
    // only its transport carries, never the public sessionId (SPEC §2, docs/migration.md).
    if (transports[0] === 'polling') assert.notEqual(hello.sessionId, socket.id);
    else assert.equal(hello.sessionId, socket.id);
    const ack = await new Promise((resolve) => socket.emit('no-such-event', {}, resolve));
    assert.deepEqual(ack, { success: false, error: 'Unknown event', code: 'NOT_FOUND' });
    socket.close();
  }
});

test('socket.io-client 2.x sees a refusal as an error', async () => {
  const socket = ioV2(gw.url, { forceNew: true, reconnection: false, query: { token: 'garbage' } });
  const err = await next(socket, 'error');
  socket.close();
  const message = typeof err === 'string' ? err : err.message;
  assert.equal(message, 'Authentication failed: malformed token');
});

test('an event without an ack that fails gets an error event', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  socket.emit('no-such-event', { x: 1 });
  assert.deepEqual(await next(socket, 'error'), { event: 'no-such-event', error: 'Unknown event', code: 'NOT_FOUND' });
  socket.close();
});

test('expiry: auth-expired, then a server disconnect after the grace', async () => {
  const g = await startGateway({ AUTH_EXPIRY_GRACE_MS: '1000' });
  try {
    const { socket } = await connect(g.url, { auth: { token: token('alice', { ttl: 2 }) } });
    const expired = await next(socket, 'auth-expired', 6000);
    assert.equal(expired.message, 'Token expired');
    assert.equal(await next(socket, 'disconnect', 5000), 'io server disconnect');
  } finally { await g.stop(); }
});

test('refresh-token extends a live socket; wrong user or bad token is refused', async () => {
  const g = await startGateway({ AUTH_EXPIRY_GRACE_MS: '1000' });
  try {
    const { socket } = await connect(g.url, { auth: { token: token('alice', { ttl: 2 }) } });
    assert.deepEqual(await request(socket, 'refresh-token', { token: token('bob') }),
      { success: false, error: 'Token belongs to another user', code: 'FORBIDDEN' });
    const bad = await request(socket, 'refresh-token', { token: token('alice', { secret: 'nope' }) });
    assert.deepEqual(bad, { success: false, error: 'Authentication failed: invalid signature', code: 'UNAUTHENTICATED' });
    // Refresh only once warned: the socket then outlives the grace.
    await next(socket, 'auth-expired', 6000);
    const fresh = token('alice', { ttl: 600 });
    const ack = await request(socket, 'refresh-token', { token: fresh });
    assert.equal(ack.success, true);
    assert.equal(ack.exp, jwt.decode(fresh).exp);
    let dropped = false;
    socket.on('disconnect', () => { dropped = true; });
    // A control socket whose token expires later than the refreshed one's old token did: once the gateway
    // has dropped it, it would have dropped the refreshed socket too.
    const { socket: control } = await connect(g.url, { auth: { token: token('alice-control', { ttl: 2 }) } });
    assert.equal(await next(control, 'disconnect', 8000), 'io server disconnect');
    assert.equal(dropped, false);
    assert.equal(socket.connected, true);
    socket.close();
  } finally { await g.stop(); }
});

test('anonymous sockets cannot refresh', async () => {
  const { socket } = await connect(gw.url);
  assert.deepEqual(await request(socket, 'refresh-token', { token: token('alice') }),
    { success: false, error: 'Authentication required', code: 'UNAUTHENTICATED' });
  socket.close();
});

test('SIGTERM: server-shutdown, transport close, exit 0 within 10 s', async () => {
  const g = await startGateway();
  const a = await connect(g.url, { auth: { token: token('alice') } });
  const b = await connect(g.url, { transports: ['websocket'] });
  const notices = [next(a.socket, 'server-shutdown'), next(b.socket, 'server-shutdown')];
  const reasons = [next(a.socket, 'disconnect', 10000), next(b.socket, 'disconnect', 10000)];
  const started = Date.now();
  const code = await g.stop('SIGTERM');
  assert.equal(code, 0);
  assert.ok(Date.now() - started < 10000);
  for (const n of await Promise.all(notices)) assert.equal(n.reason, 'shutdown');
  assert.deepEqual(await Promise.all(reasons), ['transport close', 'transport close']);
});

test('the token command mints a token the gateway accepts', async () => {
  const r = spawnSync(BIN, ['token', '--sub', 'minted', '--role', 'admin', '--ttl', '1h'], {
    env: { PATH: process.env.PATH, JWT_SECRET: SECRET }, encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const t = r.stdout.trim();
  assert.equal(jwt.verify(t, SECRET).role, 'admin');
  const { socket, hello } = await connect(gw.url, { auth: { token: t } });
  assert.equal(hello.userId, 'minted');
  socket.close();
});

test('invalid configuration stops the process with one line naming the variable', () => {
  for (const [name, value] of [['PORT', 'abc'], ['LOG_FORMAT', 'xml'], ['ALLOW_ANONYMOUS', 'maybe'], ['JWT_ALGORITHM', 'HS999']]) {
    const r = spawnSync(BIN, [], { env: { PATH: process.env.PATH, [name]: value }, encoding: 'utf8', timeout: 10000 });
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0].includes(name), lines[0]);
  }
});

test('no JWT_SECRET: an ephemeral secret, a warning and ready tokens that work', async () => {
  const g = await startGateway({ JWT_SECRET: '' });
  try {
    await new Promise((r) => { const t = setInterval(() => { if (/user token/.test(g.logs())) { clearInterval(t); r(); } }, 20); });
    const m = g.logs().match(/user token \(24h, alice\): ([A-Za-z0-9_.-]+)/);
    assert.ok(m, g.logs());
    assert.match(g.logs(), /EPHEMERAL/);
    const { socket, hello } = await connect(g.url, { auth: { token: m[1] } });
    assert.equal(hello.userId, 'alice');
    socket.close();
  } finally { await g.stop(); }
});
