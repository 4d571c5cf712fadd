// Private messages while the target's sockets churn (SPEC §5, "nothing acknowledged may be lost"): a
// sender sends N private messages, each acked {success:true, messageId, delivered}, while the target
// connects, disconnects (cleanly, or abruptly: the client ends its side of the TCP connection with no
// Socket.IO or WebSocket close), reconnects, sometimes with two sockets at once; at the end the target
// connects once more and takes its pending-messages (acked, as docs/protocol.md recommends). Every message
// acked delivered:false must reach the target (the offline queue is at least once), no target socket may stay
// counted after the churn, and the messages acked delivered:true that a closing or still-connecting socket
// missed are printed (live delivery is at most once). Single node, and two nodes sharing a real Redis (sender
// on A, target mostly on B, sometimes on A).
//
// What "reached" means: each target socket has a tap on its WebSocket that sees every frame the gateway
// wrote to it, also the ones socket.io-client drops because the test closed the socket meanwhile. The
// property is checked on what reached the client (the tap); what the client library handed to the
// application (events) is counted too and printed. (An abrupt close ends only the client's side of the
// TCP connection, so what the gateway writes before it notices still arrives: a message lost there was
// never written, not lost in the network.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startGateway, startRedis, connect, request, token, until, http, uniq, WS, pause } from '../lib/helpers.js';

const N = 150;
const ENV = {
  RATE_LIMIT_PER_SEC: '100000',
  RATE_LIMIT_BURST: '100000',
  PRESENCE_GRACE_MS: '300',
  // Debug: pending hand-overs; trace of socketioxide::ns: when a socket enters and leaves the namespace.
  RUST_LOG: 'info,realtime_gateway=debug,socketioxide::ns=trace',
};

const rnd = (n) => Math.floor(Math.random() * n);
const chance = (p) => Math.random() < p;
const up = (g) => until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');

/**
 * What the target saw, per message content: `wire` (frames on the WebSocket) and `app` (socket.io-client
 * events), each a list of {via:'live'|'pending', sid, at}. `timeline` lists the target's sockets.
 */
function recorder() {
  const seen = new Map(); // content -> {wire:[], app:[]}
  const timeline = [];
  const entry = (content) => {
    if (!seen.has(content)) seen.set(content, { wire: [], app: [] });
    return seen.get(content);
  };
  return { seen, timeline, entry };
}

/**
 * Opens one socket of `userId` on `g`, with the `pending-messages` listener (which acks) and the wire tap
 * in place before the connection is made. Returns {socket, row, connected, close(kind)}; `connected`
 * resolves with true once `connected` arrived, false if the socket went away first.
 */
function openTarget(g, userId, rec, label) {
  const socket = io(g.url, { forceNew: true, reconnection: false, ...WS, auth: { token: token(userId) } });
  const row = { label, node: g.name, sid: null, opened: Date.now(), connected: null, closed: null, how: null };
  rec.timeline.push(row);
  // The tap: on the `ws` WebSocket itself, which keeps reading until the server's close frame.
  socket.io.on('open', () => {
    row.sid = socket.io.engine?.id ?? null; // the gateway gives the socket its Engine.IO session id
    const ws = socket.io.engine?.transport?.ws;
    if (!ws || typeof ws.on !== 'function') return;
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const m = /^42\d*(\[.*)$/s.exec(data.toString());
      if (!m) return;
      let pkt;
      try { pkt = JSON.parse(m[1]); } catch { return; }
      const [event, arg] = pkt;
      const at = Date.now();
      if (event === 'private-message') rec.entry(arg.content).wire.push({ via: 'live', sid: row.sid, label, at, id: arg.id });
      if (event === 'pending-messages' && Array.isArray(arg)) {
        for (const msg of arg) rec.entry(msg.content).wire.push({ via: 'pending', sid: row.sid, label, at, id: msg.id });
      }
    });
  });
  socket.on('private-message', (msg) => {
    rec.entry(msg.content).app.push({ via: 'live', sid: row.sid, label, at: Date.now(), id: msg.id });
  });
  socket.on('pending-messages', (msgs, ack) => {
    for (const msg of msgs) rec.entry(msg.content).app.push({ via: 'pending', sid: row.sid, label, at: Date.now(), id: msg.id });
    if (typeof ack === 'function') ack();
  });
  let settle;
  const connected = new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 10000);
    settle = (v) => { clearTimeout(timer); resolve(v); };
    socket.once('connected', (hello) => {
      row.sid = hello.sessionId ?? socket.id;
      row.connected = Date.now();
      settle(true);
    });
    socket.once('connect_error', (e) => { row.error = e?.message ?? String(e); settle(false); });
    socket.once('disconnect', () => settle(false));
  });
  return {
    socket,
    row,
    connected,
    /**
     * 'clean': socket.close() (a Socket.IO disconnect, then the WebSocket close handshake). 'abrupt': the
     * client ends its side of the TCP connection with neither (the gateway sees the transport go away);
     * what the gateway wrote before noticing still reaches the tap.
     */
    close(kind = 'clean') {
      if (row.closed) return;
      row.closed = Date.now();
      row.how = kind;
      const raw = socket.io.engine?.transport?.ws?._socket;
      if (kind === 'abrupt' && raw && socket.connected) {
        raw.end();
        // The gateway closes the connection once it sees the end; close the client then (or after 3 s).
        const fallback = setTimeout(() => socket.close(), 3000);
        fallback.unref();
        socket.once('disconnect', () => { clearTimeout(fallback); socket.close(); });
      } else {
        row.how = 'clean';
        socket.close();
      }
      settle(false); // a socket closed before its greeting never gets one
    },
  };
}

