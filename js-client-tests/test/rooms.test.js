// Rooms, messages and typing (SPEC §4, errors of §7): join/leave, create-room (group, direct, access),
// message and its de-duplication, edit/delete, list-rooms, load-messages, validation, typing and its timers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, request, next, collect, token, until, uniq, WS, POLLING, clients } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway(); });
after(async () => { await gw.stop(); });

const ACCESS_DENIED = { success: false, error: 'Access denied', code: 'FORBIDDEN' };
const NOT_IN_ROOM = { success: false, error: 'Not in room', code: 'NOT_IN_ROOM' };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


async function join(c, roomId) {
  const ack = await request(c.socket, 'join-room', roomId);
  assert.equal(ack.success, true, `join-room ${roomId}: ${JSON.stringify(ack)}`);
  return ack;
}

async function say(c, roomId, content, extra = {}) {
  const ack = await request(c.socket, 'message', { roomId, content, ...extra });
  assert.equal(ack.success, true, `message: ${JSON.stringify(ack)}`);
  return ack;
}

/** Sends and returns the Message as the room sees it (the sender's own new-message). */
async function post(c, roomId, content, extra = {}) {
  const got = next(c.socket, 'new-message');
  const ack = await say(c, roomId, content, extra);
  const msg = await got;
  assert.equal(msg.id, ack.messageId);
  return msg;
}

function expectedMessage(sender, roomId, ack, content, { type = 'text', replyTo = null } = {}) {
  return {
    id: ack.messageId, roomId, userId: sender.id, user: sender.user, content, type, replyTo,
    timestamp: ack.timestamp, edited: false, deleted: false,
  };
}

/** Timestamps are in milliseconds: let the clock move so that two actions get different ones. */
const tick = () => sleep(5);

test('join-room: room, members with the joiner, recent messages oldest first; user-joined to the others only', async (t) => {
  const login = clients(t, gw);
  const room = uniq('lobby');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol'));

  const first = await join(alice, room);
  assert.deepEqual(Object.keys(first).sort(), ['members', 'recentMessages', 'room', 'success']);
  assert.equal(first.room.id, room);
  assert.equal(typeof first.room.name, 'string');
  assert.equal(typeof first.room.type, 'string');
  assert.deepEqual(first.members, [{ userId: alice.id, user: alice.user }]);
  assert.deepEqual(first.recentMessages, []);

  const sent = [];
  for (const content of ['one', 'two', 'three']) sent.push(await post(alice, room, content));

  const aliceJoins = collect(alice.socket, 'user-joined');
  const bobJoins = collect(bob.socket, 'user-joined');
  const seenByAlice = next(alice.socket, 'user-joined');
  const ack = await join(bob, room);
  assert.equal(ack.room.id, room);
  assert.deepEqual(
    [...ack.members].sort((a, b) => a.userId.localeCompare(b.userId)),
    [{ userId: alice.id, user: alice.user }, { userId: bob.id, user: bob.user }].sort((a, b) => a.userId.localeCompare(b.userId)),
  );
  assert.deepEqual(ack.recentMessages, sent, 'the messages so far, oldest first, as new-message showed them');
  assert.deepEqual(await seenByAlice, { userId: bob.id, user: bob.user, roomId: room });

  // Fence: carol's join reaches bob; bob's own join must not have come before it.
  const seenByBob = next(bob.socket, 'user-joined');
  await join(carol, room);
  assert.deepEqual(await seenByBob, { userId: carol.id, user: carol.user, roomId: room });
  assert.deepEqual(bobJoins.map((e) => e.userId), [carol.id], 'the joiner does not get its own user-joined');
  await until(() => aliceJoins.length === 2, 5000, 'alice sees carol join');
  assert.deepEqual(aliceJoins.map((e) => e.userId), [bob.id, carol.id]);
});

