// Private messages (SPEC §5): delivery to every socket of the target and the sender's other sockets, the
// offline queue and pending-messages, its cap, clientMessageId de-duplication, mark-read, validation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, connectWithPending, request, next, collect, token, until, http, uniq, WS, POLLING, clients } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway(); });
after(async () => { await gw.stop(); });



async function pm(c, targetUserId, content, extra = {}) {
  const ack = await request(c.socket, 'private-message', { targetUserId, content, ...extra });
  assert.equal(ack.success, true, JSON.stringify(ack));
  return ack;
}

function assertPrivate(msg, { ack, from, to, content }) {
  assert.deepEqual(Object.keys(msg).sort(), ['content', 'fromUser', 'fromUserId', 'id', 'read', 'timestamp', 'toUserId']);
  assert.equal(msg.id, ack.messageId);
  assert.equal(msg.fromUserId, from.id);
  assert.deepEqual(msg.fromUser, from.user);
  assert.equal(msg.toUserId, to);
  assert.equal(msg.content, content);
  assert.equal(typeof msg.timestamp, 'number');
  assert.ok(Math.abs(msg.timestamp - Date.now()) < 60000, 'timestamp is ms since the epoch');
  assert.equal(msg.read, false);
}

test('private-message: ack, delivered to every socket of the target and the sender\'s other sockets, not the sending one', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice');
  const bobId = uniq('bob');
  const a1 = await login(aliceId);
  const a2 = await login(aliceId);
  const b1 = await login(bobId);
  const b2 = await login(bobId, POLLING);
  const carol = await login(uniq('carol'));
  const a1Seen = collect(a1.socket, 'private-message');
  const carolSeen = collect(carol.socket, 'private-message');

  const got = [a2, b1, b2].map((c) => next(c.socket, 'private-message'));
  const ack = await request(a1.socket, 'private-message', { targetUserId: bobId, content: 'hi bob' });
  assert.deepEqual(Object.keys(ack).sort(), ['delivered', 'messageId', 'success']);
  assert.equal(ack.success, true);
  assert.equal(ack.delivered, true);
  assert.equal(typeof ack.messageId, 'string');
  const copies = await Promise.all(got);
  for (const msg of copies) assertPrivate(msg, { ack, from: a1, to: bobId, content: 'hi bob' });
  assert.deepEqual(copies[1], copies[0]);
  assert.deepEqual(copies[2], copies[0]);

  // Fence: bob's reply reaches a1 and carol's own message reaches carol; nothing before them.
  const reply = next(a1.socket, 'private-message');
  const back = await pm(b1, aliceId, 'hi alice');
  assertPrivate(await reply, { ack: back, from: b1, to: aliceId, content: 'hi alice' });
  assert.deepEqual(a1Seen.map((m) => m.id), [back.messageId], 'the sending socket does not get its own message');
  const toCarol = next(carol.socket, 'private-message');
  const fence = await pm(b1, carol.id, 'fence');
  await toCarol;
  assert.deepEqual(carolSeen.map((m) => m.id), [fence.messageId], 'others get nothing');
});

test('offline target: delivered:false, queued, one pending-messages oldest first on the next connect, then gone', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice'); // never connected yet
  const b1 = await login(uniq('bob'));
  const b2 = await login(b1.id);
  const b2Seen = collect(b2.socket, 'private-message');

  const acks = [];
  for (const content of ['first', 'second', 'third']) {
    const ack = await pm(b1, aliceId, content);
    assert.equal(ack.delivered, false, content);
    acks.push(ack);
  }
  await until(() => b2Seen.length === 3, 5000, "the sender's other socket gets its messages");

  const alice = await connectWithPending(gw.url, aliceId, POLLING); // pending-messages may share a payload with connected
  t.after(() => alice.socket.close());
  await until(() => alice.pending.length > 0, 5000, 'pending-messages');
  assert.equal(alice.pending.length, 1);
  const [queued] = alice.pending;
  assert.ok(Array.isArray(queued), 'one event whose argument is the array');
  assert.deepEqual(queued.map((m) => m.content), ['first', 'second', 'third']);
  queued.forEach((m, i) => assertPrivate(m, { ack: acks[i], from: b1, to: aliceId, content: ['first', 'second', 'third'][i] }));
  assert.deepEqual(queued, b2Seen, 'the same messages the sender\'s other socket saw');

  // Fence: a live message arrives; no second pending-messages came before it.
  const live = next(alice.socket, 'private-message');
  const liveAck = await pm(b1, aliceId, 'live');
  assert.equal(liveAck.delivered, true);
  assert.equal((await live).content, 'live');
  assert.equal(alice.pending.length, 1);
  alice.socket.close();

  // Delivered once: the next connection gets no pending-messages.
  const again = await connectWithPending(gw.url, aliceId);
  t.after(() => again.socket.close());
  const live2 = next(again.socket, 'private-message');
  const ack2 = await pm(b1, aliceId, 'live again');
  assert.equal(ack2.delivered, true);
  assert.equal((await live2).content, 'live again');
  assert.deepEqual(again.pending, [], 'the queue was handed over once');
});

