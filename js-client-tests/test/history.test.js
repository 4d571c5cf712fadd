// Channel history and recovery (SPEC §15): offsets and epochs on every publication, `subscribe` with
// `since` on any node (also after the client's node was SIGKILLed), `channel-history`, the `/ws`
// frames, and `recovered:false` when the history expired or Redis lost it. Real redis-server, real
// socket.io-client, real `ws`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io as ioV4 } from 'socket.io-client';
import {
  startGateway, startRedis, redisClient, gatewayKey, connect, request, next, token, http, until, uniq, wsConnect,
} from '../lib/helpers.js';

const API_KEY = 'history-key';
const key = { 'x-api-key': API_KEY };

let redis;
let pub;
before(async () => { redis = await startRedis({ persist: false }); pub = await redisClient(redis.url); });
after(async () => { await pub.quit().catch(() => {}); await redis.stop(); });

const redisUp = (g) => until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
const publish = (g, channel, data) => http(`${g.url}/api/publish`, { method: 'POST', headers: key, body: { channel, data } });

/** Subscribes with an ack and records, in arrival order, the ack and every `event` of `channel`. */
function subscribeRecording(socket, channel, since) {
  const order = [];
  socket.on('event', (e) => { if (e.channel === channel) order.push(e); });
  const ack = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no subscribe ack')), 10000);
    socket.emit('subscribe', since ? { channel, since } : { channel }, (a) => {
      clearTimeout(timer);
      order.push({ ack: a });
      resolve(a);
    });
  });
  return { order, ack, events: () => order.filter((x) => !('ack' in x)) };
}

/** Offsets consecutive from `from`, each once. */
function assertConsecutive(events, from, what) {
  events.forEach((e, i) => assert.equal(e.offset, from + i, `${what}: event ${i} has offset ${e.offset}, expected ${from + i}`));
}

test('one node: offsets and epoch on every publication, recovery after a disconnect, the ack first', async () => {
  const g = await startGateway({ API_KEY });
  try {
    const channel = uniq('apps:h');
    const { socket: a } = await connect(g.url, { auth: { token: token('alice') } });
    // A plain subscribe answers as SPEC §3 says; channel-history tells the place of a channel
    // without publications: offset 0 of no epoch yet.
    assert.deepEqual(await request(a, 'subscribe', channel), { success: true, channel });
    assert.deepEqual(await request(a, 'channel-history', { channel }), { success: true, publications: [], offset: 0, epoch: '' });
    const got = [];
    a.on('event', (e) => got.push(e));
    for (let i = 1; i <= 3; i++) assert.equal((await publish(g, channel, { i })).status, 200);
    await until(() => got.length === 3, 5000, '3 events');
    assert.deepEqual(got.map((e) => e.offset), [1, 2, 3]);
    const epoch = got[0].epoch;
    assert.match(epoch, /^[0-9a-f]{16}$/);
    assert.ok(got.every((e) => e.epoch === epoch && e.channel === channel && typeof e.timestamp === 'string'));
    assert.deepEqual(Object.keys(got[0]).sort(), ['channel', 'data', 'epoch', 'offset', 'timestamp']);
    a.close();

    // Away: five publications; back with the last position.
    for (let i = 4; i <= 8; i++) await publish(g, channel, { i });
    const { socket: b } = await connect(g.url, { auth: { token: token('alice') } });
    const rec = subscribeRecording(b, channel, { offset: 3, epoch });
    const ack = await rec.ack;
    assert.deepEqual(ack, { success: true, channel, recovered: true, offset: 8, epoch });
    await until(() => rec.events().length === 5, 5000, 'the 5 missed');
    assert.ok('ack' in rec.order[0], 'the ack comes before the missed publications');
    assertConsecutive(rec.events(), 4, 'replay');
    assert.deepEqual(rec.events().map((e) => e.data.i), [4, 5, 6, 7, 8]);
    await publish(g, channel, { i: 9 });
    await until(() => rec.events().length === 6, 5000, 'the live one');
    assert.equal(rec.events()[5].offset, 9);

    // channel-history: the last `limit`, oldest first.
    const h = await request(b, 'channel-history', { channel, limit: 3 });
    assert.equal(h.success, true);
    assert.equal(h.offset, 9);
    assert.equal(h.epoch, epoch);
    assert.deepEqual(h.publications.map((p) => [p.offset, p.data.i]), [[7, 7], [8, 8], [9, 9]]);
    assert.ok(h.publications.every((p) => typeof p.timestamp === 'string' && Object.keys(p).length === 3));
    const all = await request(b, 'channel-history', { channel });
    assert.equal(all.publications.length, 9);

    // Already up to date: recovered with nothing to replay.
    const { socket: c } = await connect(g.url, { auth: { token: token('alice') } });
    const upToDate = subscribeRecording(c, channel, { offset: 9, epoch });
    assert.deepEqual(await upToDate.ack, { success: true, channel, recovered: true, offset: 9, epoch });
    // Another epoch, or a position ahead of the channel: not recoverable, nothing replayed.
    const other = await request(c, 'subscribe', { channel, since: { offset: 2, epoch: 'ffffffffffffffff' } });
    assert.deepEqual(other, { success: true, channel, recovered: false, offset: 9, epoch });
    const ahead = await request(c, 'subscribe', { channel, since: { offset: 50, epoch } });
    assert.equal(ahead.recovered, false);
    await publish(g, channel, { i: 10 });
    await until(() => upToDate.events().length >= 1, 5000, 'live after the re-subscribes');
    assert.deepEqual(upToDate.events().map((e) => e.offset), [10], 'no replay for unrecoverable positions, no duplicate');
    b.close();
    c.close();
  } finally { await g.stop(); }
});