test('multi-device: a user with several sockets is one member, and each joined socket gets the messages', async (t) => {
  const login = clients(t, gw);
  const room = uniq('devices');
  const aliceId = uniq('alice');
  const phone = await login(aliceId);
  const laptop = await login(aliceId, POLLING);
  const bob = await login(uniq('bob'));
  await join(phone, room);
  await join(laptop, room);
  const ack = await join(bob, room);
  assert.equal(ack.members.length, 2, JSON.stringify(ack.members));
  assert.deepEqual(ack.members.filter((m) => m.userId === aliceId), [{ userId: aliceId, user: phone.user }]);

  const onPhone = next(phone.socket, 'new-message');
  const onLaptop = next(laptop.socket, 'new-message');
  const onBob = next(bob.socket, 'new-message');
  const sent = await say(phone, room, 'from the phone');
  const want = expectedMessage(phone, room, sent, 'from the phone');
  assert.deepEqual(await onPhone, want);
  assert.deepEqual(await onLaptop, want);
  assert.deepEqual(await onBob, want);

  const back = [next(phone.socket, 'new-message'), next(laptop.socket, 'new-message')];
  const reply = await say(bob, room, 'to both devices');
  for (const m of await Promise.all(back)) assert.deepEqual(m, expectedMessage(bob, room, reply, 'to both devices'));
});

test('leave-room: ack, user-left to the others, then no messages and NOT_IN_ROOM', async (t) => {
  const login = clients(t, gw);
  const room = uniq('leave');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(bob, room);

  const bobLefts = collect(bob.socket, 'user-left');
  const left = next(alice.socket, 'user-left');
  assert.deepEqual(await request(bob.socket, 'leave-room', room), { success: true });
  assert.deepEqual(await left, { userId: bob.id, roomId: room });

  const bobMessages = collect(bob.socket, 'new-message');
  await post(alice, room, 'bob is gone');
  assert.deepEqual(await request(bob.socket, 'message', { roomId: room, content: 'still here?' }), NOT_IN_ROOM);
  // Fence: a message bob surely gets (in another room) after the one he must not get.
  const other = uniq('other');
  await join(bob, other);
  const fence = next(bob.socket, 'new-message');
  await say(bob, other, 'fence');
  assert.equal((await fence).content, 'fence');
  assert.deepEqual(bobMessages.map((m) => m.content), ['fence']);
  assert.deepEqual(bobLefts, [], 'the leaver does not get its own user-left');
});

test('create-room group: the creator is always a member; only members and admins may join', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol'));
  const admin = await login(uniq('root'), { role: 'admin' });

  const created = await request(alice.socket, 'create-room', { name: 'Team', type: 'group', members: [bob.id] });
  assert.equal(created.success, true, JSON.stringify(created));
  const { room } = created;
  assert.equal(typeof room.id, 'string');
  assert.ok(room.id.length > 0);
  assert.equal(room.name, 'Team');
  assert.equal(room.type, 'group');
  assert.deepEqual([...room.members].sort(), [alice.id, bob.id].sort(), 'the creator is a member without listing itself');

  const aliceJoin = await join(alice, room.id);
  assert.deepEqual(
    { id: aliceJoin.room.id, name: aliceJoin.room.name, type: aliceJoin.room.type },
    { id: room.id, name: 'Team', type: 'group' },
  );
  await join(bob, room.id);
  assert.deepEqual(await request(carol.socket, 'join-room', room.id), ACCESS_DENIED);
  assert.deepEqual(await request(carol.socket, 'message', { roomId: room.id, content: 'let me in' }), NOT_IN_ROOM);
  await join(admin, room.id);

  const other = await request(bob.socket, 'create-room', { type: 'group', members: [carol.id] });
  assert.equal(other.success, true);
  assert.deepEqual([...other.room.members].sort(), [bob.id, carol.id].sort());
  assert.deepEqual(await request(alice.socket, 'join-room', other.room.id), ACCESS_DENIED);

  const bad = await request(alice.socket, 'create-room', { type: 'channel', members: [bob.id] });
  assert.equal(bad.success, false);
  assert.equal(bad.code, 'INVALID_PAYLOAD');
});

test('create-room direct: the same room whoever creates it, closed to others', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol'));

  const a = await request(alice.socket, 'create-room', { type: 'direct', members: [bob.id] });
  assert.equal(a.success, true, JSON.stringify(a));
  assert.equal(a.room.type, 'direct');
  assert.deepEqual([...a.room.members].sort(), [alice.id, bob.id].sort());
  const b = await request(bob.socket, 'create-room', { type: 'direct', members: [alice.id] });
  assert.equal(b.success, true, JSON.stringify(b));
  assert.equal(b.room.id, a.room.id, 'bob creating it finds the same room');
  const again = await request(alice.socket, 'create-room', { type: 'direct', members: [bob.id] });
  assert.equal(again.room.id, a.room.id);
  const withCarol = await request(alice.socket, 'create-room', { type: 'direct', members: [carol.id] });
  assert.equal(withCarol.success, true);
  assert.notEqual(withCarol.room.id, a.room.id, 'another pair is another room');

  await join(alice, a.room.id);
  await join(bob, a.room.id);
  assert.deepEqual(await request(carol.socket, 'join-room', a.room.id), ACCESS_DENIED);
  const got = next(bob.socket, 'new-message');
  const ack = await say(alice, a.room.id, 'hi bob');
  assert.deepEqual(await got, expectedMessage(alice, a.room.id, ack, 'hi bob'));
});

