// The plain WebSocket clients of CLIENTS.md, emulated as their documentation describes them and run
// unchanged against `/ws` (SPEC §10): the SaaS browser class `RealtimeClient` (query token, Bearer header
// and subprotocol forms, with its reconnect back-off), the React `useWebSocket` hook, websocat lines, a
// backend's Redis PUBLISH, the chat app's client (generic envelope, in-band auth, pagination, typing,
// presence, reconnect), the Bun helper's clients (authenticate frame, close codes), and `realtime:emit`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import {
  startGateway, startRedis, redisClient, connect, request, next, token, http, until, uniq, collect,
  wsConnect, wsUrl, pause,
} from '../lib/helpers.js';

const API_KEY = 'ws-clients-key';
const KEY = { 'x-api-key': API_KEY };
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

let redis;
let pub;
let gw;
before(async () => {
  redis = await startRedis({ persist: false });
  pub = await redisClient(redis.url);
  gw = await startGateway({ REDIS_URL: redis.url, API_KEY, PRESENCE_GRACE_MS: '300' });
  await until(async () => (await http(`${gw.url}/health`)).body.redis === 'up', 15000, 'redis up');
});
after(async () => { await gw?.stop(); await pub?.quit().catch(() => {}); await redis?.stop(); });

const publish = (g, channel, data) => http(`${g.url}/api/publish`, { method: 'POST', headers: KEY, body: { channel, data } });
const closedWithin = (c, ms) => Promise.race([c.closed, pause(ms).then(() => null)]);

// ----------------------------------------------------------------------------------------------------
// 1. The SaaS platform's RealtimeClient, as CLIENTS.md describes it. `WebSocket` is the `ws` class used
// with its browser-style API (onopen/onmessage/onclose, readyState, OPEN).

class RealtimeClient {
  /** mode: 'query' (browser), 'header' (Node, Bearer), 'protocol' (subprotocol token-<jwt>). */
  constructor(url, jwt, { mode = 'query', onEvent = () => {}, onOpen = () => {}, baseDelayMs = 1000 } = {}) {
    this.url = url;
    this.token = jwt;
    this.mode = mode;
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.baseDelayMs = baseDelayMs;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
    this.ws = null;
    this.logs = [];
    this.stopped = false;
  }

  log(...args) { this.logs.push(args); }

  connect() {
    if (this.mode === 'query') this.ws = new WebSocket(this.url + '?token=' + this.token);
    else if (this.mode === 'header') this.ws = new WebSocket(this.url, { headers: { Authorization: `Bearer ${this.token}` } });
    else this.ws = new WebSocket(this.url, ['token-' + this.token]);
    this.ws.onopen = () => {
      this.reconnectAttempts = 0;
      this.log('open');
      this.onOpen(this);
    };
    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.handleMessage(message);
    };
    this.ws.onclose = (event) => {
      this.log('close', event.code);
      if (!this.stopped) this.attemptReconnect();
    };
    this.ws.onerror = () => { this.log('ws-error'); };
  }

  handleMessage(message) {
    switch (message.type) {
      case 'connected':
        this.connectionId = message.connectionId;
        this.log('connected', message.connectionId, message.authorizedChannels);
        break;
      case 'subscribed':
        this.log('subscribed', message.channel);
        break;
      case 'event':
        this.onEvent(message.channel, message.data);
        break;
      case 'error':
        this.log('error', message.message);
        break;
      case 'pong':
        this.log('pong');
        break;
      default:
        this.log('other', message.type);
        break;
    }
  }

  subscribe(channel) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'subscribe', channel }));
  }

  unsubscribe(channel) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'unsubscribe', channel }));
  }

  ping() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'ping' }));
  }

  attemptReconnect() {
    if (this.reconnectAttempts >= this.maxReconnectAttempts) { this.log('gave-up'); return; }
    const delay = this.baseDelayMs * 2 ** this.reconnectAttempts;
    this.reconnectAttempts++;
    this.log('reconnect-in', delay);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  disconnect() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.ws?.close();
  }

  count(kind) { return this.logs.filter((l) => l[0] === kind).length; }
}

/** The app's use of the class: the three subscriptions in the open handler. */
function appClient(g, userId, mode = 'query') {
  const events = [];
  const client = new RealtimeClient(wsUrl(g.url), token(userId), {
    mode,
    onEvent: (channel, data) => events.push({ channel, data }),
    onOpen: (c) => { c.subscribe('apps:created'); c.subscribe('users:updated'); c.subscribe(`user:${userId}`); },
  });
  return { client, events };
}

