// WebRTC call signalling (SPEC §6): caller, callee on two devices and a third user.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, connect, request, next, nextWhere, token, collect } from '../lib/helpers.js';

let gw;
before(async () => { gw = await startGateway({ CALL_RING_TIMEOUT_MS: '1500' }); });
after(async () => { await gw.stop(); });

const OFFER = { type: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n' };
const ANSWER = { type: 'answer', sdp: 'v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n' };
const CAND = { candidate: 'candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host', sdpMid: '0', sdpMLineIndex: 0 };

async function party() {
  const caller = (await connect(gw.url, { auth: { token: token('caller') } })).socket;
  const phone = (await connect(gw.url, { auth: { token: token('callee') } })).socket;
  const laptop = (await connect(gw.url, { auth: { token: token('callee') } })).socket;
  const eve = (await connect(gw.url, { auth: { token: token('eve') } })).socket;
  return { caller, phone, laptop, eve, close: () => [caller, phone, laptop, eve].forEach((s) => s.close()) };
}

async function ring(p, callType = 'video') {
  const rings = [next(p.phone, 'incoming-call'), next(p.laptop, 'incoming-call')];
  const ack = await request(p.caller, 'call-user', { targetUserId: 'callee', offer: OFFER, callType });
  assert.equal(ack.success, true);
  assert.equal(typeof ack.callId, 'string');
  const [a, b] = await Promise.all(rings);
  assert.deepEqual(a, b);
  assert.equal(a.callId, ack.callId);
  assert.equal(a.fromUserId, 'caller');
  assert.equal(a.fromUser.userId, 'caller');
  assert.deepEqual(a.offer, OFFER);
  assert.equal(a.callType, callType);
  return ack.callId;
}

test('happy path: ring both devices, answer on one, ICE both ways to the call sockets only, hang up', async () => {
  const p = await party();
  try {
    const callId = await ring(p, 'audio');
    const answered = next(p.caller, 'call-answered');
    const elsewhere = next(p.laptop, 'call-handled-elsewhere');
    assert.deepEqual(await request(p.phone, 'call-answer', { callId, answer: ANSWER }), { success: true });
    assert.deepEqual(await answered, { callId, fromUserId: 'callee', answer: ANSWER });
    assert.deepEqual(await elsewhere, { callId });

    const laptopIce = collect(p.laptop, 'ice-candidate');
    let got = next(p.phone, 'ice-candidate');
    assert.deepEqual(await request(p.caller, 'ice-candidate', { callId, candidate: CAND }), { success: true });
    assert.deepEqual(await got, { callId, fromUserId: 'caller', candidate: CAND });
    got = next(p.caller, 'ice-candidate');
    await request(p.phone, 'ice-candidate', { callId, candidate: { ...CAND, sdpMid: '1' } });
    assert.deepEqual((await got).candidate.sdpMid, '1');
    // The callee's other device is not in the call: it may not signal and hears nothing.
    assert.equal((await request(p.laptop, 'ice-candidate', { callId, candidate: CAND })).code, 'FORBIDDEN');

    const ended = next(p.phone, 'call-ended');
    assert.deepEqual(await request(p.caller, 'hang-up', { callId }), { success: true });
    assert.deepEqual(await ended, { callId, reason: 'hang-up' });
    assert.deepEqual(laptopIce, []);
    // The call is over: further signalling is NOT_FOUND.
    assert.equal((await request(p.caller, 'ice-candidate', { callId, candidate: CAND })).code, 'NOT_FOUND');
    assert.equal((await request(p.phone, 'hang-up', { callId })).code, 'NOT_FOUND');
  } finally { p.close(); }
});

test('the callee can hang up an active call; the caller hears call-ended', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    await request(p.laptop, 'call-answer', { callId, answer: ANSWER });
    const ended = next(p.caller, 'call-ended');
    assert.deepEqual(await request(p.laptop, 'hang-up', { callId }), { success: true });
    assert.deepEqual(await ended, { callId, reason: 'hang-up' });
  } finally { p.close(); }
});

test('reject: the caller gets call-rejected with the reason', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    const rejected = next(p.caller, 'call-rejected');
    assert.deepEqual(await request(p.phone, 'call-reject', { callId, reason: 'busy' }), { success: true });
    assert.deepEqual(await rejected, { callId, reason: 'busy' });
    assert.equal((await request(p.laptop, 'call-answer', { callId, answer: ANSWER })).code, 'NOT_FOUND');
  } finally { p.close(); }
});

test('ring timeout: both sides get call-ended timeout', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    const ends = [next(p.caller, 'call-ended', 5000), next(p.phone, 'call-ended', 5000), next(p.laptop, 'call-ended', 5000)];
    for (const e of await Promise.all(ends)) assert.deepEqual(e, { callId, reason: 'timeout' });
    assert.equal((await request(p.phone, 'call-answer', { callId, answer: ANSWER })).code, 'NOT_FOUND');
  } finally { p.close(); }
});

