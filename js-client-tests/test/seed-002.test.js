// Seed 002, QryptChat's WebSocket chat API: its client, the Svelte store `websocket-chat.js`
// (profullstack/qryptchat-web, src/lib/stores/websocket-chat.js with src/lib/websocket/utils/protocol.js),
// rewritten here with the same frames, the same order, the same fields read and the same reconnect
// logic; only what the browser gives it is stood in for: `window.location` (the gateway's host: the
// store derives `ws(s)://<host>/ws` from it), Svelte's `writable`, `browser`, `uuid`. Conversations are
// rooms, participants members; two gateway nodes over Redis, users on both.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { startGateway, startRedis, token, http, until, pause } from '../lib/helpers.js';

// ---- protocol.js: the message list and the envelope checks the store applies to every frame ----
const MESSAGE_TYPES = {
  AUTH: 'auth', AUTH_SUCCESS: 'auth_success', AUTH_ERROR: 'auth_error',
  LOAD_CONVERSATIONS: 'load_conversations', CONVERSATIONS_LOADED: 'conversations_loaded',
  JOIN_CONVERSATION: 'join_conversation', LEAVE_CONVERSATION: 'leave_conversation',
  CONVERSATION_JOINED: 'conversation_joined', CONVERSATION_LEFT: 'conversation_left',
  CREATE_CONVERSATION: 'create_conversation', CONVERSATION_CREATED: 'conversation_created',
  SEND_MESSAGE: 'send_message', MESSAGE_SENT: 'message_sent', MESSAGE_RECEIVED: 'message_received',
  LOAD_MESSAGES: 'load_messages', MESSAGES_LOADED: 'messages_loaded', LOAD_MORE_MESSAGES: 'load_more_messages',
  TYPING_START: 'typing_start', TYPING_STOP: 'typing_stop', TYPING_UPDATE: 'typing_update',
  CREATE_GROUP: 'create_group', GROUP_CREATED: 'group_created', JOIN_GROUP: 'join_group',
  GROUP_JOINED: 'group_joined', LOAD_GROUPS: 'load_groups', GROUPS_LOADED: 'groups_loaded',
  USER_ONLINE: 'user_online', USER_OFFLINE: 'user_offline',
  ERROR: 'error', PING: 'ping', PONG: 'pong',
  KEY_SHARE: 'key_share', KEY_REQUEST: 'key_request', KEY_RESPONSE: 'key_response',
};
const createMessage = (type, payload = {}, requestId = null) =>
  ({ type, payload, requestId: requestId || randomUUID(), timestamp: new Date().toISOString() });
function validateMessage(message) {
  if (!message || typeof message !== 'object') return false;
  const { type, payload, requestId, timestamp } = message;
  if (!type || typeof type !== 'string') return false;
  if (!payload || typeof payload !== 'object') return false;
  if (requestId !== null && typeof requestId !== 'string') return false;
  if (!timestamp || typeof timestamp !== 'string') return false;
  return Object.values(MESSAGE_TYPES).includes(type);
}
function parseMessage(data) {
  try { const m = JSON.parse(data); return validateMessage(m) ? m : null; } catch { return null; }
}

// ---- Svelte's writable, as much as the store uses ----
function writable(value) {
  const subs = new Set();
  const set = (v) => { value = v; subs.forEach((fn) => fn(value)); };
  return {
    subscribe(fn) { subs.add(fn); fn(value); return () => subs.delete(fn); },
    set,
    update: (f) => set(f(value)),
  };
}

