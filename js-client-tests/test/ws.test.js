// The plain WebSocket endpoint `/ws` (SPEC §10) on one node: token sources, anonymous and in-band
// authentication, close codes (4001, 4002, 4003, 1001, 1008, 1009), channel frames, the generic envelope,
// bad input, limits, counts, a protocol fuzz; and /ws and Socket.IO clients as peers (rooms, private
// messages, calls, REST targets). Real gateway processes, real clients (`ws`, socket.io-client).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, connect, refused, request, next, nextWhere, token, http, until, uniq, clients, collect,
  wsConnect, wsClients, pause,
} from '../lib/helpers.js';

const API_KEY = 'ws-api-key';
const KEY = { 'x-api-key': API_KEY };
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const CODES = new Set(['UNAUTHENTICATED', 'FORBIDDEN', 'INVALID_PAYLOAD', 'NOT_IN_ROOM', 'NOT_FOUND', 'RATE_LIMITED',
  'PAYLOAD_TOO_LARGE', 'USER_OFFLINE', 'INTERNAL']);
const USER_CHANNELS = (id) => ['announcements', 'apps:*', 'database:*', 'deployments:*', 'storage:*', 'user:' + id, 'users:*'];

let gw;
before(async () => {
  gw = await startGateway({
    API_KEY, RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000', CONNECT_RATE_PER_IP: '0',
    PRESENCE_GRACE_MS: '300', AUTH_EXPIRY_GRACE_MS: '800', CALL_RING_TIMEOUT_MS: '15000',
  });
});
after(async () => { await gw?.stop(); });

const post = (g, route, body, headers = KEY) => http(`${g.url}${route}`, { method: 'POST', headers, body });
const sub = (c, channel) => c.request('subscribe', undefined, { channel });
/** Races `closed` against `ms`: the close info, or null when still open. */
const closedWithin = (c, ms) => Promise.race([c.closed, pause(ms).then(() => null)]);

test('/ws token sources: query, Bearer header, subprotocol token-<jwt> (echoed); claims; the first source wins', async (t) => {
  const ws = wsClients(t, gw);
  const q = ws.track(await wsConnect(gw.url, { token: token('ws-q', { claims: { email: 'q@example.com', name: 'Q' } }) }));
  const h = q.hello;
  assert.equal(h.type, 'connected');
  assert.equal(typeof h.connectionId, 'string');
  assert.ok(h.connectionId.length > 0);
  assert.equal(h.userId, 'ws-q');
  assert.deepEqual(h.user, { userId: 'ws-q', email: 'q@example.com', name: 'Q', role: 'user' });
  assert.deepEqual([...h.authorizedChannels].sort(), USER_CHANNELS('ws-q'));
  assert.match(h.timestamp, ISO);

  const hd = ws.track(await wsConnect(gw.url, { header: token('ws-h') }));
  assert.equal(hd.hello.userId, 'ws-h');
  assert.equal(hd.hello.user.role, 'user');

  const pj = token('ws-p');
  const p = ws.track(await wsConnect(gw.url, { protocol: pj }));
  assert.equal(p.ws.protocol, `token-${pj}`, 'the server answers with the token subprotocol');
  assert.equal(p.hello.userId, 'ws-p');

  // The `userId` claim works like `sub`; an admin sees user:* and system:*.
  const uc = ws.track(await wsConnect(gw.url, { token: token(undefined, { claims: { userId: 'ws-claim' } }) }));
  assert.equal(uc.hello.userId, 'ws-claim');
  const adm = ws.track(await wsConnect(gw.url, { header: token('ws-root', { role: 'admin' }) }));
  assert.equal(adm.hello.user.role, 'admin');
  for (const ch of ['user:*', 'system:*', 'announcements']) assert.ok(adm.hello.authorizedChannels.includes(ch), ch);

  // First found wins: query before header.
  const qh = ws.track(await wsConnect(gw.url, { token: token('ws-first'), header: token('ws-second') }));
  assert.equal(qh.hello.userId, 'ws-first');

  const ids = [q, hd, p, uc, adm, qh].map((c) => c.hello.connectionId);
  assert.equal(new Set(ids).size, ids.length, 'connectionIds are unique');
});

test('/ws a token subprotocol offered next to a query or header token is still answered (browsers fail the handshake otherwise)', async (t) => {
  const ws = wsClients(t, gw);
  const pj = token('ws-third');
  // The header wins over the subprotocol, but the offered subprotocol must be selected in the 101 answer.
  const hp = ws.track(await wsConnect(gw.url, { header: token('ws-second'), protocol: pj }));
  assert.equal(hp.hello.userId, 'ws-second');
  assert.equal(hp.ws.protocol, `token-${pj}`);
  const qp = ws.track(await wsConnect(gw.url, { token: token('ws-first'), protocol: pj }));
  assert.equal(qp.hello.userId, 'ws-first');
  assert.equal(qp.ws.protocol, `token-${pj}`);
});

test('/ws anonymous: user null, announcements only; rooms answer UNAUTHENTICATED; the connection stays', async (t) => {
  const ws = wsClients(t, gw);
  const a = await ws(null);
  assert.equal(a.hello.userId, null);
  assert.equal(a.hello.user, null);
  assert.deepEqual(a.hello.authorizedChannels, ['announcements']);
  const ok = await sub(a, 'announcements');
  assert.equal(ok.type, 'subscribed');
  assert.equal(ok.channel, 'announcements');
  const no = await sub(a, 'apps:created');
  assert.equal(no.type, 'error');
  assert.equal(no.code, 'FORBIDDEN');
  assert.equal(no.message, 'Not authorized to subscribe to this channel');
  assert.equal(no.channel, 'apps:created');
  const join = await a.request('join-room', { roomId: 'anon-room' });
  assert.equal(join.type, 'ack');
  assert.equal(join.data.success, false);
  assert.equal(join.data.code, 'UNAUTHENTICATED');
  a.send({ type: 'private-message', data: { targetUserId: 'someone', content: 'x' } });
  const err = await a.next('error');
  assert.equal(err.event, 'private-message');
  assert.equal(err.code, 'UNAUTHENTICATED');
  assert.equal(err.message, 'Authentication required');
  assert.equal((await a.request('ping')).type, 'pong');
});

test('/ws ALLOW_ANONYMOUS=false: nothing before in-band auth; {type:"auth"} and {event:"authenticate"} connect; 4001 on timeout', async () => {
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false', WS_AUTH_TIMEOUT_MS: '700' });
  const all = [];
  try {
    const c1 = await wsConnect(g.url, { hello: false }); all.push(c1);
    const silent = await wsConnect(g.url, { hello: false }); all.push(silent);
    const silentStart = Date.now();
    c1.send({ type: 'subscribe', channel: 'announcements' });
    const e = await c1.next('error');
    assert.equal(e.message, 'Authentication required');
    assert.equal(e.code, 'UNAUTHENTICATED');
    assert.match(e.timestamp, ISO);
    assert.ok(!c1.frames.some((f) => f.type === 'connected' || f.type === 'subscribed'), 'nothing before auth');
    c1.send({ type: 'auth', token: token('inband-a') });
    const h1 = await c1.next('connected');
    assert.equal(h1.userId, 'inband-a');
    assert.equal(typeof h1.connectionId, 'string');
    assert.deepEqual([...h1.authorizedChannels].sort(), USER_CHANNELS('inband-a'));

    const c2 = await wsConnect(g.url, { hello: false }); all.push(c2);
    // Seed 004's frame: answered in its dialect, {event:"connected", data:{id, userId, time}} (seed-004.test.js).
    c2.send({ event: 'authenticate', data: { token: token('inband-b') } });
    const h2 = await c2.next((f) => f.event === 'connected');
    assert.equal(h2.data.userId, 'inband-b');
    assert.equal(typeof h2.data.id, 'string');

    // The token may also be payload.token or data.token of an `auth` frame.
    const c3 = await wsConnect(g.url, { hello: false }); all.push(c3);
    c3.send({ type: 'auth', payload: { token: token('inband-c') } });
    assert.equal((await c3.next('connected')).userId, 'inband-c');
    const c4 = await wsConnect(g.url, { hello: false }); all.push(c4);
    c4.send({ type: 'auth', data: { token: token('inband-d') } });
    assert.equal((await c4.next('connected')).userId, 'inband-d');

    // A token at the upgrade needs no in-band step.
    const c5 = await wsConnect(g.url, { token: token('inband-e') }); all.push(c5);
    assert.equal(c5.hello.userId, 'inband-e');

    const cl = await closedWithin(silent, 6000);
    assert.ok(cl, 'the silent connection was closed');
    assert.equal(cl.code, 4001);
    assert.match(cl.reason, /timeout/i);
    const took = cl.at - silentStart;
    assert.ok(took >= 500 && took < 5000, `closed after ${took} ms (WS_AUTH_TIMEOUT_MS=700)`);
    assert.ok(!silent.frames.some((f) => f.type === 'connected'));

    // The authenticated ones outlive the auth timeout (a bounded window: nothing may close them).
    await pause(900);
    for (const c of [c1, c3, c4, c5]) {
      assert.ok(c.isOpen(), 'still open past the auth timeout');
      assert.equal((await c.request('ping')).type, 'pong');
    }
    assert.ok(c2.isOpen(), 'the seed 004 client too');
    const sd = await sub(c1, 'user:inband-a');
    assert.equal(sd.type, 'subscribed');
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }
});