test('an answered call does not time out', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    await request(p.phone, 'call-answer', { callId, answer: ANSWER });
    const seen = collect(p.caller, 'call-ended');
    // A control call placed later and left ringing: its timeout comes after the answered call's would have.
    const control = await ring(p);
    const controlEnded = nextWhere(p.caller, 'call-ended', (e) => e.callId === control, 5000);
    assert.deepEqual(await controlEnded, { callId: control, reason: 'timeout' });
    assert.deepEqual(seen.filter((e) => e.callId === callId), [], 'the answered call did not time out');
    assert.deepEqual(await request(p.caller, 'ice-candidate', { callId, candidate: CAND }), { success: true });
  } finally { p.close(); }
});

test('disconnect mid-call: the other party gets call-ended disconnected', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    await request(p.phone, 'call-answer', { callId, answer: ANSWER });
    const ended = next(p.phone, 'call-ended');
    p.caller.close();
    assert.deepEqual(await ended, { callId, reason: 'disconnected' });
  } finally { p.close(); }
});

test('a ringing call ends when the callee has no socket left', async () => {
  const caller = (await connect(gw.url, { auth: { token: token('c2') } })).socket;
  const callee = (await connect(gw.url, { auth: { token: token('d2') } })).socket;
  try {
    const ring = next(callee, 'incoming-call');
    const { callId } = await request(caller, 'call-user', { targetUserId: 'd2', offer: OFFER });
    await ring;
    const ended = next(caller, 'call-ended');
    callee.close();
    assert.deepEqual(await ended, { callId, reason: 'disconnected' });
  } finally { caller.close(); callee.close(); }
});

test('a third party can neither answer, reject, hang up nor send candidates', async () => {
  const p = await party();
  try {
    const callId = await ring(p);
    for (const [ev, body] of [['call-answer', { callId, answer: ANSWER }], ['call-reject', { callId }],
      ['hang-up', { callId }], ['ice-candidate', { callId, candidate: CAND }]]) {
      assert.deepEqual(await request(p.eve, ev, body), { success: false, error: 'Not a party to this call', code: 'FORBIDDEN' }, ev);
    }
    // The caller cannot answer or reject their own call.
    assert.equal((await request(p.caller, 'call-answer', { callId, answer: ANSWER })).code, 'FORBIDDEN');
    assert.equal((await request(p.caller, 'call-reject', { callId })).code, 'FORBIDDEN');
    // Still ringing: the real callee answers fine, once.
    assert.deepEqual(await request(p.phone, 'call-answer', { callId, answer: ANSWER }), { success: true });
    assert.equal((await request(p.laptop, 'call-answer', { callId, answer: ANSWER })).code, 'FORBIDDEN');
  } finally { p.close(); }
});

test('unknown call ids, offline targets, bad payloads', async () => {
  const p = await party();
  try {
    for (const ev of ['call-answer', 'ice-candidate', 'call-reject', 'hang-up']) {
      const ack = await request(p.caller, ev, { callId: 'nope', answer: ANSWER, candidate: CAND });
      assert.equal(ack.code, 'NOT_FOUND', ev);
    }
    assert.deepEqual(await request(p.caller, 'call-user', { targetUserId: 'nobody-online', offer: OFFER }),
      { success: false, error: 'User offline', code: 'USER_OFFLINE' });
    assert.equal((await request(p.caller, 'call-user', { offer: OFFER })).code, 'INVALID_PAYLOAD');
    assert.equal((await request(p.caller, 'call-user', { targetUserId: 'callee' })).code, 'INVALID_PAYLOAD');
    assert.equal((await request(p.caller, 'call-user', { targetUserId: 'callee', offer: OFFER, callType: 'hologram' })).code, 'INVALID_PAYLOAD');
    assert.equal((await request(p.caller, 'call-user', { targetUserId: 'callee', offer: { sdp: 'x'.repeat(70000) } })).code, 'PAYLOAD_TOO_LARGE');
    const anon = (await connect(gw.url)).socket;
    assert.equal((await request(anon, 'call-user', { targetUserId: 'callee', offer: OFFER })).code, 'UNAUTHENTICATED');
    anon.close();
  } finally { p.close(); }
});

test('a user may be in a bounded number of concurrent calls', async () => {
  const caller = (await connect(gw.url, { auth: { token: token('busy-caller') } })).socket;
  const targets = [];
  try {
    for (let i = 0; i < 5; i++) targets.push((await connect(gw.url, { auth: { token: token(`t${i}`) } })).socket);
    for (let i = 0; i < 4; i++) assert.equal((await request(caller, 'call-user', { targetUserId: `t${i}`, offer: OFFER })).success, true);
    const over = await request(caller, 'call-user', { targetUserId: 't4', offer: OFFER });
    assert.equal(over.success, false);
    assert.equal(over.code, 'RATE_LIMITED');
  } finally { caller.close(); targets.forEach((s) => s.close()); }
});
