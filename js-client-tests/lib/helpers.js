// Shared helpers: start a real gateway process on port 0, mint tokens, connect real socket.io clients.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import { io as ioV4 } from 'socket.io-client';
import ioV2 from 'socket.io-client-v2';
import { io as ioV3 } from 'socket.io-client-v3';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const BIN = process.env.GATEWAY_BIN || path.join(ROOT, 'target', 'debug', 'realtime-gateway');
export const SECRET = 'test-secret-0123456789abcdef';

/** Mints an HS256 token; `claims` may override anything, `secret`/`options` go to jsonwebtoken. */
export function token(sub, { role = 'user', ttl = 3600, secret = SECRET, claims = {}, options = {} } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { sub, role, exp: now + ttl, ...claims };
  return jwt.sign(body, secret, { algorithm: 'HS256', ...options });
}

/**
 * Starts the gateway binary with `env` on 127.0.0.1, port 0; resolves once it logs its address.
 * Returns {url, port, proc, logs(), stop(signal)}; `stop` resolves with the exit code.
 */
export async function startGateway(env = {}) {
  if (env.REDIS_URL && clusters.has(env.REDIS_URL)) {
    const { REDIS_URL, ...rest } = env;
    env = { ...rest, REDIS_CLUSTER_NODES: clusters.get(REDIS_URL) };
  } else if (env.REDIS_URL && sentinelSets.has(env.REDIS_URL)) {
    const { REDIS_URL, ...rest } = env;
    env = { ...rest, REDIS_SENTINELS: sentinelSets.get(REDIS_URL) };
  } else if (env.REDIS_URL && tlsCa.has(env.REDIS_URL)) {
    env = { ...env, REDIS_CA_FILE: tlsCa.get(env.REDIS_URL) };
  }
  const proc = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: '0',
      JWT_SECRET: SECRET,
      LOG_FORMAT: 'json',
      RUST_LOG: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const onData = (d) => { out += d.toString(); };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${out}`)), 15000);
    const check = () => {
      const m = out.match(/"addr":"[^"]*:(\d+)"/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    proc.stdout.on('data', check);
    proc.stderr.on('data', check);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`gateway exited ${code}:\n${out}`)); });
  });
  const exited = once(proc, 'exit');
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    logs: () => out,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(signal);
      const [code] = await exited;
      return code;
    },
  };
}

/** A socket.io-client 4 socket; resolves once `connected` arrived, with {socket, hello}. */
export function connect(url, opts = {}) {
  const socket = ioV4(url, { forceNew: true, reconnection: false, ...opts });
  return greeted(socket);
}

/** A socket.io-client 2 socket (Engine.IO 3); resolves once `connected` arrived. */
export function connectV2(url, opts = {}) {
  const socket = ioV2(url, { forceNew: true, reconnection: false, ...opts });
  return greeted(socket);
}

/** A socket.io-client 3 socket (Engine.IO 4, `auth` in the handshake); resolves once `connected` arrived. */
export function connectV3(url, opts = {}) {
  const socket = ioV3(url, { forceNew: true, reconnection: false, ...opts });
  return greeted(socket);
}

/** Resolves with the `connect_error` of a refused connection (v3 client). */
export function refusedV3(url, opts = {}) {
  const socket = ioV3(url, { forceNew: true, reconnection: false, ...opts });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.close(); reject(new Error('not refused')); }, 10000);
    socket.once('connect_error', (err) => { clearTimeout(timer); socket.close(); resolve(err); });
    socket.once('connected', () => { clearTimeout(timer); socket.close(); reject(new Error('connected, expected a refusal')); });
  });
}

/**
 * Emits with an ack callback and resolves with the answer (rejects after `ms`): for clients without
 * `timeout()`/`emitWithAck` (socket.io-client 2 and 3).
 */
export function requestCb(socket, event, ...args) {
  const ms = 5000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for ${event} within ${ms} ms`)), ms);
    socket.emit(event, ...args, (answer) => { clearTimeout(timer); resolve(answer); });
  });
}

