// Attacks on /ws frame limits, token refresh and the channel policy (issue 21, items 4, 9 and 10): each test
// plays one attack with the real `ws` and socket.io-client packages and counts it; the last test prints
// `# figures: attacks tried N, refused M` and asserts that every attack was refused.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startGateway, connect, request, token, http, wsConnect, pause } from '../lib/helpers.js';

const tried = [];
const refusedAttacks = [];
/** Records an attack; `refused` says whether the gateway stopped it (asserted by the test as well). */
function attack(name, refused) {
  tried.push(name);
  if (refused) refusedAttacks.push(name);
}

const gateways = [];
async function gateway(env) {
  const g = await startGateway(env);
  gateways.push(g);
  return g;
}
after(async () => { await Promise.all(gateways.map((g) => g.stop())); });

/** The close of a connection, or null if it is still open after `ms`. */
const closedWithin = (c, ms) => Promise.race([c.closed, pause(ms).then(() => null)]);

// --- Item 4: every /ws frame counts, before it is parsed -------------------------------------------------------

const PRE_AUTH_ENV = { ALLOW_ANONYMOUS: 'false', WS_AUTH_TIMEOUT_MS: '20000', PING_INTERVAL_MS: '60000',
  RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000' };

for (const [what, frame] of [
  ['invalid JSON', 'not json{'],
  ['binary frames', Buffer.from([0x7b, 0x00, 0xff, 0x01])],
  ['{type:"auth"} without a token', JSON.stringify({ type: 'auth' })],
]) {
  test(`/ws before authentication: 25 frames of ${what} are closed with 1008 after the 20th`, async () => {
    const g = await gateway(PRE_AUTH_ENV);
    const pest = await wsConnect(g.url, { hello: false });
    try {
      for (let i = 0; i < 25; i++) pest.sendRaw(frame);
      const closed = await closedWithin(pest, 10000);
      const answered = pest.frames.filter((f) => f.type === 'error').length;
      attack(`pre-auth flood of ${what}`, closed?.code === 1008 && answered === 20);
      assert.equal(closed?.code, 1008, `closed with 1008 (got ${closed ? closed.code : 'still open'})`);
      assert.equal(answered, 20, 'the first 20 frames answered, no more');
    } finally { pest.terminate(); }
  });
}

test('/ws after authentication: a flood of invalid frames (text or binary) is closed 1008 like a flood of valid ones', async () => {
  const g = await gateway({ RATE_LIMIT_PER_SEC: '5', RATE_LIMIT_BURST: '5', PING_INTERVAL_MS: '60000' });
  const kinds = {
    'invalid JSON': 'not json{',
    'binary frames': Buffer.from([1, 2, 3]),
    'valid pings': JSON.stringify({ type: 'ping' }),
    // 900 KB that do not parse: each one refused unread once the budget is spent.
    'large unparsable frames': `{${'x'.repeat(900 * 1024)}`,
  };
  const calm = await wsConnect(g.url, { token: token('calm-4') });
  try {
    for (const [what, frame] of Object.entries(kinds)) {
      const c = await wsConnect(g.url, { token: token(`flood-${what.replace(/\W/g, '')}`) });
      const started = Date.now();
      let sent = 0;
      try {
        // 20 large frames are enough (the budget and its refusals are 10 here) and keep what is still unread when
        // the server closes small enough for its drain, so the close is clean (not a reset, 1006).
        const count = frame.length > 100000 ? 20 : 400;
        for (let i = 0; i < count && c.isOpen(); i++) { c.sendRaw(frame); sent++; }
        const closed = await closedWithin(c, 10000);
        const limited = c.frames.filter((f) => f.code === 'RATE_LIMITED').length;
        console.log(`# figures: ${what}: ${sent} frames sent, ${limited} answered RATE_LIMITED, closed ${closed?.code} after ${Date.now() - started} ms`);
        attack(`authenticated flood of ${what}`, closed?.code === 1008);
        assert.equal(closed?.code, 1008, `${what}: closed with 1008 (got ${closed ? closed.code : 'still open'})`);
        assert.ok(limited >= 1, `${what}: the excess is answered RATE_LIMITED before the close`);
      } finally { c.terminate(); }
    }
    assert.equal((await calm.request('ping')).type, 'pong', 'another connection is unaffected');
  } finally { calm.terminate(); }
});

// --- Item 9: a refresh replaces the claims --------------------------------------------------------------------

test('Socket.IO refresh-token with a role:user token: stats refused at once, system:* subscriptions dropped', async () => {
  const g = await gateway({});
  const { socket } = await connect(g.url, { auth: { token: token('boss', { role: 'admin' }) } });
  try {
    assert.equal((await request(socket, 'stats')).success, true, 'an admin may ask for stats');
    assert.equal((await request(socket, 'subscribe', 'system:alerts')).success, true);
    assert.equal((await request(socket, 'subscribe', 'apps:created')).success, true);
    const ack = await request(socket, 'refresh-token', { token: token('boss', { role: 'user' }) });
    assert.equal(ack.success, true);
    assert.deepEqual(ack.unsubscribed, ['system:alerts'], 'the refresh says which channels it dropped');
    const stats = await request(socket, 'stats');
    const sub = await request(socket, 'subscribe', 'system:alerts');
    const list = await request(socket, 'list_channels');
    // A publication to system:alerts no longer reaches the socket; one to apps:created, published after it, does.
    const got = [];
    const allowedArrived = new Promise((resolve) => socket.on('event', (e) => {
      got.push(e.channel);
      if (e.channel === 'apps:created') resolve();
    }));
    const admin = { authorization: `Bearer ${token('ops', { role: 'admin' })}` };
    for (const channel of ['system:alerts', 'apps:created']) {
      const r = await http(`${g.url}/api/publish`, { method: 'POST', headers: admin, body: { channel, data: { channel } } });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
    await allowedArrived;
    const refused = stats.success === false && stats.code === 'FORBIDDEN' && sub.success === false
      && !list.channels.includes('system:*') && !list.subscribed.includes('system:alerts') && !got.includes('system:alerts');
    attack('Socket.IO admin keeps its role after refreshing with a user token', refused);
    assert.equal(stats.code, 'FORBIDDEN', 'stats after the downgrade');
    assert.equal(sub.code, 'FORBIDDEN', 'system:* after the downgrade');
    assert.ok(!list.channels.includes('system:*'), JSON.stringify(list.channels));
    assert.deepEqual(list.subscribed, ['apps:created']);
    assert.deepEqual(got, ['apps:created'], 'only the allowed channel delivers');
  } finally { socket.close(); }
});

test('/ws in-band re-authentication with a role:user token: stats refused, system:* unsubscribed, claims replaced', async () => {
  const g = await gateway({});
  const c = await wsConnect(g.url, { token: token('ws-boss', { role: 'admin', claims: { email: 'old@example.com' } }) });
  try {
    assert.equal((await c.request('stats')).type, 'stats', 'an admin may ask for stats');
    assert.equal((await c.request('subscribe', undefined, { channel: 'system:alerts' })).type, 'subscribed');
    c.send({ type: 'auth', token: token('ws-boss', { role: 'user', claims: { email: 'new@example.com' } }), requestId: 'again' });
    const dropped = await c.next('unsubscribed');
    const hello = await c.next((f) => f.type === 'connected' && f.requestId === 'again');
    const stats = await c.request('stats');
    const sub = await c.request('subscribe', undefined, { channel: 'system:alerts' });
    const list = await c.request('list_channels');
    const refused = dropped.channel === 'system:alerts' && hello.user.role === 'user' && stats.code === 'FORBIDDEN'
      && sub.code === 'FORBIDDEN' && !list.subscribed.includes('system:alerts');
    attack('/ws admin keeps its role after re-authenticating with a user token', refused);
    assert.equal(dropped.channel, 'system:alerts');
    assert.deepEqual(hello.user, { userId: 'ws-boss', email: 'new@example.com', name: null, role: 'user' });
    assert.ok(!hello.authorizedChannels.includes('system:*'), JSON.stringify(hello.authorizedChannels));
    assert.equal(stats.code, 'FORBIDDEN');
    assert.equal(sub.code, 'FORBIDDEN');
    assert.deepEqual(list.subscribed, []);
  } finally { c.terminate(); }
});

// --- Item 10: a user id with ':' never crosses a segment ------------------------------------------------------

test('CHANNEL_POLICY_FILE inbox:{userId}:*: the subject "bob:alerts" cannot subscribe to bob\'s inbox:bob:alerts:high', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-policy-'));
  const file = path.join(dir, 'policy.toml');
  writeFileSync(file, [
    '[[rule]]', 'pattern = "inbox:{userId}:*"', 'who = "owner"',
    '[[rule]]', 'pattern = "user:{userId}"', 'who = "owner"', '',
  ].join('\n'));
  const g = await gateway({ CHANNEL_POLICY_FILE: file });
  const bob = await connect(g.url, { auth: { token: token('bob') } });
  const mallory = await connect(g.url, { auth: { token: token('bob:alerts') } });
  const wsMallory = await wsConnect(g.url, { token: token('bob:alerts') });
  try {
    assert.equal((await request(bob.socket, 'subscribe', 'inbox:bob:alerts:high')).success, true, 'bob\'s own inbox');
    const sio = await request(mallory.socket, 'subscribe', 'inbox:bob:alerts:high');
    const ws = await wsMallory.request('subscribe', undefined, { channel: 'inbox:bob:alerts:high' });
    attack('Socket.IO subject "bob:alerts" subscribes to inbox:bob:alerts:high', sio.success === false);
    attack('/ws subject "bob:alerts" subscribes to inbox:bob:alerts:high', ws.code === 'FORBIDDEN');
    assert.equal(sio.code, 'FORBIDDEN');
    assert.equal(ws.code, 'FORBIDDEN');
    assert.ok(!mallory.hello.authorizedChannels.some((p) => p.startsWith('inbox:')), JSON.stringify(mallory.hello.authorizedChannels));
    // An id with ':' keeps its own channel where the template ends the pattern.
    assert.equal((await request(mallory.socket, 'subscribe', 'user:bob:alerts')).success, true);
    assert.equal((await request(bob.socket, 'subscribe', 'user:bob')).success, true);
    assert.equal((await request(bob.socket, 'subscribe', 'user:bob:alerts')).success, false);
  } finally { bob.socket.close(); mallory.socket.close(); wsMallory.terminate(); }
});

test('figures: every attack tried was refused', () => {
  console.log(`# figures: attacks tried ${tried.length}, refused ${refusedAttacks.length}`);
  const through = tried.filter((a) => !refusedAttacks.includes(a));
  assert.ok(tried.length >= 10, `the attacks ran (${tried.length})`);
  assert.equal(refusedAttacks.length, tried.length, `not refused: ${through.join('; ')}`);
});