// ---- the store (createWebSocketChatStore), one per simulated browser tab ----
function createWebSocketChatStore(window) {
  const env = { browser: true };
  const logs = [];
  const console = { log: (...a) => logs.push(a.map(String).join(' ')), error: (...a) => logs.push(a.map(String).join(' ')) };
  const chatState = writable({
    conversations: [], groups: [], activeConversation: null, messages: [], loading: false, error: null,
    typingUsers: [], connected: false, authenticated: false, user: null,
  });
  const { subscribe, update } = chatState;
  let ws = null;
  let reconnectAttempts = 0;
  const maxReconnectAttempts = 5;
  const reconnectDelay = 1000;
  const pendingRequests = new Map();
  let typingTimeout = null;

  function getWebSocketUrl() {
    if (!env.browser) return '';
    const protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const host = window.location.host;
    return `${protocol}//${host}/ws`;
  }

  function connect(token) {
    if (!env.browser || ws?.readyState === WebSocket.OPEN) return;
    const wsUrl = getWebSocketUrl();
    try {
      ws = new WebSocket(wsUrl);
      ws.onopen = () => {
        reconnectAttempts = 0;
        update((state) => ({ ...state, connected: true, error: null }));
        if (token) authenticate(token);
      };
      ws.onmessage = (event) => { handleMessage(event.data); };
      ws.onclose = (event) => {
        console.log('WebSocket disconnected:', event.code, event.reason);
        update((state) => ({ ...state, connected: false, authenticated: false }));
        if (reconnectAttempts < maxReconnectAttempts) {
          setTimeout(() => { reconnectAttempts++; connect(token); }, reconnectDelay * Math.pow(2, reconnectAttempts));
        }
      };
      ws.onerror = (error) => {
        console.error('WebSocket error:', error.message);
        update((state) => ({ ...state, error: 'Connection error', connected: false }));
      };
    } catch (error) {
      update((state) => ({ ...state, error: 'Failed to connect', connected: false }));
    }
  }

  function disconnect() {
    if (ws) { ws.close(); ws = null; }
    for (const [, request] of pendingRequests.entries()) { clearTimeout(request.timeout); request.reject(new Error('Connection closed')); }
    pendingRequests.clear();
    update((state) => ({ ...state, connected: false, authenticated: false, user: null }));
  }

  function sendMessage(type, payload = {}) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) { reject(new Error('WebSocket not connected')); return; }
      const message = createMessage(type, payload);
      const requestId = message.requestId;
      const timeout = setTimeout(() => { pendingRequests.delete(requestId); reject(new Error('Request timeout')); }, 30000);
      pendingRequests.set(requestId, { resolve, reject, timeout });
      ws.send(JSON.stringify(message));
    });
  }

  function handleMessage(data) {
    try {
      const message = parseMessage(data);
      if (!message) { console.error('Invalid message received'); return; }
      console.log('Received message:', message.type);
      if (message.requestId && pendingRequests.has(message.requestId)) {
        const request = pendingRequests.get(message.requestId);
        clearTimeout(request.timeout);
        pendingRequests.delete(message.requestId);
        if (message.type === MESSAGE_TYPES.ERROR) request.reject(new Error(message.payload.error));
        else request.resolve(message);
        return;
      }
      switch (message.type) {
        case MESSAGE_TYPES.MESSAGE_RECEIVED: handleNewMessage(message.payload.message); break;
        case MESSAGE_TYPES.TYPING_UPDATE: handleTypingUpdate(message.payload); break;
        case MESSAGE_TYPES.USER_ONLINE:
        case MESSAGE_TYPES.USER_OFFLINE: handlePresenceUpdate(message.payload); break;
        default: console.log('Unhandled message type:', message.type); break;
      }
    } catch (error) {
      console.error('Error handling message:', error.message);
    }
  }

  async function authenticate(token) {
    try {
      const response = await sendMessage(MESSAGE_TYPES.AUTH, { token });
      if (response.type === MESSAGE_TYPES.AUTH_SUCCESS) {
        update((state) => ({ ...state, authenticated: true, user: response.payload.user, error: null }));
        console.log('WebSocket authenticated successfully');
      }
    } catch (error) {
      console.error('WebSocket authentication failed:', error.message);
      update((state) => ({ ...state, authenticated: false, error: 'Authentication failed' }));
    }
  }

  async function loadConversations() {
    try {
      update((state) => ({ ...state, loading: true }));
      const response = await sendMessage(MESSAGE_TYPES.LOAD_CONVERSATIONS);
      if (response.type === MESSAGE_TYPES.CONVERSATIONS_LOADED) {
        update((state) => ({ ...state, conversations: response.payload.conversations, loading: false, error: null }));
      }
    } catch (error) {
      update((state) => ({ ...state, loading: false, error: 'Failed to load conversations' }));
    }
  }

  async function joinConversation(conversationId) {
    try {
      const response = await sendMessage(MESSAGE_TYPES.JOIN_CONVERSATION, { conversationId });
      if (response.type === MESSAGE_TYPES.CONVERSATION_JOINED) await loadMessages(conversationId);
    } catch (error) {
      update((state) => ({ ...state, error: 'Failed to join conversation' }));
    }
  }

  async function leaveConversation(conversationId) {
    try { await sendMessage(MESSAGE_TYPES.LEAVE_CONVERSATION, { conversationId }); } catch (error) { console.error('Failed to leave conversation:', error.message); }
  }

  async function loadMessages(conversationId) {
    try {
      update((state) => ({ ...state, loading: true }));
      const response = await sendMessage(MESSAGE_TYPES.LOAD_MESSAGES, { conversationId });
      if (response.type === MESSAGE_TYPES.MESSAGES_LOADED) {
        update((state) => ({
          ...state, activeConversation: conversationId, messages: response.payload.messages, loading: false, error: null, typingUsers: [],
        }));
      }
    } catch (error) {
      update((state) => ({ ...state, loading: false, error: 'Failed to load messages' }));
    }
  }

  async function sendChatMessage(conversationId, content, messageType = 'text', replyToId = null) {
    try {
      const payload = { conversationId, content, messageType };
      if (replyToId) payload.replyToId = replyToId;
      const response = await sendMessage(MESSAGE_TYPES.SEND_MESSAGE, payload);
      if (response.type === MESSAGE_TYPES.MESSAGE_SENT) return { success: true, data: response.payload.message };
    } catch (error) {
      console.error('Failed to send message:', error.message);
      return { success: false, error: 'Failed to send message' };
    }
  }

  async function startTyping(conversationId) {
    try { await sendMessage(MESSAGE_TYPES.TYPING_START, { conversationId }); } catch (error) { console.error('Failed to start typing:', error.message); }
  }

  async function stopTyping(conversationId) {
    try { await sendMessage(MESSAGE_TYPES.TYPING_STOP, { conversationId }); } catch (error) { console.error('Failed to stop typing:', error.message); }
  }

  function setTyping(conversationId) {
    if (typingTimeout) clearTimeout(typingTimeout);
    startTyping(conversationId);
    typingTimeout = setTimeout(() => { stopTyping(conversationId); }, 3000);
  }

  function handleNewMessage(message) {
    update((state) => {
      if (state.activeConversation === message.conversation_id) {
        const exists = state.messages.some((msg) => msg.id === message.id);
        if (!exists) return { ...state, messages: [...state.messages, message] };
      }
      return state;
    });
  }

  function handleTypingUpdate(typingData) {
    update((state) => {
      const { userId, isTyping } = typingData;
      let newTypingUsers = [...state.typingUsers];
      if (isTyping) { if (!newTypingUsers.includes(userId)) newTypingUsers.push(userId); } else newTypingUsers = newTypingUsers.filter((id) => id !== userId);
      return { ...state, typingUsers: newTypingUsers };
    });
  }

  function handlePresenceUpdate(presenceData) {
    console.log('User presence update:', JSON.stringify(presenceData));
  }

  async function createConversation(conversationData) {
    try {
      const response = await sendMessage(MESSAGE_TYPES.CREATE_CONVERSATION, conversationData);
      if (response.type === MESSAGE_TYPES.CONVERSATION_CREATED) {
        await loadConversations();
        return { success: true, data: response.payload };
      }
    } catch (error) {
      return { success: false, error: 'Failed to create conversation' };
    }
  }

  return {
    subscribe, connect, disconnect, authenticate, loadConversations, joinConversation, leaveConversation,
    createConversation, loadMessages, sendMessage: sendChatMessage, startTyping, stopTyping, setTyping,
    getState: () => { let s; subscribe((x) => { s = x; })(); return s; },
    // For the test only: what the store logged, its raw request function, and the end of the "page"
    // (the store has no way to stop reconnecting; a page unload does that).
    logs, request: sendMessage, unload: () => { env.browser = false; disconnect(); },
  };
}

