// TLS (SPEC §11): the gateway's own listener on TLS_PORT with a certificate from `realtime-gateway
// self-signed`: HTTPS routes, Socket.IO over https (polling) and wss, `/ws` over wss, the plain port still
// serving; SIGHUP reloads the pair without dropping a connection, a pair that does not load keeps the old
// one (and says why); a bad file at start stops the process with a line naming the variable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import tls from 'node:tls';
import { spawn, execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync, copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  BIN, SECRET, startGateway, connect, request, next, token, http, until, wsConnect, selfSigned, tlsPort,
} from '../lib/helpers.js';

const fileFingerprint = (certPath) => new X509Certificate(readFileSync(certPath)).fingerprint256;

/** The SHA-256 fingerprint of the certificate served on `port` (no verification: we only look). */
function servedFingerprint(port) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.setTimeout(5000, () => { s.destroy(); reject(new Error('tls connect timed out')); });
    s.on('error', reject);
  });
}

/** GET over HTTPS trusting `ca`; resolves {status, body}. */
function httpsGet(url, ca) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, family: 4 }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => { let body = data; try { body = JSON.parse(data); } catch { /* text */ } resolve({ status: res.statusCode, body }); });
    });
    req.setTimeout(5000, () => req.destroy(new Error('https timed out')));
    req.on('error', reject);
  });
}

/** Starts the binary expecting it to exit; resolves {code, out}. */
function runToExit(env, ms = 15000) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, [], {
      env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: '0', JWT_SECRET: SECRET, TLS_PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d) => { out += d; });
    proc.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`still running after ${ms} ms:\n${out}`)); }, ms);
    proc.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out }); });
  });
}

/**
 * The backlog of the socket listening on 127.0.0.1:`port`, as the kernel reports it: for a listening socket
 * `ss -ltn` shows the backlog as Send-Q.
 */
function listenBacklog(port) {
  const out = execFileSync('ss', ['-ltnH', `sport = :${port}`], { encoding: 'utf8' });
  const line = out.split('\n').find((l) => l.includes(`:${port}`));
  assert.ok(line, `no listener on port ${port} in: ${out}`);
  return Number(line.trim().split(/\s+/)[2]);
}

/** A copy of a pair in a directory of its own (files the test may overwrite). */
function ownPair(pair) {
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-tls-live-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  copyFileSync(pair.cert, cert);
  copyFileSync(pair.key, key);
  return { dir, cert, key };
}

test('LISTEN_BACKLOG: the plain and the TLS listener listen with it, 4096 by default (capped by somaxconn)', async () => {
  const pair = await selfSigned('localhost');
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  const g = await startGateway({ TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: pair.key, TLS_PORT: '0', LISTEN_BACKLOG: '777' });
  try {
    // tokio's own bind listens with 128.
    assert.equal(listenBacklog(g.port), Math.min(777, somaxconn), 'plain listener');
    assert.equal(listenBacklog(await tlsPort(g)), Math.min(777, somaxconn), 'TLS listener');
  } finally { await g.stop(); }
  const d = await startGateway({});
  try {
    assert.equal(listenBacklog(d.port), Math.min(4096, somaxconn), 'the default');
  } finally { await d.stop(); }
});