test('/ws bad token at the upgrade: HTTP 401 {error:"Authentication failed: <reason>"}; in-band: error frame, UNAUTHENTICATED, then close 4003', async (t) => {
  const ws = wsClients(t, gw);
  const cases = [
    ['query, expired', { token: token('bad-1', { ttl: -120 }) }],
    ['header, wrong secret', { header: token('bad-2', { secret: 'another-secret' }) }],
    ['query, garbage', { token: 'garbage' }],
    ['subprotocol, wrong secret', { protocol: token('bad-3', { secret: 'another-secret' }) }],
  ];
  for (const [name, opts] of cases) {
    // Refused at the upgrade (seed-000.test.js reads the body): the client never opens.
    const err = await wsConnect(gw.url, { ...opts, hello: false }).then(() => null, (e) => e);
    assert.match(String(err?.message), /401/, `${name}: refused with 401`);
  }
  // In-band, from an anonymous connection and from a user's connection.
  for (const [who, bad, message] of [[null, token('bad-4', { ttl: -120 }), 'Authentication failed: token expired'],
    ['bad-5', 'not.a.jwt', 'Authentication failed: malformed token']]) {
    const c = await ws(who);
    c.send({ type: 'auth', token: bad });
    const e = await c.next('error');
    assert.equal(e.message, message);
    assert.equal(e.code, 'UNAUTHENTICATED');
    assert.equal((await closedWithin(c, 5000))?.code, 4003);
  }
  // ALLOW_ANONYMOUS=false: a bad in-band token too.
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false' });
  try {
    const c = await wsConnect(g.url, { hello: false });
    c.send({ event: 'authenticate', data: { token: token('bad-6', { secret: 'nope' }) } });
    assert.equal((await c.next((f) => f.event === 'error')).data.message, 'Authentication failed: invalid signature');
    assert.equal((await closedWithin(c, 5000))?.code, 4003);
  } finally { await g.stop(); }
});

test('/ws re-authentication: anonymous becomes the user; the same user refreshes; another user is FORBIDDEN', async (t) => {
  const ws = wsClients(t, gw);
  const c = await ws(null);
  const id = c.hello.connectionId;
  assert.equal((await sub(c, 'user:reauth-a')).code, 'FORBIDDEN');
  c.send({ type: 'auth', token: token('reauth-a'), requestId: 7 });
  const h = await c.next('connected');
  assert.equal(h.userId, 'reauth-a');
  assert.equal(h.requestId, 7);
  assert.equal(h.connectionId, id, 'the same connection');
  assert.equal((await sub(c, 'user:reauth-a')).type, 'subscribed');
  c.send({ event: 'authenticate', data: { token: token('reauth-a', { ttl: 7200 }) } });
  assert.equal((await c.next('connected')).userId, 'reauth-a');
  c.send({ type: 'auth', token: token('reauth-b') });
  const e = await c.next('error');
  assert.equal(e.code, 'FORBIDDEN');
  assert.ok(c.isOpen());
  const ch = await c.request('list_channels');
  assert.equal(ch.type, 'channels');
  assert.ok(ch.channels.includes('user:reauth-a') && !ch.channels.includes('user:reauth-b'), JSON.stringify(ch.channels));
  assert.deepEqual(ch.subscribed, ['user:reauth-a']);
  assert.equal(e.message, 'Cannot switch user', 'the message of ws-decisions.md and docs/protocol.md');
});

test('/ws token expiry: auth-expired, then 4003 after the grace; re-authenticating in time keeps the connection', async (t) => {
  const ws = wsClients(t, gw);
  const a = await ws('exp-a', { claims: { exp: Math.floor(Date.now() / 1000) + 2 } });
  const b = await ws('exp-b', { claims: { exp: Math.floor(Date.now() / 1000) + 2 } });
  const ea = await a.next('auth-expired', 8000);
  const eaAt = Date.now();
  assert.equal(ea.data.message, 'Token expired');
  assert.equal(ea.data.graceMs, 800);
  assert.equal(typeof ea.data.exp, 'number');
  assert.match(ea.timestamp, ISO);
  await b.next('auth-expired', 8000);
  b.send({ type: 'auth', token: token('exp-b') });
  assert.equal((await b.next('connected')).userId, 'exp-b');
  const ca = await closedWithin(a, 6000);
  assert.equal(ca?.code, 4003);
  assert.ok(ca.at - eaAt >= 500, `closed ${ca.at - eaAt} ms after auth-expired (grace 800)`);
  assert.equal(await closedWithin(b, 2000), null, 'the re-authenticated connection stays');
  assert.equal((await b.request('ping')).type, 'pong');
});

test('/ws channels: subscribed (requestId echoed), refusals name the channel, unsubscribe, list_channels, deliveries', async (t) => {
  const ws = wsClients(t, gw);
  const c = await ws('chan-user');
  const s1 = await c.request('subscribe', undefined, { channel: 'apps:created', requestId: 's1' });
  assert.equal(s1.type, 'subscribed');
  assert.equal(s1.channel, 'apps:created');
  assert.equal(s1.requestId, 's1');
  assert.match(s1.timestamp, ISO);
  c.send({ type: 'subscribe', channel: 'users:updated' });
  const s2 = await c.next('subscribed');
  assert.equal(s2.channel, 'users:updated');
  assert.equal((await sub(c, 'user:chan-user')).type, 'subscribed');
  for (const ch of ['system:alerts', 'user:someone-else', 'nomatch:x', 'apps:']) {
    const e = await sub(c, ch);
    assert.equal(e.type, 'error', ch);
    assert.equal(e.code, 'FORBIDDEN', ch);
    assert.equal(e.message, 'Not authorized to subscribe to this channel', ch);
    assert.equal(e.channel, ch);
    assert.match(e.timestamp, ISO);
  }
  const bad = await sub(c, 'bad name!');
  assert.equal(bad.type, 'error');
  assert.equal(bad.code, 'INVALID_PAYLOAD');
  assert.equal(bad.channel, 'bad name!');
  const list = await c.request('list_channels');
  assert.equal(list.type, 'channels');
  assert.deepEqual([...list.channels].sort(), [...c.hello.authorizedChannels].sort());
  assert.deepEqual([...list.subscribed].sort(), ['apps:created', 'user:chan-user', 'users:updated']);
  assert.match(list.timestamp, ISO);

  let r = await post(gw, '/api/publish', { channel: 'apps:created', data: { id: 1 } });
  assert.equal(r.status, 200);
  const ev = await c.next('event');
  assert.equal(ev.channel, 'apps:created');
  assert.deepEqual(ev.data, { id: 1 });
  assert.match(ev.timestamp, ISO);

  const u = await c.request('unsubscribe', undefined, { channel: 'users:updated' });
  assert.equal(u.type, 'unsubscribed');
  assert.equal(u.channel, 'users:updated');
  r = await post(gw, '/api/publish', { channel: 'users:updated', data: 'dropped' });
  assert.equal(r.status, 200);
  await post(gw, '/api/publish', { channel: 'user:chan-user', data: 'fence' });
  assert.equal((await c.next('event')).data, 'fence');
  assert.deepEqual(c.frames.filter((f) => f.type === 'event').map((f) => f.data), [{ id: 1 }, 'fence']);
  const after2 = await c.request('list_channels');
  assert.deepEqual([...after2.subscribed].sort(), ['apps:created', 'user:chan-user']);
});

