// Files (SPEC §13, issue 23): the room is checked again at the last chunk, a file whose message cannot
// be posted leaves nothing downloadable, an abandoned upload gives back the unwritten part of the daily
// budget, and a deleted file message takes its file with it. Also: MAX_CALLS_PER_USER holds under
// concurrent call-user events (Socket.IO handles a socket's events concurrently).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startGateway, startRedis, connect, request, next, token, until, uniq, WS } from '../lib/helpers.js';

const storeDir = () => mkdtempSync(path.join(tmpdir(), 'rtg-files-'));
/** The objects in a local file store (`<dir>/files/*`). */
const stored = (dir) => (existsSync(path.join(dir, 'files')) ? readdirSync(path.join(dir, 'files')) : []);
const get = async (url, tok) => (await fetch(url, { headers: { authorization: `Bearer ${tok}` } })).status;

async function startUpload(socket, start) {
  const s = await request(socket, 'upload-start', start);
  assert.equal(s.success, true, JSON.stringify(s));
  return s;
}

test('a sender who left the room before the last chunk posts nothing: NOT_IN_ROOM, no message, no file', async () => {
  const dir = storeDir();
  const g = await startGateway({ FILE_STORE_URL: dir, UPLOAD_CHUNK_BYTES: '65536' });
  const open = [];
  try {
    const room = uniq('files');
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    const bob = await connect(g.url, { ...WS, auth: { token: token('bob') } });
    open.push(alice.socket, bob.socket);
    await request(alice.socket, 'join-room', room);
    await request(bob.socket, 'join-room', room);
    const buf = randomBytes(100000);
    const s = await startUpload(alice.socket, { name: 'a.bin', size: buf.length, roomId: room });
    const first = await request(alice.socket, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: buf.subarray(0, s.chunkSize) });
    assert.equal(first.success, true);
    await request(alice.socket, 'leave-room', room);
    const heard = [];
    bob.socket.on('new-message', (m) => heard.push(m));
    const last = await request(alice.socket, 'upload-chunk', { uploadId: s.uploadId, seq: 1, data: buf.subarray(s.chunkSize) });
    assert.equal(last.code, 'NOT_IN_ROOM', JSON.stringify(last));
    // A fence: a message posted after it reaches bob; no file message came before it.
    await request(bob.socket, 'message', { roomId: room, content: 'fence' });
    await until(() => heard.some((m) => m.content === 'fence'), 5000, 'the fence');
    assert.deepEqual(heard.map((m) => m.type), ['text']);
    assert.deepEqual(stored(dir).filter((f) => f.endsWith('.json')), [], 'no file metadata stored');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

test('a file whose message cannot be posted (the sender is over MAX_QUEUED_BYTES_PER_SENDER) leaves no file behind', async () => {
  const dir = storeDir();
  const g = await startGateway({ FILE_STORE_URL: dir, MAX_QUEUED_BYTES_PER_SENDER: '1024' });
  const open = [];
  try {
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(alice.socket);
    const fill = await request(alice.socket, 'private-message', { targetUserId: 'away', content: 'x'.repeat(700) });
    assert.deepEqual([fill.success, fill.delivered], [true, false]);
    const buf = randomBytes(5000);
    const s = await startUpload(alice.socket, { name: 'f.bin', size: buf.length, targetUserId: 'away' });
    const last = await request(alice.socket, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: buf });
    assert.equal(last.code, 'RATE_LIMITED', JSON.stringify(last));
    assert.deepEqual(stored(dir), [], 'neither bytes nor metadata stay');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

for (const store of ['memory', 'redis']) {
  test(`an abandoned upload gives back the unwritten part of UPLOAD_BYTES_PER_DAY (${store})`, async () => {
    const redis = store === 'redis' ? await startRedis({ persist: false }) : null;
    const g = await startGateway({ FILE_STORE_URL: storeDir(), UPLOAD_BYTES_PER_DAY: '2000000', UPLOAD_CHUNK_BYTES: '65536',
      ...(redis ? { REDIS_URL: redis.url } : {}) });
    const open = [];
    try {
      const user = uniq('uploader');
      const first = await connect(g.url, { ...WS, auth: { token: token(user) } });
      open.push(first.socket);
      const s = await startUpload(first.socket, { name: 'big.bin', size: 1500000, targetUserId: 'someone' });
      const c = await request(first.socket, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: randomBytes(s.chunkSize) });
      assert.equal(c.success, true);
      const over = await request(first.socket, 'upload-start', { name: 'more.bin', size: 1000000, targetUserId: 'someone' });
      assert.equal(over.code, 'RATE_LIMITED', 'the budget is charged at the start');
      first.socket.close(); // abandoned: 65536 bytes written of 1500000
      const second = await connect(g.url, { ...WS, auth: { token: token(user) } });
      open.push(second.socket);
      const again = await until(async () => {
        const a = await request(second.socket, 'upload-start', { name: 'more.bin', size: 1000000, targetUserId: 'someone' });
        return a.success ? a : null;
      }, 5000, 'the refunded budget');
      assert.equal(typeof again.uploadId, 'string');
      // Only the unwritten part came back: 2000000 - 65536 - 1000000 remain.
      const rest = await request(second.socket, 'upload-start', { name: 'rest.bin', size: 2000000 - 65536 - 1000000 + 1, targetUserId: 'someone' });
      assert.equal(rest.code, 'RATE_LIMITED', JSON.stringify(rest));
    } finally {
      for (const s of open) s.close();
      await g.stop();
      if (redis) await redis.stop();
    }
  });
}

test('delete-message of a file message: the file is no longer downloadable', async () => {
  const dir = storeDir();
  const g = await startGateway({ FILE_STORE_URL: dir });
  const open = [];
  try {
    const room = uniq('files');
    const alice = await connect(g.url, { ...WS, auth: { token: token('alice') } });
    open.push(alice.socket);
    await request(alice.socket, 'join-room', room);
    const buf = randomBytes(3000);
    const s = await startUpload(alice.socket, { name: 'gone.bin', size: buf.length, roomId: room });
    const posted = next(alice.socket, 'new-message', 5000);
    const last = await request(alice.socket, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: buf });
    assert.equal(last.complete, true, JSON.stringify(last));
    const msg = await posted;
    const url = `${g.url}${last.file.url}`;
    assert.equal(await get(url, token('alice')), 200);
    const del = await request(alice.socket, 'delete-message', { roomId: room, messageId: msg.id });
    assert.equal(del.success, true);
    assert.equal(await get(url, token('alice')), 404);
    assert.deepEqual(stored(dir), [], 'its bytes and metadata are deleted');
  } finally {
    for (const s of open) s.close();
    await g.stop();
  }
});

for (const store of ['memory', 'redis']) {
  test(`MAX_CALLS_PER_USER under 20 concurrent call-user events: exactly the cap succeed (${store})`, async () => {
    const redis = store === 'redis' ? await startRedis({ persist: false }) : null;
    const g = await startGateway({ MAX_CALLS_PER_USER: '3', ...(redis ? { REDIS_URL: redis.url } : {}) });
    const open = [];
    try {
      const caller = await connect(g.url, { ...WS, auth: { token: token('caller') } });
      open.push(caller.socket);
      const targets = [];
      for (let i = 0; i < 20; i++) {
        const t = await connect(g.url, { ...WS, auth: { token: token(`callee${i}`) } });
        open.push(t.socket);
        targets.push(`callee${i}`);
      }
      const acks = await Promise.all(targets.map((t) => request(caller.socket, 'call-user', { targetUserId: t, offer: { sdp: 'x' } })));
      const ok = acks.filter((a) => a.success);
      assert.equal(ok.length, 3, JSON.stringify(acks));
      assert.ok(acks.filter((a) => !a.success).every((a) => a.code === 'RATE_LIMITED'), JSON.stringify(acks));
    } finally {
      for (const s of open) s.close();
      await g.stop();
      if (redis) await redis.stop();
    }
  });
}
