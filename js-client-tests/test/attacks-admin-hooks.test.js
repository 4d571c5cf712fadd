// Attacks on the Admin UI and the backend hooks (issue 21, items 1, 5, 8 and 11), tried as an attacker
// would against the real binary, each with the defence it must meet:
// - a read-only Admin UI operator collecting tokens: production mode by default relays nothing; in
//   development mode refresh-token arguments, JWTs in events (Socket.IO and /ws) and in handshakes
//   (auth, query token, Authorization header) never reach /admin;
// - Admin UI login: usernames told apart by timing; passwords guessed past the throttle;
// - a captured webhook / proxy call replayed under a fresh X-Realtime-Timestamp;
// - a dead webhook endpoint and large messages growing the webhook queue without a byte bound (memory
//   and Redis).
// The last test prints `# figures: attacks tried N, refused M` and asserts M = N.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { io as ioc } from 'socket.io-client';
import {
  startGateway, startRedis, redisClient, connect, request, token, http, until, uniq, wsConnect, freePort, ROOT,
} from '../lib/helpers.js';

const PASSWORD = 'attack-admin-pw';
const tried = [];
/** Records one attack and whether the defence held; the test asserts it too. */
function attack(name, refused) {
  tried.push({ name, refused });
  assert.ok(refused, `attack not refused: ${name}`);
}

/** Connects to /admin and records everything it is sent; resolves once `config` arrived. */
function admin(url, auth, { headers } = {}) {
  return new Promise((resolve, reject) => {
    const socket = ioc(`${url}/admin`, { forceNew: true, reconnection: false, auth, extraHeaders: headers });
    const state = { socket, all: [], allSockets: null, stats: 0, events: [] };
    socket.onAny((ev, ...args) => {
      state.all.push([ev, ...args]);
      if (ev === 'all_sockets') state.allSockets = args[0];
      else if (ev === 'server_stats') state.stats++;
      else if (!['session', 'config'].includes(ev)) state.events.push([ev, ...args]);
    });
    const timer = setTimeout(() => { socket.close(); reject(new Error('no config')); }, 10000);
    socket.on('config', () => { clearTimeout(timer); resolve(state); });
    socket.on('connect_error', (e) => { clearTimeout(timer); socket.close(); reject(e); });
  });
}

/** The signature part of a JWT: what makes it usable, and never short enough to appear by chance. */
const sig = (jwt) => jwt.split('.')[2];
const leaked = (state, jwt) => JSON.stringify(state.all).includes(sig(jwt));

test('admin ui, default mode: no client event, socket or token reaches /admin', async () => {
  const g = await startGateway({ ADMIN_UI_PASSWORD: PASSWORD });
  try {
    const a = await admin(g.url, { username: 'admin', password: PASSWORD });
    const first = token('ops', { role: 'admin' });
    const { socket: s } = await connect(g.url, { auth: { token: first } });
    const fresh = token('ops', { role: 'admin', ttl: 7200 });
    assert.equal((await request(s, 'refresh-token', { token: fresh })).success, true);
    await request(s, 'private-message', { targetUserId: 'offline-bob', content: `my token ${fresh}` });
    // Two server_stats after the events: whatever was relayed for them would have arrived before.
    const seen = a.stats;
    await until(() => a.stats >= seen + 2, 8000, 'two server_stats');
    assert.deepEqual(a.events, [], 'no live events in the default mode');
    assert.equal(a.allSockets, null, 'no socket list in the default mode');
    attack('default mode: a read-only operator reads refresh-token arguments', !leaked(a, fresh) && !leaked(a, first));
    s.close(); a.socket.close();
  } finally { await g.stop(); }
});

