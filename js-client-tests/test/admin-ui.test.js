// The real Socket.IO Admin UI (the unmodified `ui/dist` of @socket.io/admin-ui 0.5.1 from npm), served by a
// local static server and driven in headless Chromium against a two-node cluster: it logs in, lists the
// sockets of both nodes and both server rows, and its disconnect button disconnects a socket of the other
// node. The screenshot in docs/operations.md is taken here (docs/admin-ui.png, when ADMIN_UI_SCREENSHOT=1).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import puppeteer from 'puppeteer-core';
import { io as ioc } from 'socket.io-client';
import { startGateway, startRedis, connect, token, http, until, ROOT } from '../lib/helpers.js';

const require = createRequire(import.meta.url);
const UI = path.join(path.dirname(require.resolve('@socket.io/admin-ui/package.json')), 'ui', 'dist');
const CHROMIUM = process.env.CHROMIUM_BIN
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p));
const PASSWORD = 'ui-secret';
const TYPES = { '.html': 'text/html', '.js': 'application/javascript', '.css': 'text/css', '.png': 'image/png',
  '.svg': 'image/svg+xml', '.ico': 'image/x-icon', '.woff': 'font/woff', '.woff2': 'font/woff2', '.ttf': 'font/ttf' };

/** Serves the UI's files; resolves {url, close}. */
function serveUi() {
  const server = createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    let file = path.normalize(path.join(UI, rel === '/' ? 'index.html' : rel));
    if (!file.startsWith(UI) || !existsSync(file) || statSync(file).isDirectory()) file = path.join(UI, 'index.html');
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) });
  }));
}

/** Logs in with the password (as the UI's form would) and returns the session id the UI keeps. */
function sessionId(url) {
  return new Promise((resolve, reject) => {
    const s = ioc(`${url}/admin`, { forceNew: true, reconnection: false, auth: { username: 'admin', password: PASSWORD } });
    const t = setTimeout(() => { s.close(); reject(new Error('no session')); }, 10000);
    s.once('session', (id) => { clearTimeout(t); s.close(); resolve(id); });
    s.once('connect_error', (e) => { clearTimeout(t); reject(e); });
  });
}

test('the official Admin UI in headless Chromium: two nodes, their sockets, and its disconnect button', async () => {
  assert.ok(CHROMIUM, 'Chromium is required (apt-get install chromium; scripts/test.sh does it)');
  const ui = await serveUi();
  const redis = await startRedis({ persist: false });
  // The UI connects with credentials (withCredentials): its origin must be listed.
  const env = { REDIS_URL: redis.url, ADMIN_UI_PASSWORD: PASSWORD, ADMIN_UI_MODE: 'development', CORS_ORIGINS: ui.url };
  const A = await startGateway({ ...env, NODE_ID: 'ui-node-a' });
  const B = await startGateway({ ...env, NODE_ID: 'ui-node-b' });
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const sockets = [];
  try {
    for (const g of [A, B]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
    await new Promise((r) => setTimeout(r, 1500)); // each heartbeat has counted the other node
    const onA = (await connect(A.url, { auth: { token: token('ui-alice') } })).socket;
    const onB = (await connect(B.url, { auth: { token: token('ui-bob') } })).socket;
    sockets.push(onA, onB);
    const session = await sessionId(A.url);

    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    // What the UI's own connection form stores: the server, the path, the session.
    await page.evaluateOnNewDocument((server, sid) => {
      localStorage.setItem('server_url', server);
      localStorage.setItem('session_id', sid);
      localStorage.setItem('ws_only', 'false');
      localStorage.setItem('path', '/socket.io');
      localStorage.setItem('namespace', '/admin');
    }, A.url, session);
    await page.goto(`${ui.url}/#/sockets/`);
    // Both nodes' sockets are listed.
    await page.waitForFunction((a, b) => document.body.innerText.includes(a) && document.body.innerText.includes(b),
      { timeout: 20000 }, onA.id, onB.id);
    // Both server rows.
    await page.goto(`${ui.url}/#/servers/`);
    await page.waitForFunction(() => document.body.innerText.includes('ui-node-a') && document.body.innerText.includes('ui-node-b'),
      { timeout: 20000 });
    if (process.env.ADMIN_UI_SCREENSHOT) {
      await page.screenshot({ path: path.join(ROOT, 'docs', 'admin-ui.png') });
    }
    // The socket of node B, from its details page: the UI's disconnect button.
    const bobId = onB.id;
    const gone = new Promise((resolve) => onB.once('disconnect', resolve));
    await page.goto(`${ui.url}/#/n/%2F/sockets/${bobId}`);
    await page.waitForFunction((id) => document.body.innerText.includes(id), { timeout: 20000 }, bobId);
    const button = await page.waitForSelector('button:has(.mdi-logout):not([disabled])', { timeout: 10000 });
    await button.click();
    const reason = await Promise.race([gone, new Promise((_, rej) => setTimeout(() => rej(new Error('not disconnected')), 10000))]);
    assert.ok(['io server disconnect', 'transport close'].includes(reason), reason);
    assert.equal(onA.connected, true, 'the other socket stays');
    // The UI's figures match /api/stats: one socket left in the cluster.
    const stats = (await http(`${A.url}/api/stats`, { headers: { authorization: `Bearer ${token('ops', { role: 'admin' })}` } })).body;
    await until(async () => (await http(`${A.url}/api/stats`, { headers: { authorization: `Bearer ${token('ops', { role: 'admin' })}` } })).body.totalConnections === 1,
      5000, `cluster connections (was ${stats.totalConnections})`);
    await page.close();
  } finally {
    sockets.forEach((s) => s.close());
    await browser.close();
    await A.stop(); await B.stop(); await redis.stop(); await ui.close();
  }
});