test('RealtimeClient (browser form, ?token=): connected, subscribes on open, events to the app, errors logged, pong', async () => {
  const { client, events } = appClient(gw, 'rc-alice');
  try {
    // Before open nothing is sent (readyState guard), and nothing breaks.
    client.subscribe('apps:too-early');
    client.connect();
    await until(() => client.count('subscribed') === 3, 10000, 'three subscribed frames');
    const [, connectionId, channels] = client.logs.find((l) => l[0] === 'connected');
    assert.equal(typeof connectionId, 'string');
    assert.ok(channels.includes('user:rc-alice') && channels.includes('apps:*'), JSON.stringify(channels));
    assert.deepEqual(client.logs.filter((l) => l[0] === 'subscribed').map((l) => l[1]).sort(), ['apps:created', 'user:rc-alice', 'users:updated']);
    await publish(gw, 'apps:created', { id: 'a1' });
    await publish(gw, 'users:updated', { id: 'u1' });
    await pub.publish('user:rc-alice', JSON.stringify({ note: 'personal' }));
    await until(() => events.length >= 3, 5000, 'three events');
    assert.deepEqual(events.slice(0, 2), [{ channel: 'apps:created', data: { id: 'a1' } }, { channel: 'users:updated', data: { id: 'u1' } }]);
    assert.deepEqual(events[2], { channel: 'user:rc-alice', data: { note: 'personal' } });
    client.subscribe('system:secrets');
    await until(() => client.count('error') === 1, 5000, 'the error logged');
    assert.deepEqual(client.logs.find((l) => l[0] === 'error'), ['error', 'Not authorized to subscribe to this channel']);
    client.ping();
    await until(() => client.count('pong') === 1, 5000, 'pong');
    client.unsubscribe('users:updated');
    await until(() => client.logs.some((l) => l[0] === 'other' && l[1] === 'unsubscribed'), 5000, 'unsubscribed');
    await publish(gw, 'users:updated', { id: 'u2' });
    await publish(gw, 'apps:created', { id: 'a2' });
    await until(() => events.some((e) => e.data.id === 'a2'), 5000, 'a2');
    assert.ok(!events.some((e) => e.data.id === 'u2'), 'unsubscribed channel not delivered');
  } finally { client.disconnect(); }
});

test('RealtimeClient reconnects (1 s back-off) after the server closes it, and subscribes again on open', async () => {
  const { client, events } = appClient(gw, 'rc-bob');
  try {
    client.connect();
    await until(() => client.count('subscribed') === 3, 10000, 'subscribed');
    const first = client.connectionId;
    const r = await http(`${gw.url}/api/users/rc-bob/disconnect`, { method: 'POST', headers: KEY });
    assert.deepEqual(r.body, { success: true, disconnected: 1 });
    await until(() => client.count('close') === 1, 5000, 'closed by the server');
    const closedAt = Date.now();
    await until(() => client.count('connected') === 2, 10000, 'reconnected');
    const took = Date.now() - closedAt;
    assert.ok(took >= 800, `reconnected after ${took} ms (back-off 1 s)`);
    assert.notEqual(client.connectionId, first);
    assert.equal(client.reconnectAttempts, 0, 'the attempt counter was reset on open');
    await until(() => client.count('subscribed') === 6, 5000, 'subscribed again');
    await publish(gw, 'apps:created', { id: 'after-reconnect' });
    await until(() => events.some((e) => e.data.id === 'after-reconnect'), 5000, 'event after the reconnect');
  } finally { client.disconnect(); }
});