test('TLS listener: HTTPS /health, Socket.IO over wss and https polling, /ws over wss; the plain port keeps serving', async () => {
  const pair = await selfSigned('localhost');
  const ca = readFileSync(pair.cert);
  const g = await startGateway({ TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: pair.key, TLS_PORT: '0' });
  const open = [];
  try {
    const port = await tlsPort(g);
    assert.notEqual(port, g.port);
    assert.equal(await servedFingerprint(port), fileFingerprint(pair.cert), 'the configured certificate is served');

    const h = await httpsGet(`https://localhost:${port}/health`, ca);
    assert.equal(h.status, 200);
    assert.equal(h.body.status, 'ok');
    assert.equal(h.body.service, 'realtime');

    const base = `https://localhost:${port}`;
    const viaWss = await connect(base, { transports: ['websocket'], ca, auth: { token: token('tls-sio') } });
    open.push(() => viaWss.socket.close());
    assert.equal(viaWss.hello.userId, 'tls-sio');
    const viaPolling = await connect(base, { transports: ['polling'], ca, auth: { token: token('tls-poll') } });
    open.push(() => viaPolling.socket.close());
    assert.equal(viaPolling.hello.userId, 'tls-poll');
    assert.equal((await request(viaPolling.socket, 'list_channels')).success, true);

    const w = await wsConnect(`wss://localhost:${port}/ws`, { token: token('tls-ws'), options: { ca } });
    open.push(() => w.terminate());
    assert.equal(w.hello.userId, 'tls-ws');
    assert.equal((await w.request('ping')).type, 'pong');

    // The plain port still serves, and clients on both listeners are peers of one node.
    assert.equal((await http(`${g.url}/health`)).body.status, 'ok');
    const plain = await connect(g.url, { auth: { token: token('tls-plain') } });
    open.push(() => plain.socket.close());
    const plainWs = await wsConnect(g.url, { token: token('tls-plain-ws') });
    open.push(() => plainWs.terminate());
    const pm = await request(plain.socket, 'private-message', { targetUserId: 'tls-ws', content: 'plain → wss' });
    assert.equal(pm.delivered, true);
    assert.equal((await w.next('private-message')).data.content, 'plain → wss');
    const toWss = next(viaWss.socket, 'private-message');
    await plainWs.request('private-message', { targetUserId: 'tls-sio', content: 'ws → wss socket.io' });
    assert.equal((await toWss).content, 'ws → wss socket.io');
    await until(async () => (await http(`${g.url}/health`)).body.connections === 5, 5000, 'five connections counted');

    // Without trusting the certificate the TLS handshake fails: this is real TLS with that certificate.
    await assert.rejects(wsConnect(`wss://localhost:${port}/ws`, { token: token('tls-untrusted') }), /certificate|self.signed/i);
    // Plain HTTP on the TLS port is not served as plain text.
    const plainOnTls = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status, () => 'refused');
    assert.notEqual(plainOnTls, 200);
  } finally { open.forEach((f) => f()); await g.stop(); }
});

