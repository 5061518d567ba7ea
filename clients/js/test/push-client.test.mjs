// Unit tests of push-client.js: `node --test clients/js/test`. The transports are fakes here;
// the end-to-end tests against the real server run in a browser.
import assert from 'node:assert/strict';
import test from 'node:test';

import { PushClient, SseParser, backoffDelay, jwtExpiry } from '../push-client.js';

/** A WebSocket double: records what is sent; the test drives open, messages and close. */
class FakeWebSocket {
  static made = [];
  readyState = 0;
  sent = [];
  constructor(url) {
    this.url = url;
    FakeWebSocket.made.push(this);
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  receive(value) {
    this.onmessage?.({ data: JSON.stringify(value) });
  }
  send(text) {
    this.sent.push(text);
  }
  close(code = 1000, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const next = (target, type) =>
  new Promise((resolve) => target.addEventListener(type, (e) => resolve(e.detail), { once: true }));
const tick = (ms = 5) => new Promise((resolve) => setTimeout(resolve, ms));
const fast = { initialDelayMs: 1, maxDelayMs: 5 };

function client(options = {}) {
  FakeWebSocket.made = [];
  return new PushClient('http://push.test/', {
    userId: 'u 1',
    transport: 'websocket',
    WebSocket: FakeWebSocket,
    reconnect: fast,
    ...options,
  });
}

test('backoff grows to its cap, with full jitter', () => {
  const policy = { initialDelayMs: 100, maxDelayMs: 1000 };
  assert.equal(backoffDelay(0, policy, () => 1), 100);
  assert.equal(backoffDelay(3, policy, () => 1), 800);
  assert.equal(backoffDelay(50, policy, () => 1), 1000);
  assert.equal(backoffDelay(5, policy, () => 0), 0);
});

test('a JWT expiry is read, anything else is not', () => {
  const payload = Buffer.from(JSON.stringify({ sub: 'u', exp: 1800000000 })).toString('base64url');
  assert.equal(jwtExpiry(`h.${payload}.s`), 1800000000 * 1000);
  assert.equal(jwtExpiry('not-a-jwt'), null);
  assert.equal(jwtExpiry('a.b.c'), null);
  assert.equal(jwtExpiry(undefined), null);
});

test('the SSE parser handles split chunks, comments, CRLF and id-only blocks', () => {
  const seen = [];
  const comments = [];
  const parser = new SseParser((event) => seen.push(event), (text) => comments.push(text));
  parser.push('retry: 3000\nid: e:0\n\n: keepalive\n\nid: 1\nevent: mess');
  parser.push('age\ndata: {"a":\r');
  parser.push('\ndata: 1}\r\n\r\n');
  assert.deepEqual(seen, [
    { id: 'e:0', event: 'message', data: null },
    { id: '1', event: 'message', data: '{"a":\n1}' },
  ]);
  assert.deepEqual(comments, ['keepalive']);
  assert.equal(parser.retry, 3000);
});

test('events are delivered and every reconnection resumes from the last one', async () => {
  const push = client();
  const states = [];
  push.addEventListener('state', (e) => states.push(e.detail.state));
  push.connect();
  await tick();
  const first = FakeWebSocket.made[0];
  assert.equal(first.url, 'ws://push.test/ws?user_id=u+1&position=true');
  first.open();
  const message = next(push, 'message');
  first.receive({ event_type: 'message', event_id: 'e1', user_id: 'u 1', data: { n: 1 } });
  assert.deepEqual((await message).data, { n: 1 });
  assert.equal(push.lastEventId, 'e1');
  first.close(1006, '');
  await tick(20);
  const second = FakeWebSocket.made[1];
  assert.equal(second.url, 'ws://push.test/ws?user_id=u+1&last_event_id=e1');
  second.open();
  assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'reconnecting', 'open']);
  push.close();
  assert.equal(push.state, 'closed');
});

test('a WebSocket that drops before its first event resumes from the position it was told', async () => {
  const push = client();
  const messages = [];
  const frames = [];
  push.addEventListener('message', (e) => messages.push(e.detail));
  push.addEventListener('frame', (e) => frames.push(e.detail));
  const waits = [];
  push.addEventListener('state', (e) => {
    if (e.detail.delayMs !== undefined) waits.push(e.detail);
  });
  push.connect();
  await tick();
  const first = FakeWebSocket.made[0];
  first.open();
  first.receive({ event_type: 'position', event_id: 'E:3', user_id: 'u 1' });
  assert.equal(push.lastEventId, 'E:3');
  assert.deepEqual(messages, [], 'a position is not an event');
  assert.equal(frames.length, 1, 'but it is a frame');
  first.close(1006, '');
  await tick(20);
  assert.equal(FakeWebSocket.made[1].url, 'ws://push.test/ws?user_id=u+1&last_event_id=E%3A3');
  assert.equal(waits[0].cause, 'network');
  assert.ok(waits[0].delayMs >= 0 && waits[0].delayMs <= fast.maxDelayMs, JSON.stringify(waits));
  push.close();
});
test('a resync is its own event and becomes the resume point', async () => {
  const push = client();
  push.connect();
  await tick();
  FakeWebSocket.made[0].open();
  const resync = next(push, 'resync');
  FakeWebSocket.made[0].receive({ event_type: 'resync', event_id: 'E:7', data: { reason: 'expired' } });
  assert.equal((await resync).reason, 'expired');
  assert.equal(push.lastEventId, 'E:7');
  push.close();
});

test('a refusal that will not heal stops the client', async () => {
  const push = client();
  push.connect();
  await tick();
  const error = next(push, 'error');
  FakeWebSocket.made[0].close(4403, 'origin "https://evil.example" is not allowed (CORS_ORIGINS)');
  const { final } = await error;
  assert.equal(final, true);
  assert.equal(push.state, 'closed');
  await tick(20);
  assert.equal(FakeWebSocket.made.length, 1, 'no retry');
});

test('an expired token is asked for again and the stream resumes at once', async () => {
  let asked = 0;
  const push = client({ token: async () => `token-${++asked}` });
  push.connect();
  await tick();
  FakeWebSocket.made[0].open();
  FakeWebSocket.made[0].receive({ event_type: 'message', event_id: 'e9', data: {} });
  FakeWebSocket.made[0].close(4001, 'token expired');
  await tick();
  assert.equal(asked, 2);
  assert.equal(FakeWebSocket.made[1].url, 'ws://push.test/ws?user_id=u+1&token=token-2&last_event_id=e9');
  push.close();
});

test('an expired token that is a plain string stops the client, saying why', async () => {
  const push = client({ token: 'static' });
  push.connect();
  await tick();
  FakeWebSocket.made[0].open();
  const error = next(push, 'error');
  FakeWebSocket.made[0].close(4001, 'token expired');
  const detail = await error;
  assert.deepEqual([detail.final, detail.cause], [true, 'token_expired']);
  await tick(20);
  assert.equal(FakeWebSocket.made.length, 1, 'no doomed attempt with the same token');
  assert.equal(push.state, 'closed');
});

test('a browser\'s refused handshake (opened, closed at once) is not a working connection', async () => {
  let asked = 0;
  const push = client({ token: async () => `stale-${++asked}` });
  const waits = [];
  push.addEventListener('state', (e) => e.detail.delayMs !== undefined && waits.push(e.detail));
  push.connect();
  for (let n = 0; n < 3; n += 1) {
    await tick(10);
    const socket = FakeWebSocket.made.at(-1);
    socket.open();
    socket.close(4001, 'token expired');
  }
  assert.equal(waits.length, 3);
  for (const wait of waits) {
    assert.equal(wait.cause, 'token_expired');
    assert.ok(wait.delayMs > 0, `through the backoff, not at once: ${JSON.stringify(waits)}`);
  }
  // One that delivered a frame is renewed at once.
  await tick(10);
  const working = FakeWebSocket.made.at(-1);
  working.open();
  working.receive({ event_type: 'position', event_id: 'E:1' });
  working.close(4001, 'token expired');
  assert.equal(waits.at(-1).delayMs, 0);
  push.close();
});

test('only one attempt runs at a time, and nothing of an old one survives close()', async () => {
  const tokens = [];
  const push = client({ token: () => new Promise((resolve) => tokens.push(resolve)) });
  const messages = [];
  push.addEventListener('message', (e) => messages.push(e.detail.event_id));
  push.connect();
  await tick();
  push.close();
  push.connect();
  await tick();
  tokens[0]('old');
  tokens[1]('new');
  await tick();
  assert.equal(FakeWebSocket.made.length, 1, 'the first attempt was abandoned');
  assert.match(FakeWebSocket.made[0].url, /token=new/);
  const socket = FakeWebSocket.made[0];
  socket.open();
  push.close();
  socket.receive({ event_type: 'message', event_id: 'late', data: {} });
  assert.deepEqual(messages, [], 'a closed client reports nothing');
});

test('the page coming back during an attempt does not start a second one', async () => {
  const page = new EventTarget();
  globalThis.window = page;
  try {
    const tokens = [];
    const push = client({ token: () => new Promise((resolve) => tokens.push(resolve)) });
    push.connect();
    await tick();
    tokens[0]('t1');
    await tick();
    FakeWebSocket.made[0].close(1006, ''); // never opened: a retry is waiting
    await tick();
    page.dispatchEvent(new Event('online')); // goes now
    page.dispatchEvent(new Event('online')); // an attempt is in flight: nothing more
    await tick(20);
    assert.equal(tokens.length, 2, 'one attempt');
    tokens[1]('t2');
    await tick();
    assert.equal(FakeWebSocket.made.length, 2);
    push.close();
  } finally {
    delete globalThis.window;
  }
});

test('acknowledgements are grouped into one frame; autoAck acknowledges "ack": true events', async () => {
  const push = client({ autoAck: true });
  push.connect();
  await tick();
  const socket = FakeWebSocket.made[0];
  socket.open();
  socket.receive({ event_type: 'message', event_id: 'a1', ack: true, data: {} });
  socket.receive({ event_type: 'message', event_id: 'a2', data: {} });
  const sent = push.ack('x1');
  await tick(130);
  assert.deepEqual(socket.sent.map((text) => JSON.parse(text)), [
    { type: 'ack', event_ids: ['a1', 'x1'] },
  ]);
  assert.equal(await sent, true);
  push.close();
});

test('an acknowledgement that could not be sent resolves false and is an error event', async () => {
  const push = client({
    transport: 'sse',
    fetch: sseFetch([{ status: 200, body: '', open: true }, { status: 429, body: '{"detail":"slow down"}' }], []),
  });
  push.connect();
  await tick();
  const error = next(push, 'error');
  assert.equal(await push.ack('e1'), false);
  const detail = await error;
  assert.equal(detail.cause, 'ack');
  assert.match(detail.error.message, /HTTP 429 slow down/);
  push.close();
});

/** A fetch double serving one SSE response body, or a status. */
function sseFetch(answers, calls) {
  return async (url, init = {}) => {
    calls.push({ url, init });
    const answer = answers.shift() ?? { status: 503, body: '' };
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(answer.body));
        if (!answer.open) controller.close();
        // As fetch does: aborting the request errors its body.
        init.signal?.addEventListener('abort', () => controller.error(new Error('aborted')));
      },
    });
    return new Response(body, { status: answer.status, headers: answer.headers });
  };
}