test('RealtimeClient reconnects after the gateway restarts on the same port (close 1001, then back-off)', async () => {
  let g = await startGateway({ API_KEY });
  const port = g.port;
  const { client, events } = appClient(g, 'rc-carol');
  try {
    client.connect();
    await until(() => client.count('subscribed') === 3, 10000, 'subscribed');
    assert.equal(await g.stop('SIGTERM'), 0);
    await until(() => client.count('close') >= 1, 10000, 'closed by the shutdown');
    assert.equal(client.logs.find((l) => l[0] === 'close')[1], 1001);
    // The same port again (a few bounded tries in case the old socket lingers).
    let started = null;
    for (let i = 0; i < 10 && !started; i++) {
      try { started = await startGateway({ API_KEY, PORT: String(port) }); } catch (e) {
        if (i === 9) throw e;
        await pause(300);
      }
    }
    g = started;
    await until(() => client.count('connected') === 2, 40000, 'reconnected to the restarted gateway');
    assert.equal(client.reconnectAttempts, 0);
    await until(() => client.count('subscribed') === 6, 5000, 'subscribed again');
    await publish(g, 'apps:created', { id: 'after-restart' });
    await until(() => events.some((e) => e.data.id === 'after-restart'), 5000, 'event after the restart');
    const delays = client.logs.filter((l) => l[0] === 'reconnect-in').map((l) => l[1]);
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000].slice(0, delays.length), 'back-off 1, 2, 4 ... s');
  } finally { client.disconnect(); await g.stop(); }
});

test('RealtimeClient in Node: Bearer header and subprotocol token-<jwt> (echoed) forms', async () => {
  for (const mode of ['header', 'protocol']) {
    const user = `rc-${mode}`;
    const { client, events } = appClient(gw, user, mode);
    try {
      client.connect();
      await until(() => client.count('subscribed') === 3, 10000, `${mode}: subscribed`);
      assert.ok(client.logs.find((l) => l[0] === 'connected')[2].includes(`user:${user}`));
      if (mode === 'protocol') assert.equal(client.ws.protocol, `token-${client.token}`);
      await pub.publish(`user:${user}`, JSON.stringify({ mode }));
      await until(() => events.length === 1, 5000, `${mode}: event`);
      assert.deepEqual(events[0], { channel: `user:${user}`, data: { mode } });
    } finally { client.disconnect(); }
  }
});

// ----------------------------------------------------------------------------------------------------
// 2. The React hook: useWebSocket(token, channels), its effect and cleanup emulated without React.

function useWebSocket(url, jwt, channels) {
  let events = [];
  const setEvents = (fn) => { events = fn(events); };
  let socket = null;
  const effect = () => {
    if (!jwt) return undefined;
    const ws = new WebSocket(`${url}?token=${jwt}`);
    socket = ws;
    ws.onopen = () => { channels.forEach((channel) => ws.send(JSON.stringify({ type: 'subscribe', channel }))); };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === 'event') setEvents((prev) => [...prev, msg]);
    };
    return () => ws.close();
  };
  return { effect, get events() { return events; }, get socket() { return socket; } };
}

test('React useWebSocket: opens with a token, subscribes on open, appends events, closes in the cleanup', async () => {
  const stats = async () => (await http(`${gw.url}/api/stats`, { headers: KEY })).body;
  const chA = `deployments:${uniq('hook')}`;
  const chB = `storage:${uniq('hook')}`;
  const none = useWebSocket(wsUrl(gw.url), null, [chA]);
  assert.equal(none.effect(), undefined, 'no token: no socket');
  assert.equal(none.socket, null);

  const hook = useWebSocket(wsUrl(gw.url), token('hook-user'), [chA, chB]);
  const cleanup = hook.effect();
  try {
    await until(async () => {
      const s = await stats();
      return s.connectionsByChannel[chA] === 1 && s.connectionsByChannel[chB] === 1;
    }, 10000, 'both subscriptions');
    await pub.publish(chA, JSON.stringify({ n: 1 }));
    await publish(gw, chB, { n: 2 });
    await pub.publish('apps:not-subscribed', '{"n":0}');
    await pub.publish(chA, 'plain text');
    await until(() => hook.events.length === 3, 5000, 'three events');
    assert.deepEqual(hook.events.map((e) => [e.channel, e.data]), [[chA, { n: 1 }], [chB, { n: 2 }], [chA, 'plain text']]);
    for (const e of hook.events) assert.match(e.timestamp, ISO);
  } finally { cleanup(); }
  await until(async () => !(await stats()).connectionsByChannel[chA], 5000, 'the cleanup closed the socket');
  await pub.publish(chA, JSON.stringify({ n: 'late' }));
  await pause(300);
  assert.equal(hook.events.length, 3, 'nothing after the cleanup');
  assert.equal(hook.socket.readyState, WebSocket.CLOSED);
});

// ----------------------------------------------------------------------------------------------------
// 3. websocat by hand, and a backend's Redis PUBLISH.