test('channel-history and since: subscribers only, bad input is INVALID_PAYLOAD, a bounded history', async () => {
  const g = await startGateway({ API_KEY, CHANNEL_HISTORY_SIZE: '5' });
  try {
    const channel = uniq('apps:b');
    const { socket } = await connect(g.url, { auth: { token: token('bob') } });
    const denied = await request(socket, 'channel-history', { channel });
    assert.deepEqual(denied, { success: false, error: 'Not subscribed to this channel', code: 'FORBIDDEN' });
    const policy = await request(socket, 'subscribe', { channel: 'system:x', since: { offset: 0, epoch: '' } });
    assert.equal(policy.code, 'FORBIDDEN');
    for (const since of [{ offset: -1, epoch: '' }, { offset: 'x', epoch: '' }, { offset: 1 }, { offset: 1, epoch: 'e'.repeat(65) }, 'x']) {
      const r = await request(socket, 'subscribe', { channel, since });
      assert.equal(r.code, 'INVALID_PAYLOAD', JSON.stringify(since));
    }
    const sub = await request(socket, 'subscribe', channel);
    assert.equal(sub.success, true);
    for (const limit of [0, 101, 'x']) {
      assert.equal((await request(socket, 'channel-history', { channel, limit })).code, 'INVALID_PAYLOAD', String(limit));
    }
    const events = [];
    socket.on('event', (e) => events.push(e));
    for (let i = 1; i <= 12; i++) await publish(g, channel, i);
    await until(() => events.length === 12, 5000, '12 events');
    const h = await request(socket, 'channel-history', { channel, limit: 100 });
    assert.deepEqual(h.publications.map((p) => p.offset), [8, 9, 10, 11, 12], 'CHANNEL_HISTORY_SIZE=5 keeps the last 5');
    // A position older than what is kept cannot be recovered; the newest kept one can.
    const { socket: late } = await connect(g.url, { auth: { token: token('bob') } });
    const old = await request(late, 'subscribe', { channel, since: { offset: 3, epoch: events[0].epoch } });
    assert.equal(old.recovered, false);
    const { socket: late2 } = await connect(g.url, { auth: { token: token('bob') } });
    const rec = subscribeRecording(late2, channel, { offset: 7, epoch: events[0].epoch });
    assert.equal((await rec.ack).recovered, true);
    await until(() => rec.events().length === 5, 5000, 'the 5 kept');
    assertConsecutive(rec.events(), 8, 'bounded replay');
    for (const s of [socket, late, late2]) s.close();
  } finally { await g.stop(); }
});

