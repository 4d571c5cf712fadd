// examples/upload.html for real: the page and socket.io-client's browser bundle are served by a small
// node:http server of the test (another origin than the gateway's, so CORS is part of it), driven in
// headless Chromium (puppeteer-core, launched as in browser.test.js). A 1.5 MB file goes up in several
// chunks; the progress bar ends at the file size; a Node socket.io-client in the room hears the file
// message; the file downloads intact with a Bearer token and through the page's ?token= link.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { startGateway, token, connect, request, nextWhere, uniq, ROOT } from '../lib/helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const PAGE = path.join(ROOT, 'examples', 'upload.html');
const BUNDLE = path.join(here, '..', 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js');
const CHROMIUM = process.env.CHROMIUM_BIN
  || ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p));

const sha = (b) => createHash('sha256').update(b).digest('hex');

let browser;
let site;
let tmp;
before(async () => {
  assert.ok(CHROMIUM, 'Chromium is required (apt-get install chromium; scripts/test.sh does it)');
  assert.ok(existsSync(BUNDLE), `socket.io-client's browser bundle: ${BUNDLE} (npm ci)`);
  tmp = mkdtempSync(path.join(tmpdir(), 'rtg-upload-page-'));
  // The page's own origin: upload.html and, next to it, socket.io.min.js (read at each request).
  const files = { '/upload.html': [PAGE, 'text/html; charset=utf-8'], '/socket.io.min.js': [BUNDLE, 'text/javascript'] };
  site = createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': f[1] }).end(readFileSync(f[0]));
  });
  await new Promise((resolve, reject) => { site.once('error', reject); site.listen(0, '127.0.0.1', resolve); });
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in CI: no sandbox (the same options as browser.test.js).
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--ignore-certificate-errors'],
  });
});
after(async () => {
  await browser?.close();
  await new Promise((r) => (site ? site.close(() => r()) : r()));
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('examples/upload.html in Chromium: a 1.5 MB file in chunks, progress to 100 %, the room hears it, it downloads intact', async () => {
  const g = await startGateway({ FILE_STORE_URL: mkdtempSync(path.join(tmpdir(), 'rtg-files-')), CORS_ORIGINS: '*' });
  const page = await browser.newPage();
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
  let watcher;
  try {
    const room = uniq('page');
    const sender = token('page-alice');
    // Another member of the room, in Node.
    ({ socket: watcher } = await connect(g.url, { transports: ['websocket'], auth: { token: token('page-bob') } }));
    assert.equal((await request(watcher, 'join-room', room)).success, true);
    const heard = nextWhere(watcher, 'new-message', (m) => m.type === 'file', 60000);

    const buf = randomBytes(1.5 * 1024 * 1024 + 321);
    const file = path.join(tmp, 'random 1.5MB.bin');
    writeFileSync(file, buf);

    const siteUrl = `http://127.0.0.1:${site.address().port}`;
    const q = new URLSearchParams({ url: g.url, token: sender, room });
    await page.goto(`${siteUrl}/upload.html?${q}`);
    assert.deepEqual(await page.evaluate(() => ['url', 'token', 'room'].map((k) => document.getElementById(k).value)),
      [g.url, sender, room], 'the inputs are filled from the query string');
    assert.equal(await page.evaluate(() => typeof window.io), 'function', 'socket.io.min.js loaded');
    const input = await page.$('#pick');
    await input.uploadFile(file);
    await page.click('#go');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), { timeout: 60000 })
      .catch((e) => { throw new Error(`${e.message}\npage console:\n${console_.join('\n')}`); });
    const state = await page.evaluate(() => ({
      state: document.body.dataset.state,
      error: document.getElementById('error').textContent,
      status: document.getElementById('status').textContent,
    }));
    assert.equal(state.state, 'done', `page: ${JSON.stringify(state)}\n${console_.join('\n')}`);
    assert.equal(state.error, '');

    const bar = await page.$eval('#progress', (p) => ({ value: p.value, max: p.max, position: p.position }));
    assert.deepEqual(bar, { value: buf.length, max: buf.length, position: 1 }, 'the progress bar is full');

    const meta = JSON.parse(await page.$eval('#file', (e) => e.textContent));
    assert.deepEqual(Object.keys(meta).sort(), ['id', 'mimeType', 'name', 'size', 'url']);
    assert.equal(meta.name, 'random 1.5MB.bin');
    assert.equal(meta.size, buf.length);
    assert.equal(meta.url, `/api/files/${meta.id}`);
    const href = await page.$eval('#result a', (a) => a.href);
    assert.equal(href, `${g.url}${meta.url}?token=${sender}`);

    // The room heard it, as a file message from the page's user.
    const msg = await heard;
    assert.equal(msg.roomId, room);
    assert.equal(msg.userId, 'page-alice');
    assert.equal(msg.content, 'random 1.5MB.bin');
    assert.deepEqual(msg.file, meta);

    // Intact: with a Bearer token (another member), and through the page's link.
    const d = await fetch(g.url + meta.url, { headers: { authorization: `Bearer ${token('page-bob')}` } });
    assert.equal(d.status, 200);
    const body = Buffer.from(await d.arrayBuffer());
    assert.equal(body.length, buf.length);
    assert.equal(sha(body), sha(buf), 'the download is the file, byte for byte');
    const viaLink = await fetch(href);
    assert.equal(viaLink.status, 200);
    assert.equal(sha(Buffer.from(await viaLink.arrayBuffer())), sha(buf));
  } finally {
    watcher?.close();
    await page.close();
    await g.stop();
  }
});

test('examples/upload.html shows the gateway\'s refusal: a file over MAX_UPLOAD_BYTES', async () => {
  const g = await startGateway({ FILE_STORE_URL: mkdtempSync(path.join(tmpdir(), 'rtg-files-')), MAX_UPLOAD_BYTES: '1000' });
  const page = await browser.newPage();
  try {
    const file = path.join(tmp, 'big.bin');
    writeFileSync(file, randomBytes(5000));
    const q = new URLSearchParams({ url: g.url, token: token('page-carol'), room: uniq('page') });
    await page.goto(`http://127.0.0.1:${site.address().port}/upload.html?${q}`);
    await (await page.$('#pick')).uploadFile(file);
    await page.click('#go');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), { timeout: 30000 });
    const shown = await page.evaluate(() => ({ state: document.body.dataset.state, error: document.getElementById('error').textContent }));
    assert.equal(shown.state, 'error');
    assert.match(shown.error, /^upload-start: .*1000.*\(PAYLOAD_TOO_LARGE\)$/);
    assert.equal(await page.$eval('#file', (e) => e.textContent), '');
  } finally {
    await page.close();
    await g.stop();
  }
});