let redis;
let a;
let b;
before(async () => {
  redis = await startRedis({ persist: false });
  [a, b] = await Promise.all([
    startGateway({ REDIS_URL: redis.url, PRESENCE_GRACE_MS: '300' }),
    startGateway({ REDIS_URL: redis.url, PRESENCE_GRACE_MS: '300' }),
  ]);
  for (const g of [a, b]) await until(async () => (await http(`${g.url}/health`)).body.redis === 'up', 15000, 'redis up');
});
after(async () => { await Promise.all([a?.stop(), b?.stop()]); await redis?.stop(); });

const windowOf = (g) => ({ location: { protocol: 'http:', host: new URL(g.url).host } });
const stores = [];
async function tab(g, user, opts = {}) {
  const s = createWebSocketChatStore(windowOf(g));
  stores.push(s);
  s.connect(token(user, opts));
  await until(() => s.getState().authenticated, 5000, `${user} authenticated`);
  return s;
}
after(() => { for (const s of stores) s.unload(); });

test('seed 002: connect + auth → auth_success {user}; conversations (create, load); join, load, send, receive, reply across nodes', async () => {
  const alice = await tab(a, 'q-alice');
  const bob = await tab(b, 'q-bob');
  assert.equal(alice.getState().user.id, 'q-alice');
  assert.equal(alice.getState().connected, true);

  const created = await alice.createConversation({ type: 'group', name: 'My Group Chat', participant_ids: ['q-bob'] });
  assert.equal(created.success, true, JSON.stringify(created));
  const conversationId = created.data.conversation.id;
  assert.ok(alice.getState().conversations.some((c) => c.conversation_name === 'My Group Chat' && c.id === conversationId));
  await bob.loadConversations();
  assert.ok(bob.getState().conversations.some((c) => c.id === conversationId), 'the participant sees it (other node)');

  await alice.joinConversation(conversationId);
  await bob.joinConversation(conversationId);
  for (const s of [alice, bob]) {
    assert.equal(s.getState().activeConversation, conversationId);
    assert.deepEqual(s.getState().messages, []);
    assert.equal(s.getState().error, null);
  }

  const sent = await alice.sendMessage(conversationId, 'Hello, World!', 'text');
  assert.equal(sent.success, true);
  assert.equal(sent.data.encrypted_content, 'Hello, World!');
  await until(() => bob.getState().messages.length === 1, 5000, 'message_received on the other node');
  const got = bob.getState().messages[0];
  assert.equal(got.id, sent.data.id);
  assert.equal(got.conversation_id, conversationId);
  assert.equal(got.sender_id, 'q-alice');
  assert.equal(got.encrypted_content, 'Hello, World!');
  const reply = await bob.sendMessage(conversationId, 'This is a reply', 'text', sent.data.id);
  assert.equal(reply.success, true);
  await until(() => alice.getState().messages.some((m) => m.id === reply.data.id), 5000, 'the reply');
  assert.equal(alice.getState().messages.find((m) => m.id === reply.data.id).reply_to_id, sent.data.id);
  assert.equal(alice.getState().messages.filter((m) => m.id === sent.data.id).length, 1, 'no duplicate of its own');

  // load_messages after the fact: history, oldest first.
  await bob.loadMessages(conversationId);
  assert.deepEqual(bob.getState().messages.map((m) => m.encrypted_content), ['Hello, World!', 'This is a reply']);
  // load_more_messages (pagination; the store's request function, as the app's newer versions call it).
  const more = await bob.request('load_more_messages', { conversationId, before: reply.data.id, limit: 10 });
  assert.equal(more.type, 'messages_loaded');
  assert.deepEqual(more.payload.messages.map((m) => m.id), [sent.data.id]);
  assert.equal(more.payload.hasMore, false);

  // A message where one has not joined: the request fails with payload.error.
  await alice.leaveConversation(conversationId);
  const refused = await alice.sendMessage(conversationId, 'after leaving');
  assert.deepEqual(refused, { success: false, error: 'Failed to send message' });
  assert.ok(alice.logs.some((l) => l.includes('Not in room')), alice.logs.slice(-3).join(' | '));
});