test('/ws ping/pong echoes requestIds (string and number); stats: admins get the data, users FORBIDDEN', async (t) => {
  const ws = wsClients(t, gw);
  const u = await ws('stats-user');
  u.send({ type: 'ping' });
  const p0 = await u.next('pong');
  assert.match(p0.timestamp, ISO);
  assert.ok(!('requestId' in p0) || p0.requestId === undefined);
  assert.equal((await u.request('ping', undefined, { requestId: 'p-1' })).requestId, 'p-1');
  const pn = await u.request('ping', undefined, { requestId: 42 });
  assert.equal(pn.type, 'pong');
  assert.equal(pn.requestId, 42);
  const denied = await u.request('stats');
  assert.equal(denied.type, 'error');
  assert.equal(denied.code, 'FORBIDDEN');
  assert.equal(typeof denied.message, 'string');
  const anon = await ws(null);
  assert.equal((await anon.request('stats')).code, 'UNAUTHENTICATED');

  const adm = await ws('stats-root', { role: 'admin' });
  assert.equal((await sub(adm, 'system:ws-stats')).type, 'subscribed');
  const s = await adm.request('stats', undefined, { requestId: 'st' });
  assert.equal(s.type, 'stats');
  assert.equal(s.requestId, 'st');
  assert.match(s.timestamp, ISO);
  for (const k of ['totalConnections', 'authenticatedConnections', 'anonymousConnections', 'totalSubscriptions', 'rooms', 'onlineUsers']) {
    assert.equal(typeof s.data[k], 'number', k);
  }
  assert.ok(s.data.totalConnections >= 3, 'the three /ws connections count');
  assert.ok(s.data.anonymousConnections >= 1);
  assert.equal(s.data.connectionsByChannel['system:ws-stats'], 1);
});

test('/ws generic envelope: join-room ack, user-joined, new-message to all, payload alias, errors with and without requestId', async (t) => {
  const ws = wsClients(t, gw);
  const room = uniq('env-room');
  const alice = await ws('env-alice');
  const bob = await ws('env-bob');
  const j1 = await alice.request('join-room', { roomId: room });
  assert.equal(j1.type, 'ack');
  assert.match(j1.timestamp, ISO);
  assert.equal(j1.data.success, true);
  assert.deepEqual(j1.data.room, { id: room, name: room, type: 'public' });
  assert.deepEqual(j1.data.members.map((m) => m.userId), ['env-alice']);
  assert.deepEqual(j1.data.recentMessages, []);
  // `payload` for `data`, and the string form of the argument.
  bob.send({ type: 'join-room', payload: room, requestId: 'bj' });
  const j2 = await bob.next((f) => f.requestId === 'bj');
  assert.equal(j2.type, 'ack');
  assert.equal(j2.data.success, true);
  assert.deepEqual(j2.data.members.map((m) => m.userId).sort(), ['env-alice', 'env-bob']);
  const joined = await alice.next('user-joined');
  assert.deepEqual(joined.data, { userId: 'env-bob', user: bob.hello.user, roomId: room });
  assert.match(joined.timestamp, ISO);

  const m1 = await bob.request('message', { roomId: room, content: 'hello from bob', clientMessageId: 'cm-1' });
  assert.equal(m1.data.success, true);
  assert.equal(typeof m1.data.messageId, 'string');
  assert.equal(typeof m1.data.timestamp, 'number');
  for (const c of [alice, bob]) {
    const nm = await c.next((f) => f.type === 'new-message' && f.data.id === m1.data.messageId);
    assert.deepEqual(nm.data, { id: m1.data.messageId, roomId: room, userId: 'env-bob', user: bob.hello.user,
      content: 'hello from bob', type: 'text', replyTo: null, timestamp: m1.data.timestamp, edited: false, deleted: false });
  }
  // Same clientMessageId again: the first messageId, no second broadcast.
  const dup = await bob.request('message', { roomId: room, content: 'hello from bob', clientMessageId: 'cm-1' });
  assert.equal(dup.data.messageId, m1.data.messageId);
  await bob.request('ping');

  // Without requestId a success answers nothing; the message still goes out.
  alice.send({ type: 'message', payload: { roomId: room, content: 'no request id' } });
  const nm2 = await bob.next((f) => f.type === 'new-message' && f.data.content === 'no request id');
  await alice.next((f) => f.type === 'new-message' && f.data.id === nm2.data.id);
  await alice.request('ping');
  assert.deepEqual(alice.frames.filter((f) => f.type === 'ack' && f.requestId === undefined), []);
  assert.deepEqual(alice.frames.filter((f) => f.type === 'error'), []);
  assert.equal(bob.frames.filter((f) => f.type === 'new-message' && f.data.id === m1.data.messageId).length, 1);

  // Failure without requestId: an error frame naming the event; with one: an ack with the failure.
  alice.send({ type: 'message', data: { roomId: 'not-joined-room', content: 'x' } });
  const e = await alice.next('error');
  assert.deepEqual({ ...e, timestamp: undefined }, { type: 'error', event: 'message', message: 'Not in room', code: 'NOT_IN_ROOM', timestamp: undefined });
  assert.match(e.timestamp, ISO);
  const fa = await alice.request('message', { roomId: 'not-joined-room', content: 'x' });
  assert.equal(fa.type, 'ack');
  assert.deepEqual(fa.data, { success: false, error: 'Not in room', code: 'NOT_IN_ROOM' });

  // Edit and delete reach the room; leave-room tells the others.
  const ed = await bob.request('edit-message', { roomId: room, messageId: m1.data.messageId, content: 'edited' });
  assert.deepEqual(ed.data, { success: true });
  const upd = await alice.next('message-updated');
  assert.equal(upd.data.content, 'edited');
  assert.equal(upd.data.edited, true);
  assert.equal((await alice.request('delete-message', { roomId: room, messageId: m1.data.messageId })).data.code, 'FORBIDDEN');
  assert.equal((await bob.request('delete-message', { roomId: room, messageId: m1.data.messageId })).data.success, true);
  assert.deepEqual((await alice.next('message-deleted')).data, { roomId: room, messageId: m1.data.messageId });
  const left = await bob.request('leave-room', room);
  assert.deepEqual(left.data, { success: true });
  assert.deepEqual((await alice.next('user-left')).data, { userId: 'env-bob', roomId: room });
  const hist = await alice.request('load-messages', { roomId: room });
  assert.equal(hist.data.success, true);
  assert.deepEqual(hist.data.messages.map((m) => [m.content, m.deleted]), [['', true], ['no request id', false]]);
});

test('/ws bad input: not JSON, no type, binary, unknown type; the connection stays open', async (t) => {
  const ws = wsClients(t, gw);
  const c = await ws('bad-input');
  const messages = []; // [got, expected]: checked last, so that the behaviour is checked first
  for (const raw of ['not json{', '{"type":"subscribe","channel":', '']) {
    c.sendRaw(raw);
    const e = await c.next('error');
    assert.equal(e.code, 'INVALID_PAYLOAD', JSON.stringify(raw));
    messages.push([e.message, 'Invalid JSON']);
    assert.match(e.timestamp, ISO);
  }
  c.sendRaw('{"data":{"roomId":"r"}}');
  const nt = await c.next('error');
  assert.equal(nt.code, 'INVALID_PAYLOAD');
  messages.push([nt.message, 'Missing type']);
  c.send({ type: null, requestId: 'typeless' });
  const tl = await c.next((f) => f.requestId === 'typeless');
  assert.equal(tl.code, 'INVALID_PAYLOAD');
  for (const raw of ['[1,2]', '42', 'null', '"ping"', 'true']) {
    c.sendRaw(raw);
    const e = await c.next('error');
    assert.equal(e.code, 'INVALID_PAYLOAD', raw);
    assert.equal(typeof e.message, 'string');
  }
  c.sendRaw(Buffer.from([0x7b, 0x00, 0xff, 0x01]));
  assert.equal((await c.next('error')).code, 'INVALID_PAYLOAD');
  c.send({ type: 'no-such-event', data: 1 });
  const u = await c.next('error');
  assert.equal(u.message, 'Unknown event');
  assert.equal(u.code, 'NOT_FOUND');
  assert.equal(u.event, 'no-such-event');
  const ur = await c.request('no-such-event', { x: 1 }, { requestId: 'unk' });
  const code = ur.type === 'ack' ? ur.data.code : ur.code;
  assert.equal(code, 'NOT_FOUND', JSON.stringify(ur));
  assert.ok(c.isOpen());
  assert.equal((await c.request('ping')).type, 'pong');
  assert.equal((await sub(c, 'apps:still-here')).type, 'subscribed');
  // The exact messages of ws-decisions.md and the Errors table of docs/protocol.md.
  assert.deepEqual(messages.map(([got]) => got), messages.map(([, want]) => want));
});