test('message: ack, then new-message with the Message shape to everyone in the room, the sender included', async (t) => {
  const login = clients(t, gw);
  const room = uniq('chat');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol')); // connected, not in the room
  await join(alice, room);
  await join(bob, room);
  const carolSeen = collect(carol.socket, 'new-message');

  const toAlice = next(alice.socket, 'new-message');
  const toBob = next(bob.socket, 'new-message');
  const before = Date.now();
  const ack = await request(alice.socket, 'message', { roomId: room, content: 'hello' });
  assert.deepEqual(Object.keys(ack).sort(), ['messageId', 'success', 'timestamp']);
  assert.equal(ack.success, true);
  assert.equal(typeof ack.messageId, 'string');
  assert.equal(typeof ack.timestamp, 'number');
  assert.ok(ack.timestamp >= before - 1000 && ack.timestamp <= Date.now() + 1000, 'timestamp is ms since the epoch');
  const want = expectedMessage(alice, room, ack, 'hello');
  assert.deepEqual(await toAlice, want);
  assert.deepEqual(await toBob, want);

  const reply = next(alice.socket, 'new-message');
  const ack2 = await say(bob, room, 'a picture', { type: 'image', replyTo: ack.messageId });
  assert.deepEqual(await reply, expectedMessage(bob, room, ack2, 'a picture', { type: 'image', replyTo: ack.messageId }));
  assert.notEqual(ack2.messageId, ack.messageId);

  // Fence for carol: a message in a room she is in arrives; nothing of the other room came before it.
  const hers = uniq('hers');
  await join(carol, hers);
  const fence = next(carol.socket, 'new-message');
  await say(carol, hers, 'fence');
  await fence;
  assert.deepEqual(carolSeen.map((m) => m.content), ['fence']);

  const empty = await request(alice.socket, 'message', { roomId: room, content: '' });
  assert.equal(empty.success, false);
  assert.equal(empty.code, 'INVALID_PAYLOAD');
});

test('message in a room not joined: NOT_IN_ROOM', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  assert.deepEqual(await request(alice.socket, 'message', { roomId: uniq('never-joined'), content: 'x' }), NOT_IN_ROOM);
});

test('clientMessageId: the same id from the same user returns the first messageId and is not broadcast again', async (t) => {
  const login = clients(t, gw);
  const room = uniq('dedup');
  const aliceId = uniq('alice');
  const alice = await login(aliceId);
  const alicePhone = await login(aliceId);
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(alicePhone, room);
  await join(bob, room);
  const bobSeen = collect(bob.socket, 'new-message');

  const first = await say(alice, room, 'once', { clientMessageId: 'c-1' });
  const second = await say(alice, room, 'once', { clientMessageId: 'c-1' });
  assert.equal(second.messageId, first.messageId);
  const fromPhone = await say(alicePhone, room, 'once', { clientMessageId: 'c-1' });
  assert.equal(fromPhone.messageId, first.messageId, 'the same user on another device');
  const bobs = await say(bob, room, 'mine', { clientMessageId: 'c-1' });
  assert.notEqual(bobs.messageId, first.messageId, 'another user may use the same clientMessageId');

  const fence = await say(alice, room, 'fence');
  await until(() => bobSeen.some((m) => m.id === fence.messageId), 5000, 'the fence message');
  assert.deepEqual(bobSeen.map((m) => m.id), [first.messageId, bobs.messageId, fence.messageId]);
  const history = await request(bob.socket, 'load-messages', { roomId: room });
  assert.deepEqual(history.messages.map((m) => m.id), [first.messageId, bobs.messageId, fence.messageId]);
});