function greeted(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); socket.close(); reject(new Error('no connected event')); }, 10000);
    const onHello = (hello) => { cleanup(); resolve({ socket, hello }); };
    const fail = (err) => { cleanup(); socket.close(); reject(err instanceof Error ? err : new Error(String(err))); };
    // Only until the greeting: afterwards `error` events belong to the test.
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('connected', onHello);
      socket.off('connect_error', fail);
      socket.off('error', fail);
    };
    socket.once('connected', onHello);
    socket.once('connect_error', fail);
    socket.once('error', fail);
  });
}

/** Resolves with the `connect_error` of a refused connection (v4 client). */
export function refused(url, opts = {}) {
  const socket = ioV4(url, { forceNew: true, reconnection: false, ...opts });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.close(); reject(new Error('not refused')); }, 10000);
    socket.once('connect_error', (err) => { clearTimeout(timer); socket.close(); resolve(err); });
    socket.once('connected', () => { clearTimeout(timer); socket.close(); reject(new Error('connected, expected a refusal')); });
  });
}

/** Emits with an ack and resolves with the answer (rejects after `ms`). */
export function request(socket, event, ...args) {
  return socket.timeout(5000).emitWithAck(event, ...args);
}

/** Waits for one `event` on `socket` (rejects after `ms`). */
export function next(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.off(event, on); reject(new Error(`no ${event} within ${ms} ms`)); }, ms);
    const on = (arg) => { clearTimeout(timer); resolve(arg); };
    socket.once(event, on);
  });
}

/** Collects every `event` on `socket` into an array. */
export function collect(socket, event) {
  const seen = [];
  socket.on(event, (arg) => seen.push(arg));
  return seen;
}

/** A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 themselves, like redis-server). */
export async function freePort() {
  const net = await import('node:net');
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

/**
 * Starts a real redis-server on a free loopback port, without persistence to disk unless `persist`.
 * Returns {url, port, stop(), start(), kill(signal), pid()} (stop + start = a restart on the same port and
 * data dir; `kill('SIGKILL')` stops it with no shutdown and no final write).
 */
/**
 * `RTG_REDIS_MODE`: where the Redis-backed files that support it (cluster, history, webhooks, emitter) find
 * Redis (scripts/test.sh runs them in every mode):
 * - `single` (the default): one redis-server over TCP;
 * - `tls`: one redis-server speaking TLS only, with a test CA: gateways get `rediss://` and `REDIS_CA_FILE`;
 * - `sentinel`: a master, a replica and three sentinels: gateways get `REDIS_SENTINELS`;
 * - `cluster`: a Redis Cluster of three masters: gateways get `REDIS_CLUSTER_NODES`, `redisClient` is a
 *   cluster client.
 */
export const REDIS_MODE = ['tls', 'sentinel', 'cluster'].includes(process.env.RTG_REDIS_MODE) ? process.env.RTG_REDIS_MODE : 'single';
/** The cluster's node URLs, by the URL `startRedis` returned for it. */
const clusters = new Map();
/** The test CA of a TLS Redis, by its URL. */
const tlsCa = new Map();
/** The sentinels' list of a Sentinel set, by its master's URL. */
const sentinelSets = new Map();

/** A key of the gateway's own in Redis (`REDIS_PREFIX` `rtg`; in a cluster the prefix is the hash tag `{rtg}`). */
export function gatewayKey(rest) {
  return `${REDIS_MODE === 'cluster' ? '{rtg}' : 'rtg'}:${rest}`;
}

export async function startRedis({ persist = true } = {}) {
  if (REDIS_MODE === 'cluster') return startRedisCluster({ persist });
  if (REDIS_MODE === 'sentinel') return startRedisSentinel();
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-redis-'));
  let proc = null;
  const tls = REDIS_MODE === 'tls' ? await testCa() : null;
  const listen = tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', tls.cert, '--tls-key-file', tls.key,
      '--tls-ca-cert-file', tls.ca, '--tls-auth-clients', 'no']
    : ['--port', String(port)];
  const args = [...listen, '--bind', '127.0.0.1', '--dir', dir, '--save', '',
    '--appendonly', persist ? 'yes' : 'no', '--appendfsync', 'always'];
  async function start() {
    proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${out}`)), 10000);
      proc.stdout.on('data', (d) => {
        out += d.toString();
        if (/Ready to accept connections/.test(out)) { clearTimeout(timer); resolve(); }
      });
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited ${code}:\n${out}`)); });
    });
  }
  async function kill(signal = 'SIGTERM') {
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const p = proc;
    const exited = once(p, 'exit');
    p.kill(signal);
    await exited;
  }
  await start();
  const url = tls ? `rediss://127.0.0.1:${port}` : `redis://127.0.0.1:${port}`;
  if (tls) tlsCa.set(url, tls.ca);
  return { url, port, start, stop: () => kill('SIGTERM'), kill, pid: () => proc?.pid };
}