test('/ws a frame over MAX_PAYLOAD_BYTES closes that connection with 1009; others unaffected', async () => {
  const g = await startGateway({ MAX_PAYLOAD_BYTES: '2000' });
  const all = [];
  try {
    const big = await wsConnect(g.url, { token: token('big') }); all.push(big);
    const other = await wsConnect(g.url, { token: token('other') }); all.push(other);
    const sio = (await connect(g.url, { auth: { token: token('sio-other') } })).socket;
    all.push({ terminate: () => sio.close() });
    assert.equal((await big.request('ping', undefined, { pad: 'x'.repeat(1500) })).type, 'pong', 'under the limit is fine');
    big.send({ type: 'ping', pad: 'x'.repeat(5000) });
    const cl = await closedWithin(big, 5000);
    assert.equal(cl?.code, 1009);
    assert.equal((await other.request('ping')).type, 'pong');
    assert.equal((await request(sio, 'list_channels')).success, true);
    assert.equal((await http(`${g.url}/health`)).body.status, 'ok');
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }
});

test('/ws rate limit: RATE_LIMITED answers past the burst, sustained abuse closes with 1008; another connection unaffected', async () => {
  const g = await startGateway({ RATE_LIMIT_PER_SEC: '5', RATE_LIMIT_BURST: '5' });
  const all = [];
  try {
    const flooder = await wsConnect(g.url, { token: token('flooder') }); all.push(flooder);
    const calm = await wsConnect(g.url, { token: token('calm') }); all.push(calm);
    // 8 pings at once: the burst (5) is served, the rest answered RATE_LIMITED (the refused events have a
    // budget of their own before the connection counts as a flood).
    const ids = Array.from({ length: 8 }, (_, i) => `f${i}`);
    for (const id of ids) flooder.send({ type: 'ping', requestId: id });
    await until(() => ids.every((id) => flooder.answers(id).length >= 1), 10000, 'an answer to each ping');
    const first = ids.map((id) => flooder.answers(id));
    for (const a of first) assert.equal(a.length, 1);
    const pongs = first.filter(([f]) => f.type === 'pong').length;
    const isLimited = (f) => (f.type === 'error' ? f.code : f.data?.code) === 'RATE_LIMITED';
    const limited = first.filter(([f]) => isLimited(f)).map(([f]) => f);
    assert.ok(pongs >= 5, `the burst is served (${pongs})`);
    assert.ok(limited.length >= 1, `limited ${limited.length}`);
    assert.equal(pongs + limited.length, ids.length);
    assert.ok(flooder.isOpen(), 'a short excess is answered, not disconnected');
    const started = Date.now();
    let sent = 0;
    for (let i = 0; i < 500 && flooder.isOpen(); i++) {
      for (let j = 0; j < 20 && flooder.isOpen(); j++) { flooder.send({ type: 'ping' }); sent++; }
      await pause(20);
    }
    const cl = await closedWithin(flooder, 5000);
    assert.equal(cl?.code, 1008, 'sustained abuse is closed with 1008');
    console.log(`# figures: /ws burst served ${pongs}/${ids.length}, flood of ${sent} frames closed after ${cl.at - started} ms`);
    assert.ok(calm.isOpen());
    assert.equal((await calm.request('ping')).type, 'pong');
    // A flood in one go (15 frames in one write burst): each time a 1008 close frame reaches the client (not
    // a dropped TCP connection, 1006), after the answers the server had already produced.
    const codes = [];
    for (let k = 0; k < 5; k++) {
      const f = await wsConnect(g.url, { token: token(`burst-${k}`) }); all.push(f);
      for (let i = 0; i < 15; i++) f.send({ type: 'ping', requestId: `b${i}` });
      const c = await closedWithin(f, 5000);
      codes.push([c?.code ?? 'open', f.frames.filter((x) => x.requestId !== undefined).length]);
    }
    console.log(`# figures: /ws one-go floods closed with [code, answers]: ${JSON.stringify(codes)}`);
    assert.deepEqual(codes.map(([c]) => c), [1008, 1008, 1008, 1008, 1008]);
    // A refused `ping` is a channel frame: its failure is an error frame (docs/protocol.md, Errors), not an ack.
    assert.deepEqual(limited.map((f) => [f.type, f.message, f.code]), limited.map(() => ['error', 'Too many events', 'RATE_LIMITED']));
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }
});

test('/ws liveness: pings from the server; no pong and no frame for WS_IDLE_TIMEOUT_MS closes with 4002', async () => {
  // Server pings every 200 ms: a client that pongs (ws does by itself) stays although it sends no frame.
  const g = await startGateway({ PING_INTERVAL_MS: '200', WS_IDLE_TIMEOUT_MS: '1000' });
  const all = [];
  try {
    const quiet = await wsConnect(g.url, { token: token('idle-quiet') }); all.push(quiet);
    const mute = await wsConnect(g.url, { token: token('idle-mute'), options: { autoPong: false } }); all.push(mute);
    const chatty = await wsConnect(g.url, { token: token('idle-chatty'), options: { autoPong: false } }); all.push(chatty);
    const started = Date.now();
    let stop = false;
    const loop = (async () => { for (let i = 0; i < 40 && !stop && chatty.isOpen(); i++) { chatty.send({ type: 'ping' }); await pause(250); } })();
    const cl = await closedWithin(mute, 6000);
    assert.equal(cl?.code, 4002, 'the connection that answers no ping is closed 4002');
    assert.ok(cl.at - started >= 700, `closed after ${cl.at - started} ms (idle 1000)`);
    assert.ok(mute.pings >= 1, 'the server sent WebSocket pings');
    // Past the idle timeout twice over, the ponging and the talking ones are still there.
    await pause(Math.max(0, 2500 - (Date.now() - started)));
    stop = true;
    await loop;
    assert.ok(quiet.isOpen(), 'pongs count as life');
    assert.ok(quiet.pings >= 3, `pings received ${quiet.pings}`);
    assert.ok(chatty.isOpen(), 'frames count as life');
    assert.equal((await quiet.request('ping')).type, 'pong');
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }

  // No server pings in sight (PING_INTERVAL_MS large): a silent client is closed 4002, a talking one stays.
  const g2 = await startGateway({ PING_INTERVAL_MS: '60000', WS_IDLE_TIMEOUT_MS: '800' });
  const all2 = [];
  try {
    const silent = await wsConnect(g2.url, { token: token('idle-silent'), options: { autoPong: false } }); all2.push(silent);
    const talker = await wsConnect(g2.url, { token: token('idle-talker') }); all2.push(talker);
    const started = Date.now();
    let stop = false;
    const loop = (async () => { for (let i = 0; i < 40 && !stop && talker.isOpen(); i++) { talker.send({ type: 'list_channels' }); await pause(200); } })();
    const cl = await closedWithin(silent, 5000);
    assert.equal(cl?.code, 4002);
    assert.ok(cl.at - started >= 600, `closed after ${cl.at - started} ms (idle 800)`);
    await pause(Math.max(0, 2000 - (Date.now() - started)));
    stop = true;
    await loop;
    assert.ok(talker.isOpen(), 'a connection that sends frames stays');
  } finally { all2.forEach((c) => c.terminate()); await g2.stop(); }
});

test('/ws SIGTERM: a server-shutdown frame, then close 1001; the process exits 0', async () => {
  const g = await startGateway();
  const a = await wsConnect(g.url, { token: token('bye-a') });
  const b = await wsConnect(g.url);
  const code = await g.stop('SIGTERM');
  for (const c of [a, b]) {
    const cl = await closedWithin(c, 10000);
    assert.equal(cl?.code, 1001);
    const sd = c.frames.find((f) => f.type === 'server-shutdown');
    assert.ok(sd, 'server-shutdown frame before the close');
    assert.match(sd.timestamp, ISO);
    assert.equal(sd.data?.reason, 'shutdown');
  }
  assert.equal(code, 0);
});