test('admin ui, development mode: refresh-token, JWTs in events and handshakes are never shown', async () => {
  const g = await startGateway({ ADMIN_UI_PASSWORD: PASSWORD, ADMIN_UI_MODE: 'development', ADMIN_UI_READONLY: 'true' });
  const closers = [];
  try {
    const inAuth = token('dev-auth', { role: 'admin' });
    const inQuery = token('dev-query');
    const inHeader = token('dev-header');
    const wsQuery = token('dev-ws');
    // Sockets there before the UI logs in (all_sockets) and after (socket_connected).
    const { socket: s1 } = await connect(g.url, { auth: { token: inAuth } });
    closers.push(() => s1.close());
    const a = await admin(g.url, { username: 'admin', password: PASSWORD });
    closers.push(() => a.socket.close());
    const { socket: s2 } = await connect(g.url, { query: { token: inQuery } });
    const { socket: s3 } = await connect(g.url, { extraHeaders: { authorization: `Bearer ${inHeader}` } });
    const ws = await wsConnect(g.url, { token: wsQuery });
    const anon = await wsConnect(g.url, {});
    closers.push(() => { s2.close(); s3.close(); ws.close(); anon.close(); });
    const refreshed = token('dev-auth', { role: 'admin', ttl: 7200 });
    assert.equal((await request(s1, 'refresh-token', { token: refreshed })).success, true);
    const inMessage = token('someone-else', { role: 'admin' });
    await request(s1, 'private-message', { targetUserId: 'offline-x', content: `use this: ${inMessage} ok` });
    const inWsMessage = token('someone-else-ws');
    await ws.request('private-message', { targetUserId: 'offline-y', content: inWsMessage });
    const inWsAuth = token('dev-inband');
    anon.send({ type: 'auth', token: inWsAuth, requestId: 'a1' });
    await anon.next(() => true); // its answer, whatever it is

    // What the UI must have got, so that the checks below are not vacuous.
    const ev = (pred) => a.events.find((e) => e[0] === 'event_received' && pred(e[3]));
    await until(() => ev((x) => x[0] === 'refresh-token'), 5000, 'refresh-token relayed (its name)');
    const pm = await until(() => ev((x) => x[0] === 'private-message' && JSON.stringify(x).includes('use this')), 5000, 'pm');
    const wsPm = await until(() => ev((x) => x[0] === 'private-message' && JSON.stringify(x).includes('offline-y')), 5000, 'ws pm');
    await until(() => [s2.id, s3.id].every((id) => a.events.some((e) => e[0] === 'socket_connected' && e[1].id === id)),
      5000, 'socket_connected of both');
    assert.ok(a.allSockets.some((x) => x.id === s1.id), 'the first socket listed');
    const listed = await admin(g.url, { username: 'admin', password: PASSWORD }); // lists everyone at login
    closers.push(() => listed.socket.close());
    assert.ok([s1.id, s2.id, s3.id, ws.hello.connectionId].every((id) => listed.allSockets.some((x) => x.id === id)));

    attack('development: refresh-token arguments relayed', !leaked(a, refreshed));
    attack('development: a JWT inside a Socket.IO private message', !leaked(a, inMessage)
      && JSON.stringify(pm).includes('use this: [redacted JWT] ok'));
    attack('development: a JWT inside a /ws private message', !leaked(a, inWsMessage)
      && JSON.stringify(wsPm).includes('[redacted JWT]'));
    attack('development: a /ws in-band auth frame', !leaked(a, inWsAuth));
    for (const [what, jwt] of [['handshake auth.token', inAuth], ['query token', inQuery],
      ['Authorization header', inHeader], ['/ws query token', wsQuery]]) {
      attack(`development: the socket list shows the ${what}`, !leaked(a, jwt) && !leaked(listed, jwt));
    }
  } finally {
    closers.forEach((c) => c());
    await g.stop();
  }
});

/** One login; resolves {ok, ms, message}. */
function login(url, auth, ip) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const s = ioc(`${url}/admin`, { forceNew: true, reconnection: false, auth, transports: ['websocket'],
      extraHeaders: ip ? { 'x-forwarded-for': ip } : {} });
    const done = (ok, message) => { s.close(); resolve({ ok, message, ms: Number(process.hrtime.bigint() - t0) / 1e6 }); };
    s.once('config', () => done(true, null));
    s.once('connect_error', (e) => done(false, e.message));
  });
}

const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };

test('admin ui login: a wrong username takes as long as a wrong password (no username oracle)', async () => {
  // A bcrypt hash of a low cost, so that the debug build checks it in tens of milliseconds.
  const g = await startGateway({ ADMIN_UI_PASSWORD: bcrypt.hashSync(PASSWORD, 6), TRUST_PROXY_HEADERS: 'true' });
  try {
    const wrongUser = [];
    const wrongPass = [];
    // Five of each (the free failures per username), each from its own address; interleaved.
    for (let i = 0; i < 5; i++) {
      const u = await login(g.url, { username: `nobody-${i}`, password: PASSWORD }, `10.1.0.${i + 1}`);
      const p = await login(g.url, { username: 'admin', password: `wrong-${i}` }, `10.2.0.${i + 1}`);
      assert.equal(u.message, 'invalid credentials');
      assert.equal(p.message, 'invalid credentials');
      wrongUser.push(u.ms); wrongPass.push(p.ms);
    }
    const [mu, mp] = [median(wrongUser), median(wrongPass)];
    console.log(`# login timing: wrong username median ${mu.toFixed(1)} ms, wrong password median ${mp.toFixed(1)} ms`);
    attack('login: tell valid usernames by the answer time', mu >= mp / 2);
  } finally { await g.stop(); }
});