test('one node: after CHANNEL_HISTORY_TTL_SECS the history is gone and recovery says so', async () => {
  const g = await startGateway({ API_KEY, CHANNEL_HISTORY_TTL_SECS: '1' });
  try {
    const channel = uniq('apps:ttl');
    const { socket } = await connect(g.url, { auth: { token: token('carol') } });
    await request(socket, 'subscribe', channel);
    const ev = next(socket, 'event');
    await publish(g, channel, 'one');
    const { epoch } = await ev;
    socket.close();
    await publish(g, channel, 'two');
    const { socket: back } = await connect(g.url, { auth: { token: token('carol') } });
    await request(back, 'subscribe', channel);
    // The expiry is a matter of time: poll the history until it is empty.
    await until(async () => (await request(back, 'channel-history', { channel })).publications.length === 0, 10000, 'expiry');
    const r = await request(back, 'subscribe', { channel, since: { offset: 1, epoch } });
    assert.deepEqual(r, { success: true, channel, recovered: false, offset: 2, epoch });
    back.close();
  } finally { await g.stop(); }
});

test('two nodes: a client whose node was SIGKILLed recovers exactly the 50 it missed on the other node, under 300 publications/s', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY });
  const B = await startGateway({ REDIS_URL: redis.url, API_KEY });
  const channel = uniq('apps:kill');
  let running = true;
  let n = 0;
  let paused = false;
  const published = [];
  let rateFrom = 0;
  let rateN = 0;
  const stopped = (async () => {
    // 300 publications a second while running and not paused (caught up every 8 ms), at most 5,000.
    let credit = 0;
    let t = Date.now();
    while (running && n < 5000) {
      const now = Date.now();
      if (!paused) credit += ((now - t) * 300) / 1000;
      t = now;
      while (!paused && running && credit >= 1) {
        credit -= 1;
        n += 1;
        await pub.publish(channel, JSON.stringify({ n }));
        published.push(n);
      }
      await new Promise((r) => setTimeout(r, 8));
    }
  })();
  try {
    await redisUp(A);
    await redisUp(B);
    const { socket: onA } = await connect(A.url, { auth: { token: token('dave') } });
    const { socket: watcher } = await connect(B.url, { auth: { token: token('erin') } });
    const seenA = [];
    const seenB = [];
    onA.on('event', (e) => { if (e.channel === channel) seenA.push(e); });
    watcher.on('event', (e) => { if (e.channel === channel) seenB.push(e); });
    await request(onA, 'subscribe', channel);
    await request(watcher, 'subscribe', channel);
    await until(() => seenA.length >= 30, 10000, 'node A delivers');

    // Node A dies; its client keeps what it saw last.
    paused = true;
    await A.stop('SIGKILL');
    const last = seenA[seenA.length - 1];
    const lastN = last.data.n;
    assertConsecutive(seenA, seenA[0].offset, 'node A');
    // Exactly 50 publications while the client is away (and the publisher runs on at 250/s after).
    const target = n + 50;
    const skipped = n - lastN; // published after A's last delivery, before the pause: missed as well
    paused = false;
    await until(() => n >= target, 10000, '50 more published');
    paused = true;
    const missed = skipped + 50;

    // Back on node B with the last position, while publications keep coming.
    const { socket: back } = await connect(B.url, { auth: { token: token('dave') } });
    paused = false;
    rateFrom = Date.now();
    rateN = n;
    const rec = subscribeRecording(back, channel, { offset: last.offset, epoch: last.epoch });
    const ack = await rec.ack;
    assert.equal(ack.recovered, true, `${JSON.stringify(ack)} since ${JSON.stringify(last)}`);
    assert.equal(ack.epoch, last.epoch);
    // When the node that died was the appender, B takes over within the lease (3 s): the missed
    // ones the ack does not cover yet follow live, in order, and are checked below.
    assert.ok(ack.offset >= last.offset, `ack offset ${ack.offset} is not behind the client's ${last.offset}`);
    const until200 = ack.offset - last.offset + 200;
    await until(() => rec.events().length >= until200, 20000, '200 live after the recovery');
    const rate = ((n - rateN) * 1000) / (Date.now() - rateFrom);
    assert.ok(rate >= 200, `the recovery ran under ${rate.toFixed(0)} publications/s, the test needs 200/s or more`);
    running = false;
    await stopped;

    const got = rec.events();
    assert.ok('ack' in rec.order[0], 'the ack first');
    assertConsecutive(got, last.offset + 1, 'recovered then live on node B');
    // The missed ones first, exactly: those published after the last one the client saw.
    assert.deepEqual(got.slice(0, missed).map((e) => e.data.n), Array.from({ length: missed }, (_, i) => lastN + 1 + i));
    // One order everywhere: the same publication has the same offset on both nodes.
    const shift = last.offset - lastN;
    for (const e of [...seenA, ...seenB, ...got]) assert.equal(e.offset - e.data.n, shift, `offset ${e.offset} for n ${e.data.n}`);
    assertConsecutive(seenB, seenB[0].offset, 'the watcher on node B');
    assert.ok(got.every((e) => e.epoch === last.epoch));
    console.log(`# recovery after SIGKILL: missed ${missed} (50 while away + ${skipped} in flight), then ${got.length - missed} more; ` +
      `${published.length} published; ${rate.toFixed(0)} publications/s during the recovery; no gap, no duplicate`);
    for (const s of [onA, watcher, back]) s.close();
  } finally {
    running = false;
    await stopped;
    await A.stop('SIGKILL');
    await B.stop();
  }
});

