// Caps (SPEC §7, issue "Hardening"): one test per cap, each driven into the cap with a small setting so
// that it is quick. Every cap answers with its documented refusal and the node keeps serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import {
  startGateway, startRedis, connect, refused, request, next, collect, token, until, http, uniq, WS, POLLING,
} from '../lib/helpers.js';

const FAST = { RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' };
const up = (g) => until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');

/** A test's gateway and sockets, stopped and closed when the test ends. */
async function withGateway(t, env) {
  const g = await startGateway(env);
  const open = [];
  t.after(async () => { for (const s of open) s.close(); await g.stop(); });
  const login = async (userId, opts = {}) => {
    const { socket, hello } = await connect(g.url, { ...WS, auth: { token: token(userId) }, ...opts });
    open.push(socket);
    return socket;
  };
  return { g, login, open };
}

async function ok(socket, event, ...args) {
  const ack = await request(socket, event, ...args);
  assert.equal(ack.success, true, `${event}: ${JSON.stringify(ack)}`);
  return ack;
}

test('MAX_MESSAGE_BYTES: content over the cap is PAYLOAD_TOO_LARGE for message and private-message; at the cap it passes', async (t) => {
  const { login } = await withGateway(t, { MAX_MESSAGE_BYTES: '1000' });
  const alice = await login(uniq('alice'));
  const bobId = uniq('bob');
  const bob = await login(bobId);
  const room = uniq('cap-msg');
  await ok(alice, 'join-room', room);

  const over = await request(alice, 'message', { roomId: room, content: 'x'.repeat(1001) });
  assert.equal(over.success, false, JSON.stringify(over));
  assert.equal(over.code, 'PAYLOAD_TOO_LARGE');
  // Bytes, not characters: 501 two-byte characters are 1002 bytes.
  assert.equal((await request(alice, 'message', { roomId: room, content: 'é'.repeat(501) })).code, 'PAYLOAD_TOO_LARGE');
  await ok(alice, 'message', { roomId: room, content: 'x'.repeat(1000) });

  const pOver = await request(alice, 'private-message', { targetUserId: bobId, content: 'y'.repeat(1001) });
  assert.equal(pOver.success, false, JSON.stringify(pOver));
  assert.equal(pOver.code, 'PAYLOAD_TOO_LARGE');
  const got = next(bob, 'private-message');
  await ok(alice, 'private-message', { targetUserId: bobId, content: 'y'.repeat(1000) });
  assert.equal((await got).content.length, 1000);
});

test('MAX_CREATED_ROOMS_PER_USER: the 4th create-room of a user is refused; another user still creates', async (t) => {
  const { login } = await withGateway(t, { MAX_CREATED_ROOMS_PER_USER: '3' });
  const alice = await login(uniq('alice'));
  for (let i = 0; i < 3; i++) await ok(alice, 'create-room', { type: 'group', members: [uniq('m')] });
  const fourth = await request(alice, 'create-room', { type: 'group', members: [uniq('m')] });
  assert.deepEqual(fourth, { success: false, error: 'Too many rooms', code: 'RATE_LIMITED' });
  const bob = await login(uniq('bob'));
  await ok(bob, 'create-room', { type: 'group', members: [uniq('m')] });
});

test('MAX_ROOM_HISTORY_BYTES: history keeps only the newest messages that fit, in order', async (t) => {
  const { login } = await withGateway(t, { MAX_ROOM_HISTORY_BYTES: '10000', MAX_MESSAGE_BYTES: '4000' });
  const alice = await login(uniq('alice'));
  const room = uniq('cap-hist');
  await ok(alice, 'join-room', room);
  const ids = [];
  for (let i = 0; i < 6; i++) {
    const ack = await ok(alice, 'message', { roomId: room, content: `${i}`.padEnd(3000, 'h') });
    ids.push(ack.messageId);
  }
  const page = await ok(alice, 'load-messages', { roomId: room, limit: 100 });
  const n = page.messages.length;
  const bytes = page.messages.reduce((s, m) => s + Buffer.byteLength(m.content), 0);
  console.log(`# figures: history cap 10000 bytes: kept ${n}/6 messages of 3000 bytes (${bytes} content bytes)`);
  assert.ok(n >= 1 && n <= 3, `kept ${n}`);
  assert.ok(bytes <= 10000, `${bytes} bytes`);
  assert.deepEqual(page.messages.map((m) => m.id), ids.slice(-n), 'the newest ones, oldest first');
  // A joiner's recentMessages come from the same bounded history.
  const bob = await login(uniq('bob'));
  const j = await ok(bob, 'join-room', room);
  assert.deepEqual(j.recentMessages.map((m) => m.id), ids.slice(-n));
});

test('MAX_ROOMS_PER_SOCKET: the 6th join is refused, a leave frees a slot; a disconnect walks every joined room', async (t) => {
  const { login } = await withGateway(t, { MAX_ROOMS_PER_SOCKET: '5' });
  const subjectId = uniq('joiner');
  const subject = await login(subjectId);
  const rooms = Array.from({ length: 6 }, () => uniq('cap-rooms'));
  for (const r of rooms.slice(0, 5)) await ok(subject, 'join-room', r);
  const sixth = await request(subject, 'join-room', rooms[5]);
  assert.deepEqual(sixth, { success: false, error: 'Too many rooms joined', code: 'RATE_LIMITED' });
  await ok(subject, 'leave-room', rooms[0]);
  await ok(subject, 'join-room', rooms[5]);
  const joined = rooms.slice(1);

  // One observer per room the subject is in: each hears user-left for its own room when the socket goes.
  const observers = [];
  for (const r of joined) {
    const o = await login(uniq('observer'));
    await ok(o, 'join-room', r);
    observers.push({ room: r, lefts: collect(o, 'user-left') });
  }
  subject.close();
  await until(() => observers.every((o) => o.lefts.length >= 1), 5000, 'user-left in every room');
  for (const o of observers) assert.deepEqual(o.lefts, [{ userId: subjectId, roomId: o.room }]);
});

test('MAX_SUBSCRIPTIONS_PER_SOCKET: 10 concurrent subscribes with a cap of 3: exactly 3 succeed (atomic cap)', async (t) => {
  const { login } = await withGateway(t, { MAX_SUBSCRIPTIONS_PER_SOCKET: '3', ...FAST });
  const s = await login(uniq('subscriber'));
  const acks = await Promise.all(Array.from({ length: 10 }, (_, i) => request(s, 'subscribe', `apps:a${i + 1}`)));
  const okAcks = acks.filter((a) => a.success);
  const refusals = acks.filter((a) => !a.success);
  assert.equal(okAcks.length, 3, JSON.stringify(acks));
  for (const r of refusals) {
    assert.equal(r.code, 'FORBIDDEN', JSON.stringify(r));
    assert.match(r.error, /^Subscription limit reached/);
  }
  const list = await ok(s, 'list_channels');
  assert.equal(list.subscribed.length, 3, JSON.stringify(list.subscribed));
  assert.deepEqual([...list.subscribed].sort(), okAcks.map((a) => a.channel).sort());
});

/** Opens `n` connections of `userId` to each url at once; returns {ok:[sockets], refused:[errors]}. */
async function storm(urls, userId, n) {
  const tries = urls.flatMap((url) => Array.from({ length: n }, () => connect(url, { ...WS, auth: { token: token(userId) } })));
  const settled = await Promise.allSettled(tries);
  return {
    ok: settled.filter((s) => s.status === 'fulfilled').map((s) => s.value.socket),
    refused: settled.filter((s) => s.status === 'rejected').map((s) => s.reason),
  };
}

test('MAX_SOCKETS_PER_USER: 10 concurrent connects of one user with a cap of 3: exactly 3 connect', async (t) => {
  const { g } = await withGateway(t, { MAX_SOCKETS_PER_USER: '3' });
  const r = await storm([g.url], uniq('crowd'), 10);
  try {
    assert.equal(r.ok.length, 3, r.refused.map((e) => e.message).join(','));
    for (const e of r.refused) assert.equal(e.message, 'Too many connections for this user');
  } finally { r.ok.forEach((s) => s.close()); }
});

test('MAX_SOCKETS_PER_USER in a cluster: 5 concurrent connects to each of two nodes, cap 3: exactly 3 in total', async (t) => {
  const redis = await startRedis({ persist: false });
  const env = { REDIS_URL: redis.url, MAX_SOCKETS_PER_USER: '3' };
  const A = await startGateway({ ...env, NODE_ID: uniq('cap-a') });
  const B = await startGateway({ ...env, NODE_ID: uniq('cap-b') });
  t.after(async () => { await A.stop(); await B.stop(); await redis.stop(); });
  await up(A); await up(B);
  const r = await storm([A.url, B.url], uniq('crowd'), 5);
  try {
    console.log(`# figures: per-user cap 3 across 2 nodes, 10 concurrent connects: ${r.ok.length} connected`);
    assert.equal(r.ok.length, 3, r.refused.map((e) => e.message).join(','));
    for (const e of r.refused) assert.equal(e.message, 'Too many connections for this user');
  } finally { r.ok.forEach((s) => s.close()); }
});

test('offline queue: capped at 1000 messages per user, the newest kept, oldest first', async (t) => {
  const { login, open, g } = await withGateway(t, FAST);
  const sender = await login(uniq('sender'));
  const targetId = uniq('never-connected');
  const N = 1005;
  const ids = [];
  // One at a time: only acks give an order.
  for (let i = 0; i < N; i++) {
    const ack = await request(sender, 'private-message', { targetUserId: targetId, content: `q${i}` });
    assert.equal(ack.delivered, false, JSON.stringify(ack));
    ids.push(ack.messageId);
  }
  const target = io(g.url, { forceNew: true, reconnection: false, ...WS, auth: { token: token(targetId) } });
  open.push(target);
  const pending = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no pending-messages')), 10000);
    target.on('pending-messages', (msgs, ack) => { clearTimeout(timer); if (typeof ack === 'function') ack({ success: true }); resolve(msgs); });
  });
  assert.equal(pending.length, 1000);
  assert.deepEqual(pending.map((m) => m.id), ids.slice(5));
  assert.deepEqual(pending.map((m) => m.content), Array.from({ length: 1000 }, (_, i) => `q${i + 5}`));
});

