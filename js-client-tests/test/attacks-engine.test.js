// Attacks on the Engine.IO layer (issue 21, items 2, 3 and 12): a public sessionId used to drive the
// victim's polling session, a flood of handshakes that never connect, and tokens in debug logs.
// Every attack counts once; the last test prints how many were tried and refused.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import {
  startGateway, connect, request, next, token, http, until, uniq, WS, POLLING,
} from '../lib/helpers.js';

let tried = 0;
let refusedCount = 0;
/** Runs one attack; it counts as refused only when `fn` returns without throwing. */
async function attack(fn) {
  tried += 1;
  await fn();
  refusedCount += 1;
}

const gateways = [];
async function gateway(env = {}) {
  const g = await startGateway({ ALLOW_ANONYMOUS: 'true', ...env });
  gateways.push(g);
  return g;
}
after(async () => { for (const g of gateways) await g.stop(); });

const engine = (g, query) => `${g.url}/socket.io/?${new URLSearchParams(query)}`;

/** A WebSocket upgrade with `sid`: resolves 'refused' (HTTP error) or 'opened'. */
function wsUpgrade(url) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'));
    ws.once('unexpected-response', (_req, res) => { resolve(`refused ${res.statusCode}`); ws.terminate(); });
    ws.once('open', () => { resolve('opened'); ws.close(); });
    ws.once('error', () => resolve('refused'));
  });
}

test('a sessionId does not open the victim\'s polling session: POST, GET and a WebSocket upgrade are refused', async () => {
  const g = await gateway();
  const victimId = uniq('victim');
  const friendId = uniq('friend');
  const victim = await connect(g.url, { ...POLLING, auth: { token: token(victimId) } });
  const friend = await connect(g.url, { ...WS, auth: { token: token(friendId) } });
  const friendGot = [];
  friend.socket.on('private-message', (m) => friendGot.push(m));
  const victimGone = [];
  victim.socket.on('disconnect', (r) => victimGone.push(r));
  // What an attacker learns: the public id (connected.sessionId, socket.id, webhooks, Admin UI).
  const sid = victim.hello.sessionId;
  assert.equal(sid, victim.socket.id);

  await attack(async () => {
    const forged = `42${JSON.stringify(['private-message', { targetUserId: friendId, content: 'forged' }])}`;
    const res = await http(engine(g, { EIO: '4', transport: 'polling', sid }), {
      method: 'POST', headers: { 'content-type': 'text/plain;charset=UTF-8' }, body: forged,
    });
    assert.equal(res.status, 400);
    assert.deepEqual(res.body, { code: 1, message: 'Session ID unknown' });
  });
  await attack(async () => {
    const res = await http(engine(g, { EIO: '4', transport: 'polling', sid }));
    assert.equal(res.status, 400);
    assert.deepEqual(res.body, { code: 1, message: 'Session ID unknown' });
  });
  await attack(async () => {
    assert.match(await wsUpgrade(engine(g, { EIO: '4', transport: 'websocket', sid })), /^refused/);
  });
  assert.notEqual(victim.socket.io.engine.id, sid, 'the transport carries a different, private id');
  // The victim's own message is the first (and only) one its friend gets: nothing forged arrived
  // before it, and the victim is still connected and served.
  const genuine = next(friend.socket, 'private-message');
  assert.equal((await request(victim.socket, 'private-message', { targetUserId: friendId, content: 'genuine' })).success, true);
  assert.equal((await genuine).content, 'genuine');
  assert.deepEqual(friendGot.map((m) => m.content), ['genuine']);
  assert.equal(victim.socket.connected, true);
  assert.deepEqual(victimGone, []);
  assert.equal((await request(victim.socket, 'list_channels')).success, true);
  victim.socket.close();
  friend.socket.close();
});

test('a client that starts on polling upgrades to websocket through its private id and keeps working', async () => {
  const g = await gateway();
  const { socket, hello } = await connect(g.url, { auth: { token: token(uniq('upgrader')) } });
  const engineSocket = socket.io.engine;
  if (engineSocket.transport.name !== 'websocket') await next(engineSocket, 'upgrade');
  assert.equal(engineSocket.transport.name, 'websocket');
  assert.notEqual(engineSocket.id, hello.sessionId);
  assert.equal((await request(socket, 'list_channels')).success, true);
  socket.close();
});

