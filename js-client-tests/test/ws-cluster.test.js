// `/ws` in a cluster (SPEC §9, §10): two gateway nodes on one real redis-server. A /ws connection on node B
// is reached by everything done on node A: REST broadcasts (room, userId, socketId = connectionId, channel,
// everyone), /api/publish, Redis ingress and realtime:emit, room messages and private messages from
// Socket.IO clients on A, calls, presence, stats, the per-user cap and REST disconnects.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, startRedis, redisClient, connect, refused, request, next, nextWhere, token, http, until, uniq, collect,
  wsConnect, pause,
} from '../lib/helpers.js';

const KEY = 'ws-cluster-key';
const H = { 'x-api-key': KEY };
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
let redis;
let pub;
let A;
let B;
const env = () => ({ REDIS_URL: redis.url, API_KEY: KEY, PRESENCE_GRACE_MS: '300', MAX_SOCKETS_PER_USER: '4' });
const up = (g) => until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');

before(async () => {
  redis = await startRedis({ persist: false });
  pub = await redisClient(redis.url);
  A = await startGateway({ ...env(), NODE_ID: 'ws-node-a' });
  B = await startGateway({ ...env(), NODE_ID: 'ws-node-b' });
  await up(A); await up(B);
});
after(async () => { await A?.stop(); await B?.stop(); await pub?.quit().catch(() => {}); await redis?.stop(); });

const post = (g, route, body) => http(`${g.url}${route}`, { method: 'POST', headers: H, body });
const closedWithin = (c, ms) => Promise.race([c.closed, pause(ms).then(() => null)]);

/** Opens connections for one test and closes them at its end. */
function pool(t) {
  const open = [];
  t.after(() => { for (const c of open) c.close(); });
  return {
    ws: async (g, userId, opts = {}) => { const c = await wsConnect(g.url, { token: token(userId), ...opts }); open.push({ close: () => c.terminate() }); return c; },
    sio: async (g, userId) => { const r = await connect(g.url, { auth: { token: token(userId) } }); open.push(r.socket); return r; },
  };
}

test('REST on node A reaches a /ws connection on node B: socketId = connectionId, userId, room, channel, everyone, publish', async (t) => {
  const p = pool(t);
  const w = await p.ws(B, 'wc-rest');
  const w2 = await p.ws(A, 'wc-rest'); // the same user on A
  const other = await p.ws(B, 'wc-other');
  const room = uniq('wc-room');
  assert.equal((await w.request('join-room', room)).data.success, true);
  assert.equal((await w.request('subscribe', undefined, { channel: 'apps:wc' })).type, 'subscribed');
  const notices = (c) => c.frames.filter((f) => f.type === 'notice').map((f) => f.data.n);

  assert.deepEqual((await post(A, '/api/broadcast', { event: 'notice', data: { n: 1 }, socketId: w.hello.connectionId })).body, { success: true });
  const f1 = await w.next('notice');
  assert.deepEqual(f1.data, { n: 1 });
  assert.match(f1.timestamp, ISO);
  await post(A, '/api/broadcast', { event: 'notice', data: { n: 2 }, userId: 'wc-rest' });
  await w.next((f) => f.type === 'notice' && f.data.n === 2);
  await w2.next((f) => f.type === 'notice' && f.data.n === 2);
  await post(A, '/api/broadcast', { event: 'notice', data: { n: 3 }, room });
  await w.next((f) => f.type === 'notice' && f.data.n === 3);
  await post(A, '/api/broadcast', { event: 'notice', data: { n: 4 }, channel: 'apps:wc' });
  await w.next((f) => f.type === 'notice' && f.data.n === 4);
  assert.equal((await post(A, '/api/publish', { channel: 'apps:wc', data: { p: 'from A' } })).status, 200);
  const ev = await w.next('event');
  assert.equal(ev.channel, 'apps:wc');
  assert.deepEqual(ev.data, { p: 'from A' });
  // A socketId on A's own node from B: the other direction.
  await post(B, '/api/broadcast', { event: 'notice', data: { n: 5 }, socketId: w2.hello.connectionId });
  await w2.next((f) => f.type === 'notice' && f.data.n === 5);
  // Everyone, as the fence: each copy exactly once.
  await post(A, '/api/broadcast', { event: 'notice', data: { n: 6 } });
  await Promise.all([w, w2, other].map((c) => c.next((f) => f.type === 'notice' && f.data.n === 6)));
  assert.deepEqual(notices(w), [1, 2, 3, 4, 6]);
  assert.deepEqual(notices(w2), [2, 5, 6]);
  assert.deepEqual(notices(other), [6]);
  assert.equal(w.frames.filter((f) => f.type === 'event').length, 1);
});

