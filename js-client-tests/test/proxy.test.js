// The event proxy (SPEC §14): events that are not the gateway's own go to a real HTTP backend started
// here, which checks the signature and answers acks, emits and joins; timeouts, failures and back-pressure
// answer as errors; Socket.IO and /ws alike; binary arguments travel as base64.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { startGateway, connect, request, next, token, http, until, wsConnect } from '../lib/helpers.js';

const SECRET = 'hook-secret';
let backend;
let gw;
const calls = [];

/** The app's backend: verifies X-Realtime-Signature, then answers by event name. */
function startBackend() {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', async () => {
      const want = `sha256=${createHmac('sha256', SECRET).update(`${req.headers['x-realtime-timestamp']}.${body}`).digest('hex')}`;
      const signed = req.headers['x-realtime-signature'] === want && /^\d+$/.test(req.headers['x-realtime-timestamp'] ?? '');
      const call = JSON.parse(body);
      calls.push({ ...call, signed });
      const reply = (status, obj) => { res.writeHead(status, { 'content-type': 'application/json' }); res.end(obj === undefined ? '' : JSON.stringify(obj)); };
      switch (call.event) {
        case 'chat message':
          return reply(200, {
            ack: { ok: true, echo: call.args[0], from: call.user?.userId ?? null },
            join: ['lobby'],
            emit: [{ event: 'chat message', data: { text: call.args[0], from: call.user?.userId ?? null }, room: 'lobby' }],
          });
        case 'order:update': return reply(200);
        case 'slow': await new Promise((r) => setTimeout(r, 1500)); return reply(200, { ack: { late: true } });
        case 'fail': return reply(500, { error: 'boom' });
        default: return reply(200, { ack: { args: call.args } });
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}/events`, close: () => new Promise((r) => server.close(r)) })));
}

before(async () => {
  backend = await startBackend();
  gw = await startGateway({ EVENT_PROXY_URL: backend.url, EVENT_PROXY_TIMEOUT_MS: '500', WEBHOOK_SECRET: SECRET,
    EVENT_PROXY_CONCURRENCY: '2' });
});
after(async () => { await gw?.stop(); await backend?.close(); });

test('event proxy: a custom event reaches the backend signed, with the caller; its answer is the ack, its joins and emits happen', async () => {
  const { socket: s } = await connect(gw.url, { auth: { token: token('px-alice') } });
  const w = await wsConnect(gw.url, { token: token('px-bob') });
  const broadcast = next(s, 'chat message');
  const ack = await request(s, 'chat message', 'hello');
  assert.deepEqual(ack, { ok: true, echo: 'hello', from: 'px-alice' });
  assert.deepEqual(await broadcast, { text: 'hello', from: 'px-alice' }, 'joined to lobby, then the emit reached it');
  const call = calls.find((c) => c.event === 'chat message' && c.user?.userId === 'px-alice');
  assert.equal(call.signed, true, 'signature checked by the backend');
  assert.equal(call.socketId, s.id);
  assert.deepEqual(call.args, ['hello']);
  assert.equal(typeof call.nodeId, 'string');
  assert.equal(typeof call.ts, 'number');
  // /ws: the same, in the generic envelope.
  // Listening before the request: the emit to lobby may reach alice before bob's ack reaches bob.
  const heard = next(s, 'chat message');
  const a = await w.request('chat message', 'from ws');
  assert.deepEqual(a.data, { ok: true, echo: 'from ws', from: 'px-bob' });
  assert.deepEqual(await heard, { text: 'from ws', from: 'px-bob' }, 'both are in lobby now');
  // No ack in the answer: {success:true}; several and binary arguments.
  assert.deepEqual(await request(s, 'order:update', { id: 1, status: 'paid' }), { success: true });
  const bin = await s.timeout(5000).emitWithAck('upload', 'name.bin', Buffer.from([1, 2, 3]));
  assert.deepEqual(bin, { args: ['name.bin', 'AQID'] });
  // Anonymous callers are forwarded with user null.
  const { socket: anon } = await connect(gw.url, {});
  assert.deepEqual(await request(anon, 'whoami'), { args: [] });
  assert.equal(calls.find((c) => c.event === 'whoami').user, null);
  s.close(); w.close(); anon.close();
});

test('event proxy: timeout, backend error and back-pressure answer errors; the gateway\'s own events never go out', async () => {
  const { socket: s } = await connect(gw.url, { auth: { token: token('px-carol') } });
  const failed = { success: false, error: 'Backend unavailable', code: 'INTERNAL' };
  const started = Date.now();
  assert.deepEqual(await request(s, 'slow'), failed);
  assert.ok(Date.now() - started < 1400, 'answered at the timeout, not when the backend finished');
  assert.deepEqual(await request(s, 'fail'), failed);
  // Two in flight at most: a third at once is refused, not queued.
  const three = await Promise.all([request(s, 'slow'), request(s, 'slow'), request(s, 'slow')]);
  assert.equal(three.filter((a) => a.code === 'RATE_LIMITED' && a.error === 'Backend busy').length, 1, JSON.stringify(three));
  // The gateway's own events are handled here, not proxied.
  const before = calls.length;
  assert.equal((await request(s, 'list_channels')).success, true);
  assert.equal((await request(s, 'join-room', 'px-room')).success, true);
  assert.equal(calls.length, before);
  const metrics = (await http(`${gw.url}/metrics`)).body;
  for (const outcome of ['ok', 'timeout', 'error', 'busy']) {
    const m = metrics.match(new RegExp(`realtime_event_proxy_total\\{outcome="${outcome}"\\} (\\d+)`));
    assert.ok(m && Number(m[1]) > 0, `metric for ${outcome}`);
  }
  console.log(`# figures: event proxy calls ${calls.length}, ${metrics.match(/realtime_event_proxy_total\{outcome="ok"\} (\d+)/)[1]} ok`);
  s.close();
});
