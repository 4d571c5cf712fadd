// Presence across nodes whose PRESENCE_GRACE_MS differ (a rolling change of the setting), SPEC §4 and
// docs/scaling.md: whatever each node's settings, a user whose node stops goes offline after at most the
// largest grace plus the liveness timeout (NODE_LIVENESS_MS, 10 s, and up to 1.25 s until a live node's
// reaper and sweeper see it). Real nodes on a real redis-server, stopped with SIGTERM and SIGKILL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, startRedis, connect, request, nextWhere, token, until, http, uniq } from '../lib/helpers.js';

const LIVENESS_MS = 10000;
const DETECTION_MS = 1250;
/** Slack for a debug build on a busy machine: scheduling, the event's way to the watcher. */
const SLACK_MS = 2000;

test('nodes with different PRESENCE_GRACE_MS: the user of a SIGTERMed or SIGKILLed node goes offline within the largest grace plus the liveness timeout', async () => {
  const redis = await startRedis({ persist: false });
  const env = (id, grace) => ({ REDIS_URL: redis.url, NODE_ID: id, PRESENCE_GRACE_MS: String(grace) });
  const A = await startGateway(env(uniq('pc-a'), 5000));
  const C = await startGateway(env(uniq('pc-c'), 2000));
  const D = await startGateway(env(uniq('pc-d'), 2000));
  const largest = 5000;
  const open = [];
  try {
    for (const g of [A, C, D]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
    const room = uniq('pc-room');
    const [watcherId, termed, killed] = [uniq('pc-watch'), uniq('pc-term'), uniq('pc-kill')];
    const watcher = (await connect(A.url, { transports: ['websocket'], auth: { token: token(watcherId) } })).socket;
    open.push(watcher);
    assert.equal((await request(watcher, 'join-room', room)).success, true);
    for (const [g, id] of [[C, termed], [D, killed]]) {
      const s = (await connect(g.url, { transports: ['websocket'], reconnection: false, auth: { token: token(id) } })).socket;
      open.push(s);
      const online = nextWhere(watcher, 'presence-update', (p) => p.userId === id && p.status === 'online', 5000).catch(() => null);
      assert.equal((await request(s, 'join-room', room)).success, true);
      await online;
    }
    const status = async (id) => (await request(watcher, 'get-presence', { userIds: [id] })).presence[id].status;
    assert.equal(await status(termed), 'online');
    assert.equal(await status(killed), 'online');

    // SIGTERM: the node drains, its user leaves with that node's 2 s grace; node A (5 s) runs the check.
    const bound = largest + LIVENESS_MS + DETECTION_MS + SLACK_MS;
    const offline = nextWhere(watcher, 'presence-update', (p) => p.userId === termed && p.status === 'offline', bound);
    let started = Date.now();
    assert.equal(await C.stop('SIGTERM'), 0);
    await offline;
    const afterTerm = Date.now() - started;
    assert.equal(await status(termed), 'offline');
    assert.ok(afterTerm >= 2000 - 100, `offline after ${afterTerm} ms: not before the departing node's grace`);
    assert.ok(afterTerm <= 2000 + 250 + SLACK_MS, `offline after ${afterTerm} ms: the departing node's 2 s grace, not node A's 5 s`);

    // SIGKILL: nothing runs on the node; its liveness key expires, node A reaps it with its own 5 s grace.
    // (Watched with get-presence: the rooms a killed node's sockets were in died with it, see docs/scaling.md.)
    started = Date.now();
    await D.stop('SIGKILL');
    await until(async () => (await status(killed)) === 'offline', bound, 'the SIGKILLed node\'s user offline');
    const afterKill = Date.now() - started;
    console.log(`# figures: graces 5000/2000 ms: offline ${afterTerm} ms after SIGTERM, ${afterKill} ms after SIGKILL (bound ${bound} ms)`);
    assert.ok(afterKill <= bound, `offline ${afterKill} ms after the SIGKILL`);
    assert.ok(afterKill >= LIVENESS_MS - 1000, `offline ${afterKill} ms after the SIGKILL: not before the node's liveness key expired`);
  } finally {
    open.forEach((s) => s.close());
    await A.stop(); await C.stop(); await D.stop(); await redis.stop();
  }
});
