// Seed 003 (the build-websocket-server command): its native `WebSocketClient` (websocket/client.js),
// copied from the seed with `console` replaced by a log and `WebSocket` being the `ws` package's
// browser-style class, run against `/ws` with only the URL changed (the gateway's, with `?token=`, which
// the seed's server reads from the URL too). Its frames are the seed's native server's: `join`/`leave`
// `{room}` → `joined`/`left` `{roomId}`, `chat` `{room, content}` → `{type:"chat", from, content,
// timestamp}` to the room, `broadcast` `{room, data}` → `data` to the others, `ping` → `pong` with a
// numeric `timestamp`, errors as `{type:"error", error}`. The same rooms as every other client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startGateway, token, connect, request, next, pause, until, WS } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway({}); });
after(async () => { await gw?.stop(); });

const url = (g, user, name) => `${g.url.replace(/^http/, 'ws')}/ws?token=${token(user, { claims: { name } })}`;

// The seed's client, as written.
class WebSocketClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.ws = null;
    this.messageHandlers = new Map();
    this.messageQueue = [];
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = options.maxReconnectAttempts || 5;
    this.reconnectDelay = options.reconnectDelay || 1000;
    this.isConnected = false;
    this.logs = [];
  }

  log(...a) { this.logs.push(a.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(' ')); }

  connect() {
    return new Promise((resolve, reject) => {
      try {
        this.ws = new WebSocket(this.url);

        this.ws.onopen = () => {
          this.log('WebSocket connected');
          this.isConnected = true;
          this.reconnectAttempts = 0;

          // Send queued messages
          while (this.messageQueue.length > 0) {
            const message = this.messageQueue.shift();
            this.send(message);
          }

          resolve();
        };

        this.ws.onmessage = (event) => {
          this.handleMessage(event.data);
        };

        this.ws.onerror = (error) => {
          this.log('WebSocket error:', error.message);
          reject(error);
        };

        this.ws.onclose = (event) => {
          this.log('WebSocket closed:', event.code, event.reason);
          this.isConnected = false;
          this.handleReconnect();
        };
      } catch (error) {
        reject(error);
      }
    });
  }

  handleMessage(data) {
    try {
      const message = JSON.parse(data);
      const handler = this.messageHandlers.get(message.type);

      if (handler) {
        handler(message);
      } else {
        this.log('Unhandled message:', message);
      }
    } catch (error) {
      this.log('Message parsing error:', error.message);
    }
  }

  on(type, handler) {
    this.messageHandlers.set(type, handler);
  }

  send(data) {
    const message = typeof data === 'object' ? JSON.stringify(data) : data;

    if (this.isConnected && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(message);
    } else {
      // Queue message for later
      this.messageQueue.push(data);
    }
  }

  handleReconnect() {
    if (this.reconnectAttempts >= this.maxReconnectAttempts) {
      this.log('Max reconnection attempts reached');
      return;
    }

    this.reconnectAttempts++;
    const delay = this.reconnectDelay * Math.pow(2, this.reconnectAttempts - 1);

    this.log(`Reconnecting in ${delay}ms (attempt ${this.reconnectAttempts})`);

    setTimeout(() => {
      this.connect().catch((e) => this.log(e.message));
    }, delay);
  }

  close() {
    if (this.ws) {
      this.ws.close();
    }
  }
}

/** The first message of `type` (the seed's tests wait with `client.on(type, resolve)`), bounded. */
const once = (client, type, ms = 5000) => Promise.race([
  new Promise((resolve) => client.on(type, resolve)),
  pause(ms).then(() => { throw new Error(`no ${type} within ${ms} ms; log: ${client.logs.slice(-4).join(' | ')}`); }),
]);