test('admin ui login: after failures the right password is refused until the back-off passes', async () => {
  const g = await startGateway({ ADMIN_UI_PASSWORD: bcrypt.hashSync(PASSWORD, 4), TRUST_PROXY_HEADERS: 'true' });
  try {
    // Per address: five wrong passwords, then the right one at once.
    for (let i = 0; i < 5; i++) {
      assert.equal((await login(g.url, { username: 'admin', password: `guess-${i}` }, '10.9.9.9')).ok, false);
    }
    const right = await login(g.url, { username: 'admin', password: PASSWORD }, '10.9.9.9');
    assert.equal(right.message, 'invalid credentials', 'refused as any failure, never revealing');
    attack('login: the right password right after a run of guesses (per address)', right.ok === false);
    // Per username: the same username from another address is backing off too.
    const elsewhere = await login(g.url, { username: 'admin', password: PASSWORD }, '10.8.8.8');
    attack('login: the same guesses spread over addresses (per username)', elsewhere.ok === false);
    const metrics = (await http(`${g.url}/metrics`)).body;
    const n = (o) => Number(metrics.match(new RegExp(`realtime_admin_logins_total\\{outcome="${o}"\\} (\\d+)`))?.[1] ?? -1);
    assert.equal(n('failed'), 5);
    assert.ok(n('throttled') >= 2, metrics.match(/realtime_admin_logins_total.*/g)?.join('\n'));
    // The back-off passes (the first is 1 s; refusals while backing off do not extend it).
    const t0 = Date.now();
    await until(async () => (await login(g.url, { username: 'admin', password: PASSWORD }, '10.9.9.9')).ok, 5000, 'accepted again');
    assert.ok(Date.now() - t0 < 5000);
    const after = (await http(`${g.url}/metrics`)).body;
    assert.equal(after.match(/realtime_admin_logins_total\{outcome="ok"\} (\d+)/)?.[1], '1');
  } finally { await g.stop(); }
});

/** A backend that verifies as docs/hooks.md teaches: HMAC of "<timestamp>.<body>", timestamp fresh. */
function startVerifier(secret) {
  const got = [];
  const verify = (body, headers) => {
    const ts = Number(headers['x-realtime-timestamp']);
    if (!Number.isSafeInteger(ts) || Math.abs(Date.now() - ts) > 5 * 60 * 1000) return false;
    return headers['x-realtime-signature'] === `sha256=${createHmac('sha256', secret).update(`${ts}.${body}`).digest('hex')}`;
  };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const ok = verify(body, req.headers);
      got.push({ body, headers: { ...req.headers }, ok });
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
      res.end(ok && req.url === '/events' ? '{"ack":{"ok":true}}' : '');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const base = `http://127.0.0.1:${server.address().port}`;
    resolve({ base, got, close: () => new Promise((r) => server.close(r)) });
  }));
}

/** Replays a captured request with a fresh timestamp header; resolves the status. */
async function replay(url, captured) {
  const res = await fetch(url, { method: 'POST', body: captured.body, headers: {
    'content-type': 'application/json',
    'x-realtime-timestamp': String(Date.now()),
    'x-realtime-signature': captured.headers['x-realtime-signature'],
  } });
  return res.status;
}

test('hooks: a captured webhook or proxy call replayed under a fresh X-Realtime-Timestamp is refused', async () => {
  const secret = 'replay-secret';
  const backend = await startVerifier(secret);
  const g = await startGateway({ WEBHOOK_URL: `${backend.base}/hooks`, EVENT_PROXY_URL: `${backend.base}/events`,
    WEBHOOK_SECRET: secret });
  try {
    const { socket } = await connect(g.url, { auth: { token: token('replayed') } });
    assert.deepEqual(await request(socket, 'app:thing', 1), { ok: true }, 'the genuine proxy call verifies');
    const hook = await until(() => backend.got.find((r) => r.headers['x-realtime-timestamp'] && JSON.parse(r.body).type === 'user.online'), 10000, 'a webhook');
    assert.equal(hook.ok, true, 'the genuine webhook verifies');
    const call = backend.got.find((r) => r.body.includes('app:thing'));
    // Captured, then replayed a moment later with a fresh timestamp: the signature no longer matches.
    await until(() => Date.now() > Number(hook.headers['x-realtime-timestamp']) + 5, 1000, 'a later millisecond');
    attack('replay a captured webhook with a fresh timestamp', await replay(`${backend.base}/hooks`, hook) === 401);
    attack('replay a captured proxy call with a fresh timestamp', await replay(`${backend.base}/events`, call) === 401);
    socket.close();
  } finally { await g.stop(); await backend.close(); }
});

