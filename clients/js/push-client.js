// push-client.js: the official JavaScript client of websocket-sse-server.
//
// A dependency-free ES module for browsers and Node 22+. One PushClient follows one user's
// stream over a WebSocket or a Server-Sent Events stream (read with fetch, so that refusals are
// visible), reconnects with capped exponential backoff and full jitter, and resumes every time
// from the last event it saw: an app sees no gap and no duplicate inside the server's history
// window, or a `resync` event when the server lost it. Tokens may be a function: it is asked
// again before the token's `exp` (when it is a JWT) and whenever the server closes for expiry.
// Refusals that will not heal (a forbidden user or origin, a malformed request, an operator's
// disconnect) stop the client instead of retrying forever.

/** The client's version: the server's. */
export const VERSION = '0.1.0';

/**
 * What follows each cause of a connection's end: `retry` (after a backoff, resuming), `renew` (a
 * fresh token, then at once, resuming) or `stop` (a refusal that will not heal). A cause not
 * listed is retried.
 */
const AFTER = {
  network: 'retry', // the connection broke or could not be made
  shutdown: 'retry', // the server is going away (restart, deploy)
  dropped: 'retry', // slow consumer, ping timeout
  user_limit: 'retry', // MAX_CONNECTIONS_PER_USER
  rate_limited: 'retry', // 4429 / 429: after the wait the server gave
  unavailable: 'retry', // 1011, 1013, 4503, 5xx: come back later
  ended: 'retry', // the stream ended without saying why
  token_expired: 'renew',
  bad_request: 'stop',
  unauthorized: 'stop',
  forbidden: 'stop',
  not_found: 'stop',
  replaced: 'stop', // reconnecting would replace the newer connection in turn
  disconnected: 'stop', // an operator's disconnect (logout, ban)
};

/** WebSocket close codes and their causes (see docs/protocol.md, "How connections end"). */
const CLOSE_CODES = {
  1001: 'shutdown',
  1006: 'network',
  1011: 'unavailable',
  1012: 'shutdown',
  1013: 'unavailable',
  4001: 'token_expired',
  4003: 'disconnected',
  4400: 'bad_request',
  4401: 'unauthorized',
  4403: 'forbidden',
  4429: 'rate_limited',
  4503: 'unavailable',
};

/** HTTP statuses of a refused SSE request and their causes. */
const STATUSES = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  429: 'rate_limited',
};

/** The reasons of an SSE stream's `close` event and their causes. */
const CLOSE_REASONS = {
  token_expired: 'token_expired',
  replaced: 'replaced',
  disconnected: 'disconnected',
  slow_consumer: 'dropped',
};

/**
 * A connection counts as established (the backoff starts over; an expired token is renewed at
 * once) at its first frame, or once open this long: a browser's refused WebSocket handshake opens
 * and is closed at once, and must not pass for a working connection.
 */
const ESTABLISHED_AFTER_MS = 1000;

/** Acknowledgements made within this many milliseconds go together (`CLIENT_MESSAGE_RATE`). */
const ACK_BATCH_MS = 100;

/** Most event ids in one acknowledgement (the server's limit). */
const ACK_IDS_MAX = 100;

const DEFAULTS = {
  transport: 'auto',
  wsPath: '/ws',
  ssePath: '/sse/stream',
  ackPath: '/sse/ack',
  reconnect: { initialDelayMs: 500, maxDelayMs: 30000 },
  refreshBeforeExpiryMs: 30000,
  sseIdleTimeoutMs: 45000,
  autoAck: false,
};

/**
 * The wait before reconnection attempt `attempt` (from 0): a random time between 0 and
 * min(maxDelayMs, initialDelayMs * 2^attempt) ("full jitter").
 */
export function backoffDelay(attempt, { initialDelayMs, maxDelayMs }, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
  return random() * ceiling;
}

