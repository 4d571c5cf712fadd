// Seeds 000 and 001 (the SaaS platform's WEBSOCKET.md): its `RealtimeClient` class, copied from the seed
// with `console` replaced by a log the test reads and `WebSocket` being the `ws` package's browser-style
// class. What SPEC §10 adds for it: a bad or expired token presented with the upgrade is refused with
// HTTP 401 (so the class's five reconnect attempts run out: its `onopen` resets the counter), in-band
// failures keep the error frame and 4003, and a close from the client is answered (a clean close).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import WebSocket from 'ws';
import { startGateway, token, http, pause, wsConnect } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway({}); });
after(async () => { await gw?.stop(); });

/** An upgrade request by hand (fetch may not send `Upgrade`): resolves with {status, headers, body} of a refusal. */
function rawUpgrade(path, headers) {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${gw.url}${path}`, {
      headers: {
        connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', ...headers,
      },
    });
    req.on('upgrade', (_res, socket) => { socket.destroy(); reject(new Error('upgraded')); });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const wsBase = () => `${gw.url.replace(/^http/, 'ws')}/ws`;

// The seed's class, as written (only `console.*` goes to `this.logs`, and `reconnectDelay` is a
// constructor option so that a test waits 0.1 s, 0.2 s, ... instead of 1 s, 2 s, ...).
class RealtimeClient {
  constructor(token, url = 'ws://localhost:8888/ws', { reconnectDelay = 1000 } = {}) {
    this.token = token;
    this.url = url;
    this.ws = null;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
    this.reconnectDelay = reconnectDelay;
    this.logs = [];
    this.opens = 0;
    this.connects = 0;
  }

  log(...a) { this.logs.push(a.map(String).join(' ')); }

  connect() {
    this.connects++;
    // Connect with token as query parameter
    this.ws = new WebSocket(`${this.url}?token=${this.token}`);

    this.ws.onopen = () => {
      this.log('WebSocket connected');
      this.opens++;
      this.reconnectAttempts = 0;
    };

    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.handleMessage(message);
    };

    this.ws.onerror = (error) => {
      this.log('WebSocket error:', error.message);
    };

    this.ws.onclose = () => {
      this.log('WebSocket closed');
      this.reconnect();
    };
  }

  handleMessage(message) {
    switch (message.type) {
      case 'connected':
        this.log('Connection ID:', message.connectionId);
        break;
      case 'error':
        this.log('Server error:', message.message);
        break;
      default:
        break;
    }
  }

  reconnect() {
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++;
      const delay = this.reconnectDelay * Math.pow(2, this.reconnectAttempts - 1);
      this.log(`Reconnecting in ${delay}ms (attempt ${this.reconnectAttempts})`);
      setTimeout(() => { this.connect(); }, delay);
    } else {
      this.log('Max reconnection attempts reached');
    }
  }
}

test('seed 000: an expired token is refused at the upgrade (401 JSON), so RealtimeClient gives up after 5 attempts', async () => {
  const c = new RealtimeClient(token('seed0-expired', { ttl: -120 }), wsBase(), { reconnectDelay: 100 });
  c.connect();
  // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of back-off: done well within 10 s, unless every attempt opens
  // (the counter is reset in onopen, and the client would retry for ever).
  const deadline = Date.now() + 10000;
  while (!c.logs.includes('Max reconnection attempts reached') && Date.now() < deadline) await pause(50);
  assert.ok(c.logs.includes('Max reconnection attempts reached'), `gave up: ${c.logs.slice(-6).join(' | ')}`);
  assert.equal(c.connects, 6, 'the first try and five reconnects');
  assert.equal(c.opens, 0, 'no attempt was opened');
  assert.ok(c.logs.some((l) => /401/.test(l)), 'the upgrade answered 401');
});

test('seed 000: the refusal at the upgrade is HTTP 401 {error:"Authentication failed: <reason>", code:"UNAUTHENTICATED"} for query, header and subprotocol', async () => {
  const cases = [
    ['query, expired', { query: `?token=${token('seed0-q', { ttl: -120 })}` }, 'Authentication failed: token expired'],
    ['header, wrong secret', { headers: { Authorization: `Bearer ${token('seed0-h', { secret: 'another-secret' })}` } }, 'Authentication failed: invalid signature'],
    ['query, garbage', { query: '?token=garbage' }, 'Authentication failed: malformed token'],
    ['subprotocol, wrong secret', { protocols: [`token-${token('seed0-p', { secret: 'another-secret' })}`] }, 'Authentication failed: invalid signature'],
  ];
  for (const [name, { query = '', headers = {}, protocols }, error] of cases) {
    // The raw upgrade request, to read the status and the body.
    const res = await rawUpgrade(`/ws${query}`, {
      ...headers, ...(protocols ? { 'sec-websocket-protocol': protocols.join(', ') } : {}),
    });
    assert.equal(res.status, 401, `${name}: status`);
    assert.match(res.headers['content-type'] ?? '', /application\/json/, name);
    assert.deepEqual(JSON.parse(res.body), { error, code: 'UNAUTHENTICATED' }, name);
  }
  // A browser-style client sees an error and a close, never an open.
  const ws = new WebSocket(`${wsBase()}?token=${token('seed0-b', { ttl: -5 })}`);
  let opened = false;
  ws.onopen = () => { opened = true; };
  const err = await new Promise((resolve) => { ws.onerror = resolve; });
  assert.match(err.message, /401/);
  assert.equal(opened, false);
  // A valid token still connects.
  assert.equal((await http(`${gw.url}/health`)).status, 200);
  const ok = await wsConnect(gw.url, { token: token('seed0-ok') });
  assert.equal(ok.hello.type, 'connected');
  ok.close();
});

test('seed 000: in-band failures keep the error frame and 4003', async () => {
  const c = await wsConnect(gw.url, {});
  c.send({ type: 'auth', token: token('seed0-inband', { ttl: -120 }) });
  const e = await c.next('error');
  assert.equal(e.message, 'Authentication failed: token expired');
  assert.equal(e.code, 'UNAUTHENTICATED');
  assert.equal((await c.closed).code, 4003);
});

test('seed 000: a close from the client is answered: the client sees its own code and wasClean, then the server closes TCP', async () => {
  for (const [code, reason] of [[1000, undefined], [4000, 'bye']]) {
    const ws = new WebSocket(`${wsBase()}?token=${token('seed0-close')}`);
    await new Promise((resolve, reject) => { ws.onmessage = resolve; ws.onerror = reject; });
    const t0 = Date.now();
    const closed = new Promise((resolve) => { ws.onclose = resolve; });
    ws.close(code, reason);
    const ev = await closed;
    assert.equal(ev.code, code);
    assert.equal(ev.wasClean, true, 'a close frame came back');
    // `ws` waits up to 30 s for the server to end TCP after the close handshake: the server did.
    assert.ok(Date.now() - t0 < 2000, `closed after ${Date.now() - t0} ms`);
  }
});
