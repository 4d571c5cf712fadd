// Files (SPEC §13): uploads in acknowledged chunks over Socket.IO (binary attachments) and `/ws`
// (base64), the file message in the room or the private conversation, GET /api/files/{id} with its
// permissions, headers and Range, every refusal and cap, interrupted and idle uploads, and two nodes
// sharing an S3-compatible store (moto's server from PyPI, started by the test).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { io as ioV4 } from 'socket.io-client';
import {
  startGateway, startRedis, connect, request, next, token, until, uniq, wsConnect, freePort,
} from '../lib/helpers.js';

const sha = (b) => createHash('sha256').update(b).digest('hex');
const storeDir = () => mkdtempSync(path.join(tmpdir(), 'rtg-files-'));

/** Uploads `buf` with socket.io-client in `chunkSize` pieces; resolves with every ack. */
async function upload(socket, start, buf) {
  const s = await request(socket, 'upload-start', { ...start, size: buf.length });
  assert.equal(s.success, true, JSON.stringify(s));
  assert.equal(typeof s.uploadId, 'string');
  assert.ok(Number.isInteger(s.chunkSize) && s.chunkSize > 0);
  const acks = [];
  for (let seq = 0, off = 0; off < buf.length; seq++, off += s.chunkSize) {
    acks.push(await request(socket, 'upload-chunk', { uploadId: s.uploadId, seq, data: buf.subarray(off, off + s.chunkSize) }));
  }
  return { start: s, acks, last: acks[acks.length - 1] };
}

async function download(url, tok, headers = {}) {
  const r = await fetch(url, { headers: { ...(tok ? { authorization: `Bearer ${tok}` } : {}), ...headers } });
  return { status: r.status, headers: r.headers, body: Buffer.from(await r.arrayBuffer()) };
}

