// Lifecycle webhooks (SPEC §14) to a real HTTP backend started here that checks signatures and can be down:
// every type is sent; a backend that is down gets everything once it is back (none lost, order per user
// kept, duplicates only as the documented at-least-once); with Redis, the lease holder's webhooks are
// delivered by the other node after a SIGKILL, and a holder SIGSTOPped past its lease sends nothing more.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { startGateway, startRedis, redisClient, gatewayKey, connect, request, token, http, until, uniq } from '../lib/helpers.js';

const SECRET = 'webhook-secret';

/** The backend: verifies each webhook's signature; answers 503 while `down`. */
function startBackend() {
  const got = [];
  const state = { down: false, refused: 0 };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      if (state.down) { state.refused++; res.writeHead(503); res.end(); return; }
      const sig = `sha256=${createHmac('sha256', SECRET).update(`${req.headers['x-realtime-timestamp']}.${body}`).digest('hex')}`;
      const hook = JSON.parse(body);
      got.push({ ...hook, signed: req.headers['x-realtime-signature'] === sig && /^\d+$/.test(req.headers['x-realtime-timestamp']) });
      res.writeHead(204); res.end();
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/hooks`, got, state, close: () => new Promise((r) => server.close(r)),
  })));
}

/** Unique deliveries by id (at-least-once may repeat one). */
const unique = (hooks) => [...new Map(hooks.map((h) => [h.id, h])).values()];

function figures(metrics) {
  const f = {};
  for (const o of ['queued', 'delivered', 'retried', 'dropped', 'expired', 'dead_letter', 'handed_over']) {
    const m = metrics.match(new RegExp(`realtime_webhooks_total\\{outcome="${o}"\\} (\\d+)`));
    f[o] = m ? Number(m[1]) : 0;
  }
  return f;
}

test('webhooks: every lifecycle type, signed; a backend down for a while gets all of them, in order per user', async () => {
  const backend = await startBackend();
  const g = await startGateway({ WEBHOOK_URL: backend.url, WEBHOOK_SECRET: SECRET, PRESENCE_GRACE_MS: '300' });
  try {
    const { socket: alice } = await connect(g.url, { auth: { token: token('wh-alice') } });
    const created = await request(alice, 'create-room', { type: 'group', name: 'team', members: ['wh-bob'] });
    assert.equal(created.success, true);
    assert.equal((await request(alice, 'join-room', created.room.id)).success, true);
    assert.equal((await request(alice, 'message', { roomId: created.room.id, content: 'first' })).success, true);
    const pm = await request(alice, 'private-message', { targetUserId: 'wh-bob', content: 'are you there?' });
    assert.equal(pm.delivered, false, JSON.stringify(pm));
    alice.close();
    const types = ['socket.connected', 'user.online', 'room.created', 'message.created', 'private.queued', 'socket.disconnected', 'user.offline'];
    await until(() => types.every((t) => backend.got.some((h) => h.type === t)), 10000, 'every type');
    for (const h of backend.got) {
      assert.equal(h.signed, true, `${h.type} signed`);
      assert.match(h.id, /^wh/);
      assert.equal(typeof h.ts, 'number');
      assert.equal(typeof h.data, 'object');
    }
    const byType = Object.fromEntries(backend.got.map((h) => [h.type, h.data]));
    assert.equal(byType['user.online'].userId, 'wh-alice');
    assert.equal(byType['room.created'].id, created.room.id);
    assert.equal(byType['message.created'].content, 'first');
    assert.equal(byType['private.queued'].toUserId, 'wh-bob');
    assert.equal(typeof byType['socket.disconnected'].reason, 'string');
    assert.equal(byType['user.offline'].userId, 'wh-alice');
    // Alice's own order: online before offline, connected before disconnected.
    const mine = backend.got.filter((h) => h.data.userId === 'wh-alice' || h.data.user?.userId === 'wh-alice').map((h) => h.type);
    assert.ok(mine.indexOf('socket.connected') < mine.indexOf('socket.disconnected'));
    assert.ok(mine.indexOf('user.online') < mine.indexOf('user.offline'));

    // The backend goes down; Carol talks; it comes back: everything arrives, her messages in order.
    backend.state.down = true;
    const { socket: carol } = await connect(g.url, { auth: { token: token('wh-carol') } });
    const room = uniq('wh-room');
    await request(carol, 'join-room', room);
    for (let i = 0; i < 20; i++) assert.equal((await request(carol, 'message', { roomId: room, content: `c${i}` })).success, true);
    await until(() => backend.state.refused >= 3, 10000, 'retries while down');
    backend.state.down = false;
    await until(() => unique(backend.got).filter((h) => h.type === 'message.created' && h.data.userId === 'wh-carol').length === 20,
      30000, 'all of carol\'s messages');
    const carols = unique(backend.got).filter((h) => h.type === 'message.created' && h.data.userId === 'wh-carol').map((h) => h.data.content);
    assert.deepEqual(carols, Array.from({ length: 20 }, (_, i) => `c${i}`), 'in order');
    carol.close();
    const f = figures((await http(`${g.url}/metrics`)).body);
    console.log(`# figures: webhooks queued ${f.queued}, delivered ${f.delivered}, retried ${f.retried}, dropped ${f.dropped}, expired ${f.expired}, lost 0`);
    assert.ok(f.retried > 0);
    assert.equal(f.dropped, 0);
    assert.equal(f.expired, 0);
    assert.ok(f.delivered >= unique(backend.got).length);
  } finally {
    await g.stop();
    await backend.close();
  }
});