test('seed 003: connect, join → joined {roomId, members}, chat to the room, leave → left (the seed\'s own tests)', async () => {
  const client = new WebSocketClient(url(gw, 's3-alice', 'Alice'));
  const client2 = new WebSocketClient(url(gw, 's3-bob', 'Bob'));
  try {
    await client.connect();
    assert.equal(client.isConnected, true);

    // should join room
    const joined = once(client, 'joined');
    client.send({ type: 'join', room: 'test-room' });
    const result = await joined;
    assert.equal(result.roomId, 'test-room');
    assert.deepEqual(result.members.map((m) => m.name), ['Alice']);

    // should broadcast messages
    await client2.connect();
    const userJoined = once(client, 'user-joined');
    const joined2 = once(client2, 'joined');
    client2.send({ type: 'join', room: 'test-room' });
    assert.equal((await joined2).roomId, 'test-room');
    const uj = await userJoined;
    assert.equal(uj.userId, 's3-bob');
    assert.equal(uj.roomId, 'test-room');
    assert.equal(typeof uj.timestamp, 'number');

    const messageReceived = once(client2, 'chat');
    const own = once(client, 'chat');
    client.send({ type: 'chat', room: 'test-room', content: 'Hello World' });
    const message = await messageReceived;
    assert.equal(message.content, 'Hello World');
    assert.equal(message.from, 'Alice');
    assert.equal(typeof message.timestamp, 'number');
    assert.equal((await own).content, 'Hello World', 'the sender is in the room too, as in the seed');

    // broadcast: the data itself, to the others only.
    const cursor = once(client2, 'cursor');
    client.send({ type: 'broadcast', room: 'test-room', data: { type: 'cursor', x: 3, y: 4 } });
    assert.deepEqual(await cursor, { type: 'cursor', x: 3, y: 4 });

    // ping → pong with a numeric timestamp.
    const pong = once(client, 'pong');
    const t0 = Date.now();
    client.send({ type: 'ping' });
    const p = await pong;
    assert.equal(typeof p.timestamp, 'number');
    assert.ok(Math.abs(p.timestamp - t0) < 5000);

    // leave → left; the others hear user-left.
    const left = once(client2, 'left');
    const userLeft = once(client, 'user-left');
    client2.send({ type: 'leave', room: 'test-room' });
    assert.equal((await left).roomId, 'test-room');
    assert.equal((await userLeft).userId, 's3-bob');

    // An error carries `error`: chat in a room it left.
    const err = once(client2, 'error');
    client2.send({ type: 'chat', room: 'test-room', content: 'not here' });
    assert.equal((await err).error, 'Not in room');
    assert.ok(!client.logs.some((l) => l.includes('not here')));
  } finally {
    client.maxReconnectAttempts = 0; client2.maxReconnectAttempts = 0;
    client.close(); client2.close();
  }
});

test('seed 003: a native client and a Socket.IO client share a room', async () => {
  const client = new WebSocketClient(url(gw, 's3-carol', 'Carol'));
  const { socket } = await connect(gw.url, { ...WS, auth: { token: token('s3-dave', { claims: { name: 'Dave' } }) } });
  try {
    await client.connect();
    const joined = once(client, 'joined');
    client.send({ type: 'join', room: 'mixed-room' });
    await joined;
    assert.equal((await request(socket, 'join-room', 'mixed-room')).success, true);
    const fromSio = once(client, 'chat');
    const ack = await request(socket, 'message', { roomId: 'mixed-room', content: 'from socket.io' });
    assert.equal(ack.success, true);
    const m = await fromSio;
    assert.equal(m.content, 'from socket.io');
    assert.equal(m.from, 'Dave');
    const toSio = next(socket, 'new-message');
    client.send({ type: 'chat', room: 'mixed-room', content: 'from native' });
    const nm = await toSio;
    assert.equal(nm.content, 'from native');
    assert.equal(nm.userId, 's3-carol');
  } finally { client.maxReconnectAttempts = 0; client.close(); socket.close(); }
});

test('seed 003: reconnects after a restart of the gateway (its back-off), and rejoins as its app does', async () => {
  const first = await startGateway({});
  let second;
  const client = new WebSocketClient(url(first, 's3-erin', 'Erin'), { reconnectDelay: 200 });
  try {
    await client.connect();
    await first.stop();
    await until(() => client.reconnectAttempts > 0, 5000, 'a reconnect attempt');
    second = await startGateway({ PORT: String(first.port) });
    await until(() => client.isConnected, 10000, 'reconnected');
    const joined = once(client, 'joined');
    client.send({ type: 'join', room: 'after-restart' });
    assert.equal((await joined).roomId, 'after-restart');
  } finally { client.maxReconnectAttempts = 0; client.close(); await second?.stop(); await first.stop(); }
});