test('two nodes, /ws: {type:"subscribe", channel, since} answers subscribed with recovered, then the missed event frames', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY });
  const B = await startGateway({ REDIS_URL: redis.url, API_KEY });
  try {
    await redisUp(A);
    await redisUp(B);
    const channel = uniq('apps:ws');
    const a = await wsConnect(A.url, { token: token('frank') });
    a.send({ type: 'subscribe', channel });
    const sub = await a.next('subscribed');
    assert.deepEqual(Object.keys(sub).sort(), ['channel', 'timestamp', 'type'], 'a plain subscribe answers as SPEC §10 says');
    await pub.publish(channel, JSON.stringify({ k: 1 }));
    const e1 = await a.next('event');
    assert.deepEqual(Object.keys(e1).sort(), ['channel', 'data', 'epoch', 'offset', 'timestamp', 'type']);
    assert.equal(e1.offset, 1);
    await a.terminate();
    for (let k = 2; k <= 4; k++) await publish(A, channel, { k });
    // POST /api/publish is a PUBLISH, appended after it answers: wait until the history holds all three.
    await until(async () => Number(await pub.hGet(gatewayKey(`chist:${channel}:m`), 'top')) >= 4, 10000, 'the three appended');
    const b = await wsConnect(B.url, { token: token('frank') });
    b.send({ type: 'subscribe', channel, since: { offset: 1, epoch: e1.epoch }, requestId: 7 });
    const back = await b.next('subscribed');
    assert.equal(back.requestId, 7);
    assert.equal(back.recovered, true);
    assert.equal(back.offset, 4);
    assert.equal(back.epoch, e1.epoch);
    assert.equal(typeof back.timestamp, 'string');
    const replay = [await b.next('event'), await b.next('event'), await b.next('event')];
    assert.deepEqual(replay.map((f) => [f.offset, f.data.k]), [[2, 2], [3, 3], [4, 4]]);
    const i = (f) => b.frames.indexOf(f);
    assert.ok(i(back) < i(replay[0]), 'subscribed before the events');
    const h = await b.request('channel-history', undefined, { channel });
    assert.equal(h.type, 'ack');
    assert.deepEqual(h.data.publications.map((p) => p.offset), [1, 2, 3, 4]);
    b.close();
  } finally { await A.stop(); await B.stop(); }
});

