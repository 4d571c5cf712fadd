// AFTER: the same app's logic, moved behind the gateway as its event proxy (EVENT_PROXY_URL). The gateway
// keeps the sockets; this backend gets each `nickname` and `chat message` as a signed POST and answers with
// the ack, the rooms to join and what to emit, exactly what the socket.io handlers above did.
//
//   WEBHOOK_SECRET=s3cret PORT=4000 node examples/migration/backend.mjs
//   EVENT_PROXY_URL=http://127.0.0.1:4000/events WEBHOOK_SECRET=s3cret cargo run --release
import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';

const SECRET = process.env.WEBHOOK_SECRET ?? '';
const nicks = new Map(); // socketId -> nickname (socket.data.nick, before)

const MAX_AGE_MS = 5 * 60 * 1000;

/** X-Realtime-Signature is the HMAC of "<X-Realtime-Timestamp>.<body>"; a stale timestamp is a replay. */
function signed(body, headers) {
  if (!SECRET) return true;
  const timestamp = Number(headers['x-realtime-timestamp']);
  if (!Number.isSafeInteger(timestamp) || Math.abs(Date.now() - timestamp) > MAX_AGE_MS) return false;
  const want = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(`${timestamp}.${body}`).digest('hex')}`);
  const got = Buffer.from(headers['x-realtime-signature'] ?? '');
  return got.length === want.length && timingSafeEqual(got, want);
}

const handlers = {
  // socket.on('nickname', (nick, ack) => ...)
  nickname({ socketId, args: [nick] }) {
    nicks.set(socketId, String(nick).slice(0, 32));
    return { ack: { ok: true, nick: nicks.get(socketId) }, join: ['lobby'] };
  },
  // socket.on('chat message', (text, ack) => ...)
  'chat message'({ socketId, args: [text] }) {
    const message = { from: nicks.get(socketId) ?? 'anonymous', text: String(text).slice(0, 500) };
    return { ack: { ok: true }, join: ['lobby'], emit: [{ event: 'chat message', data: message, room: 'lobby' }] };
  },
};

const server = createServer((req, res) => {
  let body = '';
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    if (!signed(body, req.headers)) { res.writeHead(401); res.end(); return; }
    const call = JSON.parse(body);
    const handler = handlers[call.event];
    const answer = handler ? handler(call) : { ack: { success: false, error: 'Unknown event', code: 'NOT_FOUND' } };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  });
});

server.listen(Number(process.env.PORT ?? 4000), '127.0.0.1', () => {
  console.log(`chat backend listening on ${server.address().port}`);
});