/** The lease holder's node id, read in Redis (`<node id> <token>`), or null. */
async function leaseHolder(client) {
  const v = await client.get(gatewayKey('webhooks:leader'));
  return v ? v.split(' ')[0] : null;
}

/** A user's deliveries (repeats of the latest allowed, at least once) never go back: asserts it. */
function assertInOrder(contents, want) {
  const order = contents.map((c) => want.indexOf(c));
  for (let i = 1; i < order.length; i++) assert.ok(order[i] >= order[i - 1], `out of order: ${contents.join(',')}`);
  assert.deepEqual([...new Set(contents)], want, 'every one, in order');
}

/** Two nodes on one Redis, the backend down; returns the lease holder and the other, once known. */
async function cluster(backend) {
  const redis = await startRedis({ persist: false });
  const env = { REDIS_URL: redis.url, WEBHOOK_URL: backend.url, WEBHOOK_SECRET: SECRET };
  const nodes = [await startGateway({ ...env, NODE_ID: uniq('wh-a') }), await startGateway({ ...env, NODE_ID: uniq('wh-b') })];
  const ids = [];
  for (const g of nodes) {
    await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
    ids.push((await http(`${g.url}/health`)).body.nodeId);
  }
  const client = await redisClient(redis.url);
  const holderId = await until(() => leaseHolder(client), 15000, 'a lease holder');
  const i = ids.indexOf(holderId);
  assert.ok(i >= 0, `the lease names one of the nodes: ${holderId} in ${ids}`);
  return { redis, client, holder: nodes[i], holderId, other: nodes[1 - i], otherId: ids[1 - i],
    async stop() { await client.quit().catch(() => {}); for (const g of nodes) { g.proc.kill('SIGCONT'); await g.stop(); } await redis.stop(); } };
}

test('webhooks with Redis: the SIGKILLed lease holder\'s webhooks are delivered by the other node, in order, none twice', async () => {
  const backend = await startBackend();
  backend.state.down = true;
  const c = await cluster(backend);
  try {
    // Dave is on the node that holds the lease: the same node produces and delivers his webhooks.
    const { socket: dave } = await connect(c.holder.url, { auth: { token: token('wh-dave') } });
    const room = uniq('wh-kill');
    await request(dave, 'join-room', room);
    for (let i = 0; i < 10; i++) assert.equal((await request(dave, 'message', { roomId: room, content: `d${i}` })).success, true);
    await until(() => backend.state.refused >= 1, 15000, 'a delivery tried while the backend is down');
    assert.equal(await leaseHolder(c.client), c.holderId, 'the node about to be killed holds the lease');
    await c.holder.stop('SIGKILL');
    backend.state.down = false;
    const want = Array.from({ length: 10 }, (_, i) => `d${i}`);
    const daves = () => backend.got.filter((h) => h.type === 'message.created' && h.data.userId === 'wh-dave').map((h) => h.data.content);
    await until(() => new Set(daves()).size === 10, 40000, 'dave\'s messages delivered by the other node');
    assert.equal(await leaseHolder(c.client), c.otherId, 'the other node took the lease');
    assertInOrder(daves(), want);
    // The backend refused everything before the kill: nothing was taken twice.
    const dups = backend.got.length - unique(backend.got).length;
    const f = figures((await http(`${c.other.url}/metrics`)).body);
    console.log(`# figures: after a SIGKILL of the lease holder, the other node delivered ${new Set(daves()).size}/10, duplicates ${dups}; its counters ${JSON.stringify(f)}`);
    assert.equal(dups, 0);
    assert.equal(f.expired, 0);
    dave.close();
  } finally {
    await c.stop(); await backend.close();
  }
});

test('webhooks with Redis: a lease holder SIGSTOPped past its lease delivers nothing more once resumed; the new holder keeps each user\'s order', async () => {
  const backend = await startBackend();
  backend.state.down = true;
  const c = await cluster(backend);
  try {
    const { socket: erin } = await connect(c.holder.url, { auth: { token: token('wh-erin') } });
    const room = uniq('wh-stop');
    await request(erin, 'join-room', room);
    for (let i = 0; i < 5; i++) assert.equal((await request(erin, 'message', { roomId: room, content: `e${i}` })).success, true);
    await until(() => backend.state.refused >= 2, 15000, 'the holder retrying while the backend is down');
    erin.close();
    c.holder.proc.kill('SIGSTOP');
    backend.state.down = false;
    const want = Array.from({ length: 5 }, (_, i) => `e${i}`);
    const erins = () => backend.got.filter((h) => h.type === 'message.created' && h.data.userId === 'wh-erin').map((h) => h.data.content);
    await until(() => new Set(erins()).size === 5, 40000, 'erin\'s messages delivered by the new holder');
    assert.equal(await leaseHolder(c.client), c.otherId, 'the other node took the lease over');
    c.holder.proc.kill('SIGCONT');
    // Resumed, the old holder finds its lease gone and hands its lane over instead of sending.
    await until(async () => figures((await http(`${c.holder.url}/metrics`)).body).handed_over >= 1, 15000, 'the old holder hands over');
    assertInOrder(erins(), want);
    const dups = backend.got.length - unique(backend.got).length;
    console.log(`# figures: SIGSTOP of the lease holder past its lease: delivered ${new Set(erins()).size}/5 by the new holder, duplicates ${dups}, old holder's counters ${JSON.stringify(figures((await http(`${c.holder.url}/metrics`)).body))}`);
    assert.equal(dups, 0, 'the old holder sent none of them again');
  } finally {
    await c.stop(); await backend.close();
  }
});
