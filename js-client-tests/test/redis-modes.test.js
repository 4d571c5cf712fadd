// Where Redis runs (SPEC §9, issue 25): TLS (`rediss://` + REDIS_CA_FILE), Sentinel failover, and settings
// that contradict each other. Every server is a real process started here (redis-server with TLS, redis-server
// --sentinel), killed when its test ends, on failure too.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startGateway, connect, request, next, token, http, until, freePort, clusterPort, WS } from '../lib/helpers.js';

// Every process this file starts, killed at the end whatever happened.
const procs = new Set();
const cleanup = () => { for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL'); };
process.on('exit', cleanup);
after(cleanup);

/** Spawns `cmd args` and resolves once its output matches `ready`; {proc, out(), kill(signal)}. */
async function server(cmd, args, ready, ms = 10000) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.add(proc);
  let out = '';
  const onData = (d) => { out += d.toString(); };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start:\n${out}`)), ms);
    const check = () => { if (ready.test(out)) { clearTimeout(timer); resolve(); } };
    proc.stdout.on('data', check);
    proc.stderr.on('data', check);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${cmd} exited ${code}:\n${out}`)); });
  });
  return {
    proc,
    out: () => out,
    async kill(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, 'exit');
      proc.kill(signal);
      await exited;
    },
  };
}

/** Stops every gateway (and server) of a test when it ends. */
function tracker(t) {
  const list = [];
  t.after(async () => {
    for (const g of list.reverse()) await (g.stop ? g.stop('SIGKILL') : g.kill('SIGKILL')).catch(() => {});
  });
  return (g) => { list.push(g); if (g.proc) procs.add(g.proc); return g; };
}

const READY = /Ready to accept connections/;

