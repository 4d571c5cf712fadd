// The official Node emitter, @socket.io/redis-emitter 5.x from npm (SPEC §14), pointed at the Redis of a
// two-node cluster: emit, to/in, except, socketsJoin, socketsLeave and disconnectSockets reach Socket.IO and
// /ws clients on both nodes, each exactly once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Emitter } from '@socket.io/redis-emitter';
import {
  startGateway, startRedis, redisClient, connect, request, next, token, http, until, uniq, wsConnect,
} from '../lib/helpers.js';

let redis;
let pub;
let emitter;
let A;
let B;

before(async () => {
  redis = await startRedis({ persist: false });
  pub = await redisClient(redis.url);
  emitter = new Emitter(pub);
  A = await startGateway({ REDIS_URL: redis.url, NODE_ID: 'em-a' });
  B = await startGateway({ REDIS_URL: redis.url, NODE_ID: 'em-b' });
  for (const g of [A, B]) {
    // Subscribed: /health says redis up once the ingress connection (which takes the emitter's channels) is in.
    await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
  }
});
after(async () => { await A?.stop(); await B?.stop(); await pub?.quit().catch(() => {}); await redis?.stop(); });

/** Counts every event a socket.io client gets. */
function tally(socket) {
  const got = [];
  socket.onAny((event, ...args) => got.push([event, ...args]));
  return got;
}

test('redis-emitter: emit to everyone, a room, a user, one socket, with except; Socket.IO on A and /ws on B, once each', async (t) => {
  const room = uniq('em-room');
  const { socket: s } = await connect(A.url, { auth: { token: token('em-sio') } });
  const w = await wsConnect(B.url, { token: token('em-ws') });
  t.after(() => { s.close(); w.close(); });
  assert.equal((await request(s, 'join-room', room)).success, true);
  const joined = next(s, 'user-joined'); // the /ws user's arrival, from node B: before the tally starts
  assert.equal((await w.request('join-room', room)).data.success, true);
  await joined;
  const got = tally(s);
  const wsGot = (type) => w.frames.filter((f) => f.type === type);

  emitter.emit('announce', { x: 1 });
  await next(s, 'announce');
  await w.next('announce');
  emitter.to(`room:${room}`).emit('room-news', 1);
  await w.next('room-news');
  await until(() => got.some(([e]) => e === 'room-news'), 5000, 'room-news on A');
  emitter.to('user:em-ws').emit('dm', 2);
  assert.deepEqual((await w.next('dm')).data, 2);
  emitter.to(s.id).emit('direct', 3);
  assert.equal(await next(s, 'direct'), 3);
  emitter.to(`room:${room}`).except('user:em-sio').emit('not-sio', 4);
  await w.next('not-sio');
  // A fence: everything above has arrived when this has.
  emitter.emit('fence', 0);
  await next(s, 'fence');
  await w.next('fence');
  const names = got.map(([e]) => e).filter((e) => e !== 'connected');
  assert.deepEqual(names.sort(), ['announce', 'direct', 'fence', 'room-news'], 'Socket.IO client on A: once each, nothing else');
  assert.deepEqual(['announce', 'room-news', 'dm', 'not-sio', 'fence'].map((e) => wsGot(e).length), [1, 1, 1, 1, 1],
    '/ws client on B: once each');
  assert.equal(wsGot('direct').length, 0);
  assert.deepEqual(wsGot('announce')[0].data, { x: 1 });
});

test('redis-emitter: socketsJoin, socketsLeave and disconnectSockets on both nodes and transports', async (t) => {
  const { socket: s } = await connect(A.url, { auth: { token: token('em-j-sio') } });
  const w = await wsConnect(B.url, { token: token('em-j-ws') });
  t.after(() => { s.close(); w.close(); });
  const room = uniq('em-joined');
  // Joins arrive on both nodes; a message in the room proves the membership (the client may now post there too).
  emitter.in('user:em-j-sio').socketsJoin(`room:${room}`);
  emitter.in('user:em-j-ws').socketsJoin(`room:${room}`);
  await until(async () => {
    emitter.to(`room:${room}`).emit('probe', 1);
    return w.frames.some((f) => f.type === 'probe');
  }, 5000, 'joined on B');
  await next(s, 'probe');
  const mine = await request(s, 'message', { roomId: room, content: 'joined by the backend' });
  assert.equal(mine.success, true, JSON.stringify(mine));
  assert.equal((await w.next((f) => f.type === 'new-message' && f.data.content === 'joined by the backend')).data.roomId, room);
  // Leave: the Socket.IO client no longer hears the room.
  emitter.in('user:em-j-sio').socketsLeave(`room:${room}`);
  const got = tally(s);
  await until(async () => {
    emitter.to(`room:${room}`).emit('after-leave', 2);
    const n = w.frames.filter((f) => f.type === 'after-leave').length;
    return n >= 2 && !got.some(([e]) => e === 'after-leave') ? n : false;
  }, 5000, 'left on A');
  // Disconnect: the /ws client on B closes (1000), the Socket.IO client on A stays.
  emitter.in('user:em-j-ws').disconnectSockets(true);
  assert.equal((await w.closed).code, 1000);
  assert.equal((await request(s, 'list_channels')).success, true);
  const gone = new Promise((resolve) => s.once('disconnect', resolve));
  emitter.in(s.id).disconnectSockets();
  await gone;
});