test('a burst of polling handshakes from one address is refused with 429 before it opens sessions', async () => {
  const g = await gateway({ CONNECT_RATE_PER_IP: '2' });
  const n = 300;
  await attack(async () => {
    const t0 = Date.now();
    const statuses = await Promise.all(Array.from({ length: n }, async () => {
      const res = await fetch(engine(g, { EIO: '4', transport: 'polling' }));
      await res.text();
      return res.status;
    }));
    const secs = (Date.now() - t0) / 1000;
    const opened = statuses.filter((s) => s === 200).length;
    const refused = statuses.filter((s) => s === 429).length;
    console.log(`# figures: ${n} handshakes from one address with CONNECT_RATE_PER_IP=2: ${opened} opened, ${refused} refused (429) in ${secs.toFixed(2)} s`);
    assert.equal(opened + refused, n, statuses.join(','));
    // The burst (4) and what refilled, plus at most 64 sessions over budget waiting for their refusal.
    assert.ok(opened <= 4 + Math.ceil(2 * secs) + 64, `opened ${opened}`);
    const metrics = (await http(`${g.url}/metrics`)).body;
    assert.match(metrics, new RegExp(`realtime_engine_handshakes_refused_total ${refused}\\b`));
    assert.match(metrics, /realtime_engine_handshakes_total \d+/);
  });
});

test('an Engine.IO session that never connects to a namespace is dropped after 10 s', async () => {
  const g = await gateway();
  await attack(async () => {
    const open = await (await fetch(engine(g, { EIO: '4', transport: 'polling' }))).text();
    const sid = JSON.parse(open.slice(1)).sid;
    const t0 = Date.now();
    const metric = async () => Number((await http(`${g.url}/metrics`)).body.match(/realtime_engine_sessions_pending (\d+)/)?.[1]);
    assert.equal(await metric(), 1);
    // A pong answers at once (`ok` while the session lives) and does not stand for a CONNECT.
    const post = () => http(engine(g, { EIO: '4', transport: 'polling', sid }), {
      method: 'POST', headers: { 'content-type': 'text/plain;charset=UTF-8' }, body: '3',
    });
    assert.equal((await post()).status, 200);
    await until(async () => (await post()).status === 400, 16000, 'the unconnected session dropped');
    const secs = (Date.now() - t0) / 1000;
    console.log(`# figures: a session without CONNECT dropped after ${secs.toFixed(1)} s`);
    assert.ok(secs >= 9 && secs < 16, `${secs} s`);
    assert.deepEqual((await post()).body, { code: 1, message: 'Session ID unknown' });
    await until(async () => (await metric()) === 0, 5000, 'pending back to 0');
  });
});

test('RUST_LOG=debug: tokens never reach the logs (polling, websocket, refresh-token)', async () => {
  const g = await gateway({ RUST_LOG: 'debug' });
  await attack(async () => {
    const tokens = [];
    for (const transport of [POLLING, WS]) {
      const user = uniq('logged');
      const first = token(user);
      const { socket } = await connect(g.url, { ...transport, auth: { token: first } });
      const second = token(user, { ttl: 7200 });
      assert.equal((await request(socket, 'refresh-token', { token: second })).success, true);
      assert.equal((await request(socket, 'list_channels')).success, true);
      socket.close();
      tokens.push(first, second);
    }
    const logs = g.logs();
    assert.match(logs, /token refreshed/, 'the logs are read');
    for (const t of tokens) {
      assert.ok(!logs.includes(t), 'a token is in the logs');
      assert.ok(!logs.includes(t.split('.')[2]), 'a token signature is in the logs');
    }
  });
});

test('figures', () => {
  console.log(`# figures: attacks tried ${tried}, refused ${refusedCount}`);
  assert.ok(tried > 0);
  assert.equal(refusedCount, tried);
});
