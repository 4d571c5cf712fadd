// Two users, alice and bob, chatting through a running realtime-gateway with the real socket.io-client:
// connect with JWTs, join a room, typing indicators, messages (a reply, an edit), history, a private
// message with a read receipt, then leave and exit (code 0 on success, 1 on any failure).
//
// Run it (the gateway and this script must share the JWT secret):
//
//   JWT_SECRET=s3cret cargo run --release                              # terminal 1: the gateway on :8888
//   cd js-client-tests && JWT_SECRET=s3cret node ../examples/chat.mjs   # terminal 2
//
// (`npm install` in js-client-tests first if its node_modules is missing: socket.io-client, jsonwebtoken.)
//
// Settings (environment): GATEWAY_URL (default http://localhost:8888), JWT_SECRET (default s3cret, the
// secret of the commands above; a gateway started without JWT_SECRET uses a random one that no client
// can know), ROOM (default lobby). The modules are loaded from js-client-tests/node_modules, found next to
// this file, so the script runs from any directory.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../js-client-tests/package.json', import.meta.url));
const { io } = require('socket.io-client');
const jwt = require('jsonwebtoken');

const GATEWAY_URL = process.env.GATEWAY_URL || 'http://localhost:8888';
const SECRET = process.env.JWT_SECRET || 's3cret';
const ROOM = process.env.ROOM || 'lobby';

// Whatever happens, do not hang: a missing event fails the run.
const watchdog = setTimeout(() => fail(new Error('timed out after 20 s')), 20_000);

/** An HS256 token as the gateway expects it: `sub` is the user id, `exp` is required. */
function token(sub, name) {
  return jwt.sign({ sub, name, role: 'user' }, SECRET, { algorithm: 'HS256', expiresIn: '1h' });
}

function say(who, ...what) {
  console.log(`${who.padEnd(6)}|`, ...what);
}

/** Connects and resolves once the gateway's `connected` greeting arrived. */
function connect(userId, name, { onPending } = {}) {
  const socket = io(GATEWAY_URL, { auth: { token: token(userId, name) }, reconnection: false, forceNew: true });
  // Listeners that must not miss what the server sends right after `connected` go on before connecting.
  if (onPending) socket.on('pending-messages', onPending);
  return new Promise((resolve, reject) => {
    socket.once('connected', (hello) => {
      say(userId, `connected as ${hello.userId} (session ${hello.sessionId})`);
      resolve(socket);
    });
    socket.once('connect_error', (err) => {
      socket.close();
      reject(new Error(`${userId} could not connect to ${GATEWAY_URL}: ${err.message}` +
        (/signature/.test(err.message) ? ' (is the gateway running with the same JWT_SECRET?)' : '')));
    });
  });
}

/** Emits with an ack; resolves with the answer, throws on {success:false}. */
async function request(socket, event, ...args) {
  const ack = await socket.timeout(5000).emitWithAck(event, ...args);
  if (!ack || ack.success !== true) throw new Error(`${event} failed: ${JSON.stringify(ack)}`);
  return ack;
}

/** Resolves with the next `event` on `socket` whose argument passes `test`. */
function waitFor(socket, event, test = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.off(event, on); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    function on(arg) {
      if (!test(arg)) return;
      clearTimeout(timer);
      socket.off(event, on);
      resolve(arg);
    }
    socket.on(event, on);
  });
}

const sockets = [];

function fail(err) {
  console.error(`chat example failed: ${err.message}`);
  for (const s of sockets) s.close();
  process.exit(1);
}