/** A test CA and a certificate it signed for 127.0.0.1 (made once per process). */
let caFiles = null;
async function testCa() {
  if (caFiles) return caFiles;
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { execFileSync } = await import('node:child_process');
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-tls-'));
  const f = (n) => path.join(dir, n);
  const ssl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=rtg test ca', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', f('server.key'), '-out', f('server.csr'));
  writeFileSync(f('ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', f('ext.cnf'), '-out', f('server.pem'));
  caFiles = { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
  return caFiles;
}

/** A master, a replica and three sentinels (`mymaster`, down after 1 s), with the shape `startRedis` returns. */
async function startRedisSentinel() {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-sentinel-'));
  const procs = [];
  const run = (args, ready) => new Promise((resolve, reject) => {
    const proc = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(proc);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${out}`)), 20000);
    proc.stdout.on('data', (d) => { out += d.toString(); if (ready.test(out)) { clearTimeout(timer); resolve({ proc, out: () => out }); } });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited ${code}:\n${out}`)); });
  });
  const plain = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
  const mport = await freePort();
  await run(['--port', String(mport), ...plain, '--dbfilename', 'm.rdb'], /Ready to accept connections/);
  const rport = await freePort();
  await run(['--port', String(rport), ...plain, '--dbfilename', 'r.rdb', '--replicaof', '127.0.0.1', String(mport)],
    /MASTER <-> REPLICA sync: Finished with success/);
  const ports = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const conf = path.join(dir, `sentinel-${i}.conf`);
    writeFileSync(conf, [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor mymaster 127.0.0.1 ${mport} 2`,
      'sentinel down-after-milliseconds mymaster 1000', 'sentinel failover-timeout mymaster 10000', ''].join('\n'));
    await run([conf, '--sentinel'], /\+monitor master mymaster/);
    ports.push(port);
  }
  const url = `redis://127.0.0.1:${mport}`;
  sentinelSets.set(url, ports.map((p) => `127.0.0.1:${p}`).join(','));
  const kill = async (signal = 'SIGTERM') => {
    for (const proc of procs) {
      if (proc.exitCode !== null || proc.signalCode !== null) continue;
      const exited = once(proc, 'exit');
      proc.kill(signal);
      await exited;
    }
  };
  return { url, port: mport, stop: () => kill('SIGTERM'), kill, pid: () => procs[0]?.pid, sentinel: true };
}

/** A node-redis client for PUBLISH from tests. */
/** A free port below 55535 whose cluster bus port (+10000) is free as well. */
export async function clusterPort() {
  const net = await import('node:net');
  const free = (port) => new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
  for (let i = 0; i < 1000; i++) {
    const port = 20000 + Math.floor(Math.random() * 35000);
    if (await free(port) && await free(port + 10000)) return port;
  }
  throw new Error('no free port pair for a cluster node');
}

/** Three cluster masters on loopback (no replicas), with the shape `startRedis` returns. */
async function startRedisCluster({ persist }) {
  const { mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { execFileSync } = await import('node:child_process');
  const cli = (...args) => execFileSync('redis-cli', args, { encoding: 'utf8', timeout: 30000 });
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-cluster-'));
  const ports = [await clusterPort(), await clusterPort(), await clusterPort()];
  const procs = new Map();
  const args = (port) => ['--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
    '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '2000',
    '--dir', dir, '--dbfilename', `d-${port}.rdb`, '--appendfilename', `a-${port}.aof`, '--save', '',
    '--appendonly', persist ? 'yes' : 'no', '--appendfsync', 'always'];
  async function startOne(port) {
    const proc = spawn('redis-server', args(port), { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.set(port, proc);
    let out = '';
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server (cluster) did not start:\n${out}`)), 10000);
      proc.stdout.on('data', (d) => {
        out += d.toString();
        if (/Ready to accept connections/.test(out)) { clearTimeout(timer); resolve(); }
      });
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited ${code}:\n${out}`)); });
    });
  }
  const ok = () => until(() => ports.every((p) => /cluster_state:ok/.test(cli('-p', String(p), 'cluster', 'info'))), 30000, 'the cluster to be ok');
  async function start() {
    for (const p of ports) await startOne(p);
    await ok();
  }
  async function kill(signal = 'SIGTERM') {
    for (const proc of procs.values()) {
      if (proc.exitCode !== null || proc.signalCode !== null) continue;
      const exited = once(proc, 'exit');
      proc.kill(signal);
      await exited;
    }
  }
  for (const p of ports) await startOne(p);
  cli('--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes');
  await ok();
  const url = `redis://127.0.0.1:${ports[0]}`;
  clusters.set(url, ports.map((p) => `redis://127.0.0.1:${p}`).join(','));
  return {
    url, port: ports[0], ports, start, stop: () => kill('SIGTERM'), kill, pid: () => procs.get(ports[0])?.pid,
    /** Empties every master (FLUSHALL reaches one node only). */
    flushAll: () => { for (const p of ports) cli('-p', String(p), 'flushall'); },
  };
}