/**
 * Churns the target's sockets (each on the node `pick()` gives) until `stop()` is true: one socket, two at
 * once, an overlapping hand-off from one to the next, or a socket closed before its greeting; each held
 * 0 to 120 ms, closed cleanly or abruptly, with 0 to 60 ms without any socket in between.
 */
async function churn(userId, rec, pick, stop) {
  let n = 0;
  const closeKind = () => (chance(0.35) ? 'abrupt' : 'clean');
  const hold = () => pause(chance(0.25) ? 0 : rnd(120));
  for (let round = 0; round < 2000 && !stop(); round++) {
    const shape = rnd(10);
    if (shape < 4) { // one socket
      const s = openTarget(pick(), userId, rec, `c${++n}`);
      await s.connected;
      await hold();
      s.close(closeKind());
    } else if (shape < 6) { // two at once
      const a = openTarget(pick(), userId, rec, `c${++n}`);
      const b = openTarget(pick(), userId, rec, `c${++n}`);
      await Promise.all([a.connected, b.connected]);
      await hold();
      const [first, second] = chance(0.5) ? [a, b] : [b, a];
      first.close(closeKind());
      if (chance(0.5)) await pause(rnd(40));
      second.close(closeKind());
    } else if (shape < 8) { // hand-off: the next socket connects before the previous one leaves
      const a = openTarget(pick(), userId, rec, `c${++n}`);
      await a.connected;
      await hold();
      const b = openTarget(pick(), userId, rec, `c${++n}`);
      if (chance(0.5)) await b.connected;
      a.close(closeKind());
      await b.connected;
      await hold();
      b.close(closeKind());
    } else { // gone before (or right as) the greeting arrives
      const s = openTarget(pick(), userId, rec, `c${++n}`);
      await pause(rnd(8));
      s.close(closeKind());
      await s.connected; // settles: connected, or gone
    }
    if (chance(0.7)) await pause(rnd(60));
  }
  return n;
}

/** Sends N messages from `sender` to `targetUserId` with 3 workers, each waiting for its ack. */
async function sendAll(sender, targetUserId, tag) {
  const sent = [];
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      const content = `${tag}#${i}`;
      const m = { i, content, sentAt: Date.now(), ack: null, ackAt: null };
      sent.push(m);
      m.ack = await request(sender, 'private-message', { targetUserId, content });
      m.ackAt = Date.now();
      assert.equal(m.ack.success, true, `${content}: ${JSON.stringify(m.ack)}`);
      assert.equal(typeof m.ack.messageId, 'string');
      assert.equal(typeof m.ack.delivered, 'boolean');
      await pause(rnd(100)); // spreads the sends over a few seconds of churn
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  return sent.sort((a, b) => a.i - b.i);
}

/**
 * Socket ids the gateways gave up on while connecting them: the transport closed while the connect
 * middleware ran, so the CONNECT packet could not be sent (socketioxide logs it at debug level).
 */
