// Presence (SPEC §4): presence-update online/offline to those who share a room (a joined chat room, or a
// create-room room that lists the user), the PRESENCE_GRACE_MS grace and flapping, update-status, get-presence.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, request, next, nextWhere, collect, token, until, http, uniq, WS, POLLING, clients } from '../lib/helpers.js';

const GRACE = 500;
let gw;
before(async () => { gw = await startGateway({ PRESENCE_GRACE_MS: String(GRACE) }); });
after(async () => { await gw.stop(); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Connects a control user listed in bob's group; `leave()` closes it and resolves once bob heard it go
 * offline: a grace that started after every earlier one ended, so their checks have run by then.
 */
async function control(g, bob, id) {
  const online = nextWhere(bob.socket, 'presence-update', (e) => e.userId === id && e.status === 'online', 5000);
  const c = await connect(g.url, { ...WS, auth: { token: token(id) } });
  await online;
  return {
    socket: c.socket,
    async leave() {
      const gone = nextWhere(bob.socket, 'presence-update', (e) => e.userId === id && e.status === 'offline', GRACE + 5000);
      c.socket.close();
      await gone;
    },
  };
}


/** A create-room group made by `c` that lists `members`. */
async function group(c, members) {
  const ack = await request(c.socket, 'create-room', { type: 'group', members });
  assert.equal(ack.success, true, JSON.stringify(ack));
  return ack.room;
}

async function join(c, roomId) {
  const ack = await request(c.socket, 'join-room', roomId);
  assert.equal(ack.success, true, JSON.stringify(ack));
}

/** Waits until the gateway counts `n` authenticated connections (a disconnect has been processed). */
function authenticatedIs(g, n) {
  return until(async () => (await http(`${g.url}/health`)).body.authenticated === n, 5000, `${n} authenticated`);
}

function assertUpdate(ev, userId, status, from) {
  assert.deepEqual(Object.keys(ev).sort(), ['status', 'timestamp', 'userId']);
  assert.equal(ev.userId, userId);
  assert.equal(ev.status, status);
  assert.equal(typeof ev.timestamp, 'number');
  assert.ok(ev.timestamp >= from - 1000 && ev.timestamp <= Date.now() + 1000, `timestamp ${ev.timestamp} is ms since the epoch`);
}

test('online: presence-update to the members of a create-room room that lists the user, not to strangers', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice');
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol')); // shares no room with alice
  const dave = await login(uniq('dave')); // shares a room with carol (the fence)
  await group(bob, [aliceId]);
  await group(carol, [dave.id]);
  const carolSeen = collect(carol.socket, 'presence-update');

  const seen = next(bob.socket, 'presence-update');
  const t0 = Date.now();
  const alice = await login(aliceId);
  assertUpdate(await seen, aliceId, 'online', t0);

  const fence = next(carol.socket, 'presence-update');
  assert.deepEqual(await request(dave.socket, 'update-status', 'away'), { success: true });
  assertUpdate(await fence, dave.id, 'away', t0);
  assert.deepEqual(carolSeen.map((e) => [e.userId, e.status]), [[dave.id, 'away']], 'carol heard nothing of alice');
  alice.socket.close();
});

test('offline: only after PRESENCE_GRACE_MS, to the members of a create-room room', async (t) => {
  const login = clients(t, gw);
  const aliceId = uniq('alice');
  const bob = await login(uniq('bob'));
  await group(bob, [aliceId]);
  const online = next(bob.socket, 'presence-update');
  const alice = await login(aliceId);
  assertUpdate(await online, aliceId, 'online', Date.now() - 5000);

  const offline = next(bob.socket, 'presence-update', 5000);
  const t0 = Date.now();
  alice.socket.close();
  const ev = await offline;
  const elapsed = Date.now() - t0;
  assertUpdate(ev, aliceId, 'offline', t0);
  assert.ok(elapsed >= GRACE - 50, `offline after ${elapsed} ms, the grace is ${GRACE} ms`);
  assert.ok(ev.timestamp >= t0 + GRACE - 50, 'its timestamp is the end of the grace');
});

test('offline: to the sockets of the chat rooms the user was in (rounds of users leaving at once)', async (t) => {
  // Many at once, in rounds, because every disconnect must count, including those whose namespace
  // disconnect and transport close reach the gateway together (what socket.close() sends).
  const login = clients(t, gw);
  const bob = await login(uniq('bob'));
  const updates = collect(bob.socket, 'presence-update');
  const offline = (u) => updates.some((e) => e.userId === u.id && e.status === 'offline');
  const missing = [];
  for (let round = 0; round < 4; round++) {
    const users = [];
    for (let i = 0; i < 12; i++) {
      const room = uniq(`lobby${round}-${i}`);
      await join(bob, room);
      const u = await login(uniq(`u${round}-${i}`), i % 4 ? WS : POLLING);
      await join(u, room);
      users.push(u);
    }
    const t0 = Date.now();
    for (const u of users) u.socket.close();
    await until(() => users.every(offline), GRACE + 1500).catch(() => {});
    missing.push(...users.filter((u) => !offline(u)).map((u) => u.id));
    for (const e of updates.filter((x) => users.some((u) => u.id === x.userId))) {
      assertUpdate(e, e.userId, 'offline', t0);
      assert.ok(e.timestamp >= t0 + GRACE - 50, `offline ${e.timestamp - t0} ms after the disconnects`);
    }
  }
  assert.deepEqual(missing, [], 'every user that left got an offline presence-update');
});

test('flapping: a disconnect and reconnect within the grace sends neither offline nor online', async () => {
  const g = await startGateway({ PRESENCE_GRACE_MS: String(GRACE) });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    await group({ socket: bob.socket }, ['alice', 'carol']);
    const online = nextWhere(bob.socket, 'presence-update', (e) => e.userId === 'alice');
    const first = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(first.socket);
    assertUpdate(await online, 'alice', 'online', Date.now() - 5000);
    const carol = await control(g, bob, 'carol');
    open.push(carol.socket);

    const seen = collect(bob.socket, 'presence-update');
    first.socket.close();
    await authenticatedIs(g, 2); // alice has no socket now: the grace runs
    const again = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(again.socket);
    await carol.leave(); // carol's grace started after alice's and has ended: alice's check has run
    const fence = nextWhere(bob.socket, 'presence-update', (e) => e.userId === 'alice');
    const t0 = Date.now();
    assert.deepEqual(await request(again.socket, 'update-status', 'busy'), { success: true });
    assertUpdate(await fence, 'alice', 'busy', t0);
    assert.deepEqual(seen.filter((e) => e.userId === 'alice').map((e) => e.status), ['busy'], 'no offline or online before the update-status');
    const p = await request(bob.socket, 'get-presence', { userIds: ['alice'] });
    assert.equal(p.presence.alice.status, 'busy');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('a user stays online while any of their sockets is connected', async () => {
  const g = await startGateway({ PRESENCE_GRACE_MS: String(GRACE) });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    await group({ socket: bob.socket }, ['alice', 'carol']);
    const online = nextWhere(bob.socket, 'presence-update', (e) => e.userId === 'alice');
    const phone = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(phone.socket);
    assertUpdate(await online, 'alice', 'online', Date.now() - 5000);
    const carol = await control(g, bob, 'carol');
    open.push(carol.socket);
    const seen = collect(bob.socket, 'presence-update');
    const laptop = await connect(g.url, { ...POLLING, auth: { token: token('alice') } });
    open.push(laptop.socket);

    phone.socket.close();
    await authenticatedIs(g, 3);
    await carol.leave(); // carol's grace started after the phone left and has ended
    const fence = nextWhere(bob.socket, 'presence-update', (e) => e.userId === 'alice');
    await request(laptop.socket, 'update-status', 'away');
    assert.equal((await fence).status, 'away');
    assert.deepEqual(seen.filter((e) => e.userId === 'alice').map((e) => e.status), ['away'], 'a second socket connecting or one of two leaving changes nothing');

    const offline = nextWhere(bob.socket, 'presence-update', (e) => e.userId === 'alice', 5000);
    const t0 = Date.now();
    laptop.socket.close();
    assertUpdate(await offline, 'alice', 'offline', t0);
    assert.ok(Date.now() - t0 >= GRACE - 50);
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('offline comes a full grace after the last socket left, even after an earlier flap', async () => {
  const grace = 800;
  const g = await startGateway({ PRESENCE_GRACE_MS: String(grace) });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    await group({ socket: bob.socket }, ['alice']);
    const online = next(bob.socket, 'presence-update');
    const first = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(first.socket);
    await online;

    first.socket.close(); // the first grace starts
    await authenticatedIs(g, 1);
    const second = await connect(g.url, { ...WS, auth: { token: token('alice') } }); // back within it
    open.push(second.socket);
    await sleep(400); // part of the scenario: the second socket leaves halfway through the first grace
    const offline = next(bob.socket, 'presence-update', 5000);
    const t0 = Date.now();
    second.socket.close();
    assertUpdate(await offline, 'alice', 'offline', t0);
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= grace - 50, `offline ${elapsed} ms after the last socket left; the grace is ${grace} ms`);
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('update-status: away, busy and online go to those who share a room; anything else is INVALID_PAYLOAD', async (t) => {
  const login = clients(t, gw);
  const room = uniq('status');
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob')); // shares a chat room with alice
  const carol = await login(uniq('carol')); // in a create-room room that lists alice
  await join(alice, room);
  await join(bob, room);
  await group(carol, [alice.id]);

  for (const status of ['away', 'busy', 'online']) {
    const toBob = next(bob.socket, 'presence-update');
    const toCarol = next(carol.socket, 'presence-update');
    const t0 = Date.now();
    assert.deepEqual(await request(alice.socket, 'update-status', status), { success: true });
    assertUpdate(await toBob, alice.id, status, t0);
    assertUpdate(await toCarol, alice.id, status, t0);
    const p = await request(bob.socket, 'get-presence', { userIds: [alice.id] });
    assert.equal(p.presence[alice.id].status, status);
  }

  for (const bad of ['sleeping', 'offline', '', 'AWAY', 42, null]) {
    const ack = await request(alice.socket, 'update-status', bad);
    assert.equal(ack.success, false, JSON.stringify(bad));
    assert.equal(ack.code, 'INVALID_PAYLOAD', JSON.stringify(bad));
  }
  const p = await request(bob.socket, 'get-presence', { userIds: [alice.id] });
  assert.equal(p.presence[alice.id].status, 'online', 'a refused status changes nothing');
});

test('get-presence: online, away, offline with lastSeen, and unknown users offline with lastSeen null', async (t) => {
  const login = clients(t, gw);
  const alice = await login(uniq('alice'));
  const bob = await login(uniq('bob'));
  const carol = await login(uniq('carol'));
  await request(bob.socket, 'update-status', 'away');
  const t0 = Date.now();
  carol.socket.close();
  const nobody = uniq('nobody');
  const ids = [alice.id, bob.id, carol.id, nobody];
  const ask = () => request(alice.socket, 'get-presence', { userIds: ids });
  const ack = await until(async () => {
    const a = await ask();
    return a.presence?.[carol.id]?.status === 'offline' && a;
  }, GRACE + 3000, 'carol offline');
  assert.equal(ack.success, true);
  assert.deepEqual(Object.keys(ack).sort(), ['presence', 'success']);
  assert.deepEqual(Object.keys(ack.presence).sort(), [...ids].sort());
  for (const id of ids) assert.deepEqual(Object.keys(ack.presence[id]).sort(), ['lastSeen', 'status'], id);
  assert.equal(ack.presence[alice.id].status, 'online');
  assert.ok(ack.presence[alice.id].lastSeen === null || typeof ack.presence[alice.id].lastSeen === 'number');
  assert.equal(ack.presence[bob.id].status, 'away');
  assert.equal(ack.presence[carol.id].status, 'offline');
  assert.equal(typeof ack.presence[carol.id].lastSeen, 'number');
  assert.ok(ack.presence[carol.id].lastSeen >= t0 - 1000 && ack.presence[carol.id].lastSeen <= Date.now() + 1000);
  assert.deepEqual(ack.presence[nobody], { status: 'offline', lastSeen: null });
  assert.deepEqual(await request(alice.socket, 'get-presence', { userIds: [] }), { success: true, presence: {} });
});

test('anonymous sockets get UNAUTHENTICATED for update-status and get-presence', async () => {
  const { socket } = await connect(gw.url, WS);
  try {
    for (const [event, arg] of [['update-status', 'away'], ['get-presence', { userIds: ['alice'] }]]) {
      const ack = await request(socket, event, arg);
      assert.equal(ack.success, false, event);
      assert.equal(ack.code, 'UNAUTHENTICATED', event);
    }
  } finally { socket.close(); }
});