test('over SSE, refusals are visible: a 403 stops the client', async () => {
  const calls = [];
  const push = client({
    transport: 'sse',
    token: 'jwt',
    fetch: sseFetch([{ status: 403, body: '{"detail":"forbidden"}' }], calls),
  });
  const error = next(push, 'error');
  push.connect();
  assert.equal((await error).final, true);
  assert.equal(calls[0].url, 'http://push.test/sse/stream?user_id=u+1');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer jwt');
  assert.equal(push.state, 'closed');
});

test('over SSE, events arrive, the opening id is kept, and a reconnect resumes', async () => {
  const calls = [];
  const push = client({
    transport: 'sse',
    fetch: sseFetch(
      [
        {
          status: 200,
          body: 'retry: 3000\nid: E:4\n\nid: e5\nevent: message\ndata: {"event_type":"message","event_id":"e5","data":{}}\n\n',
        },
        { status: 200, body: '', open: true },
      ],
      calls,
    ),
  });
  const message = next(push, 'message');
  push.connect();
  assert.equal((await message).event_id, 'e5');
  await tick(20);
  assert.equal(calls[1].url, 'http://push.test/sse/stream?user_id=u+1&last_event_id=e5');
  push.close();
});

test('over SSE, a farewell comment with a retry hint is waited out', async () => {
  const calls = [];
  const push = client({
    transport: 'sse',
    fetch: sseFetch([{ status: 200, body: 'retry: 40\n: server shutting down\n\n' }], calls),
  });
  const waiting = new Promise((resolve) =>
    push.addEventListener('state', (e) => e.detail.state === 'reconnecting' && resolve(e.detail)),
  );
  push.connect();
  const { cause, reason, delayMs } = await waiting;
  assert.deepEqual([cause, reason], ['unavailable', 'server shutting down']);
  assert.ok(delayMs >= 40, `waited ${delayMs} ms`);
  push.close();
});