test('websocat: typed lines (subscribe, ping) answered with one JSON line each; PUBLISH arrives as a line', async () => {
  const jwt = token('websocat-user');
  const c = await wsConnect(`${wsUrl(gw.url)}?token=${jwt}`, { hello: false });
  const lines = [];
  c.ws.on('message', (d, bin) => { if (!bin) lines.push(d.toString()); });
  try {
    const hello = await c.next('connected');
    assert.equal(hello.userId, 'websocat-user');
    c.sendRaw('{"type":"subscribe","channel":"apps:created"}');
    assert.equal((await c.next('subscribed')).channel, 'apps:created');
    c.sendRaw('{"type":"ping"}\n'); // websocat --linemode-retain-newlines
    await c.next('pong');
    c.sendRaw('{"type":"ping"}');
    await c.next('pong');
    await pub.publish('apps:created', '{"id":"w1","name":"typed","status":"pending"}');
    const ev = await c.next('event');
    assert.deepEqual(ev.data, { id: 'w1', name: 'typed', status: 'pending' });
    assert.ok(lines.length >= 4);
    for (const l of lines) {
      assert.ok(!l.includes('\n'), `one line per frame: ${l}`);
      const f = JSON.parse(l);
      assert.equal(typeof f.type, 'string');
      assert.match(f.timestamp, ISO);
    }
  } finally { c.terminate(); }
});

test('backend PUBLISH apps:created \'{...}\' reaches each subscriber once (/ws and Socket.IO), nobody else', async () => {
  const a = await wsConnect(gw.url, { token: token('pub-a') });
  const b = await wsConnect(gw.url, { header: token('pub-b') });
  const { socket } = await connect(gw.url, { auth: { token: token('pub-c') } });
  try {
    assert.equal((await a.request('subscribe', undefined, { channel: 'apps:created' })).type, 'subscribed');
    assert.equal((await b.request('subscribe', undefined, { channel: 'users:updated' })).type, 'subscribed');
    assert.equal((await request(socket, 'subscribe', 'apps:created')).success, true);
    const sioEvents = collect(socket, 'event');
    const payload = { id: randomUUID(), name: 'my-new-app', status: 'pending' };
    await pub.publish('apps:created', JSON.stringify(payload));
    const ev = await a.next('event');
    assert.equal(ev.type, 'event');
    assert.equal(ev.channel, 'apps:created');
    assert.deepEqual(ev.data, payload);
    assert.match(ev.timestamp, ISO);
    // Fence: a second publish; a duplicate of the first would have come before it.
    await pub.publish('apps:created', JSON.stringify({ fence: true }));
    await a.next((f) => f.type === 'event' && f.data.fence);
    await until(() => sioEvents.some((e) => e.data.fence), 5000, 'the Socket.IO fence');
    assert.equal(a.frames.filter((f) => f.type === 'event').length, 2);
    assert.deepEqual(sioEvents.map((e) => e.data), [payload, { fence: true }]);
    await pub.publish('users:updated', '"fence-b"');
    await b.next('event');
    assert.deepEqual(b.frames.filter((f) => f.type === 'event').map((f) => f.data), ['fence-b']);
  } finally { a.terminate(); b.terminate(); socket.close(); }
});

// ----------------------------------------------------------------------------------------------------
// 4. The chat app's client: {type, payload, requestId, timestamp} envelopes, in-band auth, reconnects.

class ChatClient {
  constructor(url, getToken, { reconnectDelayMs = 300 } = {}) {
    this.url = url;
    this.getToken = getToken;
    this.reconnectDelayMs = reconnectDelayMs;
    this.pending = new Map();
    this.handlers = new Map();
    this.rooms = new Set();
    this.stopped = false;
    this.sessions = 0;
    this.user = null;
  }