test('SIGHUP reloads the certificate without dropping connections; a pair that does not load keeps the old one and is logged', async () => {
  const first = await selfSigned('localhost');
  const second = await selfSigned('localhost');
  const live = ownPair(first);
  const caFirst = readFileSync(first.cert);
  const caSecond = readFileSync(second.cert);
  const fp1 = fileFingerprint(first.cert);
  const fp2 = fileFingerprint(second.cert);
  assert.notEqual(fp1, fp2);
  const g = await startGateway({ TLS_CERT_FILE: live.cert, TLS_KEY_FILE: live.key, TLS_PORT: '0' });
  const open = [];
  try {
    const port = await tlsPort(g);
    assert.equal(await servedFingerprint(port), fp1);
    const w = await wsConnect(`wss://localhost:${port}/ws`, { token: token('hup-ws'), options: { ca: caFirst } });
    open.push(() => w.terminate());
    const s = await connect(`https://localhost:${port}`, { transports: ['websocket'], ca: caFirst, auth: { token: token('hup-sio') } });
    open.push(() => s.socket.close());
    let sioDropped = false;
    s.socket.on('disconnect', () => { sioDropped = true; });

    // New pair in place, then SIGHUP.
    copyFileSync(second.key, live.key);
    copyFileSync(second.cert, live.cert);
    g.proc.kill('SIGHUP');
    await until(async () => (await servedFingerprint(port)) === fp2, 10000, 'the new certificate served');
    assert.equal(g.proc.exitCode, null, 'SIGHUP did not stop the process');
    // Existing connections are untouched.
    assert.ok(w.isOpen(), 'the wss connection survived the reload');
    assert.equal((await w.request('ping')).type, 'pong');
    assert.equal(sioDropped, false);
    assert.equal((await request(s.socket, 'list_channels')).success, true);
    // New connections see the new certificate (and no longer the old one).
    const w2 = await wsConnect(`wss://localhost:${port}/ws`, { token: token('hup-ws2'), options: { ca: caSecond } });
    open.push(() => w2.terminate());
    assert.equal(w2.hello.userId, 'hup-ws2');
    assert.equal(w2.ws._socket.getPeerCertificate().fingerprint256, fp2);
    await assert.rejects(wsConnect(`wss://localhost:${port}/ws`, { token: token('hup-old'), options: { ca: caFirst } }), /certificate|self.signed/i);
    assert.equal((await httpsGet(`https://localhost:${port}/health`, caSecond)).status, 200);

    // A certificate file that is not PEM, then one with PEM armour around garbage: SIGHUP keeps the old
    // pair and logs why, naming the file (its path, or at least its variable).
    let mark = g.logs().length;
    writeFileSync(live.cert, 'this is not PEM\n');
    g.proc.kill('SIGHUP');
    await until(() => g.logs().slice(mark).includes(live.cert), 10000, 'a log line naming the bad certificate file');
    const logged = g.logs().slice(mark).split('\n').find((l) => l.includes(live.cert));
    assert.match(logged, /WARN|ERROR/, logged);
    assert.match(logged, /TLS_CERT_FILE/, logged);
    assert.equal(g.proc.exitCode, null, 'still running');
    assert.equal(await servedFingerprint(port), fp2, 'the previous pair is still served');
    mark = g.logs().length;
    writeFileSync(live.cert, '-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n');
    g.proc.kill('SIGHUP');
    const isWarning = (l) => /"level":"(WARN|ERROR)"/.test(l) && /TLS/.test(l);
    await until(() => g.logs().slice(mark).split('\n').some(isWarning), 10000, 'a warning about the armoured garbage');
    const armoured = g.logs().slice(mark).split('\n').find(isWarning);
    assert.ok(armoured.includes(live.cert) || armoured.includes('TLS_CERT_FILE'), armoured);
    assert.equal(g.proc.exitCode, null, 'still running');
    assert.equal(await servedFingerprint(port), fp2, 'the previous pair is still served');
    const w3 = await wsConnect(`wss://localhost:${port}/ws`, { token: token('hup-ws3'), options: { ca: caSecond } });
    open.push(() => w3.terminate());
    assert.equal((await w3.request('ping')).type, 'pong');
    assert.ok(w.isOpen() && w2.isOpen());
    assert.equal((await w.request('ping')).type, 'pong');

    // A garbage key file (with a good certificate): the same.
    copyFileSync(first.cert, live.cert);
    mark = g.logs().length;
    writeFileSync(live.key, 'not a key\n');
    g.proc.kill('SIGHUP');
    await until(() => g.logs().slice(mark).includes(live.key), 10000, 'a log line naming the bad key file');
    assert.equal(g.proc.exitCode, null);
    assert.equal(await servedFingerprint(port), fp2, 'a mismatched/bad pair is not half-loaded');
    assert.equal((await httpsGet(`https://localhost:${port}/health`, caSecond)).body.status, 'ok');

    // Fixed files load on the next SIGHUP.
    copyFileSync(first.key, live.key);
    g.proc.kill('SIGHUP');
    await until(async () => (await servedFingerprint(port)) === fp1, 10000, 'the first certificate back');
    assert.ok(w.isOpen());
  } finally { open.forEach((f) => f()); await g.stop(); }
});

test('a bad TLS file at start stops the process with a line naming the variable', async () => {
  const pair = await selfSigned('localhost');
  const dir = mkdtempSync(path.join(tmpdir(), 'rtg-tls-bad-'));
  const garbage = path.join(dir, 'garbage.pem');
  writeFileSync(garbage, 'this is not PEM\n');
  const cases = [
    ['garbage certificate', { TLS_CERT_FILE: garbage, TLS_KEY_FILE: pair.key }, 'TLS_CERT_FILE'],
    ['missing certificate', { TLS_CERT_FILE: path.join(dir, 'nope.pem'), TLS_KEY_FILE: pair.key }, 'TLS_CERT_FILE'],
    ['garbage key', { TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: garbage }, 'TLS_KEY_FILE'],
    ['certificate without key', { TLS_CERT_FILE: pair.cert }, 'TLS_KEY_FILE'],
  ];
  for (const [name, env, variable] of cases) {
    const { code, signal, out } = await runToExit(env);
    assert.equal(signal, null, `${name}: exited by itself`);
    assert.notEqual(code, 0, `${name}: non-zero exit\n${out}`);
    assert.ok(out.split('\n').some((l) => l.includes(variable)), `${name}: a line naming ${variable}:\n${out}`);
  }
  // And the good pair starts (the same command, so the cases above failed for their files).
  const g = await startGateway({ TLS_CERT_FILE: pair.cert, TLS_KEY_FILE: pair.key, TLS_PORT: '0' });
  try {
    assert.ok((await tlsPort(g)) > 0);
  } finally { await g.stop(); }
});
