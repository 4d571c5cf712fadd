// socket.io-client 3.x (Engine.IO 4, `auth` in the handshake), which the README says works unchanged:
// the greeting, a channel subscription, a REST publish reaching it, and a refusal, over both transports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import {
  startGateway, connectV3, refusedV3, requestCb, next, token, http, uniq, WS, POLLING,
} from '../lib/helpers.js';

const require = createRequire(import.meta.url);
const API_KEY = 'clientv3-api-key';
let gw;
before(async () => { gw = await startGateway({ API_KEY }); });
after(async () => { await gw.stop(); });

test('the client under test is socket.io-client 3.x', () => {
  const { version } = require('socket.io-client-v3/package.json');
  assert.match(version, /^3\./);
});

for (const [name, transport] of [['websocket', WS], ['polling', POLLING]]) {
  test(`v3 over ${name}: connected, subscribe with an ack, a REST publish arrives`, async (t) => {
    const user = uniq('v3user');
    const { socket, hello } = await connectV3(gw.url, { ...transport, auth: { token: token(user) } });
    t.after(() => socket.close());
    assert.equal(socket.io.engine.transport.name, name);
    assert.equal(hello.sessionId, socket.id);
    assert.equal(hello.userId, user);
    assert.equal(hello.user.userId, user);
    assert.ok(hello.authorizedChannels.includes('announcements'), hello.authorizedChannels.join(','));

    assert.deepEqual(await requestCb(socket, 'subscribe', 'announcements'), { success: true, channel: 'announcements' });

    const data = { note: uniq('published'), n: 3 };
    const got = next(socket, 'event');
    const res = await http(`${gw.url}/api/publish`, {
      method: 'POST', headers: { 'x-api-key': API_KEY }, body: { channel: 'announcements', data },
    });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(res.body, { success: true });
    const ev = await got;
    assert.equal(ev.channel, 'announcements');
    assert.deepEqual(ev.data, data);
    assert.ok(!Number.isNaN(Date.parse(ev.timestamp)), `timestamp ${ev.timestamp}`);
  });
}

test('v3 without a token is refused when ALLOW_ANONYMOUS=false, on both transports', async () => {
  const strict = await startGateway({ ALLOW_ANONYMOUS: 'false' });
  try {
    for (const transport of [WS, POLLING]) {
      const err = await refusedV3(strict.url, transport);
      assert.equal(err.message, 'Authentication required');
    }
    // The same gateway takes a v3 client with a token.
    const { socket, hello } = await connectV3(strict.url, { ...WS, auth: { token: token('v3-strict') } });
    assert.equal(hello.userId, 'v3-strict');
    socket.close();
  } finally { await strict.stop(); }
});
