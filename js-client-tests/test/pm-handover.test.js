// Private messages (SPEC §5, issue 23): the offline queue is deleted only when its hand-over is confirmed:
// by the Socket.IO client's ack, or once the socket has lived through a whole Engine.IO heartbeat after
// the frame (it answered a ping sent behind it), or on /ws by the frame's bytes written to the socket. A
// queue push confirms nothing: a socket gone before either keeps the queue for the next connect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, connectWithPending, request, token, until, wsConnect, WS } from '../lib/helpers.js';

const DEBUG = { RUST_LOG: 'info,realtime_gateway::app::events::private=debug', RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' };
const NOT_CONFIRMED = 'pending messages not confirmed';

/**
 * Is the message first sent with `clientMessageId` still in the target's queue? A repeat of a
 * clientMessageId answers the first send's id with `delivered:false` exactly while it is still queued.
 */
async function stillQueued(sender, targetUserId, clientMessageId) {
  const ack = await request(sender, 'private-message', { targetUserId, content: 'probe', clientMessageId });
  assert.equal(ack.success, true, JSON.stringify(ack));
  return ack.delivered === false;
}

/** How many times the gateway logged that a hand-over went unconfirmed. */
const unconfirmed = (g) => g.logs().split('\n').filter((l) => l.includes(NOT_CONFIRMED)).length;

test('Socket.IO: pending-messages neither acked nor outlived by a heartbeat stay queued for the next connect', async () => {
  const g = await startGateway(DEBUG);
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    const first = await request(bob.socket, 'private-message', { targetUserId: 'alice', content: 'while away', clientMessageId: 'c1' });
    assert.equal(first.delivered, false);

    // A socket that gets the queue, never acks, and is gone before a heartbeat (25 s + 20 s) has passed.
    const silent = await connectWithPending(g.url, 'alice', { ack: false });
    open.push(silent.socket);
    await until(() => silent.pending.length > 0, 5000, 'pending-messages');
    silent.socket.close();
    await until(() => unconfirmed(g) > 0, 5000, 'the hand-over logged as not confirmed once the socket left');
    assert.equal(await stillQueued(bob.socket, 'alice', 'c1'), true);

    const back = await connectWithPending(g.url, 'alice', { ack: true });
    open.push(back.socket);
    await until(() => back.pending.length > 0, 10000, 'pending-messages again');
    assert.deepEqual(back.pending[0].map((m) => m.id), [first.messageId]);
    // Acked: removed.
    await until(async () => !(await stillQueued(bob.socket, 'alice', 'c1')), 5000, 'the acked queue removed');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('Socket.IO: pending-messages not acked by a socket that lives through a heartbeat after them are removed', async () => {
  const g = await startGateway({ ...DEBUG, PING_INTERVAL_MS: '1000', PING_TIMEOUT_MS: '1000' });
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    const first = await request(bob.socket, 'private-message', { targetUserId: 'alice', content: 'while away', clientMessageId: 'c2' });
    assert.equal(first.delivered, false);
    const silent = await connectWithPending(g.url, 'alice', { ack: false });
    open.push(silent.socket);
    await until(() => silent.pending.length > 0, 5000, 'pending-messages');
    // The ack wait (5 s) ends unanswered; the socket answered the pings sent after the frame: handed over.
    await until(async () => !(await stillQueued(bob.socket, 'alice', 'c2')), 15000, 'the queue removed after a heartbeat');
    assert.equal(unconfirmed(g), 0);
    assert.equal(silent.pending.length, 1);
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('/ws: pending-messages queued for a peer that reads nothing is not handed over; written, it is', async () => {
  const g = await startGateway(DEBUG);
  const open = [];
  try {
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(bob.socket);
    const big = 'x'.repeat(60000);
    const queued = [];
    for (let i = 0; i < 40; i++) {
      const ack = await request(bob.socket, 'private-message', { targetUserId: 'carol', content: `${i}:${big}`, clientMessageId: `q${i}` });
      assert.equal(ack.delivered, false, JSON.stringify(ack).slice(0, 200));
      queued.push(ack.messageId);
    }

    // A Socket.IO socket takes the hand-over lease (and does not ack, so the queue stays) ...
    const holder = await connectWithPending(g.url, 'carol', { ack: false });
    open.push(holder.socket);
    await until(() => holder.pending.length > 0, 5000, 'pending-messages on the lease holder');
    // ... while a /ws connection arrives: its hand-over waits for the lease. It stops reading, and live
    // messages fill its socket (more than the kernel's buffers hold), so that the pending-messages frame
    // handed to it after the lease can only wait in the gateway's queue.
    const stalled = await wsConnect(g.url, { token: token('carol') });
    stalled.ws.pause();
    holder.socket.close();
    for (let i = 0; i < 70; i++) {
      const ack = await request(bob.socket, 'private-message', { targetUserId: 'carol', content: `live ${i}:${big}` });
      assert.equal(ack.delivered, true);
    }

    // The /ws hand-over runs after the lease and ends unconfirmed (logged twice: the holder's and the
    // stalled connection's), or the queue is gone (the old behaviour): whichever comes first.
    let gone = false;
    await until(async () => unconfirmed(g) >= 2 || (gone = !(await stillQueued(bob.socket, 'carol', 'q0'))), 20000, 'the /ws hand-over');
    assert.equal(gone, false, 'the queue was deleted although its frame was never written');
    assert.equal(stalled.isOpen(), true);
    await stalled.terminate();

    // A /ws connection that reads: the frame is written, the queue handed over and removed.
    const reader = await wsConnect(g.url, { token: token('carol') });
    open.push({ close: () => reader.terminate() });
    const pending = await reader.next('pending-messages', 15000);
    assert.deepEqual(pending.data.map((m) => m.id), queued);
    await until(async () => !(await stillQueued(bob.socket, 'carol', 'q0')), 10000, 'the written queue removed');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});