export async function redisClient(url) {
  if (clusters.has(url)) {
    const { createCluster, createClient } = await import('redis');
    const strategy = { reconnectStrategy: (n) => Math.min(50 * n, 500) };
    const c = createCluster({ rootNodes: [{ url }], defaults: { socket: strategy } });
    c.on('error', () => {});
    await c.connect();
    // A cluster forwards a classic PUBLISH to its other nodes over the cluster bus: PUBLISHes sent to two
    // nodes reach a subscriber in no set order. Like a backend with one connection, this one publishes
    // through one node, so that its PUBLISHes keep their order (docs/scaling.md, Redis Cluster).
    const one = createClient({ url, socket: strategy });
    one.on('error', () => {});
    await one.connect();
    c.publish = (channel, message) => one.publish(channel, message);
    const quit = c.quit.bind(c);
    c.quit = async () => { await one.quit().catch(() => {}); return quit(); };
    return c;
  }
  const { createClient } = await import('redis');
  const { readFileSync } = await import('node:fs');
  const tls = tlsCa.has(url) ? { tls: true, ca: readFileSync(tlsCa.get(url)) } : {};
  const c = createClient({ url, socket: { reconnectStrategy: (n) => Math.min(50 * n, 500), ...tls } });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** Polls `fn` until it returns a truthy value (each try awaited), or rejects after `ms`. */
export async function until(fn, ms = 10000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** fetch against the gateway with JSON in and out; returns {status, body}. */
export async function http(url, { method = 'GET', headers = {}, body } = {}) {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed, headers: res.headers };
}

/**
 * A raw Socket.IO v5 client over a WebSocket (no client library): every frame is visible, so a test
 * can count how many answers the server sent for one ack id.
 */
export async function rawSocket(url, auth = {}) {
  const { default: WebSocket } = await import('ws');
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    if (text === '2') { ws.send('3'); return; } // answer the server's pings
    frames.push(text);
    for (const w of [...waiters]) w();
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const waitFor = (pred, ms = 5000) => new Promise((resolve, reject) => {
    const check = () => {
      const hit = frames.find(pred);
      if (hit !== undefined) { waiters.splice(waiters.indexOf(check), 1); clearTimeout(t); resolve(hit); }
    };
    const t = setTimeout(() => { waiters.splice(waiters.indexOf(check), 1); reject(new Error('raw: no matching frame')); }, ms);
    waiters.push(check);
    check();
  });
  await waitFor((f) => f?.startsWith('0'));
  ws.send(`40${JSON.stringify(auth)}`);
  await waitFor((f) => f?.startsWith('40') || f?.startsWith('44'));
  return {
    ws,
    frames,
    waitFor,
    /** Sends `42<id>[event, ...args]` (or without id when `id` is null). */
    emit(id, event, ...args) { ws.send(`42${id ?? ''}${JSON.stringify([event, ...args])}`); },
    /** The ack frames (`43<id>[...]`) received for `id`. */
    acks(id) { return frames.filter((f) => f?.startsWith(`43${id}[`)).map((f) => JSON.parse(f.slice(2 + String(id).length))); },
    close() { ws.close(); },
  };
}

let seq = 0;
/** A name no other test (or earlier run against the same Redis) uses. */
export const uniq = (p) => `${p}-${process.pid}-${Date.now().toString(36)}-${++seq}`;
// One transport from the start (websocket, or polling without an upgrade): a socket.io-client closed while
// engine.io-client is switching from polling to websocket can keep its 45 s ping timer alive after the close,
// holding the test process open (a client library quirk).
export const WS = { transports: ['websocket'] };
export const POLLING = { transports: ['polling'] };

/** A login function for one test against gateway `g`: its sockets are closed when the test ends. */
export function clients(t, g) {
  const open = [];
  t.after(() => { for (const s of open) s.close(); });
  return async (userId, { role = 'user', ...opts } = {}) => {
    const { socket, hello } = await connect(g.url, { ...WS, auth: { token: token(userId, { role }) }, ...opts });
    open.push(socket);
    return { socket, hello, user: hello.user, id: userId };
  };
}

/** The same handle as {@link startRedis} (kept for the tests that name it). */
export const startRedisKillable = startRedis;

/**
 * A tiny TCP forwarder on 127.0.0.1 (a stand-in for a load balancer): every new connection goes to the
 * port last given to `target(port)`. `dropAll()` cuts the open connections; `close()` stops it.
 */
export async function tcpProxy(targetPort) {
  const net = await import('node:net');
  let target = targetPort;
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    open.add(client); open.add(upstream);
    const done = () => { client.destroy(); upstream.destroy(); open.delete(client); open.delete(upstream); };
    client.on('error', done); upstream.on('error', done);
    client.on('close', done); upstream.on('close', done);
    client.pipe(upstream); upstream.pipe(client);
  });
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', resolve); });
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    target(p) { target = p; },
    dropAll() { for (const s of [...open]) s.destroy(); },
    close() { for (const s of [...open]) s.destroy(); return new Promise((r) => server.close(() => r())); },
  };
}