test('Redis lost its data (FLUSHALL): recovered:false, and a new epoch starts at offset 1', async () => {
  const g = await startGateway({ REDIS_URL: redis.url, API_KEY });
  try {
    await redisUp(g);
    const channel = uniq('apps:flush');
    const { socket } = await connect(g.url, { auth: { token: token('gina') } });
    await request(socket, 'subscribe', channel);
    let ev = next(socket, 'event');
    await pub.publish(channel, '"before"');
    const before1 = await ev;
    await (redis.flushAll ? redis.flushAll() : pub.flushAll());
    const { socket: back } = await connect(g.url, { auth: { token: token('gina') } });
    const r = await request(back, 'subscribe', { channel, since: { offset: before1.offset, epoch: before1.epoch } });
    assert.deepEqual(r, { success: true, channel, recovered: false, offset: 0, epoch: '' });
    ev = next(back, 'event');
    await pub.publish(channel, '"after"');
    const after1 = await ev;
    assert.equal(after1.offset, 1);
    assert.notEqual(after1.epoch, before1.epoch);
    socket.close();
    back.close();
  } finally { await g.stop(); }
});

test('two nodes: after CHANNEL_HISTORY_TTL_SECS the Redis history is gone and recovery says so', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY, CHANNEL_HISTORY_TTL_SECS: '1' });
  const B = await startGateway({ REDIS_URL: redis.url, API_KEY, CHANNEL_HISTORY_TTL_SECS: '1' });
  try {
    await redisUp(A);
    await redisUp(B);
    const channel = uniq('apps:rttl');
    const { socket } = await connect(A.url, { auth: { token: token('hal') } });
    await request(socket, 'subscribe', channel);
    const ev = next(socket, 'event');
    await pub.publish(channel, '1');
    const first = await ev;
    socket.close();
    await pub.publish(channel, '2');
    const { socket: back } = await connect(B.url, { auth: { token: token('hal') } });
    await request(back, 'subscribe', channel);
    await until(async () => (await request(back, 'channel-history', { channel })).publications.length === 0, 10000, 'expiry');
    const r = await request(back, 'subscribe', { channel, since: { offset: first.offset, epoch: first.epoch } });
    assert.deepEqual(r, { success: true, channel, recovered: false, offset: 2, epoch: first.epoch });
    back.close();
  } finally { await A.stop(); await B.stop(); }
});

test('socket.io-client reconnecting by itself resubscribes with its last offset (the docs/protocol.md recipe)', async () => {
  const g = await startGateway({ API_KEY });
  try {
    const channel = uniq('apps:recipe');
    // The recipe: keep the last position per channel (from the events, or from channel-history for a
    // channel that has had none yet); on every `connected`, subscribe with it.
    const socket = ioV4(g.url, { forceNew: true, auth: { token: token('ivy') }, reconnectionDelay: 100, reconnectionDelayMax: 200 });
    const positions = new Map();
    const seen = [];
    let connects = 0;
    socket.on('event', (e) => {
      seen.push(e);
      if (e.offset !== undefined) positions.set(e.channel, { offset: e.offset, epoch: e.epoch });
    });
    socket.on('connected', () => {
      connects += 1;
      const since = positions.get(channel);
      socket.emit('subscribe', since ? { channel, since } : { channel }, (ack) => {
        if (ack.success && !since) {
          socket.emit('channel-history', { channel, limit: 1 }, (h) => {
            if (h.success && !positions.has(channel)) positions.set(channel, { offset: h.offset, epoch: h.epoch });
          });
        }
      });
    });
    await until(() => positions.has(channel), 5000, 'subscribed');
    for (let i = 1; i <= 3; i++) await publish(g, channel, i);
    await until(() => seen.length === 3, 5000, '3 live');
    // The transport drops; the client reconnects by itself while publications go on.
    socket.io.engine.close();
    for (let i = 4; i <= 10; i++) await publish(g, channel, i);
    await until(() => connects === 2 && seen.length === 10, 10000, 'reconnected and recovered');
    assertConsecutive(seen, 1, 'across the reconnect');
    socket.close();
  } finally { await g.stop(); }
});