test('/ws connections count in /health and stats (anonymous and authenticated, with Socket.IO)', async () => {
  const g = await startGateway({ API_KEY });
  const all = [];
  try {
    const health = async () => (await http(`${g.url}/health`)).body;
    assert.equal((await health()).connections, 0);
    const anon = await wsConnect(g.url); all.push(anon);
    const user = await wsConnect(g.url, { token: token('count-user') }); all.push(user);
    const adm = await wsConnect(g.url, { header: token('count-root', { role: 'admin' }) }); all.push(adm);
    const sio = (await connect(g.url, { auth: { token: token('count-sio') } })).socket;
    all.push({ terminate: () => sio.close() });
    await until(async () => (await health()).connections === 4, 5000, '4 connections');
    const h = await health();
    assert.equal(h.authenticated, 3);
    assert.equal((await sub(user, 'apps:count')).type, 'subscribed');
    assert.equal((await request(sio, 'subscribe', 'apps:count')).success, true);
    assert.equal((await user.request('join-room', 'count-room')).data.success, true);
    const s = (await adm.request('stats')).data;
    assert.equal(s.totalConnections, 4);
    assert.equal(s.authenticatedConnections, 3);
    assert.equal(s.anonymousConnections, 1);
    assert.equal(s.totalSubscriptions, 2);
    assert.equal(s.connectionsByChannel['apps:count'], 2);
    assert.equal(s.onlineUsers, 3);
    assert.equal(s.rooms, 1);
    await until(async () => (await health()).activeChannels === 1, 3000, 'activeChannels 1 (counted at most once a second)');
    const api = (await http(`${g.url}/api/stats`, { headers: KEY })).body;
    assert.equal(api.totalConnections, 4);
    assert.equal(api.nodes[0].connections, 4);
    await user.close();
    await until(async () => (await health()).connections === 3, 5000, 'the closed /ws connection uncounted');
    assert.equal((await health()).authenticated, 2);
    anon.terminate();
    await until(async () => (await health()).connections === 2, 5000, 'a dropped TCP connection uncounted');
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }
});

test('/ws MAX_SOCKETS_PER_USER counts /ws and Socket.IO together: error RATE_LIMITED, close 1008; a freed slot is usable', async () => {
  const g = await startGateway({ MAX_SOCKETS_PER_USER: '3' });
  const all = [];
  try {
    const w1 = await wsConnect(g.url, { token: token('capped') }); all.push(w1);
    const s1 = (await connect(g.url, { auth: { token: token('capped') } })).socket;
    all.push({ terminate: () => s1.close() });
    const w2 = await wsConnect(g.url, { header: token('capped') }); all.push(w2);
    const w3 = await wsConnect(g.url, { token: token('capped'), hello: false }); all.push(w3);
    const e = await w3.next('error');
    assert.equal(e.message, 'Too many connections for this user');
    assert.equal(e.code, 'RATE_LIMITED');
    assert.equal((await closedWithin(w3, 5000))?.code, 1008);
    assert.ok(!w3.frames.some((f) => f.type === 'connected'));
    assert.equal((await refused(g.url, { auth: { token: token('capped') } })).message, 'Too many connections for this user');
    // Others are not affected.
    const o = await wsConnect(g.url, { token: token('not-capped') }); all.push(o);
    // A slot freed by a Socket.IO socket is usable by /ws, and one freed by /ws by Socket.IO.
    s1.close();
    const tryWs = async () => {
      const c = await wsConnect(g.url, { token: token('capped'), hello: false });
      all.push(c);
      const f = await c.next((x) => x.type === 'connected' || x.type === 'error');
      return f.type === 'connected' ? c : null;
    };
    const w4 = await until(tryWs, 5000, 'a /ws connection in the freed slot');
    assert.equal(w4.frames.find((f) => f.type === 'connected').userId, 'capped');
    await w1.close();
    const sio2 = await until(() => connect(g.url, { auth: { token: token('capped') } }).catch(() => null), 5000, 'a Socket.IO socket in the freed slot');
    all.push({ terminate: () => sio2.socket.close() });
    assert.equal(sio2.hello.userId, 'capped');
  } finally { all.forEach((c) => c.terminate()); await g.stop(); }
});

// ----------------------------------------------------------------------------------------------------
// Protocol fuzz

/** A deterministic PRNG so a failing input can be replayed. */
function prng(seed) {
  let x = seed >>> 0;
  return () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 4294967296; };
}

const FUZZ_TYPES = ['subscribe', 'unsubscribe', 'ping', 'list_channels', 'stats', 'join-room', 'leave-room',
  'create-room', 'message', 'edit-message', 'delete-message', 'list-rooms', 'load-messages', 'typing', 'stop-typing',
  'update-status', 'get-presence', 'private-message', 'mark-read', 'call-user', 'call-answer', 'ice-candidate',
  'call-reject', 'hang-up', 'channel-history', 'no-such-event', 'event', 'connected', 'ack', 'error', 'pong',
  '__proto__', 'constructor', 'toString', 'x'.repeat(300)];
// What may answer each channel frame besides an error (generic events answer `ack` or `error`).
const CHANNEL_ANSWER = { subscribe: 'subscribed', unsubscribe: 'unsubscribed', ping: 'pong', list_channels: 'channels', stats: 'stats' };

function fuzzPayloads(rand) {
  const deep = (n) => (n === 0 ? 1 : { a: deep(n - 1) });
  const deepArr = (n) => (n === 0 ? [] : [deepArr(n - 1)]);
  const base = [
    undefined, null, 0, -1, 1e308, 1.5, true, false, '', 'x'.repeat(100000), [], {}, [null], ['a', 'b', 'c'],
    { roomId: 1 }, { roomId: '' }, { roomId: 'fuzz-ok-room' }, { roomId: 'fuzz-ok-room', content: 42 },
    { roomId: 'fuzz-ok-room', content: '' }, { roomId: 'fuzz-ok-room', content: 'x'.repeat(70000) },
    { channel: { nested: true } }, { channel: 'system:x' }, { channel: 'apps:fuzz' }, { targetUserId: ['a'] },
    { userIds: 'alice' }, { userIds: Array(3000).fill('u') }, { messageIds: [1, 2, 3] }, { callId: null },
    { callId: 'x'.repeat(1000) }, { limit: -5, roomId: 'r' }, { limit: 'all', roomId: 'r' }, { limit: 1.5, roomId: 'r' },
    { before: 7, roomId: 'r' }, { type: 'hologram', members: 'everyone' }, { type: 'direct', members: [] },
    { status: 'invisible' }, { offer: null, targetUserId: 'x' }, JSON.parse('{"__proto__":{"role":"admin"}}'),
    { constructor: { prototype: { x: 1 } } }, deep(90), deepArr(90), { token: 'garbage' }, { roomId: 'user:alice' },
    { roomId: 'système' }, '\u0000\uffff', 'ping', 'apps:fuzz', { requestId: 'inner' },
  ];
  const extra = [];
  const pick = (arr) => arr[Math.floor(rand() * arr.length)];
  for (let i = 0; i < 30; i++) {
    const val = () => pick([null, 0, 1, -1, 'x', '', 'x'.repeat(Math.floor(rand() * 300)), true, [], {}, [1, 'a'], { k: 'v' }]);
    const obj = {};
    for (const k of ['roomId', 'content', 'channel', 'targetUserId', 'messageId', 'callId', 'userIds', 'messageIds',
      'limit', 'before', 'type', 'members', 'name', 'status', 'offer', 'answer', 'candidate', 'reason']) {
      if (rand() < 0.4) obj[k] = val();
    }
    extra.push(obj);
  }
  return base.concat(extra);
}

/** The i-th requestId: strings and numbers of odd kinds, all distinct. */
function fuzzId(i) {
  switch (i % 8) {
    case 0: return `f${i}`;
    case 1: return i;
    case 2: return -i;
    case 3: return i + 0.25;
    case 4: return `ü✓ ${i} "quoted" \\ `;
    case 5: return `${'id'.repeat(300)}${i}`;
    case 6: return String(i);
    default: return `{"requestId":${i}}`;
  }
}

function checkAnswer(type, f, where) {
  assert.match(String(f.timestamp), ISO, `${where}: timestamp`);
  if (f.type === 'ack') {
    assert.ok(f.data && typeof f.data === 'object', `${where}: ack data`);
    assert.equal(typeof f.data.success, 'boolean', `${where}: ack success`);
    if (!f.data.success) {
      assert.ok(CODES.has(f.data.code), `${where}: code ${f.data.code}`);
      assert.equal(typeof f.data.error, 'string', where);
    }
    assert.ok(!Object.hasOwn(CHANNEL_ANSWER, type), `${where}: a channel frame answered with ack`);
  } else if (f.type === 'error') {
    assert.ok(CODES.has(f.code), `${where}: code ${f.code}`);
    assert.equal(typeof f.message, 'string', where);
  } else {
    assert.equal(f.type, Object.hasOwn(CHANNEL_ANSWER, type) ? CHANNEL_ANSWER[type] : 'ack or error', `${where}: answer type`);
  }
}

