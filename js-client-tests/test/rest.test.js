// The admin REST API, /health and /metrics (SPEC §8), and CORS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, request, next, token, http, collect, until } from '../lib/helpers.js';

const API_KEY = 'rest-api-key';
let gw;
before(async () => { gw = await startGateway({ API_KEY, MAX_PAYLOAD_BYTES: '4096', CORS_ORIGINS: 'http://app.example,http://other.example' }); });
after(async () => { await gw.stop(); });

const key = { 'x-api-key': API_KEY };
const adminJwt = () => ({ authorization: `Bearer ${token('root', { role: 'admin' })}` });

test('every admin route: 401 without credentials, 403 for a non-admin, 401 for a wrong key', async () => {
  const routes = [
    ['GET', '/api/stats'], ['GET', '/ws/stats'],
    ['POST', '/api/broadcast', { event: 'x' }], ['POST', '/ws/broadcast', { event: 'x' }],
    ['POST', '/api/publish', { channel: 'apps:x', data: 1 }],
    ['POST', '/api/users/alice/disconnect'],
  ];
  for (const [method, route, body] of routes) {
    const none = await http(gw.url + route, { method, body });
    assert.equal(none.status, 401, `${route} without credentials`);
    assert.equal(typeof none.body.error, 'string');
    const user = await http(gw.url + route, { method, body, headers: { authorization: `Bearer ${token('alice')}` } });
    assert.equal(user.status, 403, `${route} as a user`);
    assert.equal(typeof user.body.error, 'string');
    const wrong = await http(gw.url + route, { method, body, headers: { 'x-api-key': 'nope' } });
    assert.equal(wrong.status, 401, `${route} with a wrong key`);
    const badJwt = await http(gw.url + route, { method, body, headers: { authorization: 'Bearer garbage' } });
    assert.equal(badJwt.status, 401, `${route} with a bad token`);
  }
});

test('400 with {error} for bad bodies, 413 for oversized ones', async () => {
  for (const body of ['{not json', JSON.stringify({ data: 1 }), JSON.stringify({ event: 'x', room: 'a', userId: 'b' }),
    JSON.stringify({ event: 'disconnect' }), JSON.stringify({ event: 'x', room: 'bad room' })]) {
    const r = await http(`${gw.url}/api/broadcast`, { method: 'POST', headers: key, body });
    assert.equal(r.status, 400, body);
    assert.equal(typeof r.body.error, 'string');
  }
  const r = await http(`${gw.url}/api/publish`, { method: 'POST', headers: key, body: { data: 1 } });
  assert.equal(r.status, 400);
  const big = await http(`${gw.url}/api/broadcast`, { method: 'POST', headers: key, body: { event: 'x', data: 'x'.repeat(10000) } });
  assert.equal(big.status, 413);
  assert.equal(typeof big.body.error, 'string');
});

test('broadcast to everyone, a user, a socket, a channel and a room', async () => {
  const a1 = (await connect(gw.url, { auth: { token: token('alice') } })).socket;
  const a2 = (await connect(gw.url, { auth: { token: token('alice') } })).socket;
  const b = (await connect(gw.url, { auth: { token: token('bob') } })).socket;
  const anon = (await connect(gw.url)).socket;
  const all = [a1, a2, b, anon];
  try {
    const seen = all.map((s) => collect(s, 'notice'));
    const post = (body) => http(`${gw.url}/api/broadcast`, { method: 'POST', headers: key, body });

    let got = all.map((s) => next(s, 'notice'));
    assert.deepEqual((await post({ event: 'notice', data: { n: 1 } })).body, { success: true });
    for (const v of await Promise.all(got)) assert.deepEqual(v, { n: 1 });

    got = [next(a1, 'notice'), next(a2, 'notice')];
    assert.equal((await post({ event: 'notice', data: { n: 2 }, userId: 'alice' })).status, 200);
    await Promise.all(got);

    got = next(b, 'notice');
    assert.equal((await http(`${gw.url}/ws/broadcast`, { method: 'POST', headers: adminJwt(), body: { event: 'notice', data: { n: 3 }, socketId: b.id } })).status, 200);
    await got;

    await request(anon, 'subscribe', 'announcements');
    got = next(anon, 'notice');
    assert.equal((await post({ event: 'notice', data: { n: 4 }, channel: 'announcements' })).status, 200);
    await got;

    // A room target with nobody joined reaches nobody; then a final broadcast to all fences the checks.
    assert.equal((await post({ event: 'notice', data: { n: 5 }, room: 'empty-room' })).status, 200);
    got = all.map((s) => next(s, 'notice'));
    await post({ event: 'notice', data: { n: 6 } });
    await Promise.all(got);
    assert.deepEqual(seen.map((s) => s.map((v) => v.n)), [[1, 2, 6], [1, 2, 6], [1, 3, 6], [1, 4, 6]]);
  } finally { all.forEach((s) => s.close()); }
});