test('Redis ingress: PUBLISH reaches /ws subscribers on both nodes once each; realtime:emit to a connectionId on B', async (t) => {
  const p = pool(t);
  const a = await p.ws(A, 'wc-ing-a');
  const b = await p.ws(B, 'wc-ing-b', { token: undefined, header: token('wc-ing-b') });
  for (const c of [a, b]) assert.equal((await c.request('subscribe', undefined, { channel: 'database:wc' })).type, 'subscribed');
  for (let i = 0; i < 3; i++) await pub.publish('database:wc', JSON.stringify({ i }));
  await pub.publish('database:wc', 'not json {');
  for (const c of [a, b]) await c.next((f) => f.type === 'event' && f.data === 'not json {');
  for (const c of [a, b]) {
    assert.deepEqual(c.frames.filter((f) => f.type === 'event').map((f) => f.data), [{ i: 0 }, { i: 1 }, { i: 2 }, 'not json {']);
  }
  await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 1 }, socketId: b.hello.connectionId }));
  await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 2 }, userId: 'wc-ing-b' }));
  await pub.publish('realtime:emit', JSON.stringify({ event: 'job-done', data: { id: 3 }, channel: 'database:wc' }));
  await b.next((f) => f.type === 'job-done' && f.data.id === 3);
  await a.next((f) => f.type === 'job-done' && f.data.id === 3);
  assert.deepEqual(b.frames.filter((f) => f.type === 'job-done').map((f) => f.data.id), [1, 2, 3]);
  assert.deepEqual(a.frames.filter((f) => f.type === 'job-done').map((f) => f.data.id), [3]);
});

test('a room across nodes: Socket.IO on A and /ws on B: user-joined, new-message both ways, history', async (t) => {
  const p = pool(t);
  const room = uniq('wc-chat');
  const alice = await p.sio(A, 'wc-alice');
  const bob = await p.ws(B, 'wc-bob');
  assert.equal((await request(alice.socket, 'join-room', room)).success, true);
  const joined = next(alice.socket, 'user-joined');
  const j = await bob.request('join-room', { roomId: room });
  assert.deepEqual(j.data.members.map((m) => m.userId).sort(), ['wc-alice', 'wc-bob']);
  assert.deepEqual(await joined, { userId: 'wc-bob', user: bob.hello.user, roomId: room });
  const m1 = await request(alice.socket, 'message', { roomId: room, content: 'from A (socket.io)' });
  const got = await bob.next((f) => f.type === 'new-message' && f.data.id === m1.messageId);
  assert.equal(got.data.content, 'from A (socket.io)');
  assert.equal(got.data.userId, 'wc-alice');
  const toAlice = nextWhere(alice.socket, 'new-message', (m) => m.content === 'from B (/ws)');
  const m2 = await bob.request('message', { roomId: room, content: 'from B (/ws)' });
  assert.equal((await toAlice).id, m2.data.messageId);
  // Typing from A reaches B.
  await request(alice.socket, 'typing', { roomId: room });
  assert.equal((await bob.next('user-typing')).data.userId, 'wc-alice');
  // History written on both nodes, read from B over /ws.
  const hist = await bob.request('load-messages', { roomId: room });
  assert.deepEqual(hist.data.messages.map((m) => m.content), ['from A (socket.io)', 'from B (/ws)']);
  // Presence of the Socket.IO user on A, seen by /ws on B.
  alice.socket.close();
  const off = await bob.next((f) => f.type === 'presence-update' && f.data.userId === 'wc-alice', 5000);
  assert.equal(off.data.status, 'offline');
});