/** Waits for the first `event` on `socket` whose argument satisfies `pred` (rejects after `ms`). */
export function nextWhere(socket, event, pred, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.off(event, on); reject(new Error(`no matching ${event} within ${ms} ms`)); }, ms);
    const on = (arg) => { if (pred(arg)) { clearTimeout(timer); socket.off(event, on); resolve(arg); } };
    socket.on(event, on);
  });
}

// ---------------------------------------------------------------------------------------------------
// Plain WebSocket endpoint `/ws` (SPEC §10) and TLS (SPEC §11).

/** The `/ws` URL of a gateway base URL (`http://h:p` → `ws://h:p/ws`, `https` → `wss`), with `query`. */
export function wsUrl(base, query = {}) {
  const u = new URL(/^wss?:/.test(base) ? base : base.replace(/^http/, 'ws'));
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/ws';
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
  return u.toString();
}

let wsReqSeq = 0;

/**
 * A `ws` client of `/ws`. `url`: the gateway base URL (or a full ws(s):// URL). Token sources: `token`
 * (query), `header` (Authorization: Bearer), `protocol` (subprotocol `token-<jwt>`); `protocols` replaces
 * the subprotocol list, `headers` adds upgrade headers, `query` adds query parameters, `options` goes to
 * `new WebSocket` (e.g. `{autoPong:false}`, `{ca}`). With `hello` (the default) it resolves once the
 * `connected` frame arrived (`conn.hello`); with `hello:false` once the socket is open.
 *
 * Returns {ws, frames, hello, next(pred, ms), none(pred, ms), send(obj), sendRaw(data), request(type, data,
 * extra, ms), answers(id), closed, close(), isOpen(), pings}. `frames` holds every text frame parsed
 * (`{raw}` when not JSON, `{binary}` for binary frames). `next` resolves with the first frame not yet taken
 * by an earlier `next`/`request` that matches `pred` (a function, or a string compared with `type`).
 * `closed` resolves with {code, reason, at}.
 */