/** A test CA, a server certificate it signed for 127.0.0.1/localhost, and an unrelated CA. */
function makeCerts() {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-redis-tls-'));
  const f = (n) => path.join(dir, n);
  const ssl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  for (const ca of ['ca', 'other-ca']) {
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=rtg test ${ca}`,
      '-keyout', f(`${ca}.key`), '-out', f(`${ca}.pem`));
  }
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', f('server.key'), '-out', f('server.csr'));
  writeFileSync(f('ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', f('ext.cnf'), '-out', f('server.pem'));
  return { dir, ca: f('ca.pem'), otherCa: f('other-ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/** redis-server speaking TLS only (no plain port), client certificates not required. */
async function tlsRedis(certs) {
  const port = await freePort();
  const s = await server('redis-server', ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1',
    '--tls-cert-file', certs.cert, '--tls-key-file', certs.key, '--tls-ca-cert-file', certs.ca,
    '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no'], READY);
  return { ...s, port, url: `rediss://127.0.0.1:${port}` };
}

/** A node-redis client (for PUBLISH, like a backend), over TLS with `ca` when given. */
async function redisClient(url, ca) {
  const { createClient } = await import('redis');
  const socket = { reconnectStrategy: (n) => Math.min(50 * n, 500), ...(ca ? { tls: true, ca: readFileSync(ca) } : {}) };
  const c = createClient({ url, socket });
  c.on('error', () => {});
  await c.connect();
  return c;
}

const health = async (g) => (await http(`${g.url}/health`)).body;
const up = (g, ms = 15000) => until(async () => (await health(g)).redis === 'up', ms, 'redis up');
const user = async (g, id) => (await connect(g.url, { ...WS, auth: { token: token(id) } })).socket;

/**
 * Cross-node traffic between A and B: a room message from A reaches B, a private message from A reaches B,
 * a backend PUBLISH on `channel` reaches a subscriber on B. `tag` keeps each round's ids apart.
 */
async function crossNode(A, B, pub, tag, ms = 5000) {
  const alice = await user(A, `alice-${tag}`);
  const bob = await user(B, `bob-${tag}`);
  try {
    const room = `room-${tag}`;
    await request(alice, 'join-room', room);
    await request(bob, 'join-room', room);
    const msg = next(bob, 'new-message', ms);
    const sent = await request(alice, 'message', { roomId: room, content: `hello ${tag}` });
    assert.equal(sent.success, true);
    assert.equal((await msg).id, sent.messageId);

    const pm = next(bob, 'private-message', ms);
    const ack = await request(alice, 'private-message', { targetUserId: `bob-${tag}`, content: `pm ${tag}` });
    assert.equal(ack.delivered, true);
    assert.equal((await pm).id, ack.messageId);

    const channel = `apps:${tag}`;
    assert.equal((await request(bob, 'subscribe', channel)).success, true);
    const ev = next(bob, 'event', ms);
    await pub.publish(channel, JSON.stringify({ tag }));
    const got = await ev;
    assert.equal(got.channel, channel);
    assert.deepEqual(got.data, { tag });
  } finally { alice.close(); bob.close(); }
}

test('TLS: two nodes on rediss:// with a private CA carry rooms, private messages and channel publications', async (t) => {
  const keep = tracker(t);
  const certs = makeCerts();
  const redis = keep(await tlsRedis(certs));
  const env = { REDIS_URL: redis.url, REDIS_CA_FILE: certs.ca };
  const A = keep(await startGateway({ ...env, NODE_ID: 'tls-a' }));
  const B = keep(await startGateway({ ...env, NODE_ID: 'tls-b' }));
  await up(A); await up(B);
  const h = await health(A);
  assert.equal(h.redisMode, 'single');
  assert.equal(h.redisMaster, `127.0.0.1:${redis.port}`);
  const metrics = (await (await fetch(`${A.url}/metrics`)).text());
  assert.match(metrics, new RegExp(`realtime_redis_mode\\{mode="single",master="127.0.0.1:${redis.port}"\\} 1`));
  const pub = await redisClient(redis.url, certs.ca);
  t.after(() => { pub.disconnect().catch(() => {}); });
  // The server has no plain port at all (--port 0): all of this runs over TLS.
  await crossNode(A, B, pub, 'tls');
});

test('TLS: a certificate that does not verify stops the start with a message naming TLS', async (t) => {
  const keep = tracker(t);
  const certs = makeCerts();
  const redis = keep(await tlsRedis(certs));
  const started = Date.now();
  // Another CA than the one that signed the server's certificate.
  const err = await startGateway({ REDIS_URL: redis.url, REDIS_CA_FILE: certs.otherCa }).then(
    (g) => { keep(g); return null; }, (e) => e);
  assert.ok(err, 'the gateway started with an untrusted Redis certificate');
  assert.match(err.message, /gateway exited [1-9]/);
  assert.match(err.message, /REDIS_URL: TLS/);
  assert.ok(Date.now() - started < 10000, 'the refusal took too long');
  // No CA given and the test CA is not in the system's store: refused too.
  const err2 = await startGateway({ REDIS_URL: redis.url }).then((g) => { keep(g); return null; }, (e) => e);
  assert.ok(err2, 'the gateway started with an unknown issuer');
  assert.match(err2.message, /TLS/);
  // A CA file that is not PEM names the variable.
  const bad = path.join(certs.dir, 'bad.pem');
  writeFileSync(bad, 'not a certificate\n');
  const err3 = await startGateway({ REDIS_URL: redis.url, REDIS_CA_FILE: bad }).then((g) => { keep(g); return null; }, (e) => e);
  assert.ok(err3, 'the gateway started with a broken REDIS_CA_FILE');
  assert.match(err3.message, /REDIS_CA_FILE/);
});

test('two ways to reach Redis at once stop the start, naming both settings', async (t) => {
  const keep = tracker(t);
  for (const [env, names] of [
    [{ REDIS_URL: 'redis://127.0.0.1:1', REDIS_SENTINELS: '127.0.0.1:2' }, ['REDIS_URL', 'REDIS_SENTINELS']],
    [{ REDIS_URL: 'redis://127.0.0.1:1', REDIS_CLUSTER_NODES: '127.0.0.1:2' }, ['REDIS_URL', 'REDIS_CLUSTER_NODES']],
    [{ REDIS_SENTINELS: '127.0.0.1:2', REDIS_CLUSTER_NODES: '127.0.0.1:3' }, ['REDIS_SENTINELS', 'REDIS_CLUSTER_NODES']],
  ]) {
    const err = await startGateway(env).then((g) => { keep(g); return null; }, (e) => e);
    assert.ok(err, `started with ${names.join(' and ')}`);
    assert.match(err.message, /gateway exited [1-9]/);
    for (const n of names) assert.match(err.message, new RegExp(n));
  }
});

/** A master, a replica and three sentinels watching them (quorum 2, a master is down after 1 s of silence). */
async function sentinelSet(keep) {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-sentinel-'));
  const plain = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const mport = await freePort();
  const master = keep(await server('redis-server', ['--port', String(mport), ...plain, '--dbfilename', 'm.rdb'], READY));
  const rport = await freePort();
  const replica = keep(await server('redis-server', ['--port', String(rport), ...plain, '--dbfilename', 'r.rdb',
    '--replicaof', '127.0.0.1', String(mport)], /MASTER <-> REPLICA sync: Finished with success/));
  const sentinels = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const conf = path.join(dir, `sentinel-${i}.conf`);
    writeFileSync(conf, [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
      `sentinel monitor mymaster 127.0.0.1 ${mport} 2`,
      'sentinel down-after-milliseconds mymaster 1000',
      'sentinel failover-timeout mymaster 10000',
      'sentinel parallel-syncs mymaster 1', ''].join('\n'));
    sentinels.push({ port, ...keep(await server('redis-server', [conf, '--sentinel'], /\+monitor master mymaster/)) });
  }
  // A failover needs each sentinel to know the replica and the other two (they meet through the master).
  await until(() => sentinels.every((s) => s.out().includes(`+slave slave 127.0.0.1:${rport}`)
    && (s.out().match(/\+sentinel sentinel /g) || []).length >= 2), 20000, 'the sentinels to know each other and the replica');
  return { master, mport, replica, rport, sentinels, list: sentinels.map((s) => `127.0.0.1:${s.port}`).join(',') };
}