test('CONNECT_RATE_PER_IP default: 300 sockets from 127.0.0.1 at once all connect', async (t) => {
  const { g } = await withGateway(t, {});
  const settled = await Promise.allSettled(Array.from({ length: 300 }, () => connect(g.url, WS)));
  const sockets = settled.filter((s) => s.status === 'fulfilled').map((s) => s.value.socket);
  const errors = [...new Set(settled.filter((s) => s.status === 'rejected').map((s) => s.reason.message))];
  sockets.forEach((s) => s.close());
  console.log(`# figures: 300 simultaneous connects from one address with the default per-IP rate: ${sockets.length} connected`);
  assert.equal(sockets.length, 300, `refused: ${errors.join(',')}`);
});

test('CONNECT_RATE_PER_IP=5: 20 connects at once get the burst of 10 (plus what refills meanwhile), the rest are refused', async (t) => {
  const { g } = await withGateway(t, { CONNECT_RATE_PER_IP: '5' });
  const t0 = Date.now();
  // All at once, so that a slow machine does not spread them over the refill.
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => connect(g.url, WS).then(
    ({ socket }) => ({ socket, ok: true }),
    (e) => ({ ok: false, message: e.message }),
  )));
  const secs = (Date.now() - t0) / 1000;
  const sockets = outcomes.filter((o) => o.ok).map((o) => o.socket);
  sockets.forEach((s) => s.close());
  const refused = outcomes.filter((o) => !o.ok);
  console.log(`# figures: CONNECT_RATE_PER_IP=5: ${sockets.length}/20 connects at once accepted in ${secs.toFixed(2)} s`);
  // A burst of twice the rate, then 5 a second.
  const most = 10 + Math.ceil(5 * secs) + 1;
  assert.ok(sockets.length >= 5 && sockets.length <= most, `accepted ${sockets.length}, at most ${most} expected`);
  assert.equal(refused.length, 20 - sockets.length);
  assert.ok(refused.every((o) => o.message === 'Too many connections from this address'), refused.map((o) => o.message).join(','));
});

