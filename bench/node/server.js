'use strict';
// The Node peer of the benchmarks: socket.io 4.8 on `ws`, tuned, implementing the events the
// benchmark scenarios use exactly as the gateway answers them (SPEC §2-4):
//   auth.token (HS256 JWT) -> `connected`; `join-room` (ack, `user-joined` to the others);
//   `message` (`new-message` to the room, sender included, ack); `list_channels` (ack).
// With REDIS_URL set it uses @socket.io/redis-adapter on the `redis` client (scenario S5).
//
//   PORT=9100 JWT_SECRET=s3cret [REDIS_URL=redis://127.0.0.1:6390] node server.js

const http = require('http');
const crypto = require('crypto');
const { Server } = require('socket.io');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');

const PORT = Number(process.env.PORT || 9100);
const HOST = process.env.HOST || '127.0.0.1';
const SECRET = process.env.JWT_SECRET;
if (!SECRET) {
  console.error('JWT_SECRET is required');
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, {
  wsEngine: WebSocketServer,
  perMessageDeflate: false,
  httpCompression: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  serveClient: false,
  cors: { origin: '*' },
});

const USER_CHANNELS = ['announcements', 'apps:*', 'users:*', 'database:*', 'deployments:*', 'storage:*'];
const ROOM_ID = /^[A-Za-z0-9:_.@-]{1,128}$/;

function newId(prefix) {
  return prefix + Date.now().toString(16).padStart(11, '0') + crypto.randomBytes(6).toString('hex');
}

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (!token) return next(new Error('Authentication required'));
  let claims;
  try {
    claims = jwt.verify(token, SECRET, { algorithms: ['HS256'] });
  } catch (e) {
    const reason = e.name === 'TokenExpiredError' ? 'token expired' : 'invalid token';
    return next(new Error('Authentication failed: ' + reason));
  }
  const userId = claims.sub || claims.userId;
  if (!userId || !claims.exp) return next(new Error('Authentication failed: malformed token'));
  socket.data.user = { userId, email: claims.email || null, name: claims.name || null, role: claims.role || 'user' };
  next();
});

function channelsOf(user) {
  const out = USER_CHANNELS.slice();
  out.push('user:' + user.userId);
  if (user.role === 'admin') out.push('user:*', 'system:*');
  return out;
}

function fail(ack, error, code) {
  if (typeof ack === 'function') ack({ success: false, error, code });
}

io.on('connection', (socket) => {
  const user = socket.data.user;
  socket.join('user:' + user.userId);
  socket.emit('connected', {
    sessionId: socket.id,
    userId: user.userId,
    user,
    authorizedChannels: channelsOf(user),
    serverTime: Date.now(),
  });

  socket.on('join-room', async (req, ack) => {
    const id = typeof req === 'string' ? req : req && req.roomId;
    if (typeof id !== 'string' || !ROOM_ID.test(id)) return fail(ack, 'Invalid room id', 'INVALID_PAYLOAD');
    const room = 'r:' + id;
    const already = socket.rooms.has(room);
    socket.join(room);
    let members = [];
    try {
      const sockets = await io.in(room).fetchSockets();
      const seen = new Map();
      for (const s of sockets) {
        const u = s.data.user;
        if (u && !seen.has(u.userId)) seen.set(u.userId, { userId: u.userId, user: u });
      }
      members = [...seen.values()];
    } catch (e) {
      members = [{ userId: user.userId, user }];
    }
    if (!already) socket.to(room).except('user:' + user.userId).emit('user-joined', { userId: user.userId, user, roomId: id });
    if (typeof ack === 'function') {
      ack({ success: true, room: { id, name: id, type: 'public' }, members, recentMessages: [] });
    }
  });

  socket.on('message', (req, ack) => {
    if (!req || typeof req !== 'object') return fail(ack, 'Invalid payload', 'INVALID_PAYLOAD');
    const id = req.roomId;
    if (typeof id !== 'string' || !ROOM_ID.test(id)) return fail(ack, 'Invalid room id', 'INVALID_PAYLOAD');
    if (typeof req.content !== 'string' || req.content.length === 0) return fail(ack, 'content must not be empty', 'INVALID_PAYLOAD');
    const room = 'r:' + id;
    if (!socket.rooms.has(room)) return fail(ack, 'Not in room', 'NOT_IN_ROOM');
    const msg = {
      id: newId('m'),
      roomId: id,
      userId: user.userId,
      user,
      content: req.content,
      type: req.type || 'text',
      replyTo: req.replyTo || null,
      timestamp: Date.now(),
      edited: false,
      deleted: false,
    };
    io.to(room).emit('new-message', msg);
    if (typeof ack === 'function') ack({ success: true, messageId: msg.id, timestamp: msg.timestamp });
  });

  socket.on('list_channels', (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack !== 'function') return;
    const subscribed = [];
    for (const r of socket.rooms) if (r.startsWith('ch:')) subscribed.push(r.slice(3));
    ack({ success: true, channels: channelsOf(user), subscribed });
  });
});

async function main() {
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    pub.on('error', (e) => console.error('redis pub', e.message));
    sub.on('error', (e) => console.error('redis sub', e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub, { key: process.env.REDIS_PREFIX || 'nodebench', requestsTimeout: 5000 }));
  }
  httpServer.listen(PORT, HOST, () => console.log(`node peer listening on ${HOST}:${PORT}`));
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