test('/ws fuzz: hostile frames with requestIds each get exactly one answer carrying it; the node and others are unaffected', async (t) => {
  const rand = prng(0x5EED);
  const payloads = fuzzPayloads(rand);
  const ws = wsClients(t, gw);
  const sio = clients(t, gw);
  // Bystanders: a Socket.IO client and a /ws client in one room.
  const room = uniq('fuzz-bystanders');
  const bsio = await sio('fuzz-bys-sio');
  const bws = await ws('fuzz-bys-ws');
  assert.equal((await request(bsio.socket, 'join-room', room)).success, true);
  assert.equal((await bws.request('join-room', room)).data.success, true);

  let tried = 0;
  let answered = 0;
  for (const who of [null, 'fuzz-user', 'fuzz-admin']) {
    const c = await ws(who, { role: who === 'fuzz-admin' ? 'admin' : 'user' });
    // A SaaS frame first: the connection speaks SaaS from then on (SPEC §10, dialects), so that
    // `{event}` frames and seed names below are fuzz for the SaaS path (seed-004.test.js fuzzes
    // the dialects).
    assert.equal((await c.request('list_channels')).type, 'channels');
    const all = [];
    for (const type of FUZZ_TYPES) {
      for (const p of payloads) {
        const r = rand();
        const frame = r < 0.15 ? { event: type } : { type };
        if (p !== undefined) {
          if (r < 0.5) frame.data = p;
          else if (r < 0.7) frame.payload = p;
          else if (r < 0.85) { frame.channel = p; frame.data = p; } else frame.data = p;
        }
        all.push(frame);
      }
    }
    let i = 0;
    for (let start = 0; start < all.length; start += 200) {
      const batch = [];
      for (const frame of all.slice(start, start + 200)) {
        const requestId = fuzzId(i++);
        c.send({ ...frame, requestId });
        batch.push([requestId, frame]);
        tried++;
      }
      await until(() => batch.every(([id]) => c.answers(id).length >= 1) || !c.isOpen(), 30000, `answers to batch ${start} (${who})`);
      assert.ok(c.isOpen(), `the fuzzing connection (${who}) was closed: ${JSON.stringify(await closedWithin(c, 10))}`);
    }
    // A fence: anything duplicated would have come before its answer.
    assert.equal((await c.request('ping', undefined, { requestId: `fence-${who}` })).type, 'pong');
    i = 0;
    for (const frame of all) {
      const requestId = fuzzId(i++);
      const got = c.answers(requestId);
      const type = frame.type ?? frame.event;
      const where = `${who} ${type.slice(0, 20)} ${JSON.stringify(frame).slice(0, 120)} id ${JSON.stringify(requestId).slice(0, 30)}`;
      assert.equal(got.length, 1, `${where}: answered ${got.length} times`);
      assert.deepEqual(got[0].requestId, requestId, where);
      checkAnswer(type, got[0], where);
      answered++;
    }

    // Odd requestIds and odd types: at most one answer each, never a wrong requestId; the connection stays.
    const odd = [
      { type: 'ping', requestId: null }, { type: 'ping', requestId: true }, { type: 'ping', requestId: {} },
      { type: 'ping', requestId: [1, 2] }, { type: 'join-room', data: 'x', requestId: { a: 1 } },
      { type: 'no-such-event', requestId: false }, { type: 'message', data: {}, requestId: '' },
      { type: 5, requestId: 'odd-type-1' }, { type: null, requestId: 'odd-type-2' }, { type: {}, requestId: 'odd-type-3' },
      { type: ['ping'], requestId: 'odd-type-4' }, { type: '', requestId: 'odd-type-5' },
      { type: 'ping', data: (function d(n) { return n ? { a: d(n - 1) } : 1; }(300)), requestId: 'too-deep' },
    ];
    let k = 0;
    for (const frame of odd) {
      const mark = c.frames.length;
      c.send(frame);
      const fenceId = `odd-fence-${k++}`;
      await c.request('ping', undefined, { requestId: fenceId });
      const between = c.frames.slice(mark).filter((f) => !(f.type === 'pong' && f.requestId === fenceId)
        && ['ack', 'error', 'pong', 'subscribed', 'unsubscribed', 'channels', 'stats', 'connected'].includes(f.type));
      assert.ok(between.length <= 1, `${JSON.stringify(frame).slice(0, 80)}: ${between.length} answers`);
      for (const f of between) {
        if (f.requestId !== undefined) assert.deepEqual(f.requestId, frame.requestId, JSON.stringify(f).slice(0, 200));
        if (f.type === 'error') assert.ok(CODES.has(f.code), JSON.stringify(f));
      }
      tried++;
    }
    assert.ok(c.isOpen(), 'the fuzzing connection is still open');
    await c.close();
  }
  // The node is healthy and the bystanders still chat with each other.
  const health = await http(`${gw.url}/health`);
  assert.equal(health.status, 200);
  assert.equal(health.body.status, 'ok');
  const toSio = nextWhere(bsio.socket, 'new-message', (m) => m.content === 'after the fuzz');
  const sent = await bws.request('message', { roomId: room, content: 'after the fuzz' });
  assert.equal(sent.data.success, true);
  assert.equal((await toSio).id, sent.data.messageId);
  const toWs = bws.next((f) => f.type === 'new-message' && f.data.content === 'from sio after the fuzz');
  assert.equal((await request(bsio.socket, 'message', { roomId: room, content: 'from sio after the fuzz' })).success, true);
  await toWs;
  console.log(`# figures: /ws fuzz frames ${tried}, answered exactly once ${answered}, crashes 0`);
});

// ----------------------------------------------------------------------------------------------------
// Mixed transports: /ws and Socket.IO clients are peers.

test('mixed: a Socket.IO client and a /ws client share a room: user-joined, messages, typing, presence both ways', async (t) => {
  const ws = wsClients(t, gw);
  const sio = clients(t, gw);
  const room = uniq('mix-room');
  const alice = await sio('mix-alice');
  const bob = await ws('mix-bob');
  assert.equal((await request(alice.socket, 'join-room', room)).success, true);
  const joined = next(alice.socket, 'user-joined');
  const ack = await bob.request('join-room', { roomId: room });
  assert.equal(ack.data.success, true);
  assert.deepEqual(ack.data.members.map((m) => m.userId).sort(), ['mix-alice', 'mix-bob']);
  assert.deepEqual(await joined, { userId: 'mix-bob', user: bob.hello.user, roomId: room });
  // A second Socket.IO user joining is seen by the /ws client.
  const carol = await sio('mix-carol');
  await request(carol.socket, 'join-room', room);
  const cj = await bob.next('user-joined');
  assert.deepEqual(cj.data, { userId: 'mix-carol', user: carol.user, roomId: room });

  const toAlice = nextWhere(alice.socket, 'new-message', (m) => m.content === 'from /ws');
  const m1 = await bob.request('message', { roomId: room, content: 'from /ws' });
  assert.equal(m1.data.success, true);
  const a1 = await toAlice;
  assert.equal(a1.id, m1.data.messageId);
  assert.equal(a1.userId, 'mix-bob');
  await bob.next((f) => f.type === 'new-message' && f.data.id === m1.data.messageId);
  const m2 = await request(alice.socket, 'message', { roomId: room, content: 'from socket.io' });
  const b2 = await bob.next((f) => f.type === 'new-message' && f.data.id === m2.messageId);
  assert.equal(b2.data.content, 'from socket.io');
  assert.equal(b2.data.userId, 'mix-alice');
  assert.deepEqual(b2.data.user, alice.user);

  // Typing both ways.
  const typing = next(alice.socket, 'user-typing');
  assert.deepEqual((await bob.request('typing', { roomId: room })).data, { success: true });
  assert.deepEqual(await typing, { userId: 'mix-bob', user: bob.hello.user, roomId: room });
  const stopped = next(alice.socket, 'user-stopped-typing');
  bob.send({ type: 'stop-typing', data: { roomId: room } });
  assert.deepEqual(await stopped, { userId: 'mix-bob', roomId: room });
  await request(alice.socket, 'typing', { roomId: room });
  assert.deepEqual((await bob.next('user-typing')).data, { userId: 'mix-alice', user: alice.user, roomId: room });

  // Presence: the /ws user's status reaches Socket.IO, the Socket.IO user's departure reaches /ws.
  const away = nextWhere(alice.socket, 'presence-update', (p) => p.userId === 'mix-bob');
  assert.equal((await bob.request('update-status', 'away')).data.success, true);
  assert.equal((await away).status, 'away');
  const gp = await bob.request('get-presence', { userIds: ['mix-alice', 'mix-bob', 'mix-nobody'] });
  assert.equal(gp.data.presence['mix-alice'].status, 'online');
  assert.equal(gp.data.presence['mix-nobody'].status, 'offline');
  carol.socket.close();
  const off = await bob.next((f) => f.type === 'presence-update' && f.data.userId === 'mix-carol', 5000);
  assert.equal(off.data.status, 'offline');
  assert.equal(typeof off.data.timestamp, 'number');
  // Leaving: the Socket.IO client hears user-left from /ws.
  const leftP = next(alice.socket, 'user-left');
  await bob.request('leave-room', room);
  assert.deepEqual(await leftP, { userId: 'mix-bob', roomId: room });
});

