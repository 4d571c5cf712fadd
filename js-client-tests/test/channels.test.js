// Channels (SPEC §3): subscribe/unsubscribe/list_channels, the default policy matrix, a policy file,
// limits, and the admin `stats` event (SPEC §7).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startGateway, connect, request, next, token, http, collect } from '../lib/helpers.js';

const API_KEY = 'test-api-key';
let gw;
before(async () => { gw = await startGateway({ API_KEY, MAX_SUBSCRIPTIONS_PER_SOCKET: '5' }); });
after(async () => { await gw.stop(); });

const FORBIDDEN = { success: false, error: 'Not authorized to subscribe to this channel', code: 'FORBIDDEN' };

function publish(channel, data) {
  return http(`${gw.url}/api/publish`, { method: 'POST', headers: { 'x-api-key': API_KEY }, body: { channel, data } });
}

test('the default policy matrix: anonymous, user, other user, admin', async () => {
  const anon = (await connect(gw.url)).socket;
  const alice = (await connect(gw.url, { auth: { token: token('alice') } })).socket;
  const admin = (await connect(gw.url, { auth: { token: token('root', { role: 'admin' }) } })).socket;
  const cases = [
    // [socket, channel, allowed]
    [anon, 'announcements', true], [anon, 'apps:created', false], [anon, 'user:alice', false], [anon, 'system:x', false],
    [alice, 'announcements', true], [alice, 'apps:created', true], [alice, 'users:1', true], [alice, 'database:x', true],
    [alice, 'deployments:x', true], [alice, 'storage:x', true], [alice, 'user:alice', true], [alice, 'user:bob', false],
    [alice, 'system:alerts', false], [alice, 'random', false], [alice, 'apps:', false],
    [admin, 'user:alice', true], [admin, 'system:alerts', true], [admin, 'random', false], [admin, 'apps:x', true],
  ];
  try {
    for (const [socket, channel, allowed] of cases) {
      const ack = await request(socket, 'subscribe', channel);
      if (allowed) {
        assert.deepEqual(ack, { success: true, channel }, channel);
        await request(socket, 'unsubscribe', channel); // stay under the 5-per-socket cap of this gateway
      } else assert.deepEqual(ack, FORBIDDEN, channel);
    }
  } finally { anon.close(); alice.close(); admin.close(); }
});

test('subscribe accepts {channel}; deliveries are the event envelope; unsubscribe stops them', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  try {
    assert.deepEqual(await request(socket, 'subscribe', { channel: 'apps:created' }), { success: true, channel: 'apps:created' });
    const got = next(socket, 'event');
    assert.equal((await publish('apps:created', { id: 1 })).status, 200);
    const ev = await got;
    assert.equal(ev.channel, 'apps:created');
    assert.deepEqual(ev.data, { id: 1 });
    assert.match(ev.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);

    assert.deepEqual(await request(socket, 'unsubscribe', 'apps:created'), { success: true, channel: 'apps:created' });
    const seen = collect(socket, 'event');
    await request(socket, 'subscribe', 'apps:other');
    await publish('apps:created', { id: 2 });
    await publish('apps:other', { id: 3 });
    await next(socket, 'event'); // apps:other arrives; apps:created published before it must not
    assert.deepEqual(seen.map((e) => e.channel), ['apps:other']);
  } finally { socket.close(); }
});

test('list_channels shows patterns with the own id filled in, and subscriptions', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  await request(socket, 'subscribe', 'user:alice');
  await request(socket, 'subscribe', 'announcements');
  const ack = await request(socket, 'list_channels');
  assert.equal(ack.success, true);
  assert.ok(ack.channels.includes('user:alice'));
  assert.ok(!ack.channels.includes('user:*'));
  assert.ok(ack.channels.includes('apps:*'));
  assert.deepEqual([...ack.subscribed].sort(), ['announcements', 'user:alice']);
  socket.close();
  const admin = (await connect(gw.url, { auth: { token: token('root', { role: 'admin' }) } })).socket;
  const a = await request(admin, 'list_channels');
  assert.ok(a.channels.includes('user:*') && a.channels.includes('user:root') && a.channels.includes('system:*'));
  admin.close();
});

