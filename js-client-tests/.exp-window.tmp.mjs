// Experiment (not a test): hammer private messages at a target across its connect and disconnect windows.
import WebSocket from 'ws';
import { io } from 'socket.io-client';
import { startGateway, startRedis, connect, token, http, until, WS, pause } from './lib/helpers.js';
const ENV = { RATE_LIMIT_PER_SEC: '100000', RATE_LIMIT_BURST: '100000', PRESENCE_GRACE_MS: '300' };
const cluster = process.argv[2] === 'cluster';
const mode = process.argv[3] || 'connect'; // connect | leave41 | end
let redis, A, B;
if (cluster) {
  redis = await startRedis({ persist: false });
  A = await startGateway({ ...ENV, REDIS_URL: redis.url, NODE_ID: 'xa' + process.pid });
  B = await startGateway({ ...ENV, REDIS_URL: redis.url, NODE_ID: 'xb' + process.pid });
  for (const g of [A, B]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000);
} else { A = B = await startGateway(ENV); }
const { socket: sender } = await connect(A.url, { ...WS, auth: { token: token('snd' + process.pid) } });
let lost = [], total = { sent: 0, dTrue: 0, dFalse: 0 };
function rawTarget(url, uid) {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  const st = { ws, frames, sid: null, connectedAt: null };
  ws.on('message', (d) => { const t = d.toString(); if (t === '2') { try { ws.send('3'); } catch {} return; } frames.push([Date.now(), t]);
    if (t.startsWith('0')) ws.send(`40${JSON.stringify({ token: token(uid) })}`);
    if (t.startsWith('40')) { st.sid = JSON.parse(t.slice(2)).sid; st.connectedAt = Date.now(); } });
  ws.on('error', () => {});
  return st;
}
const ITER = 40;
for (let k = 0; k < ITER; k++) {
  const uid = `t${process.pid}-${k}`;
  const acks = [];
  let stop = false;
  const fire = async () => { let i = 0; while (!stop && i < 400) { const c = `${uid}#${i++}`; const t = Date.now(); const a = await sender.timeout(5000).emitWithAck('private-message', { targetUserId: uid, content: c }); acks.push({ c, a, t, at: Date.now() }); } };
  let tgt;
  if (mode === 'connect') {
    const f = fire();
    await pause(Math.random() * 5);
    tgt = rawTarget(B.url, uid);
    await until(() => tgt.connectedAt, 5000);
    await pause(5); stop = true; await f;
  } else {
    tgt = rawTarget(B.url, uid);
    await until(() => tgt.frames.some(([, f]) => f.includes('"connected"')), 5000);
    const f = fire();
    await pause(2 + Math.random() * 6);
    if (mode === 'leave41') tgt.ws.send('41'); else tgt.ws._socket.end();
    await pause(10); stop = true; await f;
  }
  await pause(200);
  const wire = tgt.frames.map(([, f]) => f).join('\n');
  if (mode === 'connect') tgt.ws.close();
  else if (mode === 'leave41') tgt.ws.close();
  await pause(100);
  // Collect what is queued.
  const s = io(B.url, { forceNew: true, reconnection: false, ...WS, auth: { token: token(uid) } });
  const pend = await new Promise((r) => { s.once('pending-messages', (m, cb) => { cb?.(); r(m.map((x) => x.content)); }); setTimeout(() => r([]), 1500); });
  s.close();
  for (const x of acks) {
    total.sent++; x.a.delivered ? total.dTrue++ : total.dFalse++;
    const onWire = wire.includes(`"${x.c}"`);
    if (!onWire && !pend.includes(x.c)) lost.push({ k, c: x.c, delivered: x.a.delivered, sid: tgt.sid, sentRel: x.t - (tgt.connectedAt ?? 0), ackRel: x.at - (tgt.connectedAt ?? 0) });
  }
}
console.log(JSON.stringify({ cluster, mode, total, lost: lost.length }));
console.log(lost.slice(0, 8));
sender.close(); await A.stop(); if (cluster) { await B.stop(); await redis.stop(); }