test('X-Forwarded-For: the per-IP budget counts the entry the proxy wrote (the last), not one the client chose', async (t) => {
  const { g } = await withGateway(t, { TRUST_PROXY_HEADERS: 'true', CONNECT_RATE_PER_IP: '2' });
  const via = (xff) => ({ ...POLLING, extraHeaders: { 'x-forwarded-for': xff } });
  const sockets = [];
  try {
    // The client varies the first entry; the proxy's entry (the client's real address) stays the same.
    const spoofed = [];
    for (let i = 0; i < 10; i++) {
      try { sockets.push((await connect(g.url, via(`198.51.100.${i + 1}, 203.0.113.9`))).socket); spoofed.push('ok'); } catch (e) { spoofed.push(e.message); }
    }
    const accepted = spoofed.filter((o) => o === 'ok').length;
    assert.ok(accepted <= 6, `a client varying the first entry got ${accepted} connects: ${spoofed.join(',')}`);
    assert.ok(spoofed.slice(6).every((o) => o === 'Too many connections from this address'), spoofed.join(','));
    // Distinct real clients behind the proxy (distinct last entries) each have their own budget.
    for (let i = 0; i < 10; i++) sockets.push((await connect(g.url, via(`198.51.100.77, 203.0.113.${i + 20}`))).socket);
    console.log(`# figures: X-Forwarded-For spoofing: ${accepted}/10 connects with a varying first entry, 10/10 for 10 real clients`);
  } finally { sockets.forEach((s) => s.close()); }
});

test('JWT subject: "*" or one with a space is refused; a user cannot subscribe to another user\'s channel', async (t) => {
  const { g, login } = await withGateway(t, {});
  for (const sub of ['*', 'a b']) {
    const e = await refused(g.url, { ...WS, auth: { token: token(sub) } });
    assert.equal(e.message, 'Authentication failed: invalid subject', `sub ${JSON.stringify(sub)}`);
  }
  const aliceId = uniq('alice');
  const bobId = uniq('bob');
  const alice = await login(aliceId);
  assert.deepEqual(await request(alice, 'subscribe', `user:${bobId}`),
    { success: false, error: 'Not authorized to subscribe to this channel', code: 'FORBIDDEN' });
  await ok(alice, 'subscribe', `user:${aliceId}`);
});
