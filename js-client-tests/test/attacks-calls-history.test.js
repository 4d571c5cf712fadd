// Two denial-of-service attacks on other users, each against the in-memory store and against Redis (issue 21,
// items 6 and 7):
// - cutting a victim off from calls by calling them and letting the calls ring (SPEC §6: ringing calls count
//   against the caller's MAX_CALLS_PER_USER only);
// - erasing other users' room history by filling many open rooms with big messages (a user's messages hold at
//   most MAX_HISTORY_BYTES_PER_USER over all rooms; past it their own oldest go first).
// Prints `# figures: attacks tried N, refused M`; every attack must be refused.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, startRedis, redisClient, connect, request, next, token, until, http, uniq, WS } from '../lib/helpers.js';

const OFFER = { type: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n' };
const figures = { tried: 0, refused: 0 };
const stops = [];
after(async () => { for (const stop of stops.reverse()) await stop(); });

async function login(g, id) {
  const { socket } = await connect(g.url, { ...WS, auth: { token: token(id) } });
  return socket;
}

/** A gateway on the in-memory store, or on a fresh redis-server; `env` added. */
async function gateway(store, env = {}) {
  let extra = {};
  let redis = null;
  if (store === 'redis') {
    redis = await startRedis({ persist: false });
    stops.push(() => redis.stop());
    extra = { REDIS_URL: redis.url };
  }
  const g = await startGateway({ ...extra, ...env });
  stops.push(() => g.stop());
  if (redis) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
  return { g, redis };
}

for (const store of ['memory', 'redis']) {
  test(`${store}: unanswered calls to a victim do not make the victim unreachable (MAX_CALLS_PER_USER = 4)`, async (t) => {
    figures.tried += 1;
    const { g } = await gateway(store, { CALL_RING_TIMEOUT_MS: '60000' });
    const [attacker, victim, friend, other] = [uniq('attacker'), uniq('victim'), uniq('friend'), uniq('other')];
    const sockets = await Promise.all([attacker, victim, friend, other].map((u) => login(g, u)));
    t.after(() => sockets.forEach((s) => s.close()));
    const [a, v, f, o] = sockets;

    // The attack: cap-many calls to the victim, left ringing.
    for (let i = 0; i < 4; i++) {
      const rings = next(v, 'incoming-call');
      const ack = await request(a, 'call-user', { targetUserId: victim, offer: OFFER });
      assert.equal(ack.success, true, `attacker's call ${i + 1}`);
      assert.equal((await rings).callId, ack.callId);
    }
    // The attacker's own cap holds: a fifth call (to anyone) is refused.
    const over = await request(a, 'call-user', { targetUserId: other, offer: OFFER });
    assert.deepEqual(over, { success: false, error: 'Too many concurrent calls', code: 'RATE_LIMITED' });

    // A fresh call from someone else still rings.
    const rings = next(v, 'incoming-call');
    const fresh = await request(f, 'call-user', { targetUserId: victim, offer: OFFER });
    assert.equal(fresh.success, true, `a third user's call to the victim: ${JSON.stringify(fresh)}`);
    const incoming = await rings;
    assert.equal(incoming.callId, fresh.callId);
    assert.equal(incoming.fromUserId, friend);

    // The victim can still call someone.
    const ringsOther = next(o, 'incoming-call');
    const out = await request(v, 'call-user', { targetUserId: other, offer: OFFER });
    assert.equal(out.success, true, `the victim's own call: ${JSON.stringify(out)}`);
    assert.equal((await ringsOther).fromUserId, victim);
    figures.refused += 1;
  });

  test(`${store}: a user filling many open rooms with big messages displaces only their own history`, async (t) => {
    figures.tried += 1;
    const BIG = 900_000;
    // In memory: the default budget (16 MiB) and 160 rooms, 288 MB, past the store's 256 MiB total (which
    // forgot the least recently written rooms, the victim's, before the fix). Redis has no total: there a
    // budget of 4 MiB and 40 rooms (72 MB) show that what one user makes Redis hold is bounded.
    const budget = store === 'redis' ? 4 * 1024 * 1024 : 16 * 1024 * 1024;
    const roomCount = store === 'redis' ? 40 : 160;
    const { g, redis } = await gateway(store, {
      MAX_MESSAGE_BYTES: String(BIG),
      MAX_HISTORY_BYTES_PER_USER: String(budget),
      RATE_LIMIT_PER_SEC: '100000',
      RATE_LIMIT_BURST: '100000',
    });
    const [attacker, victim, friend] = [uniq('hoarder'), uniq('victim'), uniq('friend')];
    const sockets = await Promise.all([attacker, victim, friend].map((u) => login(g, u)));
    t.after(() => sockets.forEach((s) => s.close()));
    const [a, v] = sockets;

    // The victim's created room and an open room the victim writes in, each with three messages.
    const created = await request(v, 'create-room', { name: 'ours', type: 'group', members: [friend] });
    assert.equal(created.success, true);
    const open = uniq('victim-open');
    const rooms = [created.room.id, open];
    const want = {};
    for (const room of rooms) {
      assert.equal((await request(v, 'join-room', room)).success, true);
      want[room] = [];
      for (let i = 0; i < 3; i++) {
        const ack = await request(v, 'message', { roomId: room, content: `${room} #${i}` });
        assert.equal(ack.success, true);
        want[room].push(ack.messageId);
      }
    }

    // The attack: many open rooms, two messages of 900 KB each (what MAX_ROOM_HISTORY_BYTES, 2 MiB, keeps
    // of them), far past the attacker's own budget.
    const big = 'x'.repeat(BIG);
    const floods = [];
    for (let i = 0; i < roomCount; i++) {
      const room = `${uniq('flood')}-${i}`;
      floods.push(room);
      assert.equal((await request(a, 'join-room', room)).success, true);
      const acks = await Promise.all([0, 1].map(() => request(a, 'message', { roomId: room, content: big })));
      for (const ack of acks) assert.equal(ack.success, true, JSON.stringify(ack));
      assert.equal((await request(a, 'leave-room', room)).success, true);
    }

    // The victim's history is intact, in both rooms.
    for (const room of rooms) {
      const page = await request(v, 'load-messages', { roomId: room });
      assert.equal(page.success, true);
      assert.deepEqual(page.messages.map((m) => m.id), want[room], `history of ${room}`);
      assert.deepEqual(page.messages.map((m) => m.content), [0, 1, 2].map((i) => `${room} #${i}`));
    }
    // The attacker lost their own oldest messages and kept their newest.
    const first = await request(a, 'load-messages', { roomId: floods[0], limit: 1 });
    assert.deepEqual(first.messages, [], "the attacker's oldest room is emptied first");
    const last = await request(a, 'load-messages', { roomId: floods.at(-1) });
    assert.equal(last.messages.length, 2, "the attacker's newest messages are kept");
    if (redis) {
      // What Redis holds is bounded by the budget (plus the victim's few messages and fixed overhead).
      const c = await redisClient(redis.url);
      const used = Number(/used_memory:(\d+)/.exec(await c.info('memory'))[1]);
      await c.quit();
      assert.ok(used < budget + 8 * 1024 * 1024, `redis used_memory ${used} bytes after the flood`);
    }
    figures.refused += 1;
  });
}

test('figures', () => {
  console.log(`figures: attacks tried ${figures.tried}, refused ${figures.refused}`);
  assert.equal(figures.tried, 4);
  assert.equal(figures.refused, figures.tried);
});