test('private messages across nodes: Socket.IO on A ↔ /ws on B, and a queue filled on A handed to /ws on B', async (t) => {
  const p = pool(t);
  const alice = await p.sio(A, 'wc-pm-alice');
  const bob = await p.ws(B, 'wc-pm-bob');
  const bob2 = await p.ws(A, 'wc-pm-bob');
  const ack = await request(alice.socket, 'private-message', { targetUserId: 'wc-pm-bob', content: 'A → B' });
  assert.equal(ack.delivered, true);
  for (const c of [bob, bob2]) {
    const m = await c.next('private-message');
    assert.equal(m.data.id, ack.messageId);
    assert.equal(m.data.fromUserId, 'wc-pm-alice');
    assert.equal(m.data.content, 'A → B');
  }
  const toAlice = next(alice.socket, 'private-message');
  const back = await bob.request('private-message', { targetUserId: 'wc-pm-alice', content: 'B → A' });
  assert.equal(back.data.delivered, true);
  assert.equal((await toAlice).id, back.data.messageId);
  const read = next(alice.socket, 'messages-read');
  await bob.request('mark-read', { messageIds: [ack.messageId] });
  assert.deepEqual((await read).messageIds, [ack.messageId]);

  const q = await request(alice.socket, 'private-message', { targetUserId: 'wc-pm-carol', content: 'queued on A' });
  assert.equal(q.delivered, false);
  const carol = await p.ws(B, 'wc-pm-carol');
  const pending = await carol.next('pending-messages');
  assert.deepEqual(pending.data.map((m) => m.content), ['queued on A']);
});

test('a call across nodes: Socket.IO on A calls /ws on B; answer, ICE, hang-up', async (t) => {
  const p = pool(t);
  const ivy = await p.sio(A, 'wc-ivy');
  const jon = await p.ws(B, 'wc-jon');
  const { callId, success } = await request(ivy.socket, 'call-user', { targetUserId: 'wc-jon', offer: { sdp: 'o' }, callType: 'video' });
  assert.equal(success, true);
  const inc = await jon.next('incoming-call');
  assert.deepEqual(inc.data, { callId, fromUserId: 'wc-ivy', fromUser: ivy.hello.user, offer: { sdp: 'o' }, callType: 'video' });
  const answered = next(ivy.socket, 'call-answered');
  assert.equal((await jon.request('call-answer', { callId, answer: { sdp: 'a' } })).data.success, true);
  assert.deepEqual(await answered, { callId, fromUserId: 'wc-jon', answer: { sdp: 'a' } });
  await request(ivy.socket, 'ice-candidate', { callId, candidate: { c: 1 } });
  assert.deepEqual((await jon.next('ice-candidate')).data, { callId, fromUserId: 'wc-ivy', candidate: { c: 1 } });
  const ended = next(ivy.socket, 'call-ended');
  await jon.request('hang-up', { callId });
  assert.equal((await ended).reason, 'hang-up');
});