test('socket.io-client: a 3 MB file in a room, chunk by chunk; every member gets the file message; it downloads intact', async () => {
  const g = await startGateway({ FILE_STORE_URL: storeDir() });
  try {
    const room = uniq('files');
    const { socket: alice } = await connect(g.url, { auth: { token: token('alice') } });
    const { socket: bob } = await connect(g.url, { auth: { token: token('bob') } });
    await request(alice, 'join-room', room);
    await request(bob, 'join-room', room);
    const buf = randomBytes(3 * 1024 * 1024 + 123);
    const heard = next(bob, 'new-message', 20000);
    const { start, acks, last } = await upload(alice, { name: 'photo album.bin', mimeType: 'application/octet-stream', roomId: room }, buf);
    // Each chunk's ack counts the bytes so far; the last one carries the file.
    acks.slice(0, -1).forEach((a, i) => assert.deepEqual(a, { success: true, received: Math.min((i + 1) * start.chunkSize, buf.length) }));
    assert.equal(last.complete, true);
    assert.equal(last.received, buf.length);
    assert.deepEqual(Object.keys(last.file).sort(), ['id', 'mimeType', 'name', 'size', 'url']);
    assert.equal(last.file.size, buf.length);
    assert.equal(last.file.name, 'photo album.bin');
    assert.equal(last.file.url, `/api/files/${last.file.id}`);
    const msg = await heard;
    assert.equal(msg.type, 'file');
    assert.equal(msg.content, 'photo album.bin');
    assert.deepEqual(msg.file, last.file);
    // Kept in history.
    const hist = await request(bob, 'load-messages', { roomId: room });
    assert.ok(hist.messages.some((m) => m.type === 'file' && m.file?.id === last.file.id));

    const d = await download(g.url + last.file.url, token('bob'));
    assert.equal(d.status, 200);
    assert.equal(sha(d.body), sha(buf), 'the download is the upload, byte for byte');
    assert.equal(d.headers.get('content-length'), String(buf.length));
    assert.equal(d.headers.get('content-type'), 'application/octet-stream');
    assert.equal(d.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(d.headers.get('accept-ranges'), 'bytes');
    assert.match(d.headers.get('content-disposition'), /^attachment; filename="photo album.bin"/);
    // Range requests.
    const part = await download(g.url + last.file.url, token('bob'), { range: 'bytes=100-199' });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 100-199/${buf.length}`);
    assert.equal(part.headers.get('content-length'), '100');
    assert.deepEqual(part.body, buf.subarray(100, 200));
    const tail = await download(g.url + last.file.url, token('bob'), { range: 'bytes=-10' });
    assert.deepEqual(tail.body, buf.subarray(buf.length - 10));
    const bad = await download(g.url + last.file.url, token('bob'), { range: `bytes=${buf.length}-` });
    assert.equal(bad.status, 416);
    assert.equal(bad.headers.get('content-range'), `bytes */${buf.length}`);
    // ?token= works as well (an <a href> or <img src>).
    const q = await download(`${g.url}${last.file.url}?token=${token('carol')}`);
    assert.equal(q.status, 200, 'an open room: any user may read it');
    alice.close();
    bob.close();
  } finally { await g.stop(); }
});

test('a private file: queued for an offline target, readable by sender, target and admins only; 401 and 404', async () => {
  const g = await startGateway({ FILE_STORE_URL: storeDir() });
  try {
    const target = uniq('dora');
    const { socket: eve } = await connect(g.url, { auth: { token: token('eve') } });
    const buf = Buffer.from('%PDF-1.4 not really a pdf, but it starts like one\n'.repeat(50));
    const { last } = await upload(eve, { name: 'report.pdf', mimeType: 'application/pdf', targetUserId: target }, buf);
    assert.equal(last.complete, true);
    assert.equal(last.file.mimeType, 'application/pdf');
    const got = new Promise((resolve) => {
      const s = ioConnect(g.url, target, (pending, ack) => { ack?.(); resolve({ s, pending }); });
    });
    const { s, pending } = await got;
    const pm = pending.find((p) => p.file?.id === last.file.id);
    assert.ok(pm, 'the file is in pending-messages');
    assert.equal(pm.content, 'report.pdf');
    assert.equal(pm.fromUserId, 'eve');
    const url = g.url + last.file.url;
    assert.equal((await download(url, token(target))).status, 200);
    assert.equal((await download(url, token('eve'))).status, 200);
    assert.equal((await download(url, token('root', { role: 'admin' }))).status, 200);
    const other = await download(url, token('mallory'));
    assert.equal(other.status, 403);
    assert.deepEqual(JSON.parse(other.body), { error: 'Not allowed to see this file' });
    assert.equal((await download(url)).status, 401);
    assert.equal((await download(url, 'not-a-jwt')).status, 401);
    assert.equal((await download(`${g.url}/api/files/f0000000000000000000000000`, token(target))).status, 404);
    assert.equal((await download(`${g.url}/api/files/..%2F..%2Fetc%2Fpasswd`, token(target))).status, 404);
    s.close();
    eve.close();
  } finally { await g.stop(); }
});

/** A socket.io-client 4 socket whose `pending-messages` handler is given before it connects. */
function ioConnect(url, user, onPending) {
  const s = ioV4(url, { forceNew: true, reconnection: false, auth: { token: token(user) } });
  s.on('pending-messages', onPending);
  return s;
}

test('refusals: not in the room, too large, out of order, oversized chunk, unknown or foreign upload, anonymous', async () => {
  const g = await startGateway({ FILE_STORE_URL: storeDir(), MAX_UPLOAD_BYTES: '100000' });
  try {
    const room = uniq('r');
    const { socket: a } = await connect(g.url, { auth: { token: token('fay') } });
    const { socket: other } = await connect(g.url, { auth: { token: token('gus') } });
    assert.deepEqual(await request(a, 'upload-start', { name: 'x', size: 10, roomId: room }),
      { success: false, error: 'Not in room', code: 'NOT_IN_ROOM' });
    await request(a, 'join-room', room);
    const big = await request(a, 'upload-start', { name: 'x', size: 100001, roomId: room });
    assert.equal(big.code, 'PAYLOAD_TOO_LARGE');
    assert.match(big.error, /100000/);
    for (const bad of [{ name: '', size: 1, roomId: room }, { name: 'a/b', size: 1, roomId: room }, { name: 'x', size: 0, roomId: room },
      { name: 'x', size: 1 }, { name: 'x', size: 1, roomId: room, targetUserId: 'u' }, { name: 'x', size: 1, roomId: room, mimeType: 'nope' }]) {
      assert.equal((await request(a, 'upload-start', bad)).code, 'INVALID_PAYLOAD', JSON.stringify(bad));
    }
    const s = await request(a, 'upload-start', { name: 'x.txt', size: 5000, roomId: room });
    const out = await request(a, 'upload-chunk', { uploadId: s.uploadId, seq: 1, data: Buffer.alloc(10) });
    assert.equal(out.code, 'INVALID_PAYLOAD');
    assert.match(out.error, /expected seq 0/);
    const tooMuch = await request(a, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: Buffer.alloc(5001) });
    assert.equal(tooMuch.code, 'INVALID_PAYLOAD');
    assert.match(tooMuch.error, /seq 0/);
    assert.deepEqual(await request(a, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: Buffer.alloc(1000) }), { success: true, received: 1000 });
    assert.match((await request(a, 'upload-chunk', { uploadId: s.uploadId, seq: 0, data: Buffer.alloc(10) })).error, /expected seq 1/);
    assert.deepEqual(await request(a, 'upload-chunk', { uploadId: 'f-nope', seq: 0, data: Buffer.alloc(1) }),
      { success: false, error: 'Unknown upload', code: 'NOT_FOUND' });
    // Another socket (another user) cannot write into it.
    assert.equal((await request(other, 'upload-chunk', { uploadId: s.uploadId, seq: 1, data: Buffer.alloc(1) })).code, 'NOT_FOUND');
    assert.equal((await request(a, 'upload-chunk', { uploadId: s.uploadId, seq: 1 })).code, 'INVALID_PAYLOAD');
    const { socket: anon } = await connect(g.url);
    assert.equal((await request(anon, 'upload-start', { name: 'x', size: 1, roomId: room })).code, 'UNAUTHENTICATED');
    for (const x of [a, other, anon]) x.close();
  } finally { await g.stop(); }
});

test('caps: concurrent uploads per user (RATE_LIMITED), bytes per day (RATE_LIMITED); a disconnect frees its uploads, deletes what they stored and refunds what they did not write', async () => {
  const dir = storeDir();
  const g = await startGateway({ FILE_STORE_URL: dir, MAX_UPLOADS_PER_USER: '2', UPLOAD_BYTES_PER_DAY: '2000000', UPLOAD_CHUNK_BYTES: '65536' });
  const stored = () => (existsSync(path.join(dir, 'files')) ? readdirSync(path.join(dir, 'files')) : []);
  try {
    const room = uniq('caps');
    const { socket: a } = await connect(g.url, { auth: { token: token('hank') } });
    await request(a, 'join-room', room);
    const u1 = await request(a, 'upload-start', { name: 'a', size: 500000, roomId: room });
    const u2 = await request(a, 'upload-start', { name: 'b', size: 500000, roomId: room });
    assert.equal(u1.success && u2.success, true);
    const third = await request(a, 'upload-start', { name: 'c', size: 10, roomId: room });
    assert.deepEqual(third, { success: false, error: 'Too many uploads in progress (at most 2)', code: 'RATE_LIMITED' });
    // Four chunks: past the writer's buffer, so part of the file is in the store already (streamed).
    for (let seq = 0; seq < 4; seq++) {
      assert.equal((await request(a, 'upload-chunk', { uploadId: u1.uploadId, seq, data: randomBytes(65536) })).success, true);
    }
    assert.ok(stored().some((f) => f.startsWith(u1.uploadId)), `partial data in the store: ${stored()}`);
    // The client goes away mid-upload: both uploads are dropped, nothing of them stays in the store.
    a.close();
    const { socket: b } = await connect(g.url, { auth: { token: token('hank') } });
    await request(b, 'join-room', room);
    await until(async () => (await request(b, 'upload-start', { name: 'd', size: 500000, roomId: room })).success, 5000, 'slots freed');
    await until(() => !stored().some((f) => f.startsWith(u1.uploadId) || f.startsWith(u2.uploadId)), 5000, 'partial data deleted');
    // The dropped uploads gave back what they did not write: 262,144 (u1's four chunks) + 500,000 (d) are
    // counted, so 1,237,857 more would pass 2,000,000 a day.
    const daily = await request(b, 'upload-start', { name: 'e', size: 2000000 - 262144 - 500000 + 1, roomId: room });
    assert.deepEqual(daily, { success: false, error: 'Daily upload limit reached', code: 'RATE_LIMITED' });
    b.close();
  } finally { await g.stop(); }
});

test('an upload idle for UPLOAD_IDLE_TIMEOUT_SECS is dropped', async () => {
  const g = await startGateway({ FILE_STORE_URL: storeDir(), UPLOAD_IDLE_TIMEOUT_SECS: '1' });
  try {
    const room = uniq('idle');
    const { socket: a } = await connect(g.url, { auth: { token: token('ivan') } });
    await request(a, 'join-room', room);
    const u = await request(a, 'upload-start', { name: 'slow', size: 100, roomId: room });
    assert.deepEqual(await request(a, 'upload-chunk', { uploadId: u.uploadId, seq: 0, data: Buffer.alloc(10) }), { success: true, received: 10 });
    // The sweep drops it once idle (it logs so): then its next chunk finds no upload.
    await until(() => /upload dropped/.test(g.logs()), 10000, 'the sweep drops it');
    assert.deepEqual(await request(a, 'upload-chunk', { uploadId: u.uploadId, seq: 1, data: Buffer.alloc(10) }),
      { success: false, error: 'Unknown upload', code: 'NOT_FOUND' });
    a.close();
  } finally { await g.stop(); }
});

test('/ws: an upload in base64 frames downloads intact; the room gets the file message', async () => {
  const g = await startGateway({ FILE_STORE_URL: storeDir() });
  try {
    const room = uniq('wsfile');
    const w = await wsConnect(g.url, { token: token('jill') });
    const { socket: watcher } = await connect(g.url, { auth: { token: token('kim') } });
    await request(watcher, 'join-room', room);
    assert.equal((await w.request('join-room', { roomId: room })).data.success, true);
    const buf = randomBytes(700 * 1024);
    const s = (await w.request('upload-start', { name: 'w.bin', size: buf.length, roomId: room })).data;
    assert.equal(s.success, true);
    // Listened for before the last chunk: the room hears of the file before the uploader's ack arrives.
    const fileMessage = next(watcher, 'new-message', 10000);
    let last;
    for (let seq = 0, off = 0; off < buf.length; seq++, off += s.chunkSize) {
      last = (await w.request('upload-chunk', { uploadId: s.uploadId, seq, data: buf.subarray(off, off + s.chunkSize).toString('base64') })).data;
      assert.equal(last.success, true, JSON.stringify(last));
    }
    assert.equal(last.complete, true);
    const msg = await fileMessage;
    assert.equal(msg.file.id, last.file.id);
    const d = await download(g.url + last.file.url, token('kim'));
    assert.equal(sha(d.body), sha(buf));
    const notB64 = (await w.request('upload-start', { name: 'w2', size: 10, roomId: room })).data;
    const r = (await w.request('upload-chunk', { uploadId: notB64.uploadId, seq: 0, data: '***' })).data;
    assert.equal(r.code, 'INVALID_PAYLOAD');
    w.close();
    watcher.close();
  } finally { await g.stop(); }
});

// ---- two nodes sharing an S3-compatible store (moto) ----------------------------------------------

let moto;
async function startMoto() {
  const port = await freePort();
  const proc = spawn('python3', ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { out += d; });
  const url = `http://127.0.0.1:${port}`;
  await until(async () => { try { return (await fetch(url)).status > 0; } catch { return false; } }, 30000, `moto on ${port}:\n${out}`);
  return { url, stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }) };
}
before(async () => { moto = await startMoto(); });
after(async () => { await moto?.stop(); });

test('two nodes, one S3 bucket: a file uploaded on one node (Socket.IO or /ws) downloads intact from the other', async () => {
  const bucket = uniq('bucket').toLowerCase().replace(/[^a-z0-9-]/g, '-');
  const created = await fetch(`${moto.url}/${bucket}`, { method: 'PUT' });
  assert.ok(created.status < 300, `bucket: ${created.status}`);
  const redis = await startRedis({ persist: false });
  const env = {
    REDIS_URL: redis.url,
    FILE_STORE_URL: `s3://${bucket}`,
    AWS_ENDPOINT: moto.url,
    AWS_ALLOW_HTTP: 'true',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_REGION: 'us-east-1',
    UPLOAD_CHUNK_BYTES: String(512 * 1024),
  };
  const A = await startGateway(env);
  const B = await startGateway(env);
  try {
    const room = uniq('s3');
    const { socket: onA } = await connect(A.url, { auth: { token: token('lee') } });
    await request(onA, 'join-room', room);
    // More than one S3 part (5 MiB each), so the multipart upload is exercised.
    const buf = randomBytes(6 * 1024 * 1024 + 7);
    const { last } = await upload(onA, { name: 'big.bin', roomId: room }, buf);
    assert.equal(last.complete, true);
    const d = await download(B.url + last.file.url, token('lee'));
    assert.equal(d.status, 200);
    assert.equal(sha(d.body), sha(buf), 'node B serves what node A stored');
    const part = await download(B.url + last.file.url, token('lee'), { range: 'bytes=5242870-5242889' });
    assert.deepEqual(part.body, buf.subarray(5242870, 5242890));

    const w = await wsConnect(B.url, { token: token('mo') });
    const small = randomBytes(40000);
    const s = (await w.request('upload-start', { name: 'ws.bin', size: small.length, targetUserId: 'lee' })).data;
    const fin = (await w.request('upload-chunk', { uploadId: s.uploadId, seq: 0, data: small.toString('base64') })).data;
    assert.equal(fin.complete, true);
    const d2 = await download(A.url + fin.file.url, token('lee'));
    assert.equal(sha(d2.body), sha(small));
    assert.equal((await download(A.url + fin.file.url, token('nobody'))).status, 403);
    w.close();
    onA.close();
  } finally {
    await A.stop();
    await B.stop();
    await redis.stop();
  }
});