test('publish delivers the channel envelope, non-JSON-looking data as given', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  await request(socket, 'subscribe', 'deployments:prod');
  const got = next(socket, 'event');
  const r = await http(`${gw.url}/api/publish`, { method: 'POST', headers: adminJwt(), body: { channel: 'deployments:prod', data: 'plain text' } });
  assert.deepEqual(r.body, { success: true });
  const ev = await got;
  assert.equal(ev.channel, 'deployments:prod');
  assert.equal(ev.data, 'plain text');
  socket.close();
});

test('disconnect a user: every socket of theirs, counted', async () => {
  const a1 = (await connect(gw.url, { auth: { token: token('dora') } })).socket;
  const a2 = (await connect(gw.url, { transports: ['websocket'], auth: { token: token('dora') } })).socket;
  const other = (await connect(gw.url, { auth: { token: token('eric') } })).socket;
  const reasons = [next(a1, 'disconnect'), next(a2, 'disconnect')];
  const r = await http(`${gw.url}/api/users/dora/disconnect`, { method: 'POST', headers: key });
  assert.deepEqual(r.body, { success: true, disconnected: 2 });
  assert.deepEqual(await Promise.all(reasons), ['io server disconnect', 'io server disconnect']);
  assert.equal(other.connected, true);
  assert.equal((await request(other, 'list_channels')).success, true);
  const none = await http(`${gw.url}/api/users/nobody/disconnect`, { method: 'POST', headers: key });
  assert.deepEqual(none.body, { success: true, disconnected: 0 });
  other.close();
});

test('/api/stats is flat with nodes', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  await request(socket, 'subscribe', 'storage:x');
  const r = await http(`${gw.url}/api/stats`, { headers: key });
  assert.equal(r.status, 200);
  assert.ok(r.body.totalConnections >= 1);
  assert.ok(r.body.connectionsByChannel['storage:x'] >= 1);
  assert.ok(Array.isArray(r.body.nodes) && r.body.nodes.length === 1);
  assert.equal(typeof r.body.nodes[0].nodeId, 'string');
  assert.ok(r.body.nodes[0].connections >= 1);
  const alias = await http(`${gw.url}/ws/stats`, { headers: adminJwt() });
  assert.equal(alias.status, 200);
  assert.ok('nodes' in alias.body);
  socket.close();
});

test('/health counts connections and channels', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  await request(socket, 'subscribe', 'apps:health');
  const r = await http(`${gw.url}/health`);
  assert.equal(r.status, 200);
  assert.equal(r.body.status, 'ok');
  assert.equal(r.body.redis, 'disabled');
  assert.ok(r.body.connections >= 1 && r.body.authenticated >= 1);
  await until(async () => (await http(`${gw.url}/health`)).body.activeChannels >= 1, 3000, 'activeChannels (counted at most once a second)');
  socket.close();
});

test('/metrics: connections, events in by name, acks, errors by code, subscriptions', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  await request(socket, 'subscribe', 'apps:m');
  await request(socket, 'subscribe', 'system:nope');
  await request(socket, 'whatever-event');
  const r = await http(`${gw.url}/metrics`);
  assert.equal(r.status, 200);
  const text = r.body;
  const value = (re) => { const m = text.match(new RegExp(`^${re.source}`, 'm')); assert.ok(m, `${re} in\n${text}`); return Number(m[1]); };
  assert.ok(value(/realtime_connections\{kind="authenticated"\} (\d+)/) >= 1);
  assert.ok(value(/realtime_events_in_total\{event="subscribe"\} (\d+)/) >= 2);
  assert.ok(value(/realtime_events_in_total\{event="unknown"\} (\d+)/) >= 1);
  assert.ok(value(/realtime_acks_total\{result="ok"\} (\d+)/) >= 1);
  assert.ok(value(/realtime_acks_total\{result="error"\} (\d+)/) >= 2);
  assert.ok(value(/realtime_errors_total\{code="FORBIDDEN"\} (\d+)/) >= 1);
  assert.ok(value(/realtime_errors_total\{code="NOT_FOUND"\} (\d+)/) >= 1);
  assert.ok(value(/realtime_subscriptions (\d+)/) >= 1);
  assert.equal(value(/realtime_redis_up (-?\d+)/), -1);
  assert.match(text, /# HELP realtime_events_in_total/);
  socket.close();
});

test('CORS: listed origins are allowed with credentials, others are not', async () => {
  const ok = await fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers: { origin: 'http://app.example' } });
  assert.equal(ok.headers.get('access-control-allow-origin'), 'http://app.example');
  assert.equal(ok.headers.get('access-control-allow-credentials'), 'true');
  const pre = await fetch(`${gw.url}/api/stats`, { method: 'OPTIONS', headers: { origin: 'http://other.example', 'access-control-request-method': 'GET', 'access-control-request-headers': 'x-api-key' } });
  assert.equal(pre.headers.get('access-control-allow-origin'), 'http://other.example');
  const no = await fetch(`${gw.url}/health`, { headers: { origin: 'http://evil.example' } });
  assert.equal(no.headers.get('access-control-allow-origin'), null);
});
