// Shared helpers: start a real gateway process on port 0, mint tokens, connect real socket.io clients.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import { io as ioV4 } from 'socket.io-client';
import ioV2 from 'socket.io-client-v2';

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

function greeted(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.close(); reject(new Error('no connected event')); }, 10000);
    socket.once('connected', (hello) => { clearTimeout(timer); resolve({ socket, hello }); });
    const fail = (err) => { clearTimeout(timer); socket.close(); reject(err); };
    socket.once('connect_error', fail);
    socket.once('error', (e) => fail(e instanceof Error ? e : new Error(String(e))));
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
