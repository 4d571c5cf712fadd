// Seed 004, the Bun WebSocket helper of `@venizia/ignis-helpers`: its browser clients, as the seed's
// client-side snippets write them (`new WebSocket(url)`, `{event:"authenticate", data:{token}}` in
// `onopen`, `{event:"heartbeat"}` every interval once authenticated, `{event:"join"|"leave", data:{rooms}}`,
// every frame `{event, data}`), and the package's own `WebSocketEmitter` (run here from npm) pointed at
// the gateways' Redis: two gateway nodes, clients on both. Only the URL and the token change.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startGateway, startRedis, redisClient, connect, request, token, http, until, pause, WS,
} from '../lib/helpers.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

let redis;
let pub;
let a;
let b;
let helper;
let emitter;
before(async () => {
  // The package logs to files in APP_ENV_LOGGER_FOLDER_PATH (read when it loads; default: the working
  // directory): a temporary directory, so that nothing is written into the checkout.
  process.env.APP_ENV_LOGGER_FOLDER_PATH = mkdtempSync(path.join(tmpdir(), 'rtg-ignis-logs-'));
  const { RedisHelper, WebSocketEmitter } = await import('@venizia/ignis-helpers');
  redis = await startRedis({ persist: false });
  pub = await redisClient(redis.url);
  [a, b] = await Promise.all([startGateway({ REDIS_URL: redis.url }), startGateway({ REDIS_URL: redis.url })]);
  for (const g of [a, b]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
  // The package's emitter, as its documentation sets it up.
  helper = new RedisHelper({ name: 'seed4-emitter', host: '127.0.0.1', port: redis.port });
  emitter = new WebSocketEmitter({ identifier: 'cron-emitter', redisConnection: helper });
  await emitter.configure();
});
after(async () => {
  await emitter?.shutdown().catch(() => {});
  helper?.getClient().disconnect();
  await Promise.all([a?.stop(), b?.stop()]);
  await pub?.quit().catch(() => {});
  await redis?.stop();
});

/**
 * A browser client of the helper, from the seed's snippets: authenticates in `onopen`, starts its
 * heartbeat once `connected` arrives, stops it on close. `frames` keeps every `{event, data}` it got.
 */
class HelperClient {
  constructor(url, jwt, { heartbeatMs = 30000 } = {}) {
    this.url = url;
    this.token = jwt;
    this.heartbeatMs = heartbeatMs;
    this.frames = [];
    this.waiters = new Set();
  }

  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.closed = new Promise((resolve) => {
      ws.onclose = (e) => { clearInterval(this.heartbeat); resolve({ code: e.code, wasClean: e.wasClean }); };
    });
    ws.onopen = () => {
      ws.send(JSON.stringify({ event: 'authenticate', data: { token: this.token } }));
    };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (!msg.event) return; // not a frame of this protocol
      this.frames.push(msg);
      if (msg.event === 'connected') {
        this.id = msg.data.id;
        this.userId = msg.data.userId;
        this.heartbeat = setInterval(() => {
          if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ event: 'heartbeat' }));
        }, this.heartbeatMs);
      }
      for (const w of [...this.waiters]) w();
    };
    ws.onerror = () => {};
    return this;
  }

  send(event, data) { this.ws.send(JSON.stringify(data === undefined ? { event } : { event, data })); }

  /** The next frame of `event` not taken yet whose data satisfies `pred`. */
  next(event, pred = () => true, ms = 5000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.frames.findIndex((f) => !f.taken && f.event === event && pred(f.data));
        if (i < 0) return;
        this.frames[i].taken = true;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(this.frames[i].data);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${event} within ${ms} ms; got ${JSON.stringify(this.frames.slice(-4))}`));
      }, ms);
      this.waiters.add(check);
      check();
    });
  }

  got(event, pred = () => true) { return this.frames.filter((f) => f.event === event && pred(f.data)); }

  close(code) { this.ws.close(code); }
}

const wsUrlOf = (g) => `${g.url.replace(/^http/, 'ws')}/ws`;

async function client(g, user, opts) {
  const c = new HelperClient(wsUrlOf(g), token(user), opts).connect();
  const hello = await c.next('connected');
  return { c, hello };
}

test('seed 004: authenticate → {event:"connected", data:{id, userId, time}}; a bad token → {event:"error"} then 4003', async () => {
  const { c, hello } = await client(a, 's4-alice');
  try {
    assert.equal(typeof hello.id, 'string');
    assert.equal(hello.userId, 's4-alice');
    assert.match(hello.time, ISO);
    // Frames to it are {event, data} from then on (a ping of the core, answered in its shape).
    c.send('get-presence', { userIds: [] });
    c.send('no-such-event', {});
    const e = await c.next('error');
    assert.equal(e.message, 'Unknown event');
    assert.equal(e.code, 'NOT_FOUND');
  } finally { c.close(); }

  const bad = new HelperClient(wsUrlOf(a), token('s4-bad', { ttl: -60 })).connect();
  const e = await bad.next('error');
  assert.equal(e.message, 'Authentication failed: token expired');
  assert.equal(e.code, 'UNAUTHENTICATED');
  assert.equal((await bad.closed).code, 4003);
  assert.equal(bad.got('connected').length, 0);
});

test('seed 004: the WebSocketEmitter reaches a client, a user, a room (ws-default, ws-notification) and everyone, on both nodes', async () => {
  const { c: a1, hello: h1 } = await client(a, 's4-bob');
  const { c: b1 } = await client(b, 's4-bob');
  const { c: b2, hello: h2 } = await client(b, 's4-carol');
  const all = [a1, b1, b2];
  try {
    // To one client (on the other node than any gateway the emitter could talk to: it talks to Redis).
    await emitter.toClient({ clientId: h2.id, event: 'notification', data: { message: 'Your report is ready' } });
    assert.deepEqual(await b2.next('notification'), { message: 'Your report is ready' });
    // To all sessions of a user, on both nodes.
    await emitter.toUser({ userId: 's4-bob', event: 'notification', data: { message: 'New message from admin' } });
    for (const c of [a1, b1]) assert.equal((await c.next('notification')).message, 'New message from admin');
    // To the default rooms.
    await emitter.toRoom({ room: 'ws-notification', event: 'alert', data: { level: 'critical', text: 'Database failover' } });
    for (const c of all) assert.equal((await c.next('alert')).text, 'Database failover');
    await emitter.toRoom({ room: 'ws-default', event: 'tick', data: { n: 1 } });
    for (const c of all) assert.equal((await c.next('tick')).n, 1);
    // Its own id is a room too.
    await emitter.toRoom({ room: h1.id, event: 'just-you', data: { ok: true } });
    assert.equal((await a1.next('just-you')).ok, true);
    // To everyone, but those excluded.
    await emitter.toRoom({ room: 'ws-default', event: 'not-carol', data: { x: 1 }, exclude: [h2.id] });
    await emitter.broadcast({ event: 'system:announcement', data: { text: 'Scheduled maintenance in 5 minutes' } });
    for (const c of all) assert.equal((await c.next('system:announcement')).text, 'Scheduled maintenance in 5 minutes');
    assert.equal((await a1.next('not-carol')).x, 1);
    assert.equal((await b1.next('not-carol')).x, 1);
    assert.equal(b2.got('not-carol').length, 0, 'excluded (the broadcast after it has arrived)');
    // Exactly once each, though two nodes heard every publish.
    assert.equal(b2.got('notification').length, 1);
    assert.equal(a1.got('alert').length, 1);
    // The gateway's own realtime:emit reaches the same rooms (CLIENTS.md §3).
    await pub.publish('realtime:emit', JSON.stringify({ event: 'from-backend', data: { y: 2 }, room: 'ws-notification' }));
    for (const c of all) assert.equal((await c.next('from-backend')).y, 2);
  } finally { all.forEach((c) => c.close()); }
});

test('seed 004: join/leave {rooms:[...]} are checked like join-room and unanswered; room messages and typing as {event, data}', async () => {
  const { c: alice } = await client(a, 's4-dave');
  const { c: bob } = await client(b, 's4-erin');
  const { socket } = await connect(a.url, { ...WS, auth: { token: token('s4-frank') } });
  try {
    // A group room of frank and erin only: dave may not join it.
    const created = await request(socket, 'create-room', { name: 'private', type: 'group', members: ['s4-erin'] });
    assert.equal(created.success, true);
    const privateRoom = created.room.id;
    alice.send('join', { rooms: ['game-lobby', privateRoom] });
    bob.send('join', { rooms: ['game-lobby'] });
    // Unanswered: the next frames are the answers to what follows.
    alice.send('message', { roomId: 'game-lobby', content: 'hello lobby' });
    const m = await bob.next('new-message', (d) => d.content === 'hello lobby', 8000);
    assert.equal(m.userId, 's4-dave');
    assert.equal(m.roomId, 'game-lobby');
    assert.equal((await alice.next('new-message')).content, 'hello lobby');
    alice.send('message', { roomId: privateRoom, content: 'let me in' });
    const refused = await alice.next('error');
    assert.equal(refused.code, 'NOT_IN_ROOM', 'the join of a room it may not enter was refused');
    assert.equal(alice.got('joined').length + alice.got('ack').length, 0, 'join is not answered');
    // The emitter's toRoom reaches the joined room on both nodes.
    await emitter.toRoom({ room: 'game-lobby', event: 'player-moved', data: { x: 10, y: 20 } });
    for (const c of [alice, bob]) assert.deepEqual(await c.next('player-moved'), { x: 10, y: 20 });
    // Typing reaches the other as user-typing.
    bob.send('typing', { roomId: 'game-lobby' });
    assert.equal((await alice.next('user-typing')).userId, 's4-erin');
    // leave: then messages there are NOT_IN_ROOM.
    alice.send('leave', { rooms: ['game-lobby'] });
    alice.send('message', { roomId: 'game-lobby', content: 'gone' });
    assert.equal((await alice.next('error')).code, 'NOT_IN_ROOM');
    assert.equal((await bob.next('user-left')).userId, 's4-dave');
  } finally { alice.close(); bob.close(); socket.close(); }
});

test('seed 004: heartbeat is activity, not answered: it keeps a client past the idle timeout; silence closes with 4002; a close is clean', async () => {
  const g = await startGateway({ WS_IDLE_TIMEOUT_MS: '1500', PING_INTERVAL_MS: '60000' });
  try {
    const { c: beating } = await client(g, 's4-gina', { heartbeatMs: 300 });
    const { c: silent } = await client(g, 's4-hank', { heartbeatMs: 3600000 });
    const closed = await Promise.race([silent.closed, pause(6000).then(() => null)]);
    assert.equal(closed?.code, 4002, 'no activity: heartbeat timeout');
    assert.equal(beating.ws.readyState, WebSocket.OPEN, 'its heartbeats kept it');
    assert.deepEqual(beating.frames.map((f) => f.event), ['connected'], 'heartbeats are not answered');
    beating.close(1000);
    const end = await beating.closed;
    assert.equal(end.code, 1000);
    assert.equal(end.wasClean, true);
  } finally { await g.stop(); }
});

test('dialects fuzz: hostile frames in each dialect (seeds 002, 003, 004) never crash a node or close a connection', async () => {
  const g = await startGateway({ RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' });
  const conns = [];
  try {
    let seed = 0x5eed;
    const rand = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
    const values = [null, 0, -1, 1e308, '', 'x'.repeat(300), 'r:1', [], [1, 'a', null], {}, { rooms: 'no' },
      { rooms: [1, {}, 'ws:x', 'ok-room'] }, { conversationId: {} }, { conversationId: 'c', content: 5 },
      { token: 5 }, { token: 'x.y.z' }, { roomId: [] }, true, '{"nested":"json"}'];
    const pick = (xs) => xs[Math.floor(rand() * xs.length)];
    const dialects = {
      // (`authenticate`/`auth` with a bad token close with 4003, as they must: not fuzzed here.)
      bun: { names: ['join', 'leave', 'heartbeat', 'message', 'typing', 'x'], frame: (n, v) => ({ event: n, data: v }) },
      native: { names: ['join', 'leave', 'chat', 'broadcast', 'ping', 'x'], frame: (n, v) => ({ type: n, room: v, content: v, data: v }) },
      qrypt: {
        names: ['load_conversations', 'join_conversation', 'send_message', 'load_messages', 'load_more_messages',
          'typing_start', 'typing_stop', 'create_conversation', 'leave_conversation', 'ping', 'x'],
        frame: (n, v) => ({ type: n, payload: v, requestId: pick([null, 'r', 7, {}]), timestamp: pick(['t', 1]) }),
      },
    };
    for (const [name, d] of Object.entries(dialects)) {
      const ws = new WebSocket(`${wsUrlOf(g)}?token=${token(`fuzz-${name}`)}`);
      conns.push(ws);
      await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
      let closed = null;
      ws.onclose = (e) => { closed = e.code; };
      // The first frame tells the dialect, then 300 hostile ones.
      if (name === 'bun') ws.send(JSON.stringify({ event: 'authenticate', data: { token: token(`fuzz-${name}`) } }));
      else ws.send(JSON.stringify(d.frame(d.names[0], 'fuzz-room')));
      for (let i = 0; i < 300; i++) {
        const r = rand();
        ws.send(r < 0.1 ? pick(['not json', '[]', '""', '{"type":5}', '{"event":{}}']) : JSON.stringify(d.frame(pick(d.names), pick(values))));
      }
      // Still served: a frame of its dialect is answered in it.
      const answered = new Promise((resolve) => {
        ws.onmessage = (e) => {
          const f = JSON.parse(e.data);
          if ((name === 'native' && f.type === 'pong') || (name === 'qrypt' && f.type === 'pong' && f.requestId === 'last')
            || (name === 'bun' && f.event === 'error' && f.data?.message === 'Unknown event' && f.data?.code === 'NOT_FOUND')) resolve(f);
        };
      });
      if (name === 'bun') ws.send(JSON.stringify({ event: 'fence-unknown' }));
      else if (name === 'native') ws.send(JSON.stringify({ type: 'ping' }));
      else ws.send(JSON.stringify({ type: 'ping', payload: {}, requestId: 'last', timestamp: new Date().toISOString() }));
      const f = await Promise.race([answered, pause(10000).then(() => null)]);
      assert.ok(f, `${name}: answered after the fuzz`);
      assert.equal(closed, null, `${name}: not closed`);
    }
    assert.equal((await http(`${g.url}/health`)).body.status, 'ok');
  } finally { conns.forEach((c) => c.terminate()); await g.stop(); }
});

test('seed 004: before authentication a heartbeat is ignored, not answered, but counted: past 20 frames the connection closes with 1008', async () => {
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false' });
  try {
    const ws = new WebSocket(wsUrlOf(g));
    const frames = [];
    ws.onmessage = (e) => frames.push(JSON.parse(e.data));
    const closed = new Promise((resolve) => { ws.onclose = (e) => resolve(e.code); });
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    for (let i = 0; i < 25; i++) ws.send(JSON.stringify({ event: 'heartbeat' }));
    assert.equal(await Promise.race([closed, pause(5000).then(() => null)]), 1008);
    assert.deepEqual(frames, [], 'no answer to a heartbeat');
  } finally { await g.stop(); }
});