test('Sentinel: a SIGKILLed master is followed; clients stay connected and cross-node traffic flows again', async (t) => {
  const keep = tracker(t);
  const set = await sentinelSet(keep);
  const env = { REDIS_SENTINELS: set.list, PRESENCE_GRACE_MS: '300' };
  const A = keep(await startGateway({ ...env, NODE_ID: 'sen-a' }));
  const B = keep(await startGateway({ ...env, NODE_ID: 'sen-b' }));
  await up(A); await up(B);
  for (const g of [A, B]) {
    const h = await health(g);
    assert.equal(h.redisMode, 'sentinel');
    assert.equal(h.redisMaster, `127.0.0.1:${set.mport}`);
    assert.equal(h.redisLastFailover, null);
  }
  const oldPub = await redisClient(`redis://127.0.0.1:${set.mport}`);
  await crossNode(A, B, oldPub, 'before');
  oldPub.disconnect().catch(() => {});

  // Two clients that must live through the failover, with traffic between them meanwhile.
  const alice = await user(A, 'sen-alice');
  const bob = await user(B, 'sen-bob');
  t.after(() => { alice.close(); bob.close(); });
  const drops = [];
  alice.on('disconnect', (r) => drops.push(`alice: ${r}`));
  bob.on('disconnect', (r) => drops.push(`bob: ${r}`));
  await request(alice, 'join-room', 'sen-room');
  await request(bob, 'join-room', 'sen-room');
  const bobGot = new Map();
  bob.on('new-message', (m) => bobGot.set(m.id, Date.now()));

  let traffic = true;
  const sentAfterKill = [];
  let killedAt = 0;
  const sender = (async () => {
    for (let i = 0; traffic; i++) {
      const at = Date.now();
      const ack = await Promise.race([request(alice, 'message', { roomId: 'sen-room', content: `m${i}` }),
        new Promise((r) => setTimeout(() => r({ success: false, error: 'no ack' }), 3000))]);
      if (killedAt && at > killedAt) sentAfterKill.push({ at, ack });
      await new Promise((r) => setTimeout(r, 100));
    }
  })();

  await new Promise((r) => setTimeout(r, 500)); // some traffic before the kill (bounded, not a synchronisation)
  killedAt = Date.now();
  await set.master.kill('SIGKILL');
  // Both nodes follow the replica the sentinels promote.
  const newMaster = `127.0.0.1:${set.rport}`;
  await until(async () => (await health(A)).redisMaster === newMaster && (await health(B)).redisMaster === newMaster,
    30000, 'both nodes on the promoted replica');
  const switchedAt = Date.now();
  // Cross-node traffic flows again: a message acknowledged after the switch reaches bob on the other node.
  await until(() => sentAfterKill.some((s) => s.ack.success && bobGot.has(s.ack.messageId)), 15000, 'room traffic after the failover');
  const flowingAt = Date.now();
  traffic = false;
  await sender;
  console.log(`# sentinel failover: nodes on the new master ${switchedAt - killedAt} ms after the SIGKILL; `
    + `cross-node room traffic again after ${flowingAt - killedAt} ms`);
  assert.ok(flowingAt - switchedAt < 10000, 'traffic took more than 10 s after the switch');

  await until(async () => (await health(A)).redis === 'up' && (await health(B)).redis === 'up', 15000, 'redis up after the failover');
  for (const g of [A, B]) {
    const h = await health(g);
    assert.ok(h.redisLastFailover, 'no failover time in /health');
    assert.match(await (await fetch(`${g.url}/metrics`)).text(), /realtime_redis_last_failover_seconds [1-9]/);
  }
  const pub = await redisClient(`redis://${newMaster}`);
  t.after(() => { pub.disconnect().catch(() => {}); });
  await crossNode(A, B, pub, 'after');

  // Nothing acknowledged after the failover is lost: each message acked now is delivered and in the history.
  const acked = [];
  for (let i = 0; i < 5; i++) {
    const got = next(bob, 'new-message');
    const ack = await request(alice, 'message', { roomId: 'sen-room', content: `after ${i}` });
    assert.equal(ack.success, true);
    assert.equal((await got).id, ack.messageId);
    acked.push(ack.messageId);
  }
  const hist = await request(bob, 'load-messages', { roomId: 'sen-room', limit: 100 });
  const ids = hist.messages.map((m) => m.id);
  for (const id of acked) assert.ok(ids.includes(id), `message ${id} acknowledged after the failover is not in the history`);
  assert.deepEqual(drops, [], 'a client was disconnected by the failover');
  assert.ok(alice.connected && bob.connected);
});

