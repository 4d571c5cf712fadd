// BEFORE: a small Node socket.io chat app, as it ran before the move. Its events are its own:
// `nickname` (ack {ok, nick}) and `chat message` (everyone in the lobby hears it, the sender gets an ack).
//
//   PORT=3000 node examples/migration/server-before.mjs
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../js-client-tests/package.json', import.meta.url));
const { Server } = require('socket.io');

const httpServer = createServer();
const io = new Server(httpServer, { cors: { origin: '*' } });

io.on('connection', (socket) => {
  socket.join('lobby');
  socket.on('nickname', (nick, ack) => {
    socket.data.nick = String(nick).slice(0, 32);
    ack?.({ ok: true, nick: socket.data.nick });
  });
  socket.on('chat message', (text, ack) => {
    const message = { from: socket.data.nick ?? 'anonymous', text: String(text).slice(0, 500) };
    io.to('lobby').emit('chat message', message);
    ack?.({ ok: true });
  });
});

httpServer.listen(Number(process.env.PORT ?? 3000), '127.0.0.1', () => {
  console.log(`chat app listening on ${httpServer.address().port}`);
});