test('edit-message: message-updated with the whole message to the room, the editor included; history keeps it', async (t) => {
  const login = clients(t, gw);
  const room = uniq('edit');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(bob, room);
  const original = await post(alice, room, 'first draft');
  await tick();

  const toAlice = next(alice.socket, 'message-updated');
  const toBob = next(bob.socket, 'message-updated');
  assert.deepEqual(
    await request(alice.socket, 'edit-message', { roomId: room, messageId: original.id, content: 'second draft' }),
    { success: true },
  );
  const want = { ...original, content: 'second draft', edited: true };
  assert.deepEqual(await toAlice, want);
  assert.deepEqual(await toBob, want, 'the first timestamp is kept');

  const page = await request(bob.socket, 'load-messages', { roomId: room });
  assert.deepEqual(page.messages, [want]);
  const carol = await login(uniq('carol'));
  assert.deepEqual((await join(carol, room)).recentMessages, [want]);

  const again = next(bob.socket, 'message-updated');
  await request(alice.socket, 'edit-message', { roomId: room, messageId: original.id, content: 'final' });
  assert.deepEqual(await again, { ...original, content: 'final', edited: true });
});

test('delete-message: message-deleted to the room; history keeps it deleted with empty content; then NOT_FOUND', async (t) => {
  const login = clients(t, gw);
  const room = uniq('delete');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(bob, room);
  const doomed = await post(alice, room, 'regrettable');
  const kept = await post(alice, room, 'fine');

  const toAlice = next(alice.socket, 'message-deleted');
  const toBob = next(bob.socket, 'message-deleted');
  assert.deepEqual(await request(alice.socket, 'delete-message', { roomId: room, messageId: doomed.id }), { success: true });
  assert.deepEqual(await toAlice, { roomId: room, messageId: doomed.id });
  assert.deepEqual(await toBob, { roomId: room, messageId: doomed.id });

  const page = await request(bob.socket, 'load-messages', { roomId: room });
  assert.equal(page.messages.length, 2);
  const [gone, still] = page.messages;
  assert.equal(gone.id, doomed.id);
  assert.equal(gone.deleted, true);
  assert.equal(gone.content, '');
  assert.equal(gone.userId, alice.id);
  assert.equal(gone.timestamp, doomed.timestamp);
  assert.deepEqual(still, kept);

  const again = await request(alice.socket, 'delete-message', { roomId: room, messageId: doomed.id });
  assert.equal(again.success, false);
  assert.equal(again.code, 'NOT_FOUND');
  const edit = await request(alice.socket, 'edit-message', { roomId: room, messageId: doomed.id, content: 'back' });
  assert.equal(edit.success, false);
  assert.equal(edit.code, 'NOT_FOUND');
});

test('edit and delete: only the author or an admin (FORBIDDEN), joined or not; unknown messages NOT_FOUND', async (t) => {
  const login = clients(t, gw);
  const room = uniq('perm');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const admin = await login(uniq('root'), { role: 'admin' }); // never joins the room
  await join(alice, room);
  await join(bob, room);
  const msg = await post(alice, room, 'mine');

  for (const [event, payload] of [
    ['edit-message', { roomId: room, messageId: msg.id, content: 'hijacked' }],
    ['delete-message', { roomId: room, messageId: msg.id }],
  ]) {
    const ack = await request(bob.socket, event, payload);
    assert.equal(ack.success, false, event);
    assert.equal(ack.code, 'FORBIDDEN', event);
    assert.equal(typeof ack.error, 'string');
  }
  assert.deepEqual((await request(alice.socket, 'load-messages', { roomId: room })).messages, [msg], 'unchanged');

  for (const [event, payload] of [
    ['edit-message', { roomId: room, messageId: 'no-such-message', content: 'x' }],
    ['delete-message', { roomId: room, messageId: 'no-such-message' }],
    ['edit-message', { roomId: uniq('elsewhere'), messageId: msg.id, content: 'x' }],
    ['delete-message', { roomId: uniq('elsewhere'), messageId: msg.id }],
  ]) {
    const ack = await request(alice.socket, event, payload);
    assert.equal(ack.success, false, `${event} ${JSON.stringify(payload)}`);
    assert.equal(ack.code, 'NOT_FOUND', `${event} ${JSON.stringify(payload)}`);
  }

  // An admin not in the room: allowed; the room and the admin get the update.
  const toBob = next(bob.socket, 'message-updated');
  const toAdmin = next(admin.socket, 'message-updated');
  assert.deepEqual(await request(admin.socket, 'edit-message', { roomId: room, messageId: msg.id, content: 'moderated' }), { success: true });
  const moderated = { ...msg, content: 'moderated', edited: true };
  assert.deepEqual(await toBob, moderated);
  assert.deepEqual(await toAdmin, moderated);

  // The author, after leaving the room, may still edit and delete.
  assert.deepEqual(await request(alice.socket, 'leave-room', room), { success: true });
  const toAuthor = next(alice.socket, 'message-updated');
  const toBob2 = next(bob.socket, 'message-updated');
  assert.deepEqual(await request(alice.socket, 'edit-message', { roomId: room, messageId: msg.id, content: 'mine again' }), { success: true });
  assert.deepEqual(await toAuthor, { ...msg, content: 'mine again', edited: true });
  assert.deepEqual(await toBob2, { ...msg, content: 'mine again', edited: true });
  const deleted = next(bob.socket, 'message-deleted');
  assert.deepEqual(await request(admin.socket, 'delete-message', { roomId: room, messageId: msg.id }), { success: true });
  assert.deepEqual(await deleted, { roomId: room, messageId: msg.id });
});