test('mixed: private messages Socket.IO → /ws and /ws → Socket.IO, mark-read, pending-messages on a /ws connect', async (t) => {
  const ws = wsClients(t, gw);
  const sio = clients(t, gw);
  const alice = await sio('pm-alice');
  const alice2 = await ws('pm-alice'); // alice's other device, on /ws
  const bob = await ws('pm-bob');
  const ack = await request(alice.socket, 'private-message', { targetUserId: 'pm-bob', content: 'hi bob' });
  assert.equal(ack.success, true);
  assert.equal(ack.delivered, true);
  const got = await bob.next('private-message');
  assert.equal(got.data.id, ack.messageId);
  assert.equal(got.data.fromUserId, 'pm-alice');
  assert.deepEqual(got.data.fromUser, alice.user);
  assert.equal(got.data.toUserId, 'pm-bob');
  assert.equal(got.data.content, 'hi bob');
  assert.equal(got.data.read, false);
  assert.equal(typeof got.data.timestamp, 'number');
  assert.match(got.timestamp, ISO);
  // The sender's other device (on /ws) gets its copy.
  assert.equal((await alice2.next('private-message')).data.id, ack.messageId);

  const toAlice = next(alice.socket, 'private-message');
  const back = await bob.request('private-message', { targetUserId: 'pm-alice', content: 'hi alice' });
  assert.equal(back.data.success, true);
  assert.equal(back.data.delivered, true);
  const a = await toAlice;
  assert.equal(a.id, back.data.messageId);
  assert.equal(a.fromUserId, 'pm-bob');
  assert.equal(a.content, 'hi alice');
  assert.equal((await alice2.next('private-message')).data.id, back.data.messageId);

  const read = next(alice.socket, 'messages-read');
  assert.deepEqual((await bob.request('mark-read', { messageIds: [ack.messageId] })).data, { success: true });
  const r = await read;
  assert.equal(r.readerId, 'pm-bob');
  assert.deepEqual(r.messageIds, [ack.messageId]);
  assert.deepEqual((await alice2.next('messages-read')).data.messageIds, [ack.messageId]);

  // Queued for an offline user, handed over on a /ws connect.
  const q1 = await request(alice.socket, 'private-message', { targetUserId: 'pm-carol', content: 'queued one' });
  const q2 = await bob.request('private-message', { targetUserId: 'pm-carol', content: 'queued two' });
  assert.equal(q1.delivered, false);
  assert.equal(q2.data.delivered, false);
  const carol = await ws('pm-carol');
  const pending = await carol.next('pending-messages');
  assert.deepEqual(pending.data.map((m) => [m.content, m.fromUserId]), [['queued one', 'pm-alice'], ['queued two', 'pm-bob']]);
});

test('mixed: calls /ws → Socket.IO and Socket.IO → /ws: ring, answer, ICE, reject, hang-up, offline', async (t) => {
  const ws = wsClients(t, gw);
  const sio = clients(t, gw);
  const caller = await ws('call-ws');
  const callee = await sio('call-sio');
  const ring = next(callee.socket, 'incoming-call');
  const a = await caller.request('call-user', { targetUserId: 'call-sio', offer: { sdp: 'offer-1' }, callType: 'video' });
  assert.equal(a.data.success, true);
  const { callId } = a.data;
  assert.equal(typeof callId, 'string');
  assert.deepEqual(await ring, { callId, fromUserId: 'call-ws', fromUser: caller.hello.user, offer: { sdp: 'offer-1' }, callType: 'video' });
  assert.equal((await request(callee.socket, 'call-answer', { callId, answer: { sdp: 'answer-1' } })).success, true);
  const ans = await caller.next('call-answered');
  assert.deepEqual(ans.data, { callId, fromUserId: 'call-sio', answer: { sdp: 'answer-1' } });
  const ice = next(callee.socket, 'ice-candidate');
  assert.equal((await caller.request('ice-candidate', { callId, candidate: { c: 1 } })).data.success, true);
  assert.deepEqual(await ice, { callId, fromUserId: 'call-ws', candidate: { c: 1 } });
  await request(callee.socket, 'ice-candidate', { callId, candidate: { c: 2 } });
  assert.deepEqual((await caller.next('ice-candidate')).data, { callId, fromUserId: 'call-sio', candidate: { c: 2 } });
  assert.equal((await request(callee.socket, 'hang-up', { callId })).success, true);
  const ended = await caller.next('call-ended');
  assert.equal(ended.data.callId, callId);
  assert.equal(ended.data.reason, 'hang-up');

  // The other way round, rejected by the /ws callee.
  const ring2 = caller.next('incoming-call');
  const b = await request(callee.socket, 'call-user', { targetUserId: 'call-ws', offer: { sdp: 'offer-2' }, callType: 'audio' });
  assert.equal(b.success, true);
  const inc = await ring2;
  assert.deepEqual(inc.data, { callId: b.callId, fromUserId: 'call-sio', fromUser: callee.user, offer: { sdp: 'offer-2' }, callType: 'audio' });
  const rejected = next(callee.socket, 'call-rejected');
  assert.equal((await caller.request('call-reject', { callId: b.callId, reason: 'busy' })).data.success, true);
  assert.deepEqual(await rejected, { callId: b.callId, reason: 'busy' });
  const off = await caller.request('call-user', { targetUserId: 'call-nobody', offer: {} });
  assert.deepEqual(off.data, { success: false, error: 'User offline', code: 'USER_OFFLINE' });
  const stranger = await ws('call-stranger');
  assert.equal((await stranger.request('hang-up', { callId: b.callId })).data.success, false);
});

test('mixed: REST broadcast to socketId = connectionId, userId, room, channel, everyone, and /api/publish reach /ws', async (t) => {
  const ws = wsClients(t, gw);
  const sio = clients(t, gw);
  const w = await ws('rest-ws');
  const w2 = await ws('rest-ws', { via: 'header' });
  const other = await ws('rest-other');
  const s = await sio('rest-sio');
  const room = uniq('rest-room');
  const adminJwt = { authorization: `Bearer ${token('rest-root', { role: 'admin' })}` };
  const notices = (c) => c.frames.filter((f) => f.type === 'notice').map((f) => f.data.n);
  const seenSio = collect(s.socket, 'notice');

  assert.deepEqual((await post(gw, '/api/broadcast', { event: 'notice', data: { n: 1 }, socketId: w.hello.connectionId })).body, { success: true });
  const f1 = await w.next('notice');
  assert.deepEqual(f1.data, { n: 1 });
  assert.match(f1.timestamp, ISO);
  assert.equal((await post(gw, '/api/broadcast', { event: 'notice', data: { n: 2 }, userId: 'rest-ws' })).status, 200);
  await w.next((f) => f.type === 'notice' && f.data.n === 2);
  await w2.next((f) => f.type === 'notice' && f.data.n === 2);
  assert.equal((await w.request('join-room', room)).data.success, true);
  assert.equal((await post(gw, '/ws/broadcast', { event: 'notice', data: { n: 3 }, room }, adminJwt)).status, 200);
  await w.next((f) => f.type === 'notice' && f.data.n === 3);
  assert.equal((await sub(w, 'apps:rest')).type, 'subscribed');
  assert.equal((await post(gw, '/api/broadcast', { event: 'notice', data: { n: 4 }, channel: 'apps:rest' })).status, 200);
  await w.next((f) => f.type === 'notice' && f.data.n === 4);
  assert.equal((await post(gw, '/api/publish', { channel: 'apps:rest', data: { p: 1 } }, adminJwt)).status, 200);
  const ev = await w.next('event');
  assert.equal(ev.channel, 'apps:rest');
  assert.deepEqual(ev.data, { p: 1 });
  // Everyone, as a fence for the checks below.
  assert.equal((await post(gw, '/api/broadcast', { event: 'notice', data: { n: 5 } })).status, 200);
  await Promise.all([w, w2, other].map((c) => c.next((f) => f.type === 'notice' && f.data.n === 5)));
  await until(() => seenSio.some((x) => x.n === 5), 5000, 'the Socket.IO copy');
  assert.deepEqual(notices(w), [1, 2, 3, 4, 5]);
  assert.deepEqual(notices(w2), [2, 5]);
  assert.deepEqual(notices(other), [5]);
  assert.deepEqual(seenSio.map((x) => x.n), [5]);
  // The Socket.IO subscriber of the same channel gets the same publication.
  assert.equal((await request(s.socket, 'subscribe', 'apps:rest')).success, true);
  const sev = next(s.socket, 'event');
  await post(gw, '/api/publish', { channel: 'apps:rest', data: { p: 2 } });
  assert.deepEqual((await sev).data, { p: 2 });
  assert.deepEqual((await w.next('event')).data, { p: 2 });
  // /api/users/{id}/disconnect counts and closes /ws connections too.
  const r = await post(gw, '/api/users/rest-ws/disconnect', undefined);
  assert.deepEqual(r.body, { success: true, disconnected: 2 });
  assert.ok(await closedWithin(w, 5000), 'closed by the REST disconnect');
  assert.ok(await closedWithin(w2, 5000));
  assert.ok(other.isOpen());
});

