// The Socket.IO Admin UI's protocol (SPEC §12, @socket.io/admin-ui 0.5), spoken by socket.io-client as
// the UI does: login and refusal, sessions, config per mode, server_stats, all_sockets, live events, each
// action, read-only, production mode, a two-node cluster, and hostile payloads relayed to the UI.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import bcrypt from 'bcryptjs';
import { io as ioc } from 'socket.io-client';
import {
  startGateway, startRedis, connect, request, next, token, http, until, uniq, wsConnect,
} from '../lib/helpers.js';

const PASSWORD = 'admin-secret';
const ISO = /^\d{4}-\d{2}-\d{2}T/;

/** Connects to /admin; resolves {socket, session, config} or rejects with the connect_error. */
function admin(url, auth, ms = 10000) {
  return new Promise((resolve, reject) => {
    const socket = ioc(`${url}/admin`, { forceNew: true, reconnection: false, auth });
    const state = { socket, session: null, config: null, allSockets: null, stats: [], events: [] };
    socket.on('session', (id) => { state.session = id; });
    socket.on('all_sockets', (s) => { state.allSockets = s; });
    socket.on('server_stats', (s) => { state.stats.push(s); });
    for (const ev of ['socket_connected', 'socket_updated', 'socket_disconnected', 'room_joined', 'room_left', 'event_received']) {
      socket.on(ev, (...args) => state.events.push([ev, ...args]));
    }
    const timer = setTimeout(() => { socket.close(); reject(new Error('no config')); }, ms);
    socket.on('config', (c) => { state.config = c; clearTimeout(timer); resolve(state); });
    socket.on('connect_error', (e) => { clearTimeout(timer); socket.close(); reject(e); });
  });
}

const seen = (state, pred, what, ms = 5000) => until(() => state.events.find(pred), ms, what);