test('list-rooms: the created rooms that list the caller, newest message (else newest room) first', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol'));
  const dave = await login(uniq('dave'));

  assert.deepEqual(await request(dave.socket, 'list-rooms'), { success: true, rooms: [] });

  const create = async (c, body) => {
    const ack = await request(c.socket, 'create-room', body);
    assert.equal(ack.success, true, JSON.stringify(ack));
    await tick();
    return ack.room;
  };
  const A = await create(alice, { name: 'A', type: 'group', members: [bob.id] });
  const B = await create(bob, { name: 'B', type: 'group', members: [alice.id] });
  const C = await create(alice, { type: 'direct', members: [carol.id] });
  // An open room alice joins and talks in is not listed.
  const open = uniq('open');
  await join(alice, open);
  await post(alice, open, 'not listed');

  const list = await request(alice.socket, 'list-rooms');
  assert.equal(list.success, true);
  assert.deepEqual(list.rooms.map((r) => r.id), [C.id, B.id, A.id], 'no messages: newest room first');
  const a = list.rooms[2];
  assert.deepEqual(Object.keys(a).sort(), ['id', 'lastMessage', 'members', 'name', 'type']);
  assert.deepEqual({ ...a, members: [...a.members].sort() },
    { id: A.id, name: 'A', type: 'group', members: [alice.id, bob.id].sort(), lastMessage: null });
  assert.equal(list.rooms[0].type, 'direct');
  assert.deepEqual([...list.rooms[0].members].sort(), [alice.id, carol.id].sort());

  await join(alice, A.id);
  const inA = await post(alice, A.id, 'in A');
  await tick();
  let rooms = (await request(alice.socket, 'list-rooms')).rooms;
  assert.deepEqual(rooms.map((r) => r.id), [A.id, C.id, B.id]);
  assert.deepEqual(rooms[0].lastMessage, inA);

  await join(bob, B.id);
  const inB = await post(bob, B.id, 'in B');
  rooms = (await request(alice.socket, 'list-rooms')).rooms;
  assert.deepEqual(rooms.map((r) => r.id), [B.id, A.id, C.id]);
  assert.deepEqual(rooms[0].lastMessage, inB);
  assert.deepEqual(rooms[1].lastMessage, inA);

  assert.deepEqual((await request(bob.socket, 'list-rooms')).rooms.map((r) => r.id), [B.id, A.id]);
  assert.deepEqual((await request(carol.socket, 'list-rooms')).rooms.map((r) => r.id), [C.id]);
  assert.deepEqual(await request(dave.socket, 'list-rooms'), { success: true, rooms: [] });
});