test('over SSE, a silent stream (no keepalive either) is given up and reopened', async () => {
  const calls = [];
  const push = client({
    transport: 'sse',
    sseIdleTimeoutMs: 30,
    fetch: sseFetch([{ status: 200, body: 'id: E:1\n\n', open: true }], calls),
  });
  const waiting = new Promise((resolve) =>
    push.addEventListener('state', (e) => e.detail.delayMs !== undefined && resolve(e.detail)),
  );
  push.connect();
  const { cause, reason } = await waiting;
  assert.deepEqual([cause, reason], ['network', 'nothing received for 30 ms']);
  push.close();
});

test('auto falls back to SSE when the WebSocket never opens', async () => {
  const calls = [];
  const push = client({
    transport: 'auto',
    fetch: sseFetch([{ status: 200, body: '', open: true }], calls),
  });
  push.connect();
  await tick();
  FakeWebSocket.made[0].close(1006, '');
  await tick(20);
  assert.equal(push.transport, 'sse');
  assert.equal(calls[0].url, 'http://push.test/sse/stream?user_id=u+1');
  push.close();
});

test('auto goes back to WebSocket when SSE fails too, and never falls back once a WebSocket opened', async () => {
  const push = client({
    transport: 'auto',
    fetch: async () => {
      throw new Error('offline');
    },
  });
  push.connect();
  await tick();
  FakeWebSocket.made[0].close(1006, ''); // then SSE fails: the network, not a proxy
  await tick(30);
  assert.equal(push.transport, 'websocket');
  const socket = FakeWebSocket.made.at(-1);
  socket.open();
  socket.close(1006, '');
  await tick(20);
  FakeWebSocket.made.at(-1).close(1006, ''); // a restart: it had opened before
  await tick(20);
  assert.equal(push.transport, 'websocket');
  push.close();
});