  on(type, fn) { if (!this.handlers.has(type)) this.handlers.set(type, []); this.handlers.get(type).push(fn); }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = async () => {
        try {
          const hello = await this.request('auth', { token: this.getToken() });
          if (hello.type !== 'connected') throw new Error(`auth failed: ${JSON.stringify(hello)}`);
          this.user = hello.user;
          this.connectionId = hello.connectionId;
          this.sessions++;
          for (const roomId of this.rooms) await this.request('join-room', { roomId });
          resolve(hello);
        } catch (e) { reject(e); }
      };
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.requestId !== undefined && this.pending.has(msg.requestId)) {
          const { resolve: done, timer } = this.pending.get(msg.requestId);
          clearTimeout(timer);
          this.pending.delete(msg.requestId);
          done(msg);
          return;
        }
        for (const fn of this.handlers.get(msg.type) ?? []) fn(msg.payload ?? msg.data, msg);
      };
      ws.onclose = () => {
        if (this.stopped) return;
        this.reconnecting = setTimeout(() => { this.connect().catch(() => {}); }, this.reconnectDelayMs);
      };
      ws.onerror = () => {};
    });
  }

  request(type, payload, ms = 5000) {
    const requestId = randomUUID();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.pending.delete(requestId); reject(new Error(`no answer to ${type}`)); }, ms);
      this.pending.set(requestId, { resolve, timer });
      const msg = { type, requestId, timestamp: Date.now() };
      if (payload !== undefined) msg.payload = payload;
      this.ws.send(JSON.stringify(msg));
    });
  }

  /** A request whose answer is an ack: its data. */
  async call(type, payload) {
    const answer = await this.request(type, payload);
    if (answer.type !== 'ack') throw new Error(`${type}: ${JSON.stringify(answer)}`);
    return answer.data;
  }

  async joinRoom(roomId) { const a = await this.call('join-room', { roomId }); if (a.success) this.rooms.add(roomId); return a; }

  async leaveRoom(roomId) { this.rooms.delete(roomId); return this.call('leave-room', { roomId }); }

  close() { this.stopped = true; clearTimeout(this.reconnecting); this.ws?.close(); }
}

/** Collects the payloads of one event type into an array. */
function heard(client, type) { const seen = []; client.on(type, (p) => seen.push(p)); return seen; }

test('chat client: auth in-band, list-rooms, join-room, message, load-messages with before, typing, presence, ping, reconnect', async () => {
  const url = wsUrl(gw.url);
  const alice = new ChatClient(url, () => token('chat-alice'));
  const bob = new ChatClient(url, () => token('chat-bob'));
  try {
    const ha = await alice.connect();
    assert.equal(ha.userId, 'chat-alice');
    assert.equal(ha.user.userId, 'chat-alice');
    await bob.connect();
    const aliceMsgs = heard(alice, 'new-message');
    const bobMsgs = heard(bob, 'new-message');
    const bobTyping = heard(bob, 'user-typing');
    const bobStopped = heard(bob, 'user-stopped-typing');
    const alicePresence = heard(alice, 'presence-update');

    const created = await alice.call('create-room', { name: 'Alice & Bob', type: 'group', members: ['chat-bob'] });
    assert.equal(created.success, true);
    const roomId = created.room.id;
    const la = await alice.call('list-rooms');
    assert.equal(la.success, true);
    assert.ok(la.rooms.some((r) => r.id === roomId && r.members.includes('chat-bob')), JSON.stringify(la.rooms));
    assert.ok((await bob.call('list-rooms')).rooms.some((r) => r.id === roomId));
    assert.equal((await alice.joinRoom(roomId)).success, true);
    assert.equal((await bob.joinRoom(roomId)).success, true);

    const ids = [];
    for (let i = 1; i <= 5; i++) {
      const a = await alice.call('message', { roomId, content: `m${i}`, clientMessageId: randomUUID() });
      assert.equal(a.success, true);
      ids.push(a.messageId);
    }
    await until(() => bobMsgs.length === 5 && aliceMsgs.length === 5, 5000, 'five new-message each');
    assert.deepEqual(bobMsgs.map((m) => m.content), ['m1', 'm2', 'm3', 'm4', 'm5']);
    const last = await bob.call('list-rooms');
    assert.equal(last.rooms.find((r) => r.id === roomId).lastMessage.content, 'm5');

    // Pagination: newest two, then the two before, then the rest.
    let page = await bob.call('load-messages', { roomId, limit: 2 });
    assert.deepEqual(page.messages.map((m) => m.content), ['m4', 'm5']);
    assert.equal(page.hasMore, true);
    page = await bob.call('load-messages', { roomId, before: page.messages[0].id, limit: 2 });
    assert.deepEqual(page.messages.map((m) => m.content), ['m2', 'm3']);
    assert.equal(page.hasMore, true);
    page = await bob.call('load-messages', { roomId, before: page.messages[0].id, limit: 2 });
    assert.deepEqual(page.messages.map((m) => m.content), ['m1']);
    assert.equal(page.hasMore, false);
    assert.equal((await bob.call('load-messages', { roomId, before: 'no-such-id' })).code, 'NOT_FOUND');
    assert.equal((await bob.call('load-messages', { roomId, limit: 0 })).code, 'INVALID_PAYLOAD');

    // Typing start/stop.
    assert.deepEqual(await alice.call('typing', { roomId }), { success: true });
    await until(() => bobTyping.length === 1, 5000, 'user-typing');
    assert.equal(bobTyping[0].userId, 'chat-alice');
    assert.equal(bobTyping[0].roomId, roomId);
    assert.deepEqual(await alice.call('stop-typing', { roomId }), { success: true });
    await until(() => bobStopped.length === 1, 5000, 'user-stopped-typing');
    assert.deepEqual(bobStopped[0], { userId: 'chat-alice', roomId });

    // Presence: bob's status, bob gone (after the grace), bob back.
    assert.deepEqual(await bob.call('update-status', 'busy'), { success: true });
    await until(() => alicePresence.some((p) => p.userId === 'chat-bob' && p.status === 'busy'), 5000, 'busy');
    bob.close();
    await until(() => alicePresence.some((p) => p.userId === 'chat-bob' && p.status === 'offline'), 5000, 'offline');
    const bob2 = new ChatClient(url, () => token('chat-bob'));
    try {
      await bob2.connect();
      const offAt = alicePresence.findIndex((p) => p.userId === 'chat-bob' && p.status === 'offline');
      await until(() => alicePresence.some((p, i) => i > offAt && p.userId === 'chat-bob' && p.status === 'online'), 5000, 'online again');
      for (const p of alicePresence) assert.equal(typeof p.timestamp, 'number');

      // Ping with its requestId.
      const pong = await alice.request('ping');
      assert.equal(pong.type, 'pong');

      // The server drops alice: the client reconnects by itself, re-authenticates, re-joins its room.
      const r = await http(`${gw.url}/api/users/chat-alice/disconnect`, { method: 'POST', headers: KEY });
      assert.equal(r.body.disconnected, 1);
      await until(() => alice.sessions === 2, 10000, 'alice re-authenticated after the reconnect');
      await bob2.joinRoom(roomId);
      const before = aliceMsgs.length;
      assert.equal((await bob2.call('message', { roomId, content: 'welcome back' })).success, true);
      await until(() => aliceMsgs.length === before + 1, 5000, 'a message after the reconnect');
      assert.equal(aliceMsgs.at(-1).content, 'welcome back');
      assert.deepEqual(await alice.leaveRoom(roomId), { success: true });
    } finally { bob2.close(); }
  } finally { alice.close(); bob.close(); }
});