test('docs/hooks.md: its Node and Python verifiers accept the test vector and refuse it when stale', () => {
  const doc = readFileSync(path.join(ROOT, 'docs', 'hooks.md'), 'utf8');
  const block = (lang, first) => {
    const m = doc.match(new RegExp('```' + lang + '\\n(' + first.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '[\\s\\S]*?)```'));
    assert.ok(m, `the ${first} block`);
    return m[1];
  };
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-verify-'));
  writeFileSync(path.join(dir, 'verify.mjs'), block('js', '// verify.mjs'));
  writeFileSync(path.join(dir, 'vector.mjs'), block('js', "import { verifyRealtime } from './verify.mjs';"));
  assert.equal(execFileSync(process.execPath, [path.join(dir, 'vector.mjs')], { encoding: 'utf8' }), 'true\nfalse\n');
  writeFileSync(path.join(dir, 'verify.py'), block('python', '# verify.py'));
  assert.equal(execFileSync('python3', [path.join(dir, 'verify.py')], { encoding: 'utf8' }), 'True\nFalse\n');
});

function metric(text, name) {
  const m = text.match(new RegExp(`^${name.replace(/[{}"=]/g, (c) => `\\${c}`)} ([0-9.e+]+)$`, 'm'));
  return m ? Number(m[1]) : null;
}

/** A user floods a room with large messages: one message.created webhook each, ~60 KB. */
async function flood(g, n) {
  const { socket } = await connect(g.url, { auth: { token: token(uniq('flooder')) } });
  const room = uniq('flood');
  assert.equal((await request(socket, 'join-room', room)).success, true);
  const content = 'x'.repeat(60000);
  for (let i = 0; i < n; i++) {
    assert.equal((await request(socket, 'message', { roomId: room, content })).success, true);
  }
  socket.close();
}

const CAP = 1 << 20;

test('webhooks: a dead endpoint and large messages fill the memory queue up to WEBHOOK_QUEUE_MAX_BYTES, no more', async () => {
  const dead = await freePort(); // nothing listens there
  const g = await startGateway({ WEBHOOK_URL: `http://127.0.0.1:${dead}/hooks`, WEBHOOK_QUEUE_MAX_BYTES: String(CAP),
    RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
  try {
    await flood(g, 60); // 3.6 MB of webhooks against a 1 MiB bound
    const text = (await http(`${g.url}/metrics`)).body;
    const held = metric(text, 'realtime_webhook_queue_bytes');
    const dropped = metric(text, 'realtime_webhooks_total{outcome="dropped"}');
    console.log(`# webhook queue (memory): held ${held} bytes of a ${CAP} cap, dropped ${dropped}`);
    assert.ok(dropped >= 30, `dropped ${dropped}`);
    attack('grow the webhook queue in memory with large messages to a dead endpoint', held !== null && held > 0 && held <= CAP);
  } finally { await g.stop(); }
});

test('webhooks, with Redis: the stream stops at WEBHOOK_QUEUE_MAX_BYTES and its byte counter is right', async () => {
  const redis = await startRedis({ persist: false });
  const dead = await freePort();
  const g = await startGateway({ REDIS_URL: redis.url, WEBHOOK_URL: `http://127.0.0.1:${dead}/hooks`,
    WEBHOOK_QUEUE_MAX_BYTES: String(CAP), RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
  const r = await redisClient(redis.url);
  try {
    await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
    await flood(g, 60);
    // The stream and its counter read at one moment (MULTI).
    const snapshot = async () => {
      const [entries, counter] = await r.multi().xRange('rtg:webhooks', '-', '+').get('rtg:webhooks:bytes').exec();
      return [entries.reduce((n, e) => n + Buffer.byteLength(e.message.b ?? ''), 0), Number(counter)];
    };
    // Every message's webhook went through the appender: the stream then holds what the bound allows.
    await until(async () => metric((await http(`${g.url}/metrics`)).body, 'realtime_webhooks_total{outcome="dropped"}') >= 30,
      10000, 'drops counted');
    const [inStream, counter] = await snapshot();
    console.log(`# webhook queue (redis): ${inStream} bytes in the stream, counter ${counter}, cap ${CAP}`);
    assert.equal(counter, inStream, 'the byte counter matches the stream');
    attack('grow the webhook stream in Redis with large messages to a dead endpoint', inStream > 0 && inStream <= CAP);
  } finally { await r.quit(); await g.stop(); await redis.stop(); }
});

test('figures', () => {
  const refused = tried.filter((a) => a.refused).length;
  console.log(`# figures: attacks tried ${tried.length}, refused ${refused}`);
  assert.ok(tried.length >= 14, `every attack ran (${tried.length})`);
  assert.equal(refused, tried.length);
});
