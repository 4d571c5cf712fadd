// examples/migration: a socket.io chat app with its own events moves to the gateway as it is. The same,
// unchanged client runs against the app's old Node socket.io server, then against the gateway with the app's
// logic behind the event proxy, both started here as the example's README says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { startGateway, ROOT } from '../lib/helpers.js';

const DIR = path.join(ROOT, 'examples', 'migration');

/** Runs a node script; resolves {code, out}. */
function run(script, env) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(DIR, script)], { env: { PATH: process.env.PATH, ...env } });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('exit', (code) => resolve({ code, out }));
  });
}

/** Starts a long-running node script and waits for its "listening on <port>" line. */
function serve(script, env) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [path.join(DIR, script)], { env: { PATH: process.env.PATH, PORT: '0', ...env } });
    let out = '';
    const t = setTimeout(() => { p.kill(); reject(new Error(`${script} did not start: ${out}`)); }, 10000);
    const on = (d) => {
      out += d;
      const m = out.match(/listening on (\d+)/);
      if (m) { clearTimeout(t); resolve({ port: Number(m[1]), stop: () => { p.kill(); } }); }
    };
    p.stdout.on('data', on);
    p.stderr.on('data', on);
  });
}

test('examples/migration: the same client works against the old socket.io app and against the gateway with the event proxy', async () => {
  const before = await serve('server-before.mjs', {});
  try {
    const r = await run('client.mjs', { CHAT_URL: `http://127.0.0.1:${before.port}` });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /heard \{"from":"ada","text":"hello, lobby"\}/);
  } finally { before.stop(); }

  const backend = await serve('backend.mjs', { WEBHOOK_SECRET: 's3cret' });
  const g = await startGateway({ EVENT_PROXY_URL: `http://127.0.0.1:${backend.port}/events`, WEBHOOK_SECRET: 's3cret' });
  try {
    const r = await run('client.mjs', { CHAT_URL: g.url });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /heard \{"from":"ada","text":"hello, lobby"\}/);
  } finally {
    await g.stop();
    backend.stop();
  }
});
