// Bounds of issue 23 (SPEC §5 and §7): what one sender keeps waiting in offline users' queues
// (MAX_QUEUED_BYTES_PER_SENDER), in the memory store and in Redis.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startGateway, startRedis, connect, request, token, until, WS } from '../lib/helpers.js';

let redis;
before(async () => { redis = await startRedis({ persist: false }); });
after(async () => { await redis.stop(); });

const COST = 60000 + 256; // a message's cost: its content bytes plus 256
const CAP = 3 * COST + 100;

/** Connects `userId` and acks its pending-messages; resolves with them. */
function takePending(url, userId, open) {
  const socket = io(url, { forceNew: true, reconnection: false, ...WS, auth: { token: token(userId) } });
  open.push(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no pending-messages')), 10000);
    socket.on('pending-messages', (msgs, ack) => { clearTimeout(timer); ack({ success: true }); resolve(msgs); });
  });
}

for (const store of ['memory', 'redis']) {
  test(`MAX_QUEUED_BYTES_PER_SENDER (${store}): over all targets, RATE_LIMITED past it, live unaffected, released on hand-over`, async () => {
    const tag = `${store}-${Date.now().toString(36)}`;
    const g = await startGateway({ MAX_QUEUED_BYTES_PER_SENDER: String(CAP), ...(store === 'redis' ? { REDIS_URL: redis.url } : {}) });
    const open = [];
    try {
      const spammer = await connect(g.url, { ...WS, auth: { token: token(`spammer-${tag}`) } });
      open.push(spammer.socket);
      const big = 'x'.repeat(60000);
      for (let i = 0; i < 3; i++) {
        const ack = await request(spammer.socket, 'private-message', { targetUserId: `made-up-${tag}-${i}`, content: big });
        assert.deepEqual([ack.success, ack.delivered], [true, false], JSON.stringify(ack));
      }
      const refused = await request(spammer.socket, 'private-message', { targetUserId: `made-up-${tag}-3`, content: big });
      assert.deepEqual([refused.success, refused.code], [false, 'RATE_LIMITED'], JSON.stringify(refused));
      const small = await request(spammer.socket, 'private-message', { targetUserId: `made-up-${tag}-3`, content: 'x'.repeat(200) });
      assert.equal(small.code, 'RATE_LIMITED', 'the cap counts bytes over all targets');

      // A connected target is unaffected, and so is another sender.
      const online = await connect(g.url, { ...WS, auth: { token: token(`online-${tag}`) } });
      open.push(online.socket);
      const live = await request(spammer.socket, 'private-message', { targetUserId: `online-${tag}`, content: big });
      assert.deepEqual([live.success, live.delivered], [true, true], JSON.stringify(live));
      const other = await connect(g.url, { ...WS, auth: { token: token(`other-${tag}`) } });
      open.push(other.socket);
      const theirs = await request(other.socket, 'private-message', { targetUserId: `made-up-${tag}-3`, content: big });
      assert.deepEqual([theirs.success, theirs.delivered], [true, false], JSON.stringify(theirs));

      // Handed over (acked): the sender's bytes come back.
      const pending = await takePending(g.url, `made-up-${tag}-0`, open);
      assert.equal(pending.length, 1);
      const again = await until(async () => {
        const a = await request(spammer.socket, 'private-message', { targetUserId: `made-up-${tag}-4`, content: big });
        return a.success ? a : null;
      }, 5000, 'the released bytes');
      assert.equal(again.delivered, false);
    } finally {
      for (const s of open) s.close();
      await g.stop();
    }
  });
}

test('GET /health costs the same with 10,000 channel subscriptions on the node as with none', async () => {
  const g = await startGateway({ RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' });
  const open = [];
  /** Milliseconds for `n` sequential /health requests. */
  const time = async (n) => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const r = await fetch(`${g.url}/health`);
      assert.equal(r.status, 200);
      await r.arrayBuffer();
    }
    return performance.now() - t0;
  };
  try {
    await time(50); // warm up
    const idle = await time(100);
    for (let s = 0; s < 100; s++) {
      const c = await connect(g.url, { ...WS, auth: { token: token(`sub${s}`) } });
      open.push(c.socket);
      const acks = await Promise.all(Array.from({ length: 100 }, (_, i) => request(c.socket, 'subscribe', `apps:load-${s}-${i}`)));
      assert.ok(acks.every((a) => a.success), JSON.stringify(acks.find((a) => !a.success)));
    }
    await until(async () => (await (await fetch(`${g.url}/health`)).json()).activeChannels === 10000, 5000, '10,000 channels');
    const busy = await time(100);
    console.log(`100 /health: ${idle.toFixed(0)} ms idle, ${busy.toFixed(0)} ms with 10,000 subscriptions`);
    assert.ok(busy < idle * 3 + 200, `100 requests took ${busy.toFixed(0)} ms with 10,000 subscriptions, ${idle.toFixed(0)} ms without`);
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('node stats: unchanged figures are not written to Redis again each second (only kept alive)', async () => {
  const { redisClient } = await import('../lib/helpers.js');
  const nodeId = `stats-${Date.now().toString(36)}`;
  const g = await startGateway({ REDIS_URL: redis.url, NODE_ID: nodeId });
  const open = [];
  const r = await redisClient(redis.url);
  try {
    const c = await connect(g.url, { ...WS, auth: { token: token('subscriber') } });
    open.push(c.socket);
    for (let i = 0; i < 50; i++) assert.equal((await request(c.socket, 'subscribe', `apps:stats-${i}`)).success, true);
    const key = await until(async () => (await r.keys(`*node-stats:${nodeId}`))[0], 5000, 'the node-stats key');
    await until(async () => Object.keys(JSON.parse((await r.get(key)) ?? '{}').connectionsByChannel ?? {}).length === 50, 5000, 'the figures written');
    await r.sendCommand(['CONFIG', 'RESETSTAT']);
    const t0 = Date.now();
    // A window of several heartbeats (1 s each) with nothing changing on the node.
    await until(() => Date.now() - t0 > 3500, 5000, 'three heartbeats');
    const info = await r.sendCommand(['INFO', 'commandstats']);
    const calls = (cmd) => Number(info.match(new RegExp(`cmdstat_${cmd}:calls=(\\d+)`))?.[1] ?? 0);
    assert.equal(calls('setex'), 0, 'unchanged figures are not written again');
    assert.ok(calls('expire') >= 3, `the figures are kept alive each beat (expire: ${calls('expire')})`);
    assert.ok((await r.ttl(key)) > 0);
    // A change is written at the next beat.
    assert.equal((await request(c.socket, 'subscribe', 'apps:stats-new')).success, true);
    await until(async () => 'apps:stats-new' in (JSON.parse((await r.get(key)) ?? '{}').connectionsByChannel ?? {}), 3000, 'the change written');
  } finally {
    await r.quit();
    for (const s of open) s.close();
    await g.stop();
  }
});