// ----------------------------------------------------------------------------------------------------
// 5. The Bun helper's clients: {event:"authenticate"} and the close codes 4001, 4002, 4003, 1001.

class BunHelperClient {
  constructor(url, jwt, { authenticate = true } = {}) {
    this.url = url;
    this.token = jwt;
    this.authenticate = authenticate;
    this.messages = [];
    this.close = null;
  }

  connect() {
    this.ws = new WebSocket(this.url);
    this.closed = new Promise((resolve) => {
      this.ws.onclose = (e) => {
        const meaning = { 4001: 'auth timeout', 4002: 'heartbeat timeout', 4003: 'auth failed', 1001: 'going away' }[e.code] ?? 'other';
        this.close = { code: e.code, meaning, at: Date.now() };
        resolve(this.close);
      };
    });
    this.ready = new Promise((resolve) => {
      this.ws.onopen = () => {
        this.openedAt = Date.now();
        if (this.authenticate) this.ws.send(JSON.stringify({ event: 'authenticate', data: { token: this.token } }));
      };
      this.ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        this.messages.push(msg);
        // The helper's frames are {event, data} (a SaaS greeting before authentication has no `event`).
        if (msg.event === 'connected') { this.id = msg.data.id; this.userId = msg.data.userId; resolve(msg); }
      };
    });
    this.ws.onerror = () => {};
    return this;
  }

  send(obj) { this.ws.send(JSON.stringify(obj)); }
}