test('seed 002: typing_start/typing_stop → typing_update {userId, isTyping}; setTyping stops by itself after 3 s', async () => {
  const carol = await tab(a, 'q-carol');
  const dave = await tab(b, 'q-dave');
  const created = await carol.createConversation({ type: 'direct', participant_ids: ['q-dave'] });
  const conversationId = created.data.conversation.id;
  await carol.joinConversation(conversationId);
  await dave.joinConversation(conversationId);
  await dave.startTyping(conversationId);
  await until(() => carol.getState().typingUsers.includes('q-dave'), 5000, 'typing start');
  await dave.stopTyping(conversationId);
  await until(() => carol.getState().typingUsers.length === 0, 5000, 'typing stop');
  dave.setTyping(conversationId);
  await until(() => carol.getState().typingUsers.includes('q-dave'), 5000, 'setTyping');
  const t0 = Date.now();
  await until(() => carol.getState().typingUsers.length === 0, 6000, 'the automatic stop');
  assert.ok(Date.now() - t0 > 2000, 'after about 3 s');
  assert.ok(!dave.logs.some((l) => /Failed to (start|stop) typing/.test(l)), 'each typing request was answered');
});

test('seed 002: presence as user_online/user_offline; ping → pong; a bad token → auth_error; reconnect and re-auth after a restart', async () => {
  const erin = await tab(a, 'q-erin');
  const frank = await tab(b, 'q-frank');
  const created = await erin.createConversation({ type: 'direct', participant_ids: ['q-frank'] });
  const conversationId = created.data.conversation.id;
  await erin.joinConversation(conversationId);
  await frank.joinConversation(conversationId);
  frank.unload();
  await until(() => erin.logs.some((l) => l.startsWith('User presence update:') && l.includes('"offline"')), 8000, 'user_offline');
  const frank2 = await tab(b, 'q-frank');
  await until(() => erin.logs.some((l) => l.startsWith('User presence update:') && l.includes('"online"') && l.includes('q-frank')), 8000, 'user_online');
  frank2.unload();

  // ping → pong, as protocol.js's createPingMessage/createPongMessage make them.
  const pong = await erin.request('ping');
  assert.equal(pong.type, 'pong');
  assert.ok(validateMessage(pong));

  // A bad token: auth_error {error}, the store stays unauthenticated; then the server closes (4003).
  const bad = createWebSocketChatStore(windowOf(a));
  stores.push(bad);
  bad.connect(token('q-bad', { ttl: -60 }));
  await until(() => bad.logs.some((l) => l.includes('WebSocket disconnected: 4003')), 5000, 'closed 4003');
  assert.ok(bad.logs.includes('Received message: auth_error'));
  assert.equal(bad.getState().authenticated, false);
  bad.unload();

  // A restart of the node: the store reconnects (1 s) and authenticates again by itself.
  const g = await startGateway({ REDIS_URL: redis.url });
  let g2;
  try {
    const s = await tab(g, 'q-gina');
    await g.stop();
    await until(() => !s.getState().connected, 5000, 'disconnected');
    g2 = await startGateway({ REDIS_URL: redis.url, PORT: String(g.port) });
    await until(() => s.getState().authenticated, 10000, 'authenticated again');
    await s.loadConversations();
    assert.equal(s.getState().error, null);
    s.unload();
  } finally { await g2?.stop(); await g.stop(); }
  await pause(0);
});