test('load-messages: history order, before, limit and hasMore', async (t) => {
  const login = clients(t, gw);
  const room = uniq('history');
  const alice = await login(uniq('alice'));
  await join(alice, room);
  assert.deepEqual(await request(alice.socket, 'load-messages', { roomId: room }), { success: true, messages: [], hasMore: false });
  const m = [];
  for (let i = 0; i < 7; i++) m.push(await post(alice, room, `m${i}`));
  const ids = (page) => page.messages.map((x) => x.content);
  const load = (q) => request(alice.socket, 'load-messages', { roomId: room, ...q });

  const all = await load({});
  assert.deepEqual(all, { success: true, messages: m, hasMore: false });
  let page = await load({ limit: 3 });
  assert.deepEqual([ids(page), page.hasMore], [['m4', 'm5', 'm6'], true]);
  page = await load({ before: m[4].id, limit: 3 });
  assert.deepEqual([ids(page), page.hasMore], [['m1', 'm2', 'm3'], true]);
  page = await load({ before: m[3].id, limit: 3 });
  assert.deepEqual([ids(page), page.hasMore], [['m0', 'm1', 'm2'], false]);
  page = await load({ before: m[1].id, limit: 3 });
  assert.deepEqual([ids(page), page.hasMore], [['m0'], false]);
  page = await load({ before: m[0].id });
  assert.deepEqual([ids(page), page.hasMore], [[], false]);
  page = await load({ before: m[6].id });
  assert.deepEqual([ids(page), page.hasMore], [['m0', 'm1', 'm2', 'm3', 'm4', 'm5'], false]);
  page = await load({ limit: 1 });
  assert.deepEqual([ids(page), page.hasMore], [['m6'], true]);
  page = await load({ limit: 100 });
  assert.deepEqual(page.messages, m);

  // Reading needs no join: a second socket of another user that never joined.
  const bob = await login(uniq('bob'));
  const fromBob = await request(bob.socket, 'load-messages', { roomId: room, limit: 2 });
  assert.deepEqual([ids(fromBob), fromBob.hasMore], [['m5', 'm6'], true]);
});

test('load-messages: a limit outside 1..100 is INVALID_PAYLOAD, an unknown before is NOT_FOUND', async (t) => {
  const login = clients(t, gw);
  const room = uniq('limits');
  const alice = await login(uniq('alice'));
  await join(alice, room);
  const m = await post(alice, room, 'only');
  for (const limit of [0, 101, -1, 2.5, 1000]) {
    const ack = await request(alice.socket, 'load-messages', { roomId: room, limit });
    assert.equal(ack.success, false, `limit ${limit}`);
    assert.equal(ack.code, 'INVALID_PAYLOAD', `limit ${limit}`);
  }
  const unknown = await request(alice.socket, 'load-messages', { roomId: room, before: 'no-such-message' });
  assert.equal(unknown.success, false);
  assert.equal(unknown.code, 'NOT_FOUND');
  const otherRoom = await request(alice.socket, 'load-messages', { roomId: uniq('elsewhere'), before: m.id });
  assert.equal(otherRoom.code, 'NOT_FOUND', 'a message of another room is unknown here');
});

test('a history longer than 50: join-room returns the last 50, load-messages pages back to the rest', async (t) => {
  const login = clients(t, gw);
  const room = uniq('long');
  const alice = await login(uniq('alice'));
  await join(alice, room);
  const acks = [];
  for (let i = 0; i < 60; i++) acks.push(await say(alice, room, `n${i}`));
  const bob = await login(uniq('bob'));
  const ack = await join(bob, room);
  assert.equal(ack.recentMessages.length, 50);
  assert.deepEqual(ack.recentMessages.map((x) => x.id), acks.slice(10).map((a) => a.messageId));
  assert.deepEqual(ack.recentMessages.map((x) => x.content), acks.slice(10).map((_, i) => `n${i + 10}`));

  const newest = await request(bob.socket, 'load-messages', { roomId: room });
  assert.deepEqual(newest.messages.map((x) => x.id), acks.slice(10).map((a) => a.messageId), 'default limit 50');
  assert.equal(newest.hasMore, true);
  const older = await request(bob.socket, 'load-messages', { roomId: room, before: newest.messages[0].id });
  assert.deepEqual(older.messages.map((x) => x.content), acks.slice(0, 10).map((_, i) => `n${i}`));
  assert.equal(older.hasMore, false);
});