test('invalid channel names and the subscription cap', async () => {
  const { socket } = await connect(gw.url, { auth: { token: token('alice') } });
  try {
    for (const bad of ['', 'has space', 'x'.repeat(129), 'ünicode', 42, null, { nope: 1 }]) {
      const ack = await request(socket, 'subscribe', bad);
      assert.equal(ack.success, false);
      assert.equal(ack.code, 'INVALID_PAYLOAD', JSON.stringify(bad));
    }
    for (let i = 0; i < 5; i++) assert.equal((await request(socket, 'subscribe', `apps:${i}`)).success, true);
    assert.equal((await request(socket, 'subscribe', 'apps:0')).success, true, 'resubscribing is not counted twice');
    const over = await request(socket, 'subscribe', 'apps:5');
    assert.equal(over.success, false);
    assert.equal(over.code, 'FORBIDDEN');
  } finally { socket.close(); }
});

test('a channel delivery reaches only its subscribers', async () => {
  const a = (await connect(gw.url, { auth: { token: token('alice') } })).socket;
  const b = (await connect(gw.url, { auth: { token: token('bob') } })).socket;
  try {
    await request(a, 'subscribe', 'user:alice');
    await request(b, 'subscribe', 'user:bob');
    const seenB = collect(b, 'event');
    const gotA = next(a, 'event');
    await publish('user:alice', 'private to alice');
    assert.deepEqual((await gotA).data, 'private to alice');
    await publish('user:bob', 'for bob');
    assert.equal((await next(b, 'event')).data, 'for bob');
    assert.deepEqual(seenB.map((e) => e.data), ['for bob']);
  } finally { a.close(); b.close(); }
});

test('stats: admins only, with the SPEC shape', async () => {
  const user = (await connect(gw.url, { auth: { token: token('alice') } })).socket;
  const anon = (await connect(gw.url)).socket;
  const admin = (await connect(gw.url, { auth: { token: token('root', { role: 'admin' }) } })).socket;
  try {
    await request(user, 'subscribe', 'apps:stats');
    assert.equal((await request(user, 'stats')).code, 'FORBIDDEN');
    assert.equal((await request(anon, 'stats')).code, 'UNAUTHENTICATED');
    const ack = await request(admin, 'stats');
    assert.equal(ack.success, true);
    const d = ack.data;
    for (const k of ['totalConnections', 'authenticatedConnections', 'anonymousConnections', 'totalSubscriptions', 'rooms', 'onlineUsers']) {
      assert.equal(typeof d[k], 'number', k);
    }
    assert.ok(d.totalConnections >= 3);
    assert.ok(d.anonymousConnections >= 1);
    assert.equal(d.totalConnections, d.authenticatedConnections + d.anonymousConnections);
    assert.equal(d.connectionsByChannel['apps:stats'], 1);
    assert.ok(d.onlineUsers >= 2);
  } finally { user.close(); anon.close(); admin.close(); }
});

test('CHANNEL_POLICY_FILE replaces the default policy; a bad file stops the process with the line', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-policy-'));
  const file = path.join(dir, 'policy.toml');
  writeFileSync(file, [
    '[[rule]]', 'pattern = "team:*"', 'who = ["role:staff"]',
    '[[rule]]', 'pattern = "inbox:{userId}"', 'who = ["owner"]',
    '[[rule]]', 'pattern = "public"', 'who = "anonymous"', '',
  ].join('\n'));
  const g = await startGateway({ CHANNEL_POLICY_FILE: file });
  try {
    const staff = await connect(g.url, { auth: { token: token('sam', { role: 'staff' }) } });
    assert.ok(staff.hello.authorizedChannels.includes('team:*'));
    assert.ok(staff.hello.authorizedChannels.includes('inbox:sam'));
    assert.equal((await request(staff.socket, 'subscribe', 'team:a')).success, true);
    assert.equal((await request(staff.socket, 'subscribe', 'inbox:sam')).success, true);
    assert.equal((await request(staff.socket, 'subscribe', 'inbox:other')).success, false);
    assert.equal((await request(staff.socket, 'subscribe', 'announcements')).success, false, 'default rules are gone');
    staff.socket.close();
    const user = await connect(g.url, { auth: { token: token('ulla') } });
    assert.deepEqual(await request(user.socket, 'subscribe', 'team:a'), FORBIDDEN);
    user.socket.close();
    const anon = await connect(g.url);
    assert.deepEqual(anon.hello.authorizedChannels, ['public']);
    anon.socket.close();
  } finally { await g.stop(); }

  writeFileSync(file, '[[rule]]\npattern = "a"\nwho = ["nobody"]\n');
  await assert.rejects(startGateway({ CHANNEL_POLICY_FILE: file }), /unknown who 'nobody'/);
  writeFileSync(file, '[[rule]]\npattern = "a"\nwho = \n');
  await assert.rejects(startGateway({ CHANNEL_POLICY_FILE: file }), /line 3/);
});