/** `redis-cli args...` (resolves with its output). */
function cli(...args) {
  return execFileSync('redis-cli', args, { encoding: 'utf8', timeout: 30000 });
}

/** Six cluster nodes on loopback: three masters with a replica each. */
async function clusterSet(keep) {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-cluster-'));
  const nodes = [];
  for (let i = 0; i < 6; i++) {
    const port = await clusterPort();
    nodes.push({ port, ...keep(await server('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
      '--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
      '--cluster-node-timeout', '2000', '--cluster-replica-validity-factor', '0', '--repl-diskless-sync-delay', '0', '--dir', dir, '--dbfilename', `d-${port}.rdb`, '--save', '', '--appendonly', 'no'], READY)) });
  }
  cli('--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '1', '--cluster-yes');
  await until(() => nodes.every((n) => /cluster_state:ok/.test(cli('-p', String(n.port), 'cluster', 'info'))), 20000, 'the cluster to be ok');
  // Every replica holds its master's data before the test goes on: a replica promoted before its first
  // sync finished has none of it (the gateway's liveness keys included, so for a moment every node looks
  // dead and a private message is queued instead of delivered). That is Redis's loss, not the gateway's.
  await until(() => nodes.every((n) => {
    const info = cli('-p', String(n.port), 'info', 'replication');
    return /role:master/.test(info) || (/master_link_status:up/.test(info) && /master_sync_in_progress:0/.test(info));
  }), 20000, 'every replica in sync with its master');
  return nodes;
}

/** The port of the master serving `key`'s slot, asked of the node on `port`. */
function masterOf(port, key) {
  const slot = Number(cli('-p', String(port), 'cluster', 'keyslot', key).trim());
  const lines = cli('-p', String(port), 'cluster', 'nodes').trim().split('\n');
  for (const line of lines) {
    const f = line.split(' ');
    if (!f[2].includes('master') || f[2].includes('fail')) continue;
    for (const r of f.slice(8)) {
      const [a, b] = r.split('-').map(Number);
      if (slot >= a && slot <= (Number.isNaN(b) ? a : b)) return Number(f[1].split(':')[1].split('@')[0]);
    }
  }
  return null;
}

