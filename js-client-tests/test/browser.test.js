// The browser's own WebSocket against /ws (SPEC §10, CLIENTS.md §1), in headless Chromium (Debian's
// `chromium` package, driven by puppeteer-core; scripts/test.sh installs it when missing). A browser is the
// strictest client: it fails a handshake whose answer does not select the subprotocol it offered, and it
// cannot set headers, so the query and subprotocol token forms are what it has.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import { startGateway, token, http, selfSigned, tlsPort } from '../lib/helpers.js';

const CHROMIUM = process.env.CHROMIUM_BIN
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p));
const API_KEY = 'browser-key';

let browser;
before(async () => {
  assert.ok(CHROMIUM, 'Chromium is required (apt-get install chromium; scripts/test.sh does it)');
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI: no sandbox. The TLS test's certificate is self-signed.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--ignore-certificate-errors'],
  });
});
after(async () => { await browser?.close(); });

/** In the page: the RealtimeClient pattern of CLIENTS.md: open, subscribe on open, collect frames. */
async function openInPage(page, url, protocols, channels) {
  return page.evaluate((u, p, chans) => new Promise((resolve, reject) => {
    const ws = p ? new WebSocket(u, p) : new WebSocket(u);
    window.frames_ = [];
    window.ws_ = ws;
    ws.onopen = () => {
      for (const channel of chans) {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'subscribe', channel }));
      }
    };
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      window.frames_.push(f);
      if (window.frames_.filter((x) => x.type === 'subscribed').length === chans.length) {
        resolve({ protocol: ws.protocol, frames: window.frames_ });
      }
    };
    ws.onerror = () => reject(new Error('websocket error'));
    ws.onclose = (e) => reject(new Error(`closed ${e.code} ${e.reason}`));
  }), url, protocols, channels);
}

test('browser WebSocket: query token and token-<jwt> subprotocol connect, subscribe and receive a REST publish', async () => {
  const g = await startGateway({ API_KEY });
  const page = await browser.newPage();
  try {
    await page.goto(`${g.url}/health`);
    const base = g.url.replace(/^http/, 'ws');
    // The query form.
    const q = await openInPage(page, `${base}/ws?token=${token('br-alice')}`, null, ['apps:created', 'user:br-alice']);
    const hello = q.frames[0];
    assert.equal(hello.type, 'connected');
    assert.equal(hello.user.userId, 'br-alice');
    assert.ok(hello.authorizedChannels.includes('apps:*'));
    assert.equal(q.frames.filter((f) => f.type === 'subscribed').length, 2);
    const pub = await http(`${g.url}/api/publish`, { method: 'POST', headers: { 'x-api-key': API_KEY },
      body: { channel: 'apps:created', data: { id: 7, name: 'my-new-app', status: 'pending' } } });
    assert.equal(pub.status, 200);
    await page.waitForFunction(() => window.frames_.some((f) => f.type === 'event'), { timeout: 5000 });
    const ev = await page.evaluate(() => window.frames_.find((f) => f.type === 'event'));
    assert.deepEqual(ev.data, { id: 7, name: 'my-new-app', status: 'pending' });
    assert.equal(ev.channel, 'apps:created');
    // ping/pong, as the class does.
    await page.evaluate(() => window.ws_.send(JSON.stringify({ type: 'ping' })));
    await page.waitForFunction(() => window.frames_.some((f) => f.type === 'pong'), { timeout: 5000 });
    await page.evaluate(() => window.ws_.close());

    // The subprotocol form: the browser insists that the answer selects it.
    const jwt = token('br-bob');
    const s = await openInPage(page, `${base}/ws`, [`token-${jwt}`], ['announcements']);
    assert.equal(s.protocol, `token-${jwt}`);
    assert.equal(s.frames[0].user.userId, 'br-bob');
    assert.equal((await http(`${g.url}/health`)).body.connections, 1);
    await page.evaluate(() => window.ws_.close());
  } finally {
    await page.close();
    await g.stop();
  }
});

test('browser WebSocket over wss:// on TLS_PORT', async () => {
  const { cert, key } = await selfSigned();
  const g = await startGateway({ TLS_CERT_FILE: cert, TLS_KEY_FILE: key, TLS_PORT: '0' });
  const page = await browser.newPage();
  try {
    const port = await tlsPort(g);
    await page.goto(`https://localhost:${port}/health`);
    const body = await page.evaluate(() => document.body.innerText);
    assert.equal(JSON.parse(body).status, 'ok');
    const r = await openInPage(page, `wss://localhost:${port}/ws?token=${token('br-tls')}`, null, ['announcements']);
    assert.equal(r.frames[0].type, 'connected');
    assert.equal(r.frames[0].user.userId, 'br-tls');
    await page.evaluate(() => window.ws_.close());
  } finally {
    await page.close();
    await g.stop();
  }
});
