// Two users, alice and bob, chatting through a running realtime-gateway with the real socket.io-client:
// connect with JWTs, join a room, typing indicators, messages (a reply, an edit), history, a private
// message with a read receipt, then leave and exit (code 0 on success, 1 on any failure).
//
// Run it from the repository root (the same commands as the README's "Example: a chat"):
//
//   (cd js-client-tests && npm ci)                  # once: socket.io-client and jsonwebtoken
//   JWT_SECRET=s3cret cargo run --release           # terminal 1: the gateway on :8888
//   JWT_SECRET=s3cret node examples/chat.mjs        # terminal 2: the chat
//
// The script signs alice's and bob's tokens with JWT_SECRET, which must be the gateway's. Against a gateway
// started without JWT_SECRET (plain `cargo run --release`: a random secret that no client can know), pass
// the two tokens it printed in its log instead, the user token (`alice`) and the admin token (`admin`,
// who then plays bob's part):
//
//   ALICE_TOKEN=<user token> BOB_TOKEN=<admin token> node examples/chat.mjs
//
// Any token works as ALICE_TOKEN / BOB_TOKEN, e.g. one minted for the gateway's secret with
// `JWT_SECRET=s3cret cargo run --release -- token --sub bob`; the tokens win over JWT_SECRET.
//
// Settings (environment): GATEWAY_URL (default http://localhost:8888), JWT_SECRET, ALICE_TOKEN, BOB_TOKEN,
// ROOM (default lobby). The modules are loaded from js-client-tests/node_modules, found next to this file,
// so the script runs from any directory.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../js-client-tests/package.json', import.meta.url));
let io;
let jwt;
try {
  ({ io } = require('socket.io-client'));
  jwt = require('jsonwebtoken');
} catch {
  console.error('chat example: socket.io-client or jsonwebtoken not found in js-client-tests/node_modules; ' +
    'run `(cd js-client-tests && npm ci)` first');
  process.exit(1);
}

const GATEWAY_URL = process.env.GATEWAY_URL || 'http://localhost:8888';
const SECRET = process.env.JWT_SECRET || '';
const ROOM = process.env.ROOM || 'lobby';

if (!(process.env.ALICE_TOKEN && process.env.BOB_TOKEN) && !SECRET) {
  console.error('chat example: set JWT_SECRET to the gateway\'s secret (e.g. JWT_SECRET=s3cret, as in ' +
    '`JWT_SECRET=s3cret cargo run --release`), or ALICE_TOKEN and BOB_TOKEN to two tokens the gateway accepts ' +
    '(a gateway started without JWT_SECRET prints a user token and an admin token)');
  process.exit(1);
}

const watchdog = setTimeout(() => fail(new Error('timed out after 20 s')), 20_000);

/** The token for `sub`: from the environment (`ALICE_TOKEN`, ...), else HS256-signed with JWT_SECRET
 * (`sub` is the user id, `exp` is required). */
function token(sub, name) {
  const given = process.env[`${sub.toUpperCase()}_TOKEN`];
  if (given) return given;
  return jwt.sign({ sub, name, role: 'user' }, SECRET, { algorithm: 'HS256', expiresIn: '1h' });
}

function say(who, ...what) {
  console.log(`${who.padEnd(6)}|`, ...what);
}

/** Connects and resolves once the gateway's `connected` greeting arrived, with the socket and the user id
 * the gateway took from the token. */
function connect(userId, name, { onPending } = {}) {
  const socket = io(GATEWAY_URL, { auth: { token: token(userId, name) }, reconnection: false, forceNew: true });
  // Listeners that must not miss what the server sends right after `connected` go on before connecting.
  if (onPending) socket.on('pending-messages', onPending);
  return new Promise((resolve, reject) => {
    socket.once('connected', (hello) => {
      say(userId, `connected as ${hello.userId} (session ${hello.sessionId})`);
      resolve({ socket, id: hello.userId });
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
  // A and B: the user ids behind the two tokens ('alice' and 'bob', unless ALICE_TOKEN / BOB_TOKEN say otherwise).
  const { socket: alice, id: A } = await connect('alice', 'Alice', { onPending: onPending('alice') });
  sockets.push(alice);
  const { socket: bob, id: B } = await connect('bob', 'Bob', { onPending: onPending('bob') });
  sockets.push(bob);
  if (!A || !B || A === B) throw new Error(`two different users are needed, got ${A} and ${B}`);

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
  const bobSeen = waitFor(alice, 'user-joined', (e) => e.userId === B);
  const bobJoin = await request(bob, 'join-room', { roomId: ROOM });
  await bobSeen;
  say('bob', `joined ${ROOM}, members: ${bobJoin.members.map((m) => m.userId).sort().join(', ')}`);

  // Typing, then the message itself. The others see user-typing; stop-typing (or 3 s without a new
  // `typing`) sends user-stopped-typing.
  let seen = waitFor(bob, 'user-typing', (e) => e.userId === A);
  await request(alice, 'typing', { roomId: ROOM });
  await seen;
  seen = waitFor(bob, 'new-message', (m) => m.userId === A);
  const first = await request(alice, 'message', {
    roomId: ROOM,
    content: 'Hi Bob, how are you?',
    clientMessageId: `hello-${Date.now()}`, // a retry with the same id would not post twice
  });
  const stopped = waitFor(bob, 'user-stopped-typing', (e) => e.userId === A);
  await request(alice, 'stop-typing', { roomId: ROOM });
  await Promise.all([seen, stopped]);

  // Bob answers, as a reply to alice's message.
  seen = waitFor(alice, 'new-message', (m) => m.userId === B);
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
  const pm = waitFor(alice, 'private-message', (m) => m.fromUserId === B);
  const sent = await request(bob, 'private-message', { targetUserId: A, content: 'Lunch at noon?' });
  say('bob', `private message ${sent.messageId} ${sent.delivered ? 'delivered' : `queued (${A} offline)`}`);
  const got = await pm;
  say('alice', `private from ${got.fromUserId}: ${got.content}`);
  const read = waitFor(bob, 'messages-read', (r) => r.readerId === A);
  await request(alice, 'mark-read', { messageIds: [got.id] });
  say('bob', `${A} read ${(await read).messageIds.join(', ')}`);

  // Done: leave the room (the other sees user-left) and disconnect.
  const left = waitFor(alice, 'user-left', (e) => e.userId === B);
  await request(bob, 'leave-room', ROOM);
  await left;
  await request(alice, 'leave-room', ROOM);
  for (const s of sockets) s.close();
  clearTimeout(watchdog);
  console.log('done');
}

main().catch(fail);
