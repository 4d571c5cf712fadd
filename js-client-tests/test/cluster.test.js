// Multi-node: two gateway processes on one real redis-server (SPEC §9). Every cross-node behaviour:
// rooms, history, private messages, queues, presence, calls, REST, stats; Redis restarted mid-test;
// a node killed with SIGKILL and its users served by the other.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, startRedis, connect, refused, request, next, token, http, collect, until, tcpProxy, REDIS_MODE } from '../lib/helpers.js';

let redis;
let A;
let B;
const KEY = 'cluster-key';
const env = () => ({ REDIS_URL: redis.url, API_KEY: KEY, PRESENCE_GRACE_MS: '300', CALL_RING_TIMEOUT_MS: '5000' });
const up = (g) => until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');

before(async () => {
  redis = await startRedis();
  A = await startGateway({ ...env(), NODE_ID: 'node-a' });
  B = await startGateway({ ...env(), NODE_ID: 'node-b' });
  await up(A); await up(B);
});
after(async () => { await A?.stop(); await B?.stop(); await redis?.stop(); });

const user = (g, id, opts = {}) => connect(g.url, { auth: { token: token(id, opts) } }).then((c) => c.socket);

test('a room spans nodes: members, user-joined, new-message, history written on A read on B', async () => {
  const alice = await user(A, 'c-alice');
  const bob = await user(B, 'c-bob');
  try {
    await request(alice, 'join-room', 'c-general');
    const joined = next(alice, 'user-joined');
    const ack = await request(bob, 'join-room', 'c-general');
    assert.deepEqual(ack.members.map((m) => m.userId).sort(), ['c-alice', 'c-bob']);
    assert.equal(ack.members.find((m) => m.userId === 'c-alice').user.userId, 'c-alice');
    assert.equal((await joined).userId, 'c-bob');
    const got = [next(alice, 'new-message'), next(bob, 'new-message')];
    const sent = await request(alice, 'message', { roomId: 'c-general', content: 'from A' });
    for (const m of await Promise.all(got)) assert.equal(m.id, sent.messageId);
    const hist = await request(bob, 'load-messages', { roomId: 'c-general' });
    assert.deepEqual(hist.messages.map((m) => m.content), ['from A']);
    const carol = await user(B, 'c-carol');
    const j = await request(carol, 'join-room', 'c-general');
    assert.deepEqual(j.recentMessages.map((m) => m.id), [sent.messageId]);
    carol.close();
  } finally { alice.close(); bob.close(); }
});

test('MAX_SOCKETS_PER_USER (20 by default) counts the user\'s sockets on every node', async () => {
  const socks = [];
  try {
    for (let i = 0; i < 20; i++) socks.push(await user(i % 2 ? B : A, 'c-many'));
    const e = await refused(B.url, { auth: { token: token('c-many') } });
    assert.equal(e.message, 'Too many connections for this user');
    // One gone on A frees a slot on B (once A has counted it down).
    socks.shift().close();
    const accepted = () => refused(B.url, { auth: { token: token('c-many') } })
      .then(() => false, (e) => (e.message === 'connected, expected a refusal' ? true : Promise.reject(e)));
    assert.equal(await until(accepted, 5000, 'a freed slot'), true);
  } finally { socks.forEach((s) => s.close()); }
});