test('/ws caps: 20 frames before authentication, then 1008', async () => {
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false', WS_AUTH_TIMEOUT_MS: '20000' });
  try {
    // Before auth a client may do nothing else: each frame is answered, a stream of them closes the connection.
    const pest = await wsConnect(g.url, { hello: false });
    for (let i = 0; i < 30; i++) pest.send({ type: 'ping', requestId: i });
    const closed = await pest.closed;
    assert.equal(closed.code, 1008);
    assert.equal(pest.frames.filter((f) => f.code === 'UNAUTHENTICATED').length, 20, 'the first 20 answered');
    // Frames sent right behind an `auth` frame, before its answer, count as the authenticated connection's.
    const eager = await wsConnect(g.url, { hello: false });
    eager.send({ type: 'auth', token: token('ws-eager') });
    for (let i = 0; i < 30; i++) eager.send({ type: 'ping', requestId: `e${i}` });
    await eager.next((f) => f.type === 'pong' && f.requestId === 'e29');
    assert.equal(eager.frames.filter((f) => f.type === 'pong').length, 30);
    assert.equal(eager.frames.findIndex((f) => f.type === 'connected'), 0, 'connected first');
    assert.ok(eager.isOpen());
    eager.close();
  } finally { await g.stop(); }
});

/**
 * A raw `/ws` client over TCP: completes the handshake (token in the query), then `send(obj)` writes a masked
 * text frame and `frame(pred)` waits for a server text frame. `stopReading()` stops reading the socket for
 * good: the kernel's buffers fill and the server's writes block.
 */
async function rawWs(base, tok) {
  const net = await import('node:net');
  const { port } = new URL(base);
  const sock = net.connect(Number(port), '127.0.0.1');
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  sock.write(`GET /ws?token=${encodeURIComponent(tok)} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
    'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  let buf = Buffer.alloc(0);
  let upgraded = false;
  const frames = [];
  const waiters = new Set();
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (!upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      assert.match(buf.subarray(0, end).toString(), /^HTTP\/1\.1 101/);
      upgraded = true;
      buf = buf.subarray(end + 4);
    }
    for (;;) {
      if (buf.length < 2) break;
      let len = buf[1] & 0x7f;
      let at = 2;
      if (len === 126) { if (buf.length < 4) break; len = buf.readUInt16BE(2); at = 4; }
      else if (len === 127) { if (buf.length < 10) break; len = Number(buf.readBigUInt64BE(2)); at = 10; }
      if (buf.length < at + len) break;
      if ((buf[0] & 0x0f) === 1) frames.push(JSON.parse(buf.subarray(at, at + len).toString()));
      buf = buf.subarray(at + len);
    }
    for (const w of [...waiters]) w();
  });
  return {
    sock,
    send(obj) {
      const body = Buffer.from(JSON.stringify(obj));
      assert.ok(body.length < 126);
      // Masked with a zero key: the payload as is.
      sock.write(Buffer.concat([Buffer.from([0x81, 0x80 | body.length, 0, 0, 0, 0]), body]));
    },
    frame(pred, ms = 5000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const f = frames.find(pred);
          if (f) { waiters.delete(check); clearTimeout(timer); resolve(f); }
        };
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error('raw /ws: no such frame')); }, ms);
        waiters.add(check);
        check();
      });
    },
    stopReading() { sock.removeAllListeners('data'); sock.pause(); },
  };
}

test('/ws liveness: a reader that stops reading is dropped by WS_IDLE_TIMEOUT_MS with less than its queue cap queued, and departs', async () => {
  // The defaults for the queue (1,024 frames, 8 MiB): the sloth is never a slow consumer by count or bytes,
  // only its socket accepts no more.
  const idle = 4000;
  const g = await startGateway({ ALLOW_ANONYMOUS: 'false', PING_INTERVAL_MS: '1000', WS_IDLE_TIMEOUT_MS: String(idle), API_KEY,
    RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000', PRESENCE_GRACE_MS: '300' });
  try {
    const room = uniq('ws-sloth');
    const writer = await wsConnect(g.url, { token: token('ws-writer') });
    assert.equal((await writer.request('join-room', room)).data.success, true);
    const sloth = await rawWs(g.url, token('ws-sloth'));
    await sloth.frame((f) => f.type === 'connected');
    sloth.send({ type: 'join-room', data: room, requestId: 'j' });
    assert.equal((await sloth.frame((f) => f.requestId === 'j')).data.success, true);
    const before = (await http(`${g.url}/health`)).body.connections;
    sloth.stopReading();
    const stopped = Date.now();
    // 6 MB in 15 broadcasts to its room: more than the loopback buffers take, less than the queue's caps.
    const blob = 'x'.repeat(400000);
    for (let i = 0; i < 15; i++) {
      const r = await post(g, '/api/broadcast', { event: 'blob', data: { i, blob }, room });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    const sent = Date.now() - stopped;
    assert.ok(sent < idle, `the broadcasts went out within the idle timeout (${sent} ms)`);
    await until(async () => (await http(`${g.url}/health`)).body.connections === before - 1, idle + 6000, 'sloth dropped');
    const dropped = Date.now() - stopped;
    assert.ok(dropped <= idle + 3000, `dropped ${dropped} ms after it stopped reading`);
    assert.doesNotMatch(g.logs(), /slow consumer/, 'not for a full queue');
    // It departed: offline for the others.
    await until(async () => {
      const p = await writer.request('get-presence', { userIds: ['ws-sloth'] });
      return p.data.presence['ws-sloth'].status === 'offline';
    }, 5000, 'sloth offline');
    // The writer, in the same room, is unaffected.
    assert.equal((await writer.request('list-rooms')).data.success, true);
    console.log(`# figures: /ws reader that stopped reading dropped after ${dropped} ms (WS_IDLE_TIMEOUT_MS ${idle})`);
    sloth.sock.destroy();
    writer.close();
  } finally { await g.stop(); }
});

test('/ws: a frame waiting on a slow backend does not hold up the connection\'s writes (no slow-consumer close)', async () => {
  const { createServer } = await import('node:http');
  const backend = createServer((req, res) => {
    req.resume();
    req.on('end', () => setTimeout(() => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ ack: { late: true } })); }, 2000));
  });
  await new Promise((r) => backend.listen(0, '127.0.0.1', r));
  const g = await startGateway({ EVENT_PROXY_URL: `http://127.0.0.1:${backend.address().port}/events`,
    EVENT_PROXY_TIMEOUT_MS: '10000', SOCKET_BUFFER_PACKETS: '16', RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' });
  try {
    const room = uniq('ws-busy');
    const waiter = await wsConnect(g.url, { token: token('ws-waiter') });
    const talker = await wsConnect(g.url, { token: token('ws-talker') });
    assert.equal((await waiter.request('join-room', room)).data.success, true);
    assert.equal((await talker.request('join-room', room)).data.success, true);
    const answer = waiter.request('slow-thing', { x: 1 }, {}, 10000);
    // While its backend call waits, 40 messages reach the room: more than its queue of 16 holds at once.
    for (let i = 0; i < 40; i++) {
      assert.equal((await talker.request('message', { roomId: room, content: `busy ${i}` })).data.success, true);
    }
    await waiter.next((f) => f.type === 'new-message' && f.data.content === 'busy 39', 1500);
    const got = waiter.frames.filter((f) => f.type === 'new-message' && /^busy /.test(f.data.content)).length;
    assert.equal(got, 40, 'every message arrived while the backend call waited');
    assert.ok(!waiter.frames.some((f) => f.requestId !== undefined && f.data?.late), 'the answer was still pending');
    assert.deepEqual((await answer).data, { late: true });
    assert.ok(waiter.isOpen(), 'not closed as a slow consumer');
    assert.doesNotMatch(g.logs(), /slow consumer/);
    waiter.close(); talker.close();
  } finally { await g.stop(); await new Promise((r) => backend.close(r)); }
});
