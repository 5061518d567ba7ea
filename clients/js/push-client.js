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

/** WebSocket close codes after which retrying cannot help (see docs/protocol.md). */
const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403, 4003]);

/** HTTP statuses of a refused SSE request after which retrying cannot help. */
const FINAL_STATUSES = new Set([400, 401, 403, 404]);

const DEFAULTS = {
  transport: 'auto',
  wsPath: '/ws',
  ssePath: '/sse/stream',
  ackPath: '/sse/ack',
  reconnect: { initialDelayMs: 500, maxDelayMs: 30000 },
  refreshBeforeExpiryMs: 30000,
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
 * `onEvent({id, event, data})` for each dispatched event (an `id:` alone, as in the stream's
 * opening block, is reported with `data` null).
 */
export class SseParser {
  #buffer = '';
  #id = null;
  #event = '';
  #data = [];
  #sawId = false;

  constructor(onEvent) {
    this.onEvent = onEvent;
  }

  push(text) {
    this.#buffer += text;
    let newline;
    while ((newline = this.#buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.#buffer.slice(0, newline);
      const width = this.#buffer.startsWith('\r\n', newline) ? 2 : 1;
      this.#buffer = this.#buffer.slice(newline + width);
      this.#line(line);
    }
  }

  #line(line) {
    if (line === '') {
      if (this.#data.length > 0 || this.#sawId) {
        const data = this.#data.length > 0 ? this.#data.join('\n') : null;
        this.onEvent({ id: this.#id, event: this.#event || 'message', data });
      }
      this.#event = '';
      this.#data = [];
      this.#sawId = false;
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.#data.push(value);
    else if (field === 'event') this.#event = value;
    else if (field === 'id' && !value.includes('\0')) {
      this.#id = value;
      this.#sawId = true;
    }
  }
}

/**
 * A client of one user's stream. Events (an EventTarget; each `detail` below):
 * - `message`: an event the server pushed (`{event_type, event_id, user_id, timestamp, data}`),
 * - `resync`: the server could not resume (`{reason, ...}`): reload the app's state,
 * - `state`: `{state, reason}`, state one of `connecting`, `open`, `reconnecting`, `closed`,
 * - `error`: `{error, final}`; `final` when the client stopped for good.
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
  #attempt = 0;
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

  /** Starts following the stream (again, after `close()`). */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#listenToThePage(true);
    this.#open('connecting');
  }

  /** Stops: closes the connection and cancels any reconnection. */
  close(reason = 'closed by the app') {
    this.#stop(reason, false);
  }

  /** Sends a text frame (WebSocket only; the server answers with an echo ack). */
  send(text) {
    if (this.#transport !== 'websocket' || this.#socket?.readyState !== 1) {
      throw new Error('send() needs an open WebSocket');
    }
    this.#socket.send(text);
  }

  /** Acknowledges events (one id or a list) pushed with `"ack": true`. */
  ack(eventIds) {
    const ids = Array.isArray(eventIds) ? eventIds : [eventIds];
    this.#pendingAcks.push(...ids);
    if (this.#ackTimer === null) {
      // Acks of events received together go in one frame or request.
      this.#ackTimer = setTimeout(() => this.#flushAcks(), 20);
    }
  }

  async #flushAcks() {
    this.#ackTimer = null;
    while (this.#pendingAcks.length > 0) {
      const ids = this.#pendingAcks.splice(0, 100);
      const body = { event_ids: ids };
      try {
        if (this.#transport === 'websocket' && this.#socket?.readyState === 1) {
          this.#socket.send(JSON.stringify({ type: 'ack', ...body }));
        } else {
          const fetcher = this.#options.fetch ?? globalThis.fetch;
          const response = await fetcher(this.#url(this.#options.ackPath, false), {
            method: 'POST',
            headers: this.#headers({ 'Content-Type': 'application/json' }),
            body: JSON.stringify(body),
          });
          if (!response.ok) throw new Error(`ack refused: HTTP ${response.status}`);
        }
      } catch (error) {
        this.#emit('error', { error, final: false });
      }
    }
  }

  async #open(state) {
    this.#setState(state, null);
    let token;
    try {
      token = await this.#freshToken();
    } catch (error) {
      this.#emit('error', { error, final: false });
      return this.#retry('the token could not be fetched');
    }
    if (this.#stopped) return;
    this.#token = token;
    this.#scheduleRefresh(token);
    if (this.#transport === 'websocket') this.#openWebSocket();
    else this.#openEventStream();
  }

  async #freshToken() {
    const { token } = this.#options;
    if (typeof token === 'function') return await token();
    return token ?? null;
  }

  /** Reconnects (resuming) a little before a JWT from a token function expires. */
  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    const expiry = typeof this.#options.token === 'function' ? jwtExpiry(token) : null;
    if (expiry === null) return;
    const wait = expiry - Date.now() - this.#options.refreshBeforeExpiryMs;
    if (wait <= 0) return;
    this.#refreshTimer = setTimeout(() => this.#reopen('token refresh'), wait);
  }

  #url(path, stream) {
    const query = new URLSearchParams();
    if (this.#options.userId != null) query.set('user_id', this.#options.userId);
    if (this.#token && (stream ? this.#transport === 'websocket' : false)) {
      query.set('token', this.#token);
    }
    if (stream && this.#lastEventId) query.set('last_event_id', this.#lastEventId);
    const base = stream && this.#transport === 'websocket'
      ? this.#base.replace(/^http/, 'ws')
      : this.#base;
    const text = query.toString();
    return `${base}${path}${text ? `?${text}` : ''}`;
  }

  #headers(extra = {}) {
    return this.#token ? { ...extra, Authorization: `Bearer ${this.#token}` } : extra;
  }

  #openWebSocket() {
    const WebSocketImpl = this.#options.WebSocket ?? globalThis.WebSocket;
    let opened = false;
    let socket;
    try {
      socket = new WebSocketImpl(this.#url(this.#options.wsPath, true));
    } catch (error) {
      return this.#webSocketFailed(error);
    }
    this.#socket = socket;
    socket.onopen = () => {
      opened = true;
      this.#opened();
    };
    socket.onmessage = (message) => this.#frame(message.data);
    socket.onclose = ({ code, reason }) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      if (!opened && this.#options.transport === 'auto' && code === 1006) {
        // A WebSocket that never opened (a proxy that breaks them): SSE from now on.
        this.#transport = 'sse';
        return this.#open('connecting');
      }
      this.#closed(code, reason ?? '');
    };
  }

  #webSocketFailed(error) {
    if (this.#options.transport === 'auto') {
      this.#transport = 'sse';
      return this.#open('connecting');
    }
    this.#emit('error', { error, final: false });
    this.#retry('the WebSocket could not be created');
  }

  async #openEventStream() {
    const fetcher = this.#options.fetch ?? globalThis.fetch;
    const abort = new AbortController();
    this.#abort = abort;
    let response;
    try {
      response = await fetcher(this.#url(this.#options.ssePath, true), {
        headers: this.#headers({ Accept: 'text/event-stream' }),
        signal: abort.signal,
        cache: 'no-store',
      });
    } catch (error) {
      if (this.#abort !== abort) return;
      this.#emit('error', { error, final: false });
      return this.#retry('the stream could not be opened');
    }
    if (!response.ok) {
      const reason = await response.text().catch(() => '');
      if (FINAL_STATUSES.has(response.status)) {
        return this.#stop(`HTTP ${response.status} ${reason}`.trim(), true);
      }
      return this.#retry(`HTTP ${response.status}`, retryAfterMs(response.headers));
    }
    let retryHint = null;
    const parser = new SseParser(({ id, event, data }) => {
      if (data === null) {
        if (id && !this.#lastEventId) this.#lastEventId = id;
        return;
      }
      if (event === 'close') {
        retryHint = data;
        return;
      }
      this.#frame(data);
    });
    this.#opened();
    try {
      const decoder = new TextDecoder();
      const reader = response.body.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(decoder.decode(value, { stream: true }));
      }
    } catch {
      // The stream broke (or was aborted): reconnect below.
    }
    if (this.#abort !== abort) return;
    this.#abort = null;
    const closing = parseJson(retryHint);
    if (closing?.reason === 'disconnected' || closing?.reason === 'replaced') {
      return this.#stop(`the server ended the stream: ${closing.reason}`, true);
    }
    if (closing?.reason === 'token_expired') return this.#open('reconnecting');
    this.#retry(closing?.reason ?? 'the stream ended');
  }

  #opened() {
    this.#attempt = 0;
    this.#setState('open', null);
  }

  #frame(text) {
    const event = parseJson(text);
    if (!event || typeof event !== 'object') return;
    if (event.event_type === 'ack' && event.event_id === undefined) return; // echo of send()
    if (event.event_type === 'error' && event.event_id === undefined) {
      this.#emit('error', { error: new Error(event.data?.detail ?? 'error'), final: false });
      return;
    }
    if (event.event_id !== undefined) this.#lastEventId = event.event_id;
    if (event.event_type === 'resync') {
      this.#emit('resync', event.data ?? {});
      return;
    }
    this.#emit('message', event);
    if (event.ack === true && this.#options.autoAck) this.ack(event.event_id);
  }

  #closed(code, reason) {
    if (this.#stopped) return;
    if (FINAL_CLOSE_CODES.has(code) || reason === 'replaced by a newer connection') {
      return this.#stop(`${code} ${reason}`.trim(), true);
    }
    if (code === 4001) return this.#open('reconnecting'); // token expired: a fresh one, at once
    const hinted = /retry after (\d+) s/.exec(reason);
    this.#retry(`${code} ${reason}`.trim(), hinted ? Number(hinted[1]) * 1000 : 0);
  }

  #retry(reason, atLeastMs = 0) {
    if (this.#stopped) return;
    this.#setState('reconnecting', reason);
    const wait = Math.max(atLeastMs, backoffDelay(this.#attempt++, this.#options.reconnect));
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#open('reconnecting'), wait);
  }

  /** Closes the connection in use and opens a new one at once (resuming). */
  #reopen(reason) {
    if (this.#stopped) return;
    this.#teardown();
    this.#setState('reconnecting', reason);
    this.#open('reconnecting');
  }

  #teardown() {
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    const socket = this.#socket;
    this.#socket = null;
    socket?.close(1000);
    this.#abort?.abort();
    this.#abort = null;
  }

  #stop(reason, final) {
    if (this.#stopped && this.#state === 'closed') return;
    this.#stopped = true;
    this.#teardown();
    this.#listenToThePage(false);
    if (final) this.#emit('error', { error: new Error(reason), final: true });
    this.#setState('closed', reason);
  }

  #onOnline = () => {
    if (!this.#stopped && this.#state === 'reconnecting') {
      clearTimeout(this.#timer);
      this.#open('reconnecting');
    }
  };

  #listenToThePage(on) {
    const page = globalThis.window;
    if (!page?.addEventListener) return;
    if (on) page.addEventListener('online', this.#onOnline);
    else page.removeEventListener('online', this.#onOnline);
  }

  #setState(state, reason) {
    if (this.#state === state && reason === null) return;
    this.#state = state;
    this.#emit('state', { state, reason });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
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