test('Bun helper clients: authenticate → connected (id, userId); nothing before it; close codes 4001, 4003, 4002, 1001', async () => {
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false', WS_AUTH_TIMEOUT_MS: '500', WS_IDLE_TIMEOUT_MS: '1500', PING_INTERVAL_MS: '60000' });
  const all = [];
  try {
    const url = wsUrl(g.url);
    const ok = new BunHelperClient(url, token('bun-ok')).connect(); all.push(ok);
    const hello = await Promise.race([ok.ready, pause(5000).then(() => null)]);
    assert.ok(hello, 'connected after authenticate');
    assert.equal(typeof ok.id, 'string');
    assert.equal(ok.userId, 'bun-ok');

    // Before authenticating it may do nothing else.
    const early = new BunHelperClient(url, token('bun-early'), { authenticate: false }).connect(); all.push(early);
    await new Promise((r) => { early.ws.addEventListener('open', r, { once: true }); });
    early.send({ type: 'subscribe', channel: 'apps:created' });
    await until(() => early.messages.length >= 1, 5000, 'an answer before auth');
    assert.equal(early.messages[0].type, 'error');
    assert.equal(early.messages[0].code, 'UNAUTHENTICATED');

    // 4001: no authentication in time.
    const c4001 = await early.closed;
    assert.equal(c4001.code, 4001);
    assert.equal(c4001.meaning, 'auth timeout');
    assert.ok(c4001.at - early.openedAt >= 400, `after ${c4001.at - early.openedAt} ms`);

    // 4003: a bad token.
    const bad = new BunHelperClient(url, token('bun-bad', { ttl: -120 })).connect(); all.push(bad);
    const c4003 = await Promise.race([bad.closed, pause(5000).then(() => null)]);
    assert.equal(c4003?.code, 4003);
    assert.equal(bad.messages.find((m) => m.event === 'error')?.data.message, 'Authentication failed: token expired');

    // 4002: the authenticated client that went silent (no server pings for 60 s) is closed after 1.5 s.
    const c4002 = await Promise.race([ok.closed, pause(6000).then(() => null)]);
    assert.equal(c4002?.code, 4002);
    assert.equal(c4002.meaning, 'heartbeat timeout');
    assert.ok(c4002.at - ok.openedAt >= 1200, `idle close after ${c4002.at - ok.openedAt} ms`);

    // 1001: going away on SIGTERM.
    const last = new BunHelperClient(url, token('bun-last')).connect(); all.push(last);
    await last.ready;
    assert.equal(await g.stop('SIGTERM'), 0);
    const c1001 = await Promise.race([last.closed, pause(10000).then(() => null)]);
    assert.equal(c1001?.code, 1001);
    assert.equal(c1001.meaning, 'going away');
    assert.ok(last.messages.some((m) => m.event === 'server-shutdown'));
  } finally { all.forEach((c) => c.ws.terminate()); await g.stop(); }
});

test('backend realtime:emit to socketId, userId, room and everyone reaches /ws clients', async () => {
  const a = await wsConnect(gw.url, { token: token('emit-a') });
  const a2 = await wsConnect(gw.url, { header: token('emit-a') });
  const b = await wsConnect(gw.url, { token: token('emit-b') });
  const { socket } = await connect(gw.url, { auth: { token: token('emit-c') } });
  const room = uniq('emit-room');
  try {
    assert.equal((await b.request('join-room', room)).data.success, true);
    const emit = (body) => pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', ...body }));
    const jobs = (c) => c.frames.filter((f) => f.type === 'job-done').map((f) => f.data.id);
    const sioJobs = collect(socket, 'job-done');
    await emit({ data: { id: 1 }, socketId: a.hello.connectionId });
    const f1 = await a.next('job-done');
    assert.deepEqual(f1.data, { id: 1 });
    assert.match(f1.timestamp, ISO);
    await emit({ data: { id: 2 }, userId: 'emit-a' });
    await a.next((f) => f.type === 'job-done' && f.data.id === 2);
    await a2.next((f) => f.type === 'job-done' && f.data.id === 2);
    await emit({ data: { id: 3 }, room });
    await b.next((f) => f.type === 'job-done' && f.data.id === 3);
    await emit({ data: { id: 4 } });
    await Promise.all([a, a2, b].map((c) => c.next((f) => f.type === 'job-done' && f.data.id === 4)));
    await until(() => sioJobs.some((j) => j.id === 4), 5000, 'the Socket.IO copy');
    assert.deepEqual(jobs(a), [1, 2, 4]);
    assert.deepEqual(jobs(a2), [2, 4]);
    assert.deepEqual(jobs(b), [3, 4]);
    assert.deepEqual(sioJobs.map((j) => j.id), [4]);
  } finally { a.terminate(); a2.terminate(); b.terminate(); socket.close(); }
});