export async function wsConnect(url, { token: tok, header, protocol, protocols, headers = {}, query = {}, options = {},
  hello = true, helloMs = 10000 } = {}) {
  const { default: WebSocket } = await import('ws');
  const target = wsUrl(url, { ...query, ...(tok !== undefined ? { token: tok } : {}) });
  const hdrs = { ...headers };
  if (header !== undefined) hdrs.Authorization = `Bearer ${header}`;
  const protos = protocols ?? (protocol !== undefined ? [`token-${protocol}`] : undefined);
  const ws = protos ? new WebSocket(target, protos, { headers: hdrs, ...options }) : new WebSocket(target, { headers: hdrs, ...options });
  const frames = [];
  const taken = new Set();
  const waiters = new Set();
  const errors = [];
  const byId = new Map();
  let pings = 0;
  ws.on('ping', () => { pings++; });
  ws.on('message', (data, isBinary) => {
    let f;
    if (isBinary) f = { binary: data };
    else {
      const text = data.toString();
      try { f = JSON.parse(text); } catch { f = { raw: text }; }
      if (f === null || typeof f !== 'object') f = { raw: text, value: f };
    }
    frames.push(f);
    if ('requestId' in f) {
      const key = JSON.stringify(f.requestId);
      if (!byId.has(key)) byId.set(key, []);
      byId.get(key).push(f);
    }
    for (const w of [...waiters]) w();
  });
  ws.on('error', (e) => { errors.push(e); });
  const closed = new Promise((resolve) => {
    ws.once('close', (code, reason) => {
      resolve({ code, reason: reason.toString(), at: Date.now() });
      for (const w of [...waiters]) w();
    });
  });
  await new Promise((resolve, reject) => {
    const onOpen = () => { ws.off('error', onErr); resolve(); };
    const onErr = (e) => { ws.off('open', onOpen); reject(e); };
    ws.once('open', onOpen);
    ws.once('error', onErr);
  });
  const match = (pred) => (typeof pred === 'function' ? pred : (f) => f.type === pred);
  const show = () => frames.slice(-6).map((f) => JSON.stringify(f).slice(0, 300)).join('\n  ');
  const next = (pred, ms = 5000) => {
    const p = match(pred);
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = 0; i < frames.length; i++) {
          if (taken.has(i) || !p(frames[i])) continue;
          taken.add(i);
          waiters.delete(check);
          clearTimeout(timer);
          resolve(frames[i]);
          return;
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`/ws: no matching frame within ${ms} ms (${typeof pred === 'string' ? pred : 'predicate'}; ` +
          `readyState ${ws.readyState}); last frames:\n  ${show()}`));
      }, ms);
      waiters.add(check);
      check();
    });
  };
  const conn = {
    ws,
    frames,
    errors,
    get pings() { return pings; },
    hello: null,
    closed,
    next,
    /** Waits `ms` and resolves with the untaken frames matching `pred` that arrived meanwhile (or before). */
    async none(pred, ms = 500) {
      await new Promise((r) => setTimeout(r, ms));
      const p = match(pred);
      return frames.filter((f, i) => !taken.has(i) && p(f));
    },
    send(obj) { ws.send(JSON.stringify(obj)); },
    sendRaw(data) { ws.send(data); },
    /** Sends `{type, data?, requestId, ...extra}`; resolves with the first frame carrying that requestId. */
    request(type, data, extra = {}, ms = 5000) {
      const requestId = extra.requestId ?? `r${process.pid}-${++wsReqSeq}`;
      const msg = { type, requestId, ...extra };
      if (data !== undefined) msg.data = data;
      ws.send(JSON.stringify(msg));
      return next((f) => f.requestId === requestId, ms);
    },
    /** The frames carrying `requestId` (deep-equal, so ids of any type can be counted). */
    answers(requestId) {
      return byId.get(JSON.stringify(requestId)) ?? [];
    },
    isOpen() { return ws.readyState === 1; },
    close(code, reason) { if (ws.readyState <= 1) ws.close(code, reason); return closed; },
    /** Drops the TCP connection without a close frame. */
    terminate() { ws.terminate(); return closed; },
  };
  if (hello) {
    try {
      conn.hello = await next('connected', helloMs);
    } catch (e) {
      ws.terminate();
      throw e;
    }
  }
  return conn;
}

