// The README's "Example: a chat", run as written: the commands are read from the README itself (so the
// README cannot drift from what works), the gateway binary is started with the README's environment (on a
// port of its own instead of 8888, passed on as GATEWAY_URL), and examples/chat.mjs runs as a child process
// with the README's environment, from the repository root.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, startGateway } from '../lib/helpers.js';

const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const SCRIPT = path.join('examples', 'chat.mjs');

/** The README's section `## <title>`, up to the next `## ` heading. */
function section(title) {
  const start = README.indexOf(`## ${title}\n`);
  assert.ok(start >= 0, `README has no "## ${title}" section`);
  const end = README.indexOf('\n## ', start + 3);
  return README.slice(start, end === -1 ? undefined : end);
}

/** The line of `text` that runs `command` (optionally after VAR=value words), without its comment. */
function commandLine(text, command) {
  const re = new RegExp(`^((?:[A-Z_][A-Z0-9_]*=\\S*\\s+)*)${command.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=\\s|$)`);
  const line = text.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).find((l) => re.test(l));
  assert.ok(line, `README example has no \`${command}\` line`);
  return line;
}

/** The VAR=value words in front of the command on `line`, as an object. */
function envOf(line) {
  const env = {};
  for (const word of line.split(/\s+/)) {
    const m = word.match(/^([A-Z_][A-Z0-9_]*)=(.*)$/);
    if (!m) break;
    env[m[1]] = m[2];
  }
  return env;
}

const example = section('Example: a chat');
const codeBlock = (example.match(/```sh\n([\s\S]*?)```/) || [])[1] || '';
const gatewayLine = commandLine(codeBlock, 'cargo run --release');
const chatLine = commandLine(codeBlock, `node ${SCRIPT}`);

/** Runs `node examples/chat.mjs` from the repository root with `env`; resolves with {code, out, err}. */
function runChat(env, ms = 45000) {
  const child = spawn(process.execPath, [SCRIPT], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`chat.mjs still running after ${ms} ms:\n${out}\n${err}`)); }, ms);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

function assertChatRan({ code, out, err }, alice, bob) {
  const show = `exit ${code}\nstdout:\n${out}\nstderr:\n${err}`;
  assert.equal(code, 0, show);
  const lines = out.trim().split('\n');
  for (const expected of [
    `connected as ${alice}`,
    `connected as ${bob}`,
    `joined lobby (public)`,
    `[lobby] ${alice}: Hi Bob, how are you?`,
    `[lobby] ${bob}: Fine, thanks! (reply to `,
    `edited `,
    `private from ${bob}: Lunch at noon?`,
    `${alice} read `,
  ]) {
    assert.ok(lines.some((l) => l.includes(expected)), `no line with "${expected}"\n${show}`);
  }
  assert.equal(lines.at(-1), 'done', show);
}

test('the README example and the header of examples/chat.mjs give the same commands', () => {
  const header = readFileSync(path.join(ROOT, SCRIPT), 'utf8').split('\n')
    .filter((l) => l.startsWith('//')).map((l) => l.replace(/^\/\/\s?/, '').replace(/\s+#.*$/, '').trim());
  for (const line of [gatewayLine, chatLine]) {
    assert.ok(header.includes(line), `examples/chat.mjs's header lacks the README's \`${line}\``);
  }
  // The gateway and the script share the secret the script signs with.
  const gatewayEnv = envOf(gatewayLine);
  assert.ok(gatewayEnv.JWT_SECRET, `the README's gateway command sets no JWT_SECRET: ${gatewayLine}`);
  assert.equal(envOf(chatLine).JWT_SECRET, gatewayEnv.JWT_SECRET);
});

test('README: the gateway with its JWT_SECRET, then the chat with the same one: exit 0 and the conversation', async () => {
  const gw = await startGateway({ ...envOf(gatewayLine) });
  try {
    const result = await runChat({ ...envOf(chatLine), GATEWAY_URL: gw.url });
    assertChatRan(result, 'alice', 'bob');
  } finally { await gw.stop(); }
});

test('README: a gateway without JWT_SECRET, and the two tokens it printed as ALICE_TOKEN / BOB_TOKEN', async () => {
  assert.match(example, /`ALICE_TOKEN=<user token> BOB_TOKEN=<admin token> node examples\/chat\.mjs`/);
  // Plain `cargo run --release`: no JWT_SECRET (empty counts as unset), so an ephemeral secret and
  // printed tokens.
  const gw = await startGateway({ JWT_SECRET: '' });
  try {
    const logs = gw.logs();
    const user = logs.match(/user token \(24h, alice\): ([\w.-]+)/);
    const admin = logs.match(/admin token \(24h\): ([\w.-]+)/);
    assert.ok(user && admin, `no printed tokens in the log:\n${logs}`);
    const result = await runChat({ ALICE_TOKEN: user[1], BOB_TOKEN: admin[1], GATEWAY_URL: gw.url });
    assertChatRan(result, 'alice', 'admin');
  } finally { await gw.stop(); }
});

test('chat.mjs without a secret or tokens says what to set and exits 1', async () => {
  const { code, err } = await runChat({ GATEWAY_URL: 'http://127.0.0.1:9' });
  assert.equal(code, 1);
  assert.match(err, /JWT_SECRET/);
  assert.match(err, /ALICE_TOKEN and BOB_TOKEN/);
});