function leakedSids(gateways) {
  const ids = new Set();
  for (const g of gateways) {
    for (const m of g.logs().matchAll(/"message":"error sending connect packet[^"]*","sid":"([^"]+)"/g)) ids.add(m[1]);
  }
  return ids;
}

/** Authenticated connections the gateways count (each node counts its own). */
async function authenticated(gateways) {
  let n = 0;
  for (const g of gateways) n += (await http(`${g.url}/health`)).body.authenticated;
  return n;
}

const fmt = (t0, t) => (t == null ? '-' : `+${t - t0} (${new Date(t).toISOString().slice(11)})`);

/** The target's sockets around `m` (open at some point in [sentAt - 200, ackAt + 200]) and what the gateways logged of them. */
function explain(m, rec, t0, gateways) {
  const lo = m.sentAt - 200;
  const hi = m.ackAt + 200;
  const rows = rec.timeline.filter((r) => r.opened <= hi && (r.closed ?? Infinity) >= lo);
  const openThen = rec.timeline.filter((r) => r.opened <= m.ackAt && (r.closed ?? Infinity) >= m.sentAt).length;
  const lines = [`  ${m.content} id=${m.ack.messageId} delivered=${m.ack.delivered} sent ${fmt(t0, m.sentAt)} acked ${fmt(t0, m.ackAt)} ms; ` +
    `target sockets open (client side) meanwhile: ${openThen}`];
  for (const r of rows) {
    const never = r.sid && leakedSids(gateways).has(r.sid) ? ' NEVER DEPARTED (closed during its connect middleware)' : '';
    lines.push(`    target socket ${r.label} on ${r.node} sid=${r.sid} opened ${fmt(t0, r.opened)} connected ${fmt(t0, r.connected)} closed ${fmt(t0, r.closed)} (${r.how})${never}`);
    for (const g of gateways) {
      if (!r.sid) continue;
      for (const line of g.logs().split('\n').filter((l) => l.includes(r.sid))) lines.push(`      ${g.name}: ${line.slice(0, 400)}`);
    }
  }
  for (const g of gateways) {
    for (const line of g.logs().split('\n').filter((l) => l.includes(m.ack.messageId))) lines.push(`    ${g.name}: ${line.slice(0, 400)}`);
  }
  return lines.join('\n');
}

/**
 * The whole scenario: `sender` on `senderNode`, target sockets on `pick()`, the final connect on
 * `finalNode`. Checks and prints; `gateways` are searched for log lines about lost messages.
 */
async function scenario({ senderNode, pick, finalNode, gateways, name }) {
  const targetId = uniq('pm-target');
  const tag = uniq('m');
  const rec = recorder();
  const t0 = Date.now();
  const { socket: sender } = await connect(senderNode.url, { ...WS, auth: { token: token(uniq('pm-sender')) } });
  try {
    let done = false;
    const churning = churn(targetId, rec, pick, () => done);
    let sent;
    let sockets;
    try {
      sent = await sendAll(sender, targetId, tag);
    } finally {
      done = true;
      sockets = await churning; // every churn socket closed (or closing)
    }
    const churnEnded = Date.now();
    // Every target socket is closed: the gateways should count the sender's socket alone (abrupt closes take
    // a moment to be noticed). What is left over is a socket the gateway still counts for the target.
    await until(async () => (await authenticated(gateways)) === 1, 3000, 'the closed sockets uncounted').catch(() => {});
    const phantom = (await authenticated(gateways)) - 1;
    const leaked = rec.timeline.filter((r) => r.sid && leakedSids(gateways).has(r.sid)).length;

    // The final connect: collect pending-messages until every acked message is accounted for (the hand-over
    // may wait up to ~6 s for the lease of an earlier socket's unacked hand-over).
    const missing = (how) => sent.filter((m) => !(rec.seen.get(m.content)?.[how].length > 0));
    // A user whose sockets all left may still be refused "Too many connections for this user" for a few
    // seconds (see the figures): the final connect retries that refusal for up to 10 s.
    const finalStart = Date.now();
    let refusals = 0;
    let last;
    let finalOk = false;
    for (;;) {
      last = openTarget(finalNode, targetId, rec, `final${refusals || ''}`);
      finalOk = await last.connected;
      if (finalOk || !/Too many connections/.test(last.row.error ?? '') || Date.now() - finalStart > 10000) break;
      last.close('clean');
      refusals++;
      await pause(100); // the retry's pace, not a synchronisation
    }
    const refusedFor = refusals ? Date.now() - finalStart : 0;
    let finalWait = 0;
    try {
      if (finalOk) {
        await until(() => missing('wire').length === 0, 12000, 'every acked message').catch(() => {});
        finalWait = Date.now() - last.row.connected;
      }
    } finally {
      last.close('clean');
    }

    // Figures.
    const viaWire = (m, via) => (rec.seen.get(m.content)?.wire ?? []).filter((r) => r.via === via);
    const notDelivered = sent.filter((m) => !m.ack.delivered);
    const live = sent.filter((m) => viaWire(m, 'live').length > 0);
    const queued = sent.filter((m) => viaWire(m, 'pending').length > 0);
    const both = sent.filter((m) => viaWire(m, 'live').length > 0 && viaWire(m, 'pending').length > 0);
    const dups = sent.filter((m) => (rec.seen.get(m.content)?.wire.length ?? 0) > 1);
    const finalPending = sent.filter((m) => viaWire(m, 'pending').some((r) => r.label.startsWith('final')));
    const lostWire = missing('wire');
    const lostApp = missing('app');
    const appOnlyWire = lostApp.filter((m) => !lostWire.includes(m));
    const strayIds = sent.filter((m) => (rec.seen.get(m.content)?.wire ?? []).some((r) => r.id !== m.ack.messageId));
    console.log(`# figures: ${name}: ${sent.length} acked (${sent.length - notDelivered.length} delivered:true, ` +
      `${notDelivered.length} delivered:false) while ${sockets} target sockets churned for ${churnEnded - t0} ms; ` +
      `received live ${live.length}, in pending-messages ${queued.length} (${finalPending.length} by the final connect, ` +
      `${finalOk ? `after ${finalWait} ms` : 'refused'}), both ${both.length}, more than once ${dups.length}; lost ${lostWire.length}; ` +
      `on the wire but dropped by socket.io-client (socket closing) ${appOnlyWire.length}; after the churn the ` +
      `gateway${gateways.length > 1 ? 's' : ''} still counted ${phantom} target socket(s); ${leaked} closed while connecting (never departed); ` +
      `the final connect was refused "Too many connections" ${refusals} time(s)${refusals ? ` over ${refusedFor} ms` : ''}`);

    assert.ok(finalOk, `the final connect: ${last.row.error ?? 'no connected event'} (the gateway${gateways.length > 1 ? 's' : ''} ` +
      `still counted ${phantom} target socket(s) after the churn; ${leaked} closed while connecting, never departed)`);
    assert.deepEqual(strayIds.map((m) => m.content), [], 'every copy carries the messageId of the ack');
    const lostFalse = lostWire.filter((m) => !m.ack.delivered);
    assert.deepEqual(lostFalse.map((m) => m.content), [],
      `delivered:false messages that came neither in pending-messages nor live:\n${lostFalse.map((m) => explain(m, rec, t0, gateways)).join('\n')}`);
    // Sockets that closed while being admitted used to stay counted for good (the user "online", later
    // messages acked delivered:true to nobody, then "Too many connections"): none may be left.
    assert.equal(phantom, 0, 'no target socket is still counted after the churn');
    // delivered:true means handed to a socket the gateway counted as connected. One that is closing at that
    // instant (its client already gone, its departure not yet run) or, on another node, not yet reachable, can
    // miss it: live delivery is at most once (docs/protocol.md). Printed, not asserted.
    const lostLive = lostWire.filter((m) => m.ack.delivered);
    if (lostLive.length) {
      console.log(`# ${name}: delivered:true but not received (a socket closing or still connecting): ${lostLive.length} of ` +
        `${sent.length - notDelivered.length}\n${lostLive.map((m) => explain(m, rec, t0, gateways)).join('\n')}`);
    }
  } finally {
    sender.close();
  }
}

test('private messages under target churn, one node: every delivered:false message is handed over, no socket stays counted', async (t) => {
  const g = await startGateway(ENV);
  g.name = 'node';
  t.after(() => g.stop());
  await scenario({ name: 'one node', senderNode: g, pick: () => g, finalNode: g, gateways: [g] });
});

test('private messages under target churn, two nodes sharing Redis: every delivered:false message is handed over, no socket stays counted', async (t) => {
  const redis = await startRedis({ persist: false });
  const A = await startGateway({ ...ENV, REDIS_URL: redis.url, NODE_ID: uniq('pm-a') });
  const B = await startGateway({ ...ENV, REDIS_URL: redis.url, NODE_ID: uniq('pm-b') });
  A.name = 'A';
  B.name = 'B';
  t.after(async () => { await A.stop(); await B.stop(); await redis.stop(); });
  await up(A);
  await up(B);
  await scenario({ name: 'two nodes', senderNode: A, pick: () => (chance(0.3) ? A : B), finalNode: B, gateways: [A, B] });
});
