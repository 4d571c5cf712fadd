// Redis ingress (SPEC §9) against a real redis-server: channel publishes, realtime:emit, exactly once
// per subscriber across nodes, Redis down at start and restarted mid-test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, startRedis, redisClient, connect, request, next, token, http, collect, until } from '../lib/helpers.js';

let redis;
let pub;
before(async () => { redis = await startRedis(); pub = await redisClient(redis.url); });
after(async () => { await pub.quit().catch(() => {}); await redis.stop(); });

const health = async (g) => (await http(`${g.url}/health`)).body;
const redisUp = (g) => until(async () => (await health(g)).redis === 'up', 15000, 'redis up');

test('PUBLISH <channel> reaches subscribers as the event envelope; text stays text', async () => {
  const g = await startGateway({ REDIS_URL: redis.url });
  try {
    await redisUp(g);
    const { socket } = await connect(g.url, { auth: { token: token('alice') } });
    await request(socket, 'subscribe', 'apps:created');
    const seen = collect(socket, 'event');
    let got = next(socket, 'event');
    await pub.publish('apps:created', JSON.stringify({ id: 1 }));
    let ev = await got;
    // SPEC §15: each publication carries its offset within the channel's epoch.
    assert.deepEqual(ev, { channel: 'apps:created', data: { id: 1 }, timestamp: ev.timestamp, offset: ev.offset, epoch: ev.epoch });
    assert.ok(Number.isInteger(ev.offset) && ev.offset >= 1 && /^[0-9a-f]{16}$/.test(ev.epoch));
    got = next(socket, 'event');
    await pub.publish('apps:created', 'not json {');
    ev = await got;
    assert.equal(ev.data, 'not json {');
    // Unknown channels and channels nobody subscribed to are dropped quietly.
    await pub.publish('nobody:knows', '1');
    got = next(socket, 'event');
    await pub.publish('apps:created', '"fence"');
    await got;
    assert.deepEqual(seen.map((e) => e.data), [{ id: 1 }, 'not json {', 'fence']);
    socket.close();
  } finally { await g.stop(); }
});

test('realtime:emit emits any event to any target; broken envelopes are dropped', async () => {
  const g = await startGateway({ REDIS_URL: redis.url });
  try {
    await redisUp(g);
    const a = (await connect(g.url, { auth: { token: token('alice') } })).socket;
    const b = (await connect(g.url, { auth: { token: token('bob') } })).socket;
    const seenA = collect(a, 'job-done');
    let got = [next(a, 'job-done'), next(b, 'job-done')];
    await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 7 } }));
    assert.deepEqual(await Promise.all(got), [{ id: 7 }, { id: 7 }]);
    got = next(b, 'job-done');
    await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 8 }, userId: 'bob' }));
    assert.deepEqual(await got, { id: 8 });
    got = next(b, 'job-done');
    await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 9 }, socketId: b.id }));
    assert.deepEqual(await got, { id: 9 });
    for (const broken of ['{oops', '{"data":1}', '{"event":"x","room":"a","userId":"b"}', '[]']) {
      await pub.publish('realtime:emit', broken);
    }
    got = next(a, 'job-done');
    await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 10 }, userId: 'alice' }));
    await got;
    assert.deepEqual(seenA.map((d) => d.id), [7, 10]);
    assert.equal((await health(g)).status, 'ok');
    a.close(); b.close();
  } finally { await g.stop(); }
});

test('two nodes on one Redis: each subscriber gets exactly one copy', async () => {
  const g1 = await startGateway({ REDIS_URL: redis.url });
  const g2 = await startGateway({ REDIS_URL: redis.url });
  try {
    await redisUp(g1); await redisUp(g2);
    const s1 = (await connect(g1.url, { auth: { token: token('alice') } })).socket;
    const s2 = (await connect(g2.url, { auth: { token: token('bob') } })).socket;
    await request(s1, 'subscribe', 'database:changes');
    await request(s2, 'subscribe', 'database:changes');
    const seen1 = collect(s1, 'event');
    const seen2 = collect(s2, 'event');
    for (let i = 0; i < 5; i++) await pub.publish('database:changes', JSON.stringify({ i }));
    // REST publish on node 1 goes through Redis too: both nodes deliver it once.
    const got = [next(s1, 'event'), next(s2, 'event')];
    await until(async () => seen1.length >= 5 && seen2.length >= 5, 5000, 'five deliveries');
    const r = await http(`${g1.url}/api/publish`, { method: 'POST', headers: { authorization: `Bearer ${token('root', { role: 'admin' })}` }, body: { channel: 'database:changes', data: { i: 'rest' } } });
    assert.equal(r.status, 200);
    await Promise.all(got);
    await until(async () => seen1.length >= 6 && seen2.length >= 6, 5000, 'the REST copy');
    // Fence: one more publish; anything duplicated would have arrived before it.
    await pub.publish('database:changes', JSON.stringify({ i: 'fence' }));
    await until(async () => seen1.at(-1)?.data.i === 'fence' && seen2.at(-1)?.data.i === 'fence', 5000, 'fence');
    const expected = [0, 1, 2, 3, 4, 'rest', 'fence'];
    assert.deepEqual(seen1.map((e) => e.data.i), expected);
    assert.deepEqual(seen2.map((e) => e.data.i), expected);
    s1.close(); s2.close();
  } finally { await g1.stop(); await g2.stop(); }
});

test('Redis restarted mid-test: degraded, then back and resubscribed by itself', async () => {
  const r2 = await startRedis();
  const p2 = await redisClient(r2.url);
  const g = await startGateway({ REDIS_URL: r2.url });
  try {
    await redisUp(g);
    const { socket } = await connect(g.url, { auth: { token: token('alice') } });
    await request(socket, 'subscribe', 'storage:files');
    await r2.stop();
    await until(async () => (await health(g)).status === 'degraded', 15000, 'degraded');
    assert.equal((await health(g)).redis, 'down');
    // Local sockets keep working while Redis is down.
    assert.equal((await request(socket, 'list_channels')).success, true);
    await r2.start();
    await redisUp(g);
    assert.equal((await health(g)).status, 'ok');
    const got = next(socket, 'event');
    await until(async () => { try { await p2.publish('storage:files', '"after restart"'); return true; } catch { return false; } }, 10000, 'publisher reconnect');
    assert.equal((await got).data, 'after restart');
    socket.close();
  } finally { await g.stop(); await p2.quit().catch(() => {}); await r2.stop(); }
});

test('Redis unreachable at start: the gateway serves anyway and connects once Redis appears', async () => {
  const r3 = await startRedis();
  await r3.stop();
  const g = await startGateway({ REDIS_URL: r3.url });
  try {
    const h = await health(g);
    assert.equal(h.status, 'degraded');
    assert.equal(h.redis, 'down');
    const { socket, hello } = await connect(g.url, { auth: { token: token('alice') } });
    assert.equal(hello.userId, 'alice');
    await r3.start();
    await redisUp(g);
    socket.close();
  } finally { await g.stop(); await r3.stop(); }
});