async function main() {
  // Private messages sent while a user was offline arrive once, right after `connected`. Acking the
  // event tells the gateway it may drop the queue at once.
  const onPending = (who) => (messages, ack) => {
    say(who, `${messages.length} private message(s) queued while offline:`,
      messages.map((m) => `${m.fromUserId}: ${m.content}`).join(' / '));
    if (typeof ack === 'function') ack();
  };
  const alice = await connect('alice', 'Alice', { onPending: onPending('alice') });
  sockets.push(alice);
  const bob = await connect('bob', 'Bob', { onPending: onPending('bob') });
  sockets.push(bob);

  for (const [who, s] of [['alice', alice], ['bob', bob]]) {
    s.on('user-joined', (e) => say(who, `${e.userId} joined ${e.roomId}`));
    s.on('user-left', (e) => say(who, `${e.userId} left ${e.roomId}`));
    s.on('user-typing', (e) => say(who, `${e.userId} is typing in ${e.roomId}...`));
    s.on('user-stopped-typing', (e) => say(who, `${e.userId} stopped typing`));
    s.on('new-message', (m) => say(who, `[${m.roomId}] ${m.userId}: ${m.content}${m.replyTo ? ` (reply to ${m.replyTo})` : ''}`));
    s.on('message-updated', (m) => say(who, `[${m.roomId}] ${m.userId} edited ${m.id}: ${m.content}`));
    s.on('presence-update', (p) => say(who, `presence: ${p.userId} is ${p.status}`));
    s.on('error', (e) => say(who, 'error event:', e));
  }

  // Join: the ack carries the room, who is in it, and the last 50 messages (from earlier runs too).
  const joined = await request(alice, 'join-room', ROOM);
  say('alice', `joined ${joined.room.id} (${joined.room.type}), ${joined.recentMessages.length} earlier message(s),`,
    `members: ${joined.members.map((m) => m.userId).join(', ')}`);
  const bobSeen = waitFor(alice, 'user-joined', (e) => e.userId === 'bob');
  const bobJoin = await request(bob, 'join-room', { roomId: ROOM });
  await bobSeen;
  say('bob', `joined ${ROOM}, members: ${bobJoin.members.map((m) => m.userId).sort().join(', ')}`);

  // Typing, then the message itself. The others see user-typing; stop-typing (or 3 s without a new
  // `typing`) sends user-stopped-typing.
  let seen = waitFor(bob, 'user-typing', (e) => e.userId === 'alice');
  await request(alice, 'typing', { roomId: ROOM });
  await seen;
  seen = waitFor(bob, 'new-message', (m) => m.userId === 'alice');
  const first = await request(alice, 'message', {
    roomId: ROOM,
    content: 'Hi Bob, how are you?',
    clientMessageId: `hello-${Date.now()}`, // a retry with the same id would not post twice
  });
  const stopped = waitFor(bob, 'user-stopped-typing', (e) => e.userId === 'alice');
  await request(alice, 'stop-typing', { roomId: ROOM });
  await Promise.all([seen, stopped]);

  // Bob answers, as a reply to alice's message.
  seen = waitFor(alice, 'new-message', (m) => m.userId === 'bob');
  await request(bob, 'message', { roomId: ROOM, content: 'Fine, thanks!', replyTo: first.messageId });
  await seen;

  // Alice fixes her message: the whole room gets message-updated.
  seen = waitFor(bob, 'message-updated', (m) => m.id === first.messageId);
  await request(alice, 'edit-message', { roomId: ROOM, messageId: first.messageId, content: 'Hi Bob! How are you?' });
  await seen;

  // History: the newest messages, oldest first.
  const history = await request(bob, 'load-messages', { roomId: ROOM, limit: 3 });
  say('bob', `history (last ${history.messages.length}, more: ${history.hasMore}):`,
    history.messages.map((m) => `${m.userId}: ${m.content}${m.edited ? ' (edited)' : ''}`).join(' / '));

  // A private message, and its read receipt.
  const pm = waitFor(alice, 'private-message', (m) => m.fromUserId === 'bob');
  const sent = await request(bob, 'private-message', { targetUserId: 'alice', content: 'Lunch at noon?' });
  say('bob', `private message ${sent.messageId} ${sent.delivered ? 'delivered' : 'queued (alice offline)'}`);
  const got = await pm;
  say('alice', `private from ${got.fromUserId}: ${got.content}`);
  const read = waitFor(bob, 'messages-read', (r) => r.readerId === 'alice');
  await request(alice, 'mark-read', { messageIds: [got.id] });
  say('bob', `alice read ${(await read).messageIds.join(', ')}`);

  // Done: leave the room (the other sees user-left) and disconnect.
  const left = waitFor(alice, 'user-left', (e) => e.userId === 'bob');
  await request(bob, 'leave-room', ROOM);
  await left;
  await request(alice, 'leave-room', ROOM);
  for (const s of sockets) s.close();
  clearTimeout(watchdog);
  console.log('done');
}

main().catch(fail);