test('private messages reach every device on both nodes; queues are served by either node', async () => {
  const dan1 = await user(A, 'c-dan');
  const dan2 = await user(B, 'c-dan');
  const eve1 = await user(A, 'c-eve');
  const eve2 = await user(B, 'c-eve');
  try {
    const got = [next(dan1, 'private-message'), next(dan2, 'private-message'), next(eve2, 'private-message')];
    const ack = await request(eve1, 'private-message', { targetUserId: 'c-dan', content: 'hello both' });
    assert.equal(ack.delivered, true);
    for (const m of await Promise.all(got)) assert.equal(m.id, ack.messageId);
    // mark-read on B reaches the sender's socket on A.
    const read = next(eve1, 'messages-read');
    await request(dan2, 'mark-read', { messageIds: [ack.messageId] });
    assert.deepEqual((await read).messageIds, [ack.messageId]);

    const q1 = await request(eve1, 'private-message', { targetUserId: 'c-frank', content: 'one' });
    const q2 = await request(eve2, 'private-message', { targetUserId: 'c-frank', content: 'two' });
    assert.equal(q1.delivered, false);
    assert.equal(q2.delivered, false);
    const frank = (await import('socket.io-client')).io(B.url, { forceNew: true, reconnection: false, auth: { token: token('c-frank') } });
    const pending = await next(frank, 'pending-messages');
    assert.deepEqual(pending.map((m) => m.content), ['one', 'two']);
    frank.close();
  } finally { [dan1, dan2, eve1, eve2].forEach((s) => s.close()); }
});

test('presence across nodes: offline after the grace, seen from the other node', async () => {
  const gus = await user(A, 'c-gus');
  const hal = await user(B, 'c-hal');
  try {
    await request(gus, 'join-room', 'c-presence');
    await request(hal, 'join-room', 'c-presence');
    assert.equal((await request(hal, 'get-presence', { userIds: ['c-gus'] })).presence['c-gus'].status, 'online');
    const off = next(hal, 'presence-update', 5000);
    gus.close();
    const p = await off;
    assert.deepEqual([p.userId, p.status], ['c-gus', 'offline']);
    assert.equal((await request(hal, 'get-presence', { userIds: ['c-gus'] })).presence['c-gus'].status, 'offline');
    // Back online: only users who share a room with gus now hear it; a created room lists both.
    assert.equal((await request(hal, 'create-room', { type: 'group', members: ['c-gus'] })).success, true);
    const on = next(hal, 'presence-update', 5000);
    const gus2 = await user(A, 'c-gus');
    assert.equal((await on).status, 'online');
    gus2.close();
  } finally { gus.close(); hal.close(); }
});

test('a call across nodes: ring, answer, ICE, hang-up', async () => {
  const ivy = await user(A, 'c-ivy');
  const jon1 = await user(B, 'c-jon');
  const jon2 = await user(A, 'c-jon');
  try {
    const rings = [next(jon1, 'incoming-call'), next(jon2, 'incoming-call')];
    const { callId } = await request(ivy, 'call-user', { targetUserId: 'c-jon', offer: { sdp: 'o' } });
    await Promise.all(rings);
    const answered = next(ivy, 'call-answered');
    const elsewhere = next(jon2, 'call-handled-elsewhere');
    assert.equal((await request(jon1, 'call-answer', { callId, answer: { sdp: 'a' } })).success, true);
    assert.deepEqual((await answered).answer, { sdp: 'a' });
    await elsewhere;
    const ice = next(jon1, 'ice-candidate');
    await request(ivy, 'ice-candidate', { callId, candidate: { c: 1 } });
    assert.deepEqual((await ice).candidate, { c: 1 });
    assert.equal((await request(jon2, 'ice-candidate', { callId, candidate: { c: 2 } })).code, 'FORBIDDEN');
    const ended = next(jon1, 'call-ended');
    await request(ivy, 'hang-up', { callId });
    assert.equal((await ended).reason, 'hang-up');
  } finally { [ivy, jon1, jon2].forEach((s) => s.close()); }
});