test('anonymous sockets get UNAUTHENTICATED for every chat event', async () => {
  const { socket } = await connect(gw.url, WS);
  const room = uniq('anon');
  try {
    const events = [
      ['join-room', room],
      ['leave-room', room],
      ['create-room', { type: 'group', members: ['someone'] }],
      ['message', { roomId: room, content: 'hi' }],
      ['edit-message', { roomId: room, messageId: 'm1', content: 'x' }],
      ['delete-message', { roomId: room, messageId: 'm1' }],
      ['list-rooms'],
      ['load-messages', { roomId: room }],
      ['typing', { roomId: room }],
      ['stop-typing', { roomId: room }],
    ];
    for (const [event, ...args] of events) {
      const ack = await request(socket, event, ...args);
      assert.equal(ack.success, false, event);
      assert.equal(ack.code, 'UNAUTHENTICATED', event);
      assert.equal(typeof ack.error, 'string', event);
    }
    // Without an ack the failure comes as an `error` event (SPEC §7).
    const err = next(socket, 'error');
    socket.emit('join-room', room);
    const e = await err;
    assert.equal(e.event, 'join-room');
    assert.equal(e.code, 'UNAUTHENTICATED');
    assert.equal(typeof e.error, 'string');
  } finally { socket.close(); }
});

test('invalid room ids are INVALID_PAYLOAD; ids at the limits are accepted', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  const bad = ['', 'x'.repeat(129), 'has space', 'user:alice', 'system:x', 'socket:abc', 'ünïcode'];
  for (const id of bad) {
    for (const [event, payload] of [
      ['join-room', id],
      ['leave-room', id],
      ['message', { roomId: id, content: 'x' }],
      ['load-messages', { roomId: id }],
      ['typing', { roomId: id }],
    ]) {
      const ack = await request(alice.socket, event, payload);
      assert.equal(ack.success, false, `${event} ${JSON.stringify(id)}`);
      assert.equal(ack.code, 'INVALID_PAYLOAD', `${event} ${JSON.stringify(id)}`);
    }
  }
  for (const id of ['y'.repeat(128), `A-z_0.9@x:${uniq('y')}`, 'users:fine', 'x']) {
    const ack = await request(alice.socket, 'join-room', id);
    assert.equal(ack.success, true, `${id}: ${JSON.stringify(ack)}`);
    assert.equal(ack.room.id, id);
  }
});

test('typing: user-typing to the others; stop-typing sends user-stopped-typing', async (t) => {
  const login = clients(t, gw);
  const room = uniq('typing');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(bob, room);
  const aliceTyping = collect(alice.socket, 'user-typing');

  const seen = next(bob.socket, 'user-typing');
  assert.deepEqual(await request(alice.socket, 'typing', { roomId: room }), { success: true });
  assert.deepEqual(await seen, { userId: alice.id, user: alice.user, roomId: room });

  // Fence: bob's typing reaches alice; alice's own came before it and must not be there.
  const fence = next(alice.socket, 'user-typing');
  await request(bob.socket, 'typing', { roomId: room });
  assert.equal((await fence).userId, bob.id);
  assert.deepEqual(aliceTyping.map((e) => e.userId), [bob.id], 'the typist does not get its own user-typing');

  const stopped = next(bob.socket, 'user-stopped-typing', 1500); // well before the 3 s timeout
  assert.deepEqual(await request(alice.socket, 'stop-typing', { roomId: room }), { success: true });
  assert.deepEqual(await stopped, { userId: alice.id, roomId: room });
});

test('typing stops when the typist leaves the room', async (t) => {
  const login = clients(t, gw);
  const room = uniq('typing-leave');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  await join(alice, room);
  await join(bob, room);
  const typing = next(bob.socket, 'user-typing');
  await request(alice.socket, 'typing', { roomId: room });
  await typing;
  const stopped = next(bob.socket, 'user-stopped-typing', 1500);
  const left = next(bob.socket, 'user-left', 1500);
  await request(alice.socket, 'leave-room', room);
  const [s, l] = await Promise.allSettled([stopped, left]);
  assert.equal(s.status, 'fulfilled', String(s.reason));
  assert.deepEqual(s.value, { userId: alice.id, roomId: room });
  assert.equal(l.status, 'fulfilled', String(l.reason));
  assert.deepEqual(l.value, { userId: alice.id, roomId: room });
});