test('cluster counts: /api/stats on A counts /ws on B; the per-user cap spans nodes and transports; REST disconnect on A closes /ws on B', async (t) => {
  const p = pool(t);
  const w1 = await p.ws(B, 'wc-many');
  const w2 = await p.ws(A, 'wc-many');
  const s1 = await p.sio(A, 'wc-many');
  const s2 = await p.sio(B, 'wc-many');
  assert.equal((await w1.request('subscribe', undefined, { channel: 'storage:wc-count' })).type, 'subscribed');
  const stats = await until(async () => {
    const r = (await http(`${A.url}/api/stats`, { headers: H })).body;
    return r.connectionsByChannel?.['storage:wc-count'] === 1 ? r : null;
  }, 10000, 'cluster stats');
  assert.deepEqual(stats.nodes.map((n) => n.nodeId).sort(), ['ws-node-a', 'ws-node-b']);
  assert.ok(stats.totalConnections >= 4);
  assert.equal(stats.totalConnections, stats.nodes.reduce((s, n) => s + n.connections, 0));
  // MAX_SOCKETS_PER_USER=4: a fifth connection, /ws or Socket.IO, on either node, is refused.
  const w5 = await wsConnect(A.url, { token: token('wc-many'), hello: false });
  const e = await w5.next('error');
  assert.equal(e.message, 'Too many connections for this user');
  assert.equal((await closedWithin(w5, 5000))?.code, 1008);
  assert.equal((await refused(B.url, { auth: { token: token('wc-many') } })).message, 'Too many connections for this user');
  const gone = next(s1.socket, 'disconnect');
  const r = await post(A, '/api/users/wc-many/disconnect');
  assert.ok(await closedWithin(w1, 5000), 'the /ws connection on B was closed');
  assert.ok(await closedWithin(w2, 5000), 'the /ws connection on A was closed');
  await gone;
  await until(() => !s2.socket.connected, 5000, 'the Socket.IO socket on B disconnected');
  assert.deepEqual(r.body, { success: true, disconnected: 4 }, 'each of the 4 connections counted, /ws on B included');
});

test('room members across nodes and transports: a /ws member on node B is listed to a Socket.IO joiner on A, and the other way round; user-left only when the last device leaves', async (t) => {
  const p = pool(t);
  const room = uniq('wc-members');
  const w = await p.ws(B, 'wm-ws');
  assert.equal((await w.request('join-room', room)).data.success, true);
  const { socket: s } = await p.sio(A, 'wm-sio');
  const joined = w.next((f) => f.type === 'user-joined' && f.data.userId === 'wm-sio');
  const ack = await request(s, 'join-room', room);
  assert.equal(ack.success, true);
  assert.deepEqual(ack.members.map((m) => m.userId).sort(), ['wm-sio', 'wm-ws'], 'the /ws member on the other node is listed');
  await joined;
  // A second /ws client of the Socket.IO user, on B: no second user-joined, and listed once.
  const w2 = await p.ws(B, 'wm-sio');
  const ack2 = await w2.request('join-room', room);
  assert.deepEqual(ack2.data.members.map((m) => m.userId).sort(), ['wm-sio', 'wm-ws']);
  // The Socket.IO socket leaves: the user is still in the room on B, so nobody hears user-left.
  assert.equal((await request(s, 'leave-room', room)).success, true);
  await w2.request('leave-room', room);
  const left = await w.next((f) => f.type === 'user-left' && f.data.userId === 'wm-sio');
  assert.equal(left.data.roomId, room);
  assert.equal(w.frames.filter((f) => f.type === 'user-left').length, 1, 'user-left once, after the last device left');
});

test('bus presence: after the start-up window, a /ws client that arrives on B still gets A\'s broadcasts (B says it has /ws clients)', async (t) => {
  const p = pool(t);
  // Both nodes assume /ws clients elsewhere for 15 s after they start; past that they rely on presence.
  await until(async () => (await http(`${A.url}/health`)).body.uptimeSeconds >= 16, 25000, 'node A past its start-up window');
  // No /ws client anywhere now (the earlier tests closed theirs): A stops publishing on the bus.
  const { socket: s } = await p.sio(A, 'bp-sio');
  const room = uniq('bp-room');
  assert.equal((await request(s, 'join-room', room)).success, true);
  const w = await p.ws(B, 'bp-ws'); // B: first /ws client -> "present" on the bus
  assert.equal((await w.request('join-room', room)).data.success, true);
  assert.equal((await request(s, 'message', { roomId: room, content: 'via the bus' })).success, true);
  assert.equal((await w.next((f) => f.type === 'new-message')).data.content, 'via the bus');
});
