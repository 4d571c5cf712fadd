// The chat app's client, UNCHANGED by the move: it talks to the old server or to the gateway alike.
// Sets a nickname, sends a message, waits to hear it back from the lobby; exits 0 on success.
//
//   CHAT_URL=http://127.0.0.1:3000 node examples/migration/client.mjs   # before
//   CHAT_URL=http://127.0.0.1:8888 node examples/migration/client.mjs   # after (the gateway)
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../js-client-tests/package.json', import.meta.url));
const { io } = require('socket.io-client');

const socket = io(process.env.CHAT_URL ?? 'http://127.0.0.1:3000', { reconnection: false, auth: process.env.CHAT_TOKEN ? { token: process.env.CHAT_TOKEN } : {} });
const fail = (why) => { console.error(`chat client: ${why}`); process.exit(1); };
setTimeout(() => fail('timed out'), 10000);

socket.on('connect_error', (e) => fail(`connect_error ${e.message}`));
socket.on('connect', async () => {
  const named = await socket.timeout(5000).emitWithAck('nickname', 'ada');
  if (!named.ok || named.nick !== 'ada') fail(`nickname: ${JSON.stringify(named)}`);
  const heard = new Promise((resolve) => socket.on('chat message', (m) => { if (m.text === 'hello, lobby') resolve(m); }));
  const sent = await socket.timeout(5000).emitWithAck('chat message', 'hello, lobby');
  if (!sent.ok) fail(`chat message: ${JSON.stringify(sent)}`);
  const m = await heard;
  if (m.from !== 'ada') fail(`heard ${JSON.stringify(m)}`);
  console.log(`chat client: heard ${JSON.stringify(m)}`);
  socket.close();
  process.exit(0);
});