/** A login function for one test: `/ws` connections (query token) closed when the test ends. */
export function wsClients(t, g) {
  const open = [];
  t.after(() => { for (const c of open) c.terminate(); });
  const fn = async (userId, { role = 'user', via = 'token', claims, ...opts } = {}) => {
    const jwt = userId === null ? undefined : token(userId, { role, ...(claims ? { claims } : {}) });
    const c = await wsConnect(g.url, { ...(jwt ? { [via]: jwt } : {}), ...opts });
    open.push(c);
    return c;
  };
  /** Registers a connection made elsewhere so that it is closed at the end of the test. */
  fn.track = (c) => { open.push(c); return c; };
  return fn;
}

/** Resolves after `ms` (only for bounded "nothing happens" windows, never as synchronisation). */
export const pause = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs `realtime-gateway self-signed --out <dir> --host <host>`; resolves with {dir, cert, key} (paths). */
export async function selfSigned(host = 'localhost') {
  const { mkdtempSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { execFile } = await import('node:child_process');
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-tls-'));
  await new Promise((resolve, reject) => {
    execFile(BIN, ['self-signed', '--out', dir, '--host', host], { timeout: 30000, env: { PATH: process.env.PATH } },
      (err, stdout, stderr) => (err ? reject(new Error(`self-signed failed: ${err.message}\n${stdout}${stderr}`)) : resolve()));
  });
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  if (!existsSync(cert) || !existsSync(key)) throw new Error(`self-signed wrote no cert.pem/key.pem in ${dir}`);
  return { dir, cert, key };
}

/** The TLS port a gateway logged (`"tls_addr":"127.0.0.1:PORT"`, LOG_FORMAT=json). */
export async function tlsPort(g, ms = 10000) {
  return until(() => {
    const m = g.logs().match(/"tls_addr":"[^"]*:(\d+)"/);
    return m ? Number(m[1]) : null;
  }, ms, 'the tls_addr log line');
}

/**
 * Connects with a `pending-messages` listener in place before the connection is made (the event may
 * travel in the same polling payload as `connected`). Each event's argument lands in `pending`; the
 * event is acked unless `ack` is false. Resolves once `connected` arrived.
 */
export function connectWithPending(url, userId, { ack = true, ...opts } = {}) {
  const socket = ioV4(url, { forceNew: true, reconnection: false, ...WS, auth: { token: token(userId) }, ...opts });
  const pending = [];
  socket.on('pending-messages', (msgs, cb) => {
    pending.push(msgs);
    if (ack && typeof cb === 'function') cb({ success: true });
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.close(); reject(new Error('no connected event')); }, 10000);
    socket.once('connected', (hello) => { clearTimeout(timer); resolve({ socket, hello, user: hello.user, id: userId, pending }); });
    socket.once('connect_error', (e) => { clearTimeout(timer); socket.close(); reject(e); });
  });
}