/** The `exp` of a JWT in milliseconds since the epoch, or null when it is not a readable JWT. */
export function jwtExpiry(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    return Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * Reads Server-Sent Events from chunks of text: feed it with `push(text)`; it calls
 * `onEvent({id, event, data})` for each dispatched block (an `id:` alone, as in the stream's
 * opening block, is reported with `data` null) and `onComment(text)` for each comment. `retry`
 * is the last `retry:` hint (milliseconds), or null.
 */
export class SseParser {
  #buffer = '';
  #block = SseParser.#fresh();
  retry = null;

  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
  }

  static #fresh() {
    return { id: null, event: '', data: [] };
  }

  push(text) {
    this.#buffer += text;
    let newline;
    while ((newline = this.#buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone \r at the end may be the first half of a \r\n still on its way.
      if (newline === this.#buffer.length - 1 && this.#buffer.endsWith('\r')) break;
      const line = this.#buffer.slice(0, newline);
      const width = this.#buffer.startsWith('\r\n', newline) ? 2 : 1;
      this.#buffer = this.#buffer.slice(newline + width);
      this.#line(line);
    }
  }

  #line(line) {
    const block = this.#block;
    if (line === '') {
      if (block.data.length > 0 || block.id !== null) {
        const data = block.data.length > 0 ? block.data.join('\n') : null;
        this.onEvent({ id: block.id, event: block.event || 'message', data });
      }
      this.#block = SseParser.#fresh();
      return;
    }
    if (line.startsWith(':')) {
      this.onComment(line.slice(1).trimStart());
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') block.data.push(value);
    else if (field === 'event') block.event = value;
    else if (field === 'id' && !value.includes('\0')) block.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

/**
 * A client of one user's stream. Events (an EventTarget; each `detail` below):
 * - `message`: an event the server pushed (`{event_type, event_id, user_id, timestamp, data}`),
 * - `resync`: the server could not resume (`{reason, ...}`): reload the app's state,
 * - `state`: `{state, cause, reason, delayMs, url}`, state one of `connecting`, `open`,
 *   `reconnecting`, `closed` (see the README for each field),
 * - `error`: `{error, final, cause}`; `final` when the client stopped for good,
 * - `frame`: every frame as it arrived (`{transport, data, event, id, comment}`), for tools that
 *   show the wire (the web console); apps want `message`.
 */
export class PushClient extends EventTarget {
  #base;
  #options;
  #state = 'closed';
  #lastEventId;
  #transport;
  #socket = null;
  #abort = null;
  #timer = null;
  #refreshTimer = null;
  #refreshAt = null;
  #attempt = 0;
  /** Bumped by every attempt and every teardown: the callbacks of an older one do nothing. */
  #generation = 0;
  /** Whether the current connection has proved itself (see ESTABLISHED_AFTER_MS). */
  #established = false;
  #wsEverOpened = false;
  #sseEverOpened = false;
  #stopped = true;
  #pendingAcks = [];
  #ackTimer = null;
  #token = null;

  /**
   * @param {string} baseUrl the server, e.g. `https://push.example.com`
   * @param {object} options see clients/js/README.md
   */
  constructor(baseUrl, options = {}) {
    super();
    this.#base = String(baseUrl).replace(/\/+$/, '');
    this.#options = {
      ...DEFAULTS,
      ...options,
      reconnect: { ...DEFAULTS.reconnect, ...(options.reconnect ?? {}) },
    };
    const { transport } = this.#options;
    if (!['websocket', 'sse', 'auto'].includes(transport)) {
      throw new TypeError(`transport must be "websocket", "sse" or "auto", not ${transport}`);
    }
    this.#transport = transport === 'sse' ? 'sse' : 'websocket';
    this.#lastEventId = options.lastEventId ?? null;
  }

  /** The id of the last event seen (the resume point), or null. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /** The transport in use (`websocket` or `sse`). */
  get transport() {
    return this.#transport;
  }

  /** Starts following the stream (again, after `close()`, resuming from `lastEventId`). */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#listenToThePage(true);
    this.#open('connecting');
  }

  /** Stops: closes the connection and cancels any reconnection. */
  close(reason = 'closed by the app') {
    this.#stop({ cause: 'closed', reason }, false);
  }

  /** Sends a text frame (WebSocket only; the server answers with an echo ack). */
  send(text) {
    if (this.#transport !== 'websocket' || this.#socket?.readyState !== 1) {
      throw new Error('send() needs an open WebSocket');
    }
    this.#socket.send(text);
  }

  /**
   * Acknowledges events (one id or a list) pushed with `"ack": true`. Acks made within 100 ms go
   * together. Resolves to whether they were sent (a failure is also an `error` event); never
   * rejects.
   */
  ack(eventIds) {
    const ids = Array.isArray(eventIds) ? eventIds : [eventIds];
    return new Promise((resolve) => {
      this.#pendingAcks.push({ ids, resolve });
      if (this.#ackTimer === null) {
        this.#ackTimer = setTimeout(() => this.#flushAcks(), ACK_BATCH_MS);
      }
    });
  }

  async #flushAcks() {
    this.#ackTimer = null;
    const waiting = this.#pendingAcks.splice(0);
    const ids = waiting.flatMap((entry) => entry.ids);
    const failed = new Set();
    for (let start = 0; start < ids.length; start += ACK_IDS_MAX) {
      const chunk = ids.slice(start, start + ACK_IDS_MAX);
      if (!(await this.#sendAcks(chunk))) chunk.forEach((id) => failed.add(id));
    }
    for (const entry of waiting) entry.resolve(entry.ids.every((id) => !failed.has(id)));
  }

  /** One acknowledgement: a frame on an open WebSocket, else a POST with the stream's credentials. */
  async #sendAcks(ids) {
    const body = { event_ids: ids };
    try {
      if (this.#transport === 'websocket' && this.#socket?.readyState === 1) {
        this.#socket.send(JSON.stringify({ type: 'ack', ...body }));
        return true;
      }
      const fetcher = this.#options.fetch ?? globalThis.fetch;
      const response = await fetcher(this.#url(this.#options.ackPath, false), {
        method: 'POST',
        headers: this.#headers({ 'Content-Type': 'application/json' }),
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const detail = describeDetail(await response.text().catch(() => ''));
        throw new Error(`ack refused: HTTP ${response.status}${detail ? ` ${detail}` : ''}`);
      }
      return true;
    } catch (error) {
      this.#emit('error', { error, final: false, cause: 'ack' });
      return false;
    }
  }

  /** One attempt: closes whatever was open, fetches a token, connects. */
  async #open(state) {
    this.#teardown();
    const generation = this.#generation;
    let token;
    try {
      token = await this.#freshToken();
    } catch (error) {
      if (generation !== this.#generation || this.#stopped) return;
      this.#emit('error', { error, final: false, cause: 'token' });
      return this.#retry({ cause: 'token', reason: `the token could not be fetched: ${error}` });
    }
    if (generation !== this.#generation || this.#stopped) return;
    this.#token = token;
    this.#scheduleRefresh(token);
    const websocket = this.#transport === 'websocket';
    const path = websocket ? this.#options.wsPath : this.#options.ssePath;
    const url = this.#url(path, true);
    this.#setState(state, { url: url.replace(/([?&]token=)[^&]*/, '$1…') });
    if (websocket) this.#openWebSocket(url, generation);
    else this.#openEventStream(url, generation);
  }

  async #freshToken() {
    const { token } = this.#options;
    if (typeof token === 'function') return await token();
    return token ?? null;
  }

  /** Reconnects (resuming) a little before a JWT from a token function expires. */
  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    this.#refreshAt = null;
    const expiry = typeof this.#options.token === 'function' ? jwtExpiry(token) : null;
    if (expiry === null) return;
    const refreshAt = expiry - this.#options.refreshBeforeExpiryMs;
    const wait = refreshAt - Date.now();
    if (wait <= 0) return; // a token shorter-lived than that: the server's expiry close renews it
    this.#refreshAt = refreshAt;
    this.#refreshTimer = setTimeout(() => this.#reopen('token refresh'), wait);
  }

  /**
   * The URL of `path` with the user, the token (WebSocket only: a browser cannot give it a
   * header) and, for the stream, the resume point or, for a fresh WebSocket, `position=true`.
   */
  #url(path, stream) {
    const websocket = stream && this.#transport === 'websocket';
    const query = new URLSearchParams();
    if (this.#options.userId != null) query.set('user_id', this.#options.userId);
    if (websocket && this.#token) query.set('token', this.#token);
    if (stream && this.#lastEventId) query.set('last_event_id', this.#lastEventId);
    else if (websocket) query.set('position', 'true');
    const base = websocket ? this.#base.replace(/^http/, 'ws') : this.#base;
    const text = query.toString();
    return `${base}${path}${text ? `?${text}` : ''}`;
  }

  #headers(extra = {}) {
    return this.#token ? { ...extra, Authorization: `Bearer ${this.#token}` } : extra;
  }

  #openWebSocket(url, generation) {
    const WebSocketImpl = this.#options.WebSocket ?? globalThis.WebSocket;
    const current = () => generation === this.#generation;
    let openedAt = null;
    let socket;
    try {
      socket = new WebSocketImpl(url);
    } catch (error) {
      return this.#webSocketFailed({ cause: 'network', reason: String(error?.message ?? error) });
    }
    this.#socket = socket;
    socket.onopen = () => {
      if (!current()) return;
      openedAt = Date.now();
      this.#wsEverOpened = true;
      this.#setState('open', {});
    };
    socket.onmessage = ({ data }) => {
      if (!current() || typeof data !== 'string') return;
      this.#establish();
      this.#emit('frame', { transport: 'websocket', data });
      this.#frame(data);
    };
    socket.onclose = ({ code, reason = '' }) => {
      if (!current()) return;
      this.#socket = null;
      const ending = closeCause(code, reason);
      if (openedAt === null && code === 1006) return this.#webSocketFailed(ending);
      if (openedAt !== null && Date.now() - openedAt >= ESTABLISHED_AFTER_MS) this.#establish();
      this.#ended(ending);
    };
  }

  /**
   * A WebSocket that never opened. In `auto`, as long as no WebSocket of this client ever opened,
   * SSE is tried at once (a proxy that breaks WebSockets); see #ended for the way back.
   */
  #webSocketFailed(ending) {
    if (this.#options.transport === 'auto' && !this.#wsEverOpened) {
      this.#transport = 'sse';
      return this.#open('connecting');
    }
    this.#ended(ending);
  }

  async #openEventStream(url, generation) {
    const fetcher = this.#options.fetch ?? globalThis.fetch;
    const current = () => generation === this.#generation;
    const abort = new AbortController();
    this.#abort = abort;
    let response;
    try {
      response = await fetcher(url, {
        headers: this.#headers({ Accept: 'text/event-stream' }),
        signal: abort.signal,
        cache: 'no-store',
      });
    } catch (error) {
      if (!current()) return;
      return this.#ended({ cause: 'network', reason: String(error?.message ?? error) });
    }
    if (!current()) return;
    if (!response.ok) {
      const text = await response.text().catch(() => '');
      if (!current()) return;
      this.#emit('frame', { transport: 'sse', status: response.status, data: text });
      return this.#ended(refusalCause(response, describeDetail(text)));
    }
    const stream = { close: null, farewell: null };
    const parser = new SseParser(
      (block) => {
        if (!current()) return;
        this.#establish();
        this.#emit('frame', { transport: 'sse', ...block });
        if (block.data === null) {
          if (block.id && !this.#lastEventId) this.#lastEventId = block.id;
          return;
        }
        stream.farewell = null;
        if (block.event === 'close') stream.close = parseJson(block.data);
        else this.#frame(block.data);
      },
      (comment) => {
        if (!current()) return;
        this.#emit('frame', { transport: 'sse', comment });
        if (comment !== 'keepalive') stream.farewell = comment;
      },
    );
    const openedAt = Date.now();
    this.#sseEverOpened = true;
    this.#setState('open', {});
    // Nothing at all (not even a keepalive comment) for this long: the connection is dead.
    const idle = this.#options.sseIdleTimeoutMs;
    let watchdog = null;
    let silent = false;
    const watch = () => {
      clearTimeout(watchdog);
      if (idle > 0) {
        watchdog = setTimeout(() => {
          silent = true;
          abort.abort();
        }, idle);
      }
    };
    let ending;
    try {
      const decoder = new TextDecoder();
      const reader = response.body.getReader();
      watch();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        watch();
        parser.push(decoder.decode(value, { stream: true }));
      }
      ending = streamEndCause(stream, parser.retry ?? 0);
    } catch {
      ending = silent
        ? { cause: 'network', reason: `nothing received for ${idle} ms` }
        : { cause: 'network', reason: 'the stream broke' };
    } finally {
      clearTimeout(watchdog);
    }
    if (!current()) return;
    this.#abort = null;
    if (Date.now() - openedAt >= ESTABLISHED_AFTER_MS) this.#establish();
    this.#ended(ending);
  }

  /** The current connection proved itself: the backoff starts over. */
  #establish() {
    this.#established = true;
    this.#attempt = 0;
  }

  #frame(text) {
    const event = parseJson(text);
    if (!event || typeof event !== 'object') return;
    if (event.event_id === undefined) {
      // The echo of send(), or an error frame answering one.
      if (event.event_type === 'error') {
        const error = new Error(event.data?.detail ?? 'error');
        this.#emit('error', { error, final: false, cause: 'frame' });
      }
      return;
    }
    this.#lastEventId = event.event_id;
    if (event.event_type === 'position') return; // where a fresh WebSocket's stream stands
    if (event.event_type === 'resync') {
      this.#emit('resync', event.data ?? {});
      return;
    }
    this.#emit('message', event);
    if (event.ack === true && this.#options.autoAck) this.ack(event.event_id);
  }

  /** The one place that decides what follows the end of a connection. */
  #ended({ cause, reason, retryAfterMs = 0 }) {
    if (this.#stopped) return;
    const established = this.#established;
    this.#established = false;
    if (this.#options.transport === 'auto' && this.#transport === 'sse' && !this.#sseEverOpened) {
      // SSE failed too before ever opening: the network, not a proxy. WebSocket again next time.
      this.#transport = 'websocket';
    }
    let after = AFTER[cause] ?? 'retry';
    if (after === 'renew' && typeof this.#options.token !== 'function') {
      after = 'stop'; // the same token would be refused: the app must give a fresh one
    }
    if (after === 'stop') return this.#stop({ cause, reason }, true);
    if (after === 'renew' && established) {
      this.#setState('reconnecting', { cause, reason, delayMs: 0 });
      return this.#open('reconnecting');
    }
    // A fresh token that was refused as expired again goes through the backoff.
    this.#retry({ cause, reason }, retryAfterMs);
  }

  #retry(ending, atLeastMs = 0) {
    if (this.#stopped) return;
    this.#teardown();
    const delayMs = Math.max(atLeastMs, backoffDelay(this.#attempt++, this.#options.reconnect));
    this.#setState('reconnecting', { ...ending, delayMs });
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#open('reconnecting');
    }, delayMs);
  }

  /** Closes the connection in use and opens a new one at once (resuming). */
  #reopen(reason) {
    if (this.#stopped) return;
    this.#setState('reconnecting', { cause: 'token_refresh', reason, delayMs: 0 });
    this.#open('reconnecting');
  }

  /** Closes whatever is open or waiting; callbacks of what was open do nothing from now on. */
  #teardown() {
    this.#generation += 1;
    this.#established = false;
    clearTimeout(this.#timer);
    this.#timer = null;
    clearTimeout(this.#refreshTimer);
    this.#refreshAt = null;
    const socket = this.#socket;
    this.#socket = null;
    socket?.close(1000);
    this.#abort?.abort();
    this.#abort = null;
  }

  #stop({ cause, reason }, final) {
    if (this.#stopped && this.#state === 'closed') return;
    this.#stopped = true;
    this.#teardown();
    this.#listenToThePage(false);
    if (final) this.#emit('error', { error: new Error(reason), final: true, cause });
    this.#setState('closed', { cause, reason });
  }

  /** Back online, or shown again: a waiting reconnection goes now; an overdue token refresh too. */
  #onPageBack = () => {
    if (this.#stopped) return;
    if (globalThis.document?.visibilityState === 'hidden') return;
    if (this.#state === 'reconnecting' && this.#timer !== null) {
      // Waiting (no attempt in flight): go now.
      this.#open('reconnecting');
    } else if (this.#refreshAt !== null && Date.now() >= this.#refreshAt) {
      // A hidden page's timers may be held back past the refresh.
      this.#reopen('token refresh');
    }
  };

  #listenToThePage(on) {
    const page = globalThis.window;
    if (!page?.addEventListener) return;
    const method = on ? 'addEventListener' : 'removeEventListener';
    page[method]('online', this.#onPageBack);
    globalThis.document?.[method]?.('visibilitychange', this.#onPageBack);
  }

  #setState(state, detail) {
    this.#state = state;
    this.#emit('state', { state, cause: null, reason: null, ...detail });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** The cause of a WebSocket's close, from its code and reason. */
function closeCause(code, reason) {
  let cause = CLOSE_CODES[code] ?? 'other';
  if (code === 1008) {
    if (reason.startsWith('replaced')) cause = 'replaced';
    else if (/^(slow consumer|ping timeout)/.test(reason)) cause = 'dropped';
    else if (/MAX_CONNECTIONS_PER_USER/.test(reason)) cause = 'user_limit';
  }
  if (code === 4401 && /expired/.test(reason)) cause = 'token_expired';
  const wait = /retry after (\d+(?:\.\d+)?) s/.exec(reason);
  const retryAfterMs = code === 4429 && wait ? Number(wait[1]) * 1000 : 0;
  const fallback = code === 1006 ? 'the connection was lost' : `close code ${code}`;
  return { cause, reason: reason || fallback, retryAfterMs };
}

/** The cause of a stream request refused with an HTTP error. */
function refusalCause(response, detail) {
  let cause = STATUSES[response.status] ?? (response.status >= 500 ? 'unavailable' : 'other');
  if (cause === 'unauthorized' && /expired/.test(detail)) cause = 'token_expired';
  const reason = detail || `HTTP ${response.status}`;
  return { cause, reason, retryAfterMs: retryAfterMs(response.headers) };
}

/**
 * The cause of an event stream's end: its `close` event's reason; else come back later, after
 * the `retry:` hint when the stream's last words were a comment saying why (a shutdown, a full
 * server, a refusal to retry).
 */
function streamEndCause({ close, farewell }, retryMs) {
  if (close) {
    const reason = String(close.reason ?? 'close');
    return { cause: CLOSE_REASONS[reason] ?? 'other', reason: reason.replaceAll('_', ' ') };
  }
  if (farewell) return { cause: 'unavailable', reason: farewell, retryAfterMs: retryMs };
  return { cause: 'ended', reason: 'the stream ended' };
}

/** An error answer's `detail` as one line (a string, or a list of `{loc, msg}` issues). */
function describeDetail(text) {
  const body = parseJson(text);
  const detail = body && typeof body === 'object' ? body.detail : text;
  if (typeof detail === 'string') return detail;
  if (!Array.isArray(detail)) return '';
  return detail
    .map((issue) => [issue?.loc?.at?.(-1), issue?.msg].filter((part) => part != null).join(': '))
    .join('; ');
}

function parseJson(text) {
  try {
    return typeof text === 'string' ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function retryAfterMs(headers) {
  const seconds = Number(headers?.get?.('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
}