/** The Redis lease key of the channel appender (docs/scaling.md, 5. Channel history). */
/** alice on node A and bob on node B, both subscribed to `channel`; `seen` records their events of it. */
async function subscribeOnBoth(A, B, channel) {
  const { socket: a } = await connect(A.url, { auth: { token: token('alice') } });
  const { socket: b } = await connect(B.url, { auth: { token: token('bob') } });
  const seen = { a: [], b: [] };
  a.on('event', (e) => { if (e.channel === channel) seen.a.push(e); });
  b.on('event', (e) => { if (e.channel === channel) seen.b.push(e); });
  await request(a, 'subscribe', channel);
  await request(b, 'subscribe', channel);
  return { a, b, seen };
}

const LEASE = gatewayKey('chist:lease');

test('two nodes: a heartbeat with the same body every second is one publication each: offsets 1..n on both nodes, n in the history', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'hb-a' });
  const B = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'hb-b' });
  const channel = uniq('apps:heartbeat');
  try {
    await redisUp(A);
    await redisUp(B);
    const { a, b, seen } = await subscribeOnBoth(A, B, channel);
    // 12 beats a second apart: more than the 10 s the old fingerprints were remembered for.
    const n = 12;
    for (let i = 0; i < n; i += 1) {
      await pub.publish(channel, JSON.stringify({ beat: true }));
      await new Promise((r) => setTimeout(r, 1000));
    }
    await until(() => seen.a.length >= n && seen.b.length >= n, 15000, 'every beat on both nodes');
    // A duplicate would come now, if at all: wait for one more beat to be delivered after it.
    await pub.publish(channel, JSON.stringify({ last: true }));
    await until(() => seen.a.some((e) => e.data.last) && seen.b.some((e) => e.data.last), 10000, 'the last beat');
    const want = Array.from({ length: n + 1 }, (_, i) => i + 1);
    assert.deepEqual(seen.a.map((e) => e.offset), want, 'node A: offsets');
    assert.deepEqual(seen.b.map((e) => e.offset), want, 'node B: offsets');
    const h = await new Promise((resolve) => a.emit('channel-history', { channel, limit: 100 }, resolve));
    assert.equal(h.success, true, JSON.stringify(h));
    assert.deepEqual(h.publications.map((p) => p.offset), want, 'the history: one entry per beat');
    assert.ok(h.publications.slice(0, n).every((p) => p.data.beat === true));
    a.close();
    b.close();
  } finally {
    await A.stop();
    await B.stop();
  }
});

test('two nodes: the appender stopped with SIGTERM lets its lease go before it exits; the other node appends at once', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'term-a' });
  let B;
  try {
    await redisUp(A);
    await until(async () => String(await pub.get(LEASE)).startsWith('term-a:'), 15000, 'node A holds the lease');
    B = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'term-b' });
    await redisUp(B);
    assert.equal(await A.stop('SIGTERM'), 0, 'node A exits cleanly');
    // Without the hand-over the lease would still name A here, for up to 3 s after its last renewal.
    const held = await pub.get(LEASE);
    assert.ok(!String(held).startsWith('term-a:'), `the lease is no longer A's once A has exited (${held})`);
    await until(async () => String(await pub.get(LEASE)).startsWith('term-b:'), 5000, 'node B takes the lease');
    // B appends: a PUBLISH now is stored (offset 1 of a new channel) and delivered.
    const { socket: b } = await connect(B.url, { auth: { token: token('bob') } });
    const channel = uniq('apps:term');
    await request(b, 'subscribe', channel);
    const got = next(b, 'event');
    await pub.publish(channel, JSON.stringify({ after: 'term' }));
    const e = await got;
    assert.deepEqual([e.channel, e.offset, e.data], [channel, 1, { after: 'term' }]);
    b.close();
  } finally {
    await A.stop('SIGKILL');
    await B?.stop();
  }
});