test('REST on one node reaches sockets on the other; stats cover the cluster', async () => {
  const kim = await user(B, 'c-kim');
  const kim2 = await user(A, 'c-kim');
  try {
    await request(kim, 'subscribe', 'apps:cluster');
    let got = next(kim, 'event');
    await http(`${A.url}/api/publish`, { method: 'POST', headers: { 'x-api-key': KEY }, body: { channel: 'apps:cluster', data: 1 } });
    assert.equal((await got).data, 1);
    got = next(kim, 'ping-me');
    await http(`${A.url}/api/broadcast`, { method: 'POST', headers: { 'x-api-key': KEY }, body: { event: 'ping-me', data: 2, socketId: kim.id } });
    assert.equal(await got, 2);
    const stats = await until(async () => {
      const r = (await http(`${A.url}/api/stats`, { headers: { 'x-api-key': KEY } })).body;
      return r.nodes.length === 2 && r.connectionsByChannel['apps:cluster'] === 1 ? r : null;
    }, 10000, 'cluster stats');
    assert.deepEqual(stats.nodes.map((n) => n.nodeId).sort(), ['node-a', 'node-b']);
    assert.equal(stats.totalConnections, stats.nodes.reduce((s, n) => s + n.connections, 0));
    const gone = [next(kim, 'disconnect'), next(kim2, 'disconnect')];
    const r = await http(`${A.url}/api/users/c-kim/disconnect`, { method: 'POST', headers: { 'x-api-key': KEY } });
    assert.deepEqual(r.body, { success: true, disconnected: 2 });
    await Promise.all(gone);
  } finally { kim.close(); kim2.close(); }
});

// With Sentinel the master's death is a failover, not an outage: redis-modes.test.js tests that one.
test('Redis restarted mid-test: both nodes degrade, recover by themselves, nothing stored is lost', {
  skip: REDIS_MODE === 'sentinel' && 'a Sentinel set fails over instead (redis-modes.test.js)',
}, async () => {
  const lee = await user(A, 'c-lee');
  const max = await user(B, 'c-max');
  try {
    await request(lee, 'join-room', 'c-restart');
    await request(max, 'join-room', 'c-restart');
    const before = await request(lee, 'message', { roomId: 'c-restart', content: 'before' });
    await request(lee, 'private-message', { targetUserId: 'c-nobody', content: 'queued before' });
    await redis.stop();
    await until(async () => (await http(`${A.url}/health`)).body.status === 'degraded', 15000, 'A degraded');
    await until(async () => (await http(`${B.url}/health`)).body.status === 'degraded', 15000, 'B degraded');
    // Each node keeps serving its own sockets: a local socket still answers.
    assert.equal((await request(lee, 'list_channels')).success, true);
    await redis.start();
    await up(A); await up(B);
    // Cross-node delivery works again (the adapter resubscribed).
    // Each send must succeed, the first one included (the gateway retries inside); only the cross-node
    // delivery may take a moment (the adapter resubscribes).
    const got = await until(async () => {
      const p = next(max, 'new-message', 1000).catch(() => null);
      const a = await request(lee, 'message', { roomId: 'c-restart', content: 'after' });
      assert.equal(a.success, true, `message after the restart: ${JSON.stringify(a)}`);
      return p;
    }, 20000, 'cross-node message after restart').catch((e) => {
      for (const [n, g] of [['A', A], ['B', B]]) console.log(`# ${n}:\n${g.logs().split('\n').filter((l) => /WARN|ERROR|redis|adapter|subscri/i.test(l)).slice(-30).join('\n')}`);
      throw e;
    });
    assert.equal(got.content, 'after');
    // No retry: B's first read after the restart succeeds.
    const hist = await request(max, 'load-messages', { roomId: 'c-restart' });
    assert.equal(hist.success, true, `load-messages after the restart: ${JSON.stringify(hist)}`);
    assert.equal(hist.messages[0].id, before.messageId);
    const nobody = (await import('socket.io-client')).io(B.url, { forceNew: true, reconnection: false, auth: { token: token('c-nobody') } });
    assert.deepEqual((await next(nobody, 'pending-messages')).map((m) => m.content), ['queued before']);
    nobody.close();
  } finally { lee.close(); max.close(); }
});