let gw;
before(async () => {
  gw = await startGateway({ ADMIN_UI_PASSWORD: PASSWORD, ADMIN_UI_MODE: 'development', NODE_ID: 'admin-node', RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' });
});
after(async () => { await gw?.stop(); });

test('admin: wrong credentials are refused with "invalid credentials"; a session id logs in again', async () => {
  for (const auth of [{ username: 'admin', password: 'nope' }, { username: 'root', password: PASSWORD }, {}, { sessionId: 'forged' }]) {
    const e = await admin(gw.url, auth).then(() => null, (err) => err);
    assert.ok(e, `refused: ${JSON.stringify(auth)}`);
    assert.equal(e.message, 'invalid credentials');
  }
  const a = await admin(gw.url, { username: 'admin', password: PASSWORD });
  await until(() => a.session, 3000, 'session');
  assert.match(a.session, /^[0-9a-f]{32}$/);
  a.socket.close();
  const b = await admin(gw.url, { sessionId: a.session });
  assert.equal(b.session, null, 'no new session for a session login');
  b.socket.close();
});

test('admin: config (development: every feature), all_sockets of both transports, server_stats every 2 s', async (t) => {
  const { socket: user } = await connect(gw.url, { auth: { token: token('adm-alice') } });
  const ws = await wsConnect(gw.url, { token: token('adm-bob') });
  t.after(() => { user.close(); ws.close(); });
  const a = await admin(gw.url, { username: 'admin', password: PASSWORD });
  t.after(() => a.socket.close());
  assert.deepEqual([...a.config.supportedFeatures].sort(),
    ['AGGREGATED_EVENTS', 'ALL_EVENTS', 'DISCONNECT', 'EMIT', 'JOIN', 'LEAVE', 'MDISCONNECT', 'MJOIN', 'MLEAVE']);
  await until(() => a.allSockets, 3000, 'all_sockets');
  const sio = a.allSockets.find((s) => s.id === user.id);
  assert.ok(sio, 'the Socket.IO client is listed');
  assert.equal(sio.nsp, '/');
  assert.equal(sio.transport, 'websocket');
  assert.ok(sio.rooms.includes('u:adm-alice'));
  assert.equal(sio.data.userId, 'adm-alice');
  assert.equal(typeof sio.handshake.address, 'string');
  assert.ok(!JSON.stringify(sio.handshake).includes(token('adm-alice').split('.')[2]), 'no token in the handshake shown');
  const wsEntry = a.allSockets.find((s) => s.id === ws.hello.connectionId);
  assert.ok(wsEntry, 'the /ws client is listed');
  assert.equal(wsEntry.nsp, '/ws');
  const stats = await until(() => a.stats.find((s) => s.serverId === 'admin-node'), 5000, 'server_stats');
  assert.equal(typeof stats.uptime, 'number');
  assert.equal(stats.pid > 0, true);
  const ns = Object.fromEntries(stats.namespaces.map((n) => [n.name, n.socketsCount]));
  assert.ok(ns['/'] >= 1 && ns['/ws'] >= 1 && ns['/admin'] >= 1, JSON.stringify(stats.namespaces));
  assert.ok(Array.isArray(stats.aggregatedEvents));
  // The figures match /api/stats's connection count (Socket.IO + /ws, not the admin sockets).
  const health = (await http(`${gw.url}/health`)).body;
  assert.equal(ns['/'] + ns['/ws'], health.connections);
  // Two stats 2 s apart, with the aggregated events of the connections above.
  await until(() => a.stats.filter((s) => s.serverId === 'admin-node').length >= 2, 5000, 'a second server_stats');
});

test('admin: live events (connect, join, event, disconnect) with hostile payloads summarised', async (t) => {
  const a = await admin(gw.url, { username: 'admin', password: PASSWORD });
  t.after(() => a.socket.close());
  const { socket: s } = await connect(gw.url, { auth: { token: token('adm-live') } });
  const [, conn, ts] = await seen(a, (e) => e[0] === 'socket_connected' && e[1].id === s.id, 'socket_connected');
  assert.equal(conn.nsp, '/');
  assert.match(ts, ISO);
  const room = uniq('adm-room');
  await request(s, 'join-room', room);
  await seen(a, (e) => e[0] === 'room_joined' && e[2] === `r:${room}` && e[3] === s.id, 'room_joined');
  // A deep and wide payload: summarised for the UI, the node unaffected.
  let deep = { x: 1 };
  for (let i = 0; i < 100; i++) deep = { d: deep };
  const wide = Array.from({ length: 5000 }, (_, i) => i);
  await request(s, 'message', { roomId: room, content: 'x', deep, wide, long: 'y'.repeat(100000) });
  const [, nsp, id, args] = await seen(a, (e) => e[0] === 'event_received' && e[2] === s.id && e[3][0] === 'message', 'event_received');
  assert.equal(nsp, '/');
  assert.equal(id, s.id);
  const shown = JSON.stringify(args);
  assert.ok(shown.length < 20000, `summarised: ${shown.length} bytes`);
  assert.match(shown, /more/);
  assert.equal((await http(`${gw.url}/health`)).body.status, 'ok');
  // The aggregated figures of the UI's charts: connections, packets and bytes, per second.
  const agg = (type) => a.stats.flatMap((x) => x.aggregatedEvents).filter((e) => e.type === type);
  // server_stats comes every 2 s: the message's bytes may arrive in a later one than the first figures.
  const bytesIn = () => agg('bytesIn').reduce((n, e) => n + e.count, 0);
  await until(() => ['rawConnection', 'packetsIn', 'bytesIn', 'packetsOut', 'bytesOut'].every((k) => agg(k).length) && bytesIn() > 100000, 8000, 'aggregated events');
  assert.ok(bytesIn() > 100000, 'the 100 KB message counted in bytesIn');
  assert.ok(agg('rawConnection').every((e) => e.timestamp % 1000 === 0), 'per second');
  const sid = s.id; // socket.io-client forgets it on close
  s.close();
  const [, dnsp, did, reason] = await seen(a, (e) => e[0] === 'socket_disconnected' && e[2] === sid, 'socket_disconnected');
  assert.equal(dnsp, '/');
  assert.equal(did, sid);
  assert.equal(typeof reason, 'string');
});

test('admin: actions: emit to a socket, a room and everyone; join; leave; _disconnect, on Socket.IO and /ws', async (t) => {
  const a = await admin(gw.url, { username: 'admin', password: PASSWORD });
  t.after(() => a.socket.close());
  const { socket: s } = await connect(gw.url, { auth: { token: token('adm-act') } });
  const ws = await wsConnect(gw.url, { token: token('adm-act-ws') });
  t.after(() => { s.close(); ws.close(); });
  const hello = next(s, 'hello');
  a.socket.emit('emit', '/', s.id, 'hello', { n: 1 });
  assert.deepEqual(await hello, { n: 1 });
  a.socket.emit('emit', '/ws', ws.hello.connectionId, 'hello', { n: 2 });
  assert.deepEqual((await ws.next('hello')).data, { n: 2 });
  const room = uniq('adm-joined');
  a.socket.emit('join', '/', room, s.id);
  await seen(a, (e) => e[0] === 'room_joined' && e[2] === room && e[3] === s.id, 'room_joined by the admin');
  const inRoom = next(s, 'to-room');
  a.socket.emit('emit', '/', room, 'to-room', 'r');
  assert.equal(await inRoom, 'r');
  a.socket.emit('leave', '/', room, s.id);
  await seen(a, (e) => e[0] === 'room_left' && e[2] === room && e[3] === s.id, 'room_left');
  // A chat room joined or left through the Admin UI is the client's as after join-room / leave-room
  // (one hub.join / hub.leave): it may post there after the join, and no longer after the leave.
  const chat = uniq('adm-chat');
  a.socket.emit('join', '/', `r:${chat}`, s.id);
  await seen(a, (e) => e[0] === 'room_joined' && e[2] === `r:${chat}` && e[3] === s.id, 'chat room joined by the admin');
  assert.equal((await request(s, 'message', { roomId: chat, content: 'in' })).success, true, 'posts after the join');
  a.socket.emit('leave', '/', `r:${chat}`, s.id);
  await seen(a, (e) => e[0] === 'room_left' && e[2] === `r:${chat}` && e[3] === s.id, 'chat room left');
  const out = await request(s, 'message', { roomId: chat, content: 'out' });
  assert.equal(out.code, 'NOT_IN_ROOM', `no post after the leave: ${JSON.stringify(out)}`);
  const all = next(s, 'everyone');
  a.socket.emit('emit', '/', undefined, 'everyone', 3);
  assert.equal(await all, 3);
  const gone = new Promise((resolve) => s.once('disconnect', resolve));
  a.socket.emit('_disconnect', '/', true, s.id);
  assert.ok(['io server disconnect', 'transport close'].includes(await gone));
  a.socket.emit('_disconnect', '/ws', true, ws.hello.connectionId);
  assert.equal((await ws.closed).code, 1000);
});

test('admin: read-only and production modes; a bcrypt hash as the password; no ADMIN_UI_PASSWORD, no /admin', async () => {
  const hash = bcrypt.hashSync('hashed-pw', 4);
  const ro = await startGateway({ ADMIN_UI_PASSWORD: hash, ADMIN_UI_USERNAME: 'ops', ADMIN_UI_READONLY: 'true', ADMIN_UI_MODE: 'development' });
  try {
    const a = await admin(ro.url, { username: 'ops', password: 'hashed-pw' });
    assert.deepEqual([...a.config.supportedFeatures].sort(), ['AGGREGATED_EVENTS', 'ALL_EVENTS']);
    const { socket: s } = await connect(ro.url, { auth: { token: token('ro-user') } });
    const got = [];
    s.on('nope', (x) => got.push(x));
    a.socket.emit('emit', '/', s.id, 'nope', 1);
    a.socket.emit('_disconnect', '/', true, s.id);
    // The same frames on a gateway that is not read-only (below) reach the user within `took` ms: wait
    // ten times that (at least 500 ms) here, so that the absence asserted means something.
    const ok = await startGateway({ ADMIN_UI_PASSWORD: hash, ADMIN_UI_USERNAME: 'ops', ADMIN_UI_MODE: 'development' });
    let took;
    try {
      const b = await admin(ok.url, { username: 'ops', password: 'hashed-pw' });
      const { socket: u } = await connect(ok.url, { auth: { token: token('rw-user') } });
      const t0 = Date.now();
      const heard = next(u, 'nope', 5000);
      b.socket.emit('emit', '/', u.id, 'nope', 1);
      assert.equal(await heard, 1, 'control: an admin emit reaches the user');
      const gone = next(u, 'disconnect', 5000);
      b.socket.emit('_disconnect', '/', true, u.id);
      assert.equal(await gone, 'io server disconnect', 'control: an admin disconnect disconnects');
      took = Date.now() - t0;
      b.socket.close();
    } finally { await ok.stop(); }
    await until(() => got.length > 0 || !s.connected, Math.max(500, 10 * took), 'nothing').catch(() => {});
    assert.deepEqual(got, [], 'read-only: no emit');
    assert.equal(s.connected, true, 'read-only: no disconnect');
    s.close(); a.socket.close();
  } finally { await ro.stop(); }
  const prod = await startGateway({ ADMIN_UI_PASSWORD: PASSWORD, ADMIN_UI_MODE: 'production' });
  try {
    const a = await admin(prod.url, { username: 'admin', password: PASSWORD });
    assert.ok(!a.config.supportedFeatures.includes('ALL_EVENTS'));
    assert.ok(a.config.supportedFeatures.includes('EMIT'));
    await until(() => a.stats.length > 0, 5000, 'server_stats in production');
    assert.equal(a.allSockets, null, 'no socket list in production');
    a.socket.close();
  } finally { await prod.stop(); }
  const off = await startGateway({});
  try {
    // No ADMIN_UI_PASSWORD: the namespace does not exist (not a wrong password, not a timeout).
    const e = await admin(off.url, { username: 'admin', password: PASSWORD }).then(() => null, (err) => err);
    assert.ok(e, 'no /admin namespace');
    assert.equal(e.message, 'Invalid namespace');
  } finally { await off.stop(); }
});

test('admin cluster: one login sees both nodes (server rows, sockets) and acts on sockets of the other node', async () => {
  const redis = await startRedis({ persist: false });
  const env = { REDIS_URL: redis.url, ADMIN_UI_PASSWORD: PASSWORD, ADMIN_UI_MODE: 'development' };
  const A = await startGateway({ ...env, NODE_ID: 'adm-a' });
  const B = await startGateway({ ...env, NODE_ID: 'adm-b' });
  try {
    for (const g of [A, B]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
    // The heartbeat counts the other node before the socket list is asked for.
    await new Promise((r) => setTimeout(r, 1500));
    const { socket: onB } = await connect(B.url, { auth: { token: token('adm-on-b') } });
    const wsB = await wsConnect(B.url, { token: token('adm-ws-b') });
    const a = await admin(A.url, { username: 'admin', password: PASSWORD });
    await until(() => a.allSockets, 5000, 'all_sockets');
    assert.ok(a.allSockets.some((s) => s.id === onB.id), 'a Socket.IO client of node B is listed on A');
    assert.ok(a.allSockets.some((s) => s.id === wsB.hello.connectionId), 'a /ws client of node B is listed on A');
    await until(() => ['adm-a', 'adm-b'].every((id) => a.stats.some((s) => s.serverId === id)), 6000, 'both server rows');
    // The session works on the other node.
    await until(() => a.session, 3000, 'session');
    const b = await admin(B.url, { sessionId: a.session });
    b.socket.close();
    // Actions reach sockets on the other node.
    const hello = next(onB, 'from-admin');
    a.socket.emit('emit', '/', onB.id, 'from-admin', 'hi');
    assert.equal(await hello, 'hi');
    const gone = new Promise((resolve) => onB.once('disconnect', resolve));
    a.socket.emit('_disconnect', '/', true, onB.id);
    await gone;
    a.socket.emit('_disconnect', '/ws', true, wsB.hello.connectionId);
    assert.equal((await wsB.closed).code, 1000);
    // Node B dies: once the reaper on A sees it, its clients leave the UI.
    const last = (await connect(B.url, { auth: { token: token('adm-last-b') } })).socket;
    const lastId = last.id;
    await seen(a, (e) => e[0] === 'socket_connected' && e[1].id === lastId, 'socket_connected from B');
    await B.stop('SIGKILL');
    await seen(a, (e) => e[0] === 'socket_disconnected' && e[2] === lastId && e[1] === '/', 'the dead node\'s socket dropped', 30000);
    last.close();
    a.socket.close();
  } finally {
    await A.stop(); await B.stop(); await redis.stop();
  }
});