test('typing stops when the typist disconnects (rounds of typists closing their sockets at once)', async (t) => {
  // Many at once, in rounds, because the gateway must handle every disconnect, including those whose
  // namespace disconnect and transport close reach it together (what socket.close() sends).
  const login = clients(t, gw);
  const bob = await login(uniq('bob'));
  const stops = collect(bob.socket, 'user-stopped-typing');
  const lefts = collect(bob.socket, 'user-left');
  const has = (list, { alice, room }) => list.some((e) => e.userId === alice.id && e.roomId === room);
  const missing = [];
  for (let round = 0; round < 4; round++) {
    const typists = [];
    for (let i = 0; i < 16; i++) {
      const room = uniq(`typing-gone${round}-${i}`);
      await join(bob, room);
      const alice = await login(uniq(`alice${round}-${i}`), i % 4 ? WS : POLLING);
      await join(alice, room);
      const typing = next(bob.socket, 'user-typing');
      await request(alice.socket, 'typing', { roomId: room });
      assert.equal((await typing).userId, alice.id);
      typists.push({ alice, room });
    }
    for (const { alice } of typists) alice.socket.close();
    // 1.5 s: well before the 3 s typing timeout, so each stop is the disconnect's.
    await until(() => typists.every((x) => has(stops, x) && has(lefts, x)), 1500).catch(() => {});
    typists.forEach((x, i) => {
      if (!has(stops, x)) missing.push(`round ${round} typist ${i}: no user-stopped-typing`);
      if (!has(lefts, x)) missing.push(`round ${round} typist ${i}: no user-left`);
    });
  }
  assert.deepEqual(missing, [], 'user-stopped-typing (and user-left) for every typist that disconnected');
  for (const e of [...stops, ...lefts]) assert.deepEqual(Object.keys(e).sort(), ['roomId', 'userId']);
});

test('typing stops TYPING_TIMEOUT_MS after the last typing, once', async () => {
  const g = await startGateway({ TYPING_TIMEOUT_MS: '300' });
  const sockets = [];
  try {
    const room = 'timeout';
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    sockets.push(alice.socket, bob.socket);
    await request(alice.socket, 'join-room', room);
    await request(bob.socket, 'join-room', room);
    const stops = collect(bob.socket, 'user-stopped-typing');

    let stopped = next(bob.socket, 'user-stopped-typing', 3000);
    let t0 = Date.now();
    await request(alice.socket, 'typing', { roomId: room });
    assert.deepEqual(await stopped, { userId: 'alice', roomId: room });
    let elapsed = Date.now() - t0;
    assert.ok(elapsed >= 250 && elapsed < 2000, `stopped after ${elapsed} ms, expected about 300`);

    // A second typing restarts the timer: the stop comes 300 ms after the last one, not the first.
    stopped = next(bob.socket, 'user-stopped-typing', 3000);
    t0 = Date.now();
    await request(alice.socket, 'typing', { roomId: room });
    await sleep(200); // part of the scenario: the second typing comes 200 ms into the first's window
    const t1 = Date.now();
    await request(alice.socket, 'typing', { roomId: room });
    await stopped;
    elapsed = Date.now() - t1;
    assert.ok(elapsed >= 250, `stopped ${elapsed} ms after the last typing (${Date.now() - t0} ms after the first)`);

    // Fence: an explicit stop after a new typing; exactly one stop per typing spell came before it.
    const fence = next(bob.socket, 'user-stopped-typing', 3000);
    await request(alice.socket, 'typing', { roomId: room });
    await request(alice.socket, 'stop-typing', { roomId: room });
    await fence;
    assert.equal(stops.length, 3, JSON.stringify(stops));
  } finally {
    for (const s of sockets) s.close();
    await g.stop();
  }
});

test('a typing started again after stop-typing gets its full TYPING_TIMEOUT_MS', async () => {
  const g = await startGateway({ TYPING_TIMEOUT_MS: '600' });
  const sockets = [];
  try {
    const room = 'retype';
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    sockets.push(alice.socket, bob.socket);
    await request(alice.socket, 'join-room', room);
    await request(bob.socket, 'join-room', room);

    let stopped = next(bob.socket, 'user-stopped-typing', 3000);
    await request(alice.socket, 'typing', { roomId: room });
    await request(alice.socket, 'stop-typing', { roomId: room });
    await stopped;
    await sleep(300); // part of the scenario: the first typing's timer is still pending
    stopped = next(bob.socket, 'user-stopped-typing', 3000);
    const t1 = Date.now();
    await request(alice.socket, 'typing', { roomId: room });
    await stopped;
    const elapsed = Date.now() - t1;
    assert.ok(elapsed >= 550, `user-stopped-typing ${elapsed} ms after the new typing, expected about 600`);
  } finally {
    for (const s of sockets) s.close();
    await g.stop();
  }
});