// Half of the publications share one payload: notes name publications by their place in Redis's order
// (sequence.rs), so identical payloads cannot be confused at the takeover.
test('two nodes: the appender SIGSTOPped for 15 s then SIGCONTed stores and delivers nothing twice; its subscribers get every publication once', async () => {
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'stop-a' });
  await redisUp(A);
  // A appends (it is the first node): the lease names it. Waited for, not assumed: a lease left by the
  // previous test's nodes lasts up to 3 s, and a PUBLISH that only a follower received while nobody
  // appended is not stored (docs/scaling.md, What raw PUBLISH can and cannot guarantee).
  await until(async () => String(await pub.get(LEASE)).startsWith('stop-a:'), 15000, 'node A holds the lease');
  const B = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'stop-b' });
  const channel = uniq('apps:stall');
  let running = true;
  let n = 0;
  let stopped = false;
  const publisher = (async () => {
    // 20 a second, half of them with the same body (a heartbeat), the rest numbered.
    while (running) {
      n += 1;
      await pub.publish(channel, JSON.stringify(n % 2 ? { beat: true } : { n }));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  try {
    await redisUp(B);
    const { a, b, seen } = await subscribeOnBoth(A, B, channel);
    await until(() => seen.a.length >= 10 && seen.b.length >= 10, 10000, 'both nodes deliver');
    process.kill(A.proc.pid, 'SIGSTOP');
    stopped = true;
    // B takes over within the lease and goes on delivering while A sleeps.
    const during = seen.b.length;
    await until(() => seen.b.length >= during + 20, 10000, 'node B delivers while A is stopped');
    const holder = await pub.get(LEASE);
    if (holder !== null) assert.ok(holder.startsWith('stop-b:'), `node B took the lease (${holder})`);
    await new Promise((r) => setTimeout(r, 15000 - 4000));
    process.kill(A.proc.pid, 'SIGCONT');
    stopped = false;
    await new Promise((r) => setTimeout(r, 3000));
    running = false;
    await publisher;
    await pub.publish(channel, JSON.stringify({ last: true }));
    await until(() => seen.a.some((e) => e.data.last) && seen.b.some((e) => e.data.last), 15000, 'the last one on both');
    const first = seen.a[0].offset;
    for (const [name, got] of Object.entries(seen)) {
      const from = got[0].offset;
      assertConsecutive(got, from, `node ${name}`);
      assert.ok(from <= first + 1, `node ${name} starts with the others`);
    }
    // Both nodes delivered the same publication at each offset.
    const byOffset = new Map(seen.b.map((e) => [e.offset, JSON.stringify(e.data)]));
    for (const e of seen.a) if (byOffset.has(e.offset)) assert.equal(JSON.stringify(e.data), byOffset.get(e.offset), `offset ${e.offset}`);
    // The history: one entry per publication, each numbered one once, in publish order.
    const h = await new Promise((resolve) => b.emit('channel-history', { channel, limit: 100 }, resolve));
    assert.equal(h.success, true, JSON.stringify(h));
    const top = h.offset;
    assert.equal(top, seen.b[seen.b.length - 1].offset, 'the history ends with the last delivery');
    if (top !== n + 1) {
      // Which one is missing, and what the nodes said of the lease meanwhile.
      const got = new Set(seen.b.map((e) => e.data.n).filter(Boolean));
      const missing = [];
      for (let k = 2; k <= n; k += 2) if (!got.has(k)) missing.push(k);
      const said = (g) => g.logs().split('\n').filter((l) => /channel publications|subscri|redis/i.test(l)).slice(-40).join('\n');
      console.log(`# missing numbered: ${JSON.stringify(missing)}\n# A:\n${said(A)}\n# B:\n${said(B)}`);
    }
    assert.equal(top, n + 1, `${n + 1} publications, top offset ${top}`);
    const numbered = seen.a.filter((e) => e.data.n).map((e) => e.data.n);
    assert.deepEqual(numbered, [...numbered].sort((x, y) => x - y), 'node A: publish order');
    assert.equal(new Set(numbered).size, numbered.length, 'node A: each once');
    console.log(`# appender stopped 15 s: ${n + 1} published, node A delivered ${seen.a.length}, node B ${seen.b.length}, history top ${top}; no gap, no duplicate`);
    a.close();
    b.close();
  } finally {
    running = false;
    await publisher;
    if (stopped) process.kill(A.proc.pid, 'SIGCONT');
    await A.stop('SIGKILL');
    await B.stop();
  }
});

test('durable ingress: entries XADDed while no node runs are appended once, in order; the appender SIGKILLed mid-stream, the next one goes on without a loss or a repeat', async () => {
  const channel = uniq('apps:durable');
  const STREAM = gatewayKey('ingress');
  const HIST = gatewayKey(`chist:${channel}:s`);
  const add = (i) => pub.xAdd(STREAM, '*', { channel, data: JSON.stringify({ i }) });
  // No node runs: the entries wait in Redis. One names no channel of the policy: passed over.
  for (let i = 0; i < 30; i += 1) await add(i);
  await pub.xAdd(STREAM, '*', { channel: 'not-a-policy-channel', data: '{"x":1}' });
  // One the policy's pattern `apps:*` matches but that is no valid channel name (SPEC §3): passed over too.
  await pub.xAdd(STREAM, '*', { channel: 'apps:no spaces allowed', data: '{"x":2}' });
  const A = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'durable-a', CHANNEL_HISTORY_SIZE: '1000' });
  let B;
  try {
    await until(async () => String(await pub.get(LEASE)).startsWith('durable-a:'), 15000, 'node A holds the lease');
    await until(async () => (await pub.xLen(HIST)) >= 30, 10000, 'the 30 waiting entries appended');
    B = await startGateway({ REDIS_URL: redis.url, API_KEY, NODE_ID: 'durable-b', CHANNEL_HISTORY_SIZE: '1000' });
    await redisUp(B);
    const { socket } = await connect(B.url, { auth: { token: token('durable-reader') } });
    const rec = subscribeRecording(socket, channel);
    await rec.ack;
    // 100 more; A, the appender, is SIGKILLed after the 20th of them: B takes the lease and appends the
    // rest from the mark A's last append left, whatever A read and did not append.
    for (let i = 30; i < 130; i += 1) {
      await add(i);
      if (i === 50) await A.stop('SIGKILL');
    }
    await until(async () => String(await pub.get(LEASE)).startsWith('durable-b:'), 15000, 'node B takes the lease');
    await until(async () => (await pub.xLen(HIST)) >= 130, 15000, `130 appended (${await pub.xLen(HIST)})`);
    await until(() => rec.events().length >= 100, 10000, `node B delivers the 100 (${rec.events().length})`);
    const stored = (await pub.xRange(HIST, '-', '+')).map((e) => JSON.parse(e.message.d).i);
    assert.deepEqual(stored, [...Array(130).keys()], 'the history: each entry once, in stream order');
    assert.equal(await pub.exists(gatewayKey('chist:apps:no spaces allowed:m')), 0, 'an invalid channel name is not appended');
    const events = rec.events();
    assert.deepEqual(events.map((e) => e.data.i), [...Array(100).keys()].map((k) => k + 30), 'node B delivered each once, in order');
    assertConsecutive(events, 31, 'node B');
    // What was appended left the stream (the last appended entry stays: reads start after it).
    assert.ok((await pub.xLen(STREAM)) <= 1, `the stream trimmed (${await pub.xLen(STREAM)} left)`);
    socket.close();
  } finally {
    await A.stop('SIGKILL');
    if (B) await B.stop();
  }
});