test('pending-messages not acked stay queued: the next hand-over (another socket of the user) gets them', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice');
  const bob = await login(uniq('bob'));
  const ack = await pm(bob, aliceId, 'while away');
  assert.equal(ack.delivered, false);

  const first = await connectWithPending(gw.url, aliceId, { ack: false });
  t.after(() => first.socket.close());
  await until(() => first.pending.length > 0, 5000, 'pending-messages');
  assert.deepEqual(first.pending[0].map((m) => m.id), [ack.messageId]);

  // While the first still holds the hand-over: the second waits for it to end unacked, then gets the queue.
  const second = await connectWithPending(gw.url, aliceId);
  t.after(() => second.socket.close());
  await until(() => second.pending.length > 0, 15000, 'pending-messages on the second socket');
  assert.deepEqual(second.pending[0].map((m) => m.id), [ack.messageId]);
  assert.equal(first.pending.length, 1);
});

test('during the presence grace the target counts as offline: queued, delivered:false', async () => {
  const g = await startGateway({ PRESENCE_GRACE_MS: '5000' });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    alice.socket.close();
    await until(async () => (await http(`${g.url}/health`)).body.authenticated === 1, 5000, 'alice gone');
    const ack = await request(bob.socket, 'private-message', { targetUserId: 'alice', content: 'in the grace' });
    assert.equal(ack.success, true);
    assert.equal(ack.delivered, false);
    const back = await connectWithPending(g.url, 'alice');
    open.push(back.socket);
    await until(() => back.pending.length > 0, 5000, 'pending-messages');
    assert.deepEqual(back.pending[0].map((m) => [m.id, m.content]), [[ack.messageId, 'in the grace']]);
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('the offline queue keeps the last 1000 messages per user', async () => {
  const g = await startGateway({ RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    const N = 1005;
    const ids = [];
    // One at a time: the gateway handles a socket's events concurrently, so only acks give an order.
    for (let i = 0; i < N; i++) {
      const ack = await request(bob.socket, 'private-message', { targetUserId: 'alice', content: `q${i}` });
      assert.equal(ack.delivered, false, JSON.stringify(ack));
      ids.push(ack.messageId);
    }
    const alice = await connectWithPending(g.url, 'alice');
    open.push(alice.socket);
    await until(() => alice.pending.length > 0, 10000, 'pending-messages');
    const [queued] = alice.pending;
    assert.equal(queued.length, 1000);
    assert.deepEqual(queued.map((m) => m.content), Array.from({ length: 1000 }, (_, i) => `q${i + 5}`));
    assert.deepEqual(queued.map((m) => m.id), ids.slice(5));
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('clientMessageId: the same id returns the first messageId and is not delivered or queued again', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice');
  const a1 = await login(aliceId);
  const a2 = await login(aliceId);
  const bob = await login(uniq('bob'));
  const bobSeen = collect(bob.socket, 'private-message');

  const first = await pm(a1, bob.id, 'once', { clientMessageId: 'pm-1' });
  const second = await pm(a1, bob.id, 'once', { clientMessageId: 'pm-1' });
  assert.equal(second.messageId, first.messageId);
  assert.equal(second.delivered, true);
  const other = await pm(a2, bob.id, 'once', { clientMessageId: 'pm-1' });
  assert.equal(other.messageId, first.messageId, 'the same user on another socket');
  const fence = await pm(a1, bob.id, 'fence');
  await until(() => bobSeen.some((m) => m.id === fence.messageId), 5000, 'the fence');
  assert.deepEqual(bobSeen.map((m) => m.id), [first.messageId, fence.messageId]);

  // Offline target: queued once.
  const carolId = uniq('carol');
  const q1 = await pm(a1, carolId, 'queued once', { clientMessageId: 'pm-2' });
  const q2 = await pm(a1, carolId, 'queued once', { clientMessageId: 'pm-2' });
  assert.equal(q2.messageId, q1.messageId);
  assert.equal(q1.delivered, false);
  assert.equal(q2.delivered, false);
  const carol = await connectWithPending(gw.url, carolId);
  t.after(() => carol.socket.close());
  await until(() => carol.pending.length > 0, 5000, 'pending-messages');
  assert.deepEqual(carol.pending[0].map((m) => m.id), [q1.messageId]);
});

test('mark-read: messages-read to every socket of each sender, with only their messages to the reader', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice')); // the reader
  const b1 = await login(uniq('bob'));
  const b2 = await login(b1.id);
  const carol = await login(uniq('carol'));
  const dave = await login(uniq('dave'));
  const bobSeen = collect(b2.socket, 'messages-read');
  const carolSeen = collect(carol.socket, 'messages-read');

  const m1 = (await pm(b1, alice.id, 'm1')).messageId;
  const m2 = (await pm(b1, alice.id, 'm2')).messageId;
  const m3 = (await pm(carol, alice.id, 'm3')).messageId;
  const m4 = (await pm(b1, dave.id, 'm4 to dave')).messageId;
  const m5 = (await pm(alice, b1.id, 'm5 from alice')).messageId;

  const toB1 = next(b1.socket, 'messages-read');
  const toB2 = next(b2.socket, 'messages-read');
  const toCarol = next(carol.socket, 'messages-read');
  const t0 = Date.now();
  assert.deepEqual(
    await request(alice.socket, 'mark-read', { messageIds: [m1, m3, m2, m4, m5, 'no-such-message'] }),
    { success: true },
  );
  for (const ev of [await toB1, await toB2]) {
    assert.deepEqual(Object.keys(ev).sort(), ['messageIds', 'readerId', 'timestamp']);
    assert.equal(ev.readerId, alice.id);
    assert.deepEqual([...ev.messageIds].sort(), [m1, m2].sort(), 'only bob\'s messages addressed to alice');
    assert.equal(typeof ev.timestamp, 'number');
    assert.ok(ev.timestamp >= t0 - 1000 && ev.timestamp <= Date.now() + 1000);
  }
  const c = await toCarol;
  assert.equal(c.readerId, alice.id);
  assert.deepEqual(c.messageIds, [m3]);

  // Marking someone else's messages does nothing: dave marks alice's m1, carol marks m2.
  assert.equal((await request(dave.socket, 'mark-read', { messageIds: [m1, m2, m3] })).success, true);
  assert.equal((await request(carol.socket, 'mark-read', { messageIds: [m2] })).success, true);
  // Fence: dave marks his own m4; bob hears of that one only.
  const fence = next(b2.socket, 'messages-read');
  await request(dave.socket, 'mark-read', { messageIds: [m4] });
  assert.deepEqual((await fence).messageIds, [m4]);
  assert.deepEqual(bobSeen.map((e) => [e.readerId, [...e.messageIds].sort()]), [[alice.id, [m1, m2].sort()], [dave.id, [m4]]]);
  const carolFence = next(carol.socket, 'messages-read');
  await request(alice.socket, 'mark-read', { messageIds: [m3] });
  await carolFence;
  assert.deepEqual(carolSeen.map((e) => [e.readerId, e.messageIds]), [[alice.id, [m3]], [alice.id, [m3]]]);
});

test('validation: INVALID_PAYLOAD for a missing or empty targetUserId or content; anonymous UNAUTHENTICATED', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  for (const payload of [
    { content: 'no target' },
    { targetUserId: '', content: 'empty target' },
    { targetUserId: 'bob' },
    { targetUserId: 'bob', content: '' },
    { targetUserId: 42, content: 'x' },
    'just a string',
  ]) {
    const ack = await request(alice.socket, 'private-message', payload);
    assert.equal(ack.success, false, JSON.stringify(payload));
    assert.equal(ack.code, 'INVALID_PAYLOAD', JSON.stringify(payload));
    assert.equal(typeof ack.error, 'string');
  }
  for (const payload of [{}, { messageIds: 'm1' }, { messageIds: [1, 2] }]) {
    const ack = await request(alice.socket, 'mark-read', payload);
    assert.equal(ack.success, false, JSON.stringify(payload));
    assert.equal(ack.code, 'INVALID_PAYLOAD', JSON.stringify(payload));
  }

  const { socket } = await connect(gw.url, WS);
  try {
    for (const [event, arg] of [['private-message', { targetUserId: 'bob', content: 'x' }], ['mark-read', { messageIds: ['m1'] }]]) {
      const ack = await request(socket, event, arg);
      assert.equal(ack.success, false, event);
      assert.equal(ack.code, 'UNAUTHENTICATED', event);
    }
  } finally { socket.close(); }
});