test('Redis Cluster: two nodes on three masters; a master of the gateway\'s slot SIGKILLed and followed', async (t) => {
  const keep = tracker(t);
  const nodes = await clusterSet(keep);
  // A webhook receiver: the hooks' stream lives in the cluster too.
  const hooks = [];
  const receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => { hooks.push(JSON.parse(body)); res.writeHead(204); res.end(); });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => receiver.close(r)));
  const env = { REDIS_CLUSTER_NODES: nodes.slice(0, 3).map((n) => `127.0.0.1:${n.port}`).join(','), PRESENCE_GRACE_MS: '300',
    WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/hooks`, WEBHOOK_SECRET: 'cluster-hooks' };
  const A = keep(await startGateway({ ...env, NODE_ID: 'clu-a' }));
  const B = keep(await startGateway({ ...env, NODE_ID: 'clu-b' }));
  await up(A); await up(B);
  await until(async () => (await health(A)).redisShards === 3, 10000, 'three shards in /health');
  const h = await health(A);
  assert.equal(h.redisMode, 'cluster');
  const keysMaster = masterOf(nodes[0].port, '{rtg}');
  assert.equal(h.redisMaster, `127.0.0.1:${keysMaster}`);
  // A backend publishes on any node: here one that does not hold the gateway's keys.
  const pubPort = nodes.slice(0, 3).map((n) => n.port).find((p) => p !== keysMaster) ?? nodes[0].port;
  const pub = await redisClient(`redis://127.0.0.1:${pubPort}`);
  t.after(() => { pub.disconnect().catch(() => {}); });
  await crossNode(A, B, pub, 'clu-before');
  // Every key the gateway wrote carries the hash tag (so each multi-key script stays in one slot).
  const keys = cli('-p', String(keysMaster), '--scan').trim().split('\n').filter(Boolean);
  assert.ok(keys.length > 5, `the gateway wrote only ${keys.length} keys`);
  for (const k of keys) assert.ok(k.startsWith('{rtg}:'), `key without the hash tag: ${k}`);
  // Channel history (SPEC §15) kept in the cluster: the publication of crossNode is there, read on A.
  const reader = await user(A, 'clu-reader');
  assert.equal((await request(reader, 'subscribe', 'apps:clu-before')).success, true);
  const hist = await request(reader, 'channel-history', { channel: 'apps:clu-before' });
  reader.close();
  assert.equal(hist.success, true, JSON.stringify(hist));
  assert.deepEqual(hist.publications.map((p) => p.data), [{ tag: 'clu-before' }]);
  // Webhooks queued in the cluster's stream reach the backend (message.created of crossNode's room message).
  await until(() => hooks.some((h) => h.type === 'message.created' && h.data.content === 'hello clu-before'), 10000, 'the message.created webhook');

  // Room history written on A is read on B.
  const alice = await user(A, 'clu-alice');
  const bob = await user(B, 'clu-bob');
  t.after(() => { alice.close(); bob.close(); });
  const drops = [];
  alice.on('disconnect', (r) => drops.push(`alice: ${r}`));
  bob.on('disconnect', (r) => drops.push(`bob: ${r}`));
  await request(alice, 'join-room', 'clu-room');
  await request(bob, 'join-room', 'clu-room');
  // The official emitter, on a node that does not hold the gateway's keys: its classic PUBLISH reaches every node.
  const { Emitter } = await import('@socket.io/redis-emitter');
  const dm = next(bob, 'dm');
  new Emitter(pub).to('user:clu-bob').emit('dm', { via: 'emitter' });
  assert.deepEqual(await dm, { via: 'emitter' });
  const first = await request(alice, 'message', { roomId: 'clu-room', content: 'before' });
  assert.equal(first.success, true);
  assert.deepEqual((await request(bob, 'load-messages', { roomId: 'clu-room' })).messages.map((m) => m.id), [first.messageId]);

  const killedAt = Date.now();
  await nodes.find((n) => n.port === keysMaster).kill('SIGKILL');
  const alive = nodes.find((n) => n.port !== keysMaster).port;
  await until(() => { const m = masterOf(alive, '{rtg}'); return m && m !== keysMaster; }, 30000, 'a replica promoted');
  const promotedAt = Date.now();
  const promoted = masterOf(alive, '{rtg}');
  // Traffic flows again: a message acknowledged now reaches bob on the other node.
  await until(async () => {
    const got = next(bob, 'new-message', 2000).catch(() => null);
    const ack = await request(alice, 'message', { roomId: 'clu-room', content: 'probe' }).catch(() => ({ success: false }));
    return ack.success && (await got)?.id === ack.messageId;
  }, 20000, 'room traffic after the failover');
  const flowingAt = Date.now();
  console.log(`# cluster failover: replica promoted ${promotedAt - killedAt} ms after the SIGKILL; `
    + `cross-node room traffic again after ${flowingAt - killedAt} ms`);
  await until(async () => (await health(A)).redisMaster === `127.0.0.1:${promoted}`, 10000, 'the new master in /health');
  assert.ok((await health(A)).redisLastFailover);
  await until(async () => (await health(A)).redis === 'up' && (await health(B)).redis === 'up', 15000, 'redis up after the failover');
  await crossNode(A, B, pub, 'clu-after');
  const acked = [];
  for (let i = 0; i < 5; i++) {
    const ack = await request(alice, 'message', { roomId: 'clu-room', content: `after ${i}` });
    assert.equal(ack.success, true);
    acked.push(ack.messageId);
  }
  const ids = (await request(bob, 'load-messages', { roomId: 'clu-room', limit: 100 })).messages.map((m) => m.id);
  for (const id of acked) assert.ok(ids.includes(id), `message ${id} acknowledged after the failover is not in the history`);
  assert.deepEqual(drops, []);
});