test('SIGKILL a node: its clients reconnect by themselves to the other, rejoin, and find history and queues intact', async () => {
  const C = await startGateway({ ...env(), NODE_ID: 'node-c' });
  await up(C);
  // A load balancer stand-in: ned's client knows one address; it leads to C now, to B after C dies.
  const lb = await tcpProxy(C.port);
  const ned = (await import('socket.io-client')).io(lb.url, {
    forceNew: true, transports: ['websocket'], reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500,
    reconnectionAttempts: 50, auth: { token: token('c-ned') },
  });
  // The app's own connect handler: (re)join its room on every `connected`, as a chat client does.
  const hellos = [];
  const joins = [];
  ned.on('connected', (hello) => {
    hellos.push(hello);
    joins.push(ned.timeout(5000).emitWithAck('join-room', 'c-kill').catch((e) => ({ success: false, error: String(e) })));
  });
  const oz = await user(A, 'c-oz');
  try {
    await until(() => joins.length === 1, 10000, 'ned connected through the proxy');
    assert.equal((await joins[0]).success, true);
    await request(oz, 'join-room', 'c-kill');
    const m = await request(ned, 'message', { roomId: 'c-kill', content: 'before the crash' });
    await request(oz, 'private-message', { targetUserId: 'c-pat', content: 'for pat' });
    const dropped = next(ned, 'disconnect', 10000);
    lb.target(B.port);
    await C.stop('SIGKILL');
    assert.equal(await dropped, 'transport close');
    // The same client (its Manager) comes back by itself, through B, with a new session.
    await until(() => joins.length === 2, 20000, 'ned reconnected');
    assert.notEqual(hellos[1].sessionId, hellos[0].sessionId);
    assert.equal(hellos[1].sessionId, ned.id);
    assert.equal(hellos[1].userId, 'c-ned');
    const j = await joins[1];
    assert.equal(j.success, true, JSON.stringify(j));
    assert.ok(j.recentMessages.some((x) => x.id === m.messageId), 'history written through C is served by B');
    // Its state works after the reconnection: it is in the room again, both ways.
    const toNed = next(ned, 'new-message');
    const fromOz = await request(oz, 'message', { roomId: 'c-kill', content: 'welcome back' });
    // Seen once in about twenty Redis Cluster passes, not reproduced since: on a miss, what the nodes said.
    const got = await toNed.catch((e) => {
      const said = (g) => g.logs().split('\n').filter((l) => /adapter|redis|subscri|WARN|ERROR/i.test(l)).slice(-30).join('\n');
      console.log(`# ned missed the room message; A:\n${said(A)}\n# B:\n${said(B)}`);
      throw e;
    });
    assert.equal(got.id, fromOz.messageId);
    const toOz = next(oz, 'new-message');
    const fromNed = await request(ned, 'message', { roomId: 'c-kill', content: 'thanks' });
    assert.equal(fromNed.success, true);
    assert.equal((await toOz).id, fromNed.messageId);
    // A queue written before the crash is served by B.
    const pat = (await import('socket.io-client')).io(B.url, { forceNew: true, reconnection: false, auth: { token: token('c-pat') } });
    assert.deepEqual((await next(pat, 'pending-messages')).map((x) => x.content), ['for pat']);
    pat.close();
    ned.close();
    // The dead node's sockets stop counting within seconds: ned is offline (no socket left anywhere).
    await until(async () => (await request(oz, 'get-presence', { userIds: ['c-ned'] })).presence['c-ned'].status === 'offline', 30000, 'ned offline');
    const stats = await until(async () => {
      const r = (await http(`${A.url}/api/stats`, { headers: { 'x-api-key': KEY } })).body;
      return r.nodes.every((n) => n.nodeId !== 'node-c') ? r : null;
    }, 20000, 'dead node gone from stats');
    assert.ok(stats.nodes.length >= 2);
  } finally { ned.close(); oz.close(); await lb.close(); await C.stop(); }
});
