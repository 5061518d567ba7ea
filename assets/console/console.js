// The web console's script (inlined into index.html by the server; no external asset, no build
// step). Four parts: the connection (WebSocket, or SSE read with fetch so that every event type,
// comment and id is seen), the frame list, the push form, and the stats poller with its chart.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);

  /** Frames kept in the list; older ones are dropped. */
  const MAX_FRAMES = 500;
  /** Seconds of history in the chart. */
  const CHART_SECONDS = 60;
  /** Milliseconds between two polls of /metrics and /health. */
  const POLL_MS = 1000;
  /** Longest wait for one HTTP request of the console's own (pushes, polls). */
  const REQUEST_TIMEOUT_MS = 10000;

  const config = readConfig();
  const store = storage();

  // ---------------------------------------------------------------------------------------------
  // Helpers

  /** The server's configuration, put in the page when it was served (defaults if it was not). */
  function readConfig() {
    const defaults = {
      ws_path: '/ws',
      sse_stream_path: '/sse/stream',
      sse_path: '/sse/push',
      sse_ack_path: '/sse/ack',
      console_path: '/',
      version: '',
      tokens_required: false,
      api_keys_required: false,
      metrics_public: true,
    };
    try {
      return { ...defaults, ...JSON.parse($('console-config').textContent) };
    } catch {
      return defaults;
    }
  }

  /** localStorage for harmless preferences (never a token or a key); a no-op where refused. */
  function storage() {
    const prefix = 'websocket-sse-console:';
    return {
      get(key, fallback) {
        try {
          return localStorage.getItem(prefix + key) ?? fallback;
        } catch {
          return fallback;
        }
      },
      set(key, value) {
        try {
          localStorage.setItem(prefix + key, value);
        } catch {
          // Storage refused (private mode, quota): preferences are not kept, nothing else changes.
        }
      },
    };
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(date = new Date()) {
    const pad = (n, width = 2) => String(n).padStart(width, '0');
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  }

  const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function formatRate(value) {
    if (!Number.isFinite(value)) return '–';
    return value >= 10 || value === 0 ? integer.format(value) : oneDecimal.format(value);
  }

  function formatCount(value) {
    return Number.isFinite(value) ? integer.format(value) : '–';
  }

  function formatUptime(seconds) {
    if (!Number.isFinite(seconds)) return '–';
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
    if (m > 0) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
    return `${s}s`;
  }

  /** Fills `target` with `value` as indented JSON, keys, strings, numbers and literals marked. */
  function renderJson(target, value) {
    target.replaceChildren();
    if (typeof value === 'string') {
      target.textContent = value;
      return;
    }
    const text = JSON.stringify(value, null, 2) ?? String(value);
    const token =
      /("(?:\\u[0-9a-fA-F]{4}|\\[^u]|[^\\"])*")(\s*:)?|\b(?:true|false|null)\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;
    let last = 0;
    let match;
    while ((match = token.exec(text))) {
      if (match.index > last) target.append(text.slice(last, match.index));
      if (match[1] !== undefined) {
        target.append(el('span', match[2] ? 'k' : 's', match[1]));
        if (match[2]) target.append(match[2]);
      } else {
        target.append(el('span', /^[tfn]/.test(match[0]) ? 'l' : 'n', match[0]));
      }
      last = token.lastIndex;
    }
    if (last < text.length) target.append(text.slice(last));
  }

  function parseJson(text) {
    try {
      return { ok: true, value: JSON.parse(text) };
    } catch (error) {
      return { ok: false, error };
    }
  }

  /** A fetch that gives up after REQUEST_TIMEOUT_MS; resolves to { status, body (JSON or text) }. */
  async function request(path, options = {}) {
    const response = await fetch(path, {
      cache: 'no-store',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      ...options,
    });
    const text = await response.text();
    const parsed = parseJson(text);
    return { status: response.status, ok: response.ok, body: parsed.ok ? parsed.value : text };
  }

  function apiKeyHeaders() {
    const key = $('push-key').value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  // ---------------------------------------------------------------------------------------------
  // Frame list

  const frameList = $('frames');
  let newestFirst = true;

  /**
   * Adds one entry: a received frame ({ transport, type, id, body }) or, with `system: true`, a
   * line about the connection ({ transport, text, error }); returns its list item.
   */
  function addFrame(entry) {
    const item = el('li', `frame${entry.system ? ' system' : ''}${entry.error ? ' error' : ''}`);
    item.dataset.transport = entry.transport ?? '';
    const meta = el('div', 'meta');
    meta.append(el('span', 'time', clock()));
    if (entry.transport) {
      meta.append(el('span', 'badge transport', entry.transport === 'sse' ? 'SSE' : 'WS'));
    }
    if (entry.system) {
      item.dataset.kind = 'system';
      meta.append(el('span', 'text', entry.text));
      item.append(meta);
    } else {
      item.dataset.kind = 'frame';
      item.dataset.eventType = entry.type ?? '';
      item.dataset.eventId = entry.id ?? '';
      const type = entry.type ?? '(no type)';
      const badge = el('span', 'badge', type);
      if (['ack', 'resync', 'close'].includes(type)) badge.classList.add(type);
      meta.append(badge);
      const id = el('span', 'id', entry.id ?? '');
      if (entry.id) id.title = entry.id;
      meta.append(id);
      const body = el('pre', 'json');
      renderJson(body, entry.body);
      item.append(meta, body);
    }
    const atBottom =
      frameList.scrollHeight - frameList.scrollTop - frameList.clientHeight < 24;
    if (newestFirst) frameList.prepend(item);
    else frameList.append(item);
    while (frameList.children.length > MAX_FRAMES) {
      (newestFirst ? frameList.lastElementChild : frameList.firstElementChild).remove();
    }
    if (!newestFirst && atBottom) frameList.scrollTop = frameList.scrollHeight;
    if (newestFirst && frameList.scrollTop < 24) frameList.scrollTop = 0;
    updateFrameCount();
    return item;
  }

  function system(transport, text, error = false) {
    addFrame({ system: true, transport, text, error });
  }

  function updateFrameCount() {
    const shown = frameList.children.length;
    const count = $('frame-count');
    count.textContent = shown >= MAX_FRAMES ? `last ${MAX_FRAMES}` : String(shown);
    $('frames-empty').hidden = shown > 0;
  }

  $('clear-button').addEventListener('click', () => {
    frameList.replaceChildren();
    updateFrameCount();
  });

  $('frames-newest-first').addEventListener('change', (event) => {
    newestFirst = event.target.checked;
    frameList.dataset.newestFirst = String(newestFirst);
    frameList.replaceChildren(...[...frameList.children].reverse());
    frameList.scrollTop = newestFirst ? 0 : frameList.scrollHeight;
  });

  // ---------------------------------------------------------------------------------------------
  // Connection
  //
  // Connect starts a session, which lasts until Disconnect or until the server says to stop. Each
  // connection of it ends in a cause, the same set for both transports (`websocketEnding`,
  // `sseRefusal`, `sseEnding` read them off close codes, HTTP statuses and `close` events), and
  // `connectionEnded` alone decides from `CAUSES` what follows: reconnect after a backoff,
  // resuming from the last event id; stop; or stop and ask for a fresh token.

  /** Upper bound of the first reconnect delay; it doubles with each attempt, to BACKOFF_MAX_MS. */
  const BACKOFF_FIRST_MS = 500;
  /** Largest upper bound of a reconnect delay. */
  const BACKOFF_MAX_MS = 30000;
  /** A connection open this long, or one that delivered an event, starts the backoff over. */
  const STABLE_MS = 10000;
  /** Milliseconds between two updates of the "reconnecting in N s" countdown. */
  const COUNTDOWN_MS = 100;
  /**
   * Milliseconds the acknowledgements due are gathered for, to go as one frame or request: a
   * burst of events asking for them then stays within the server's CLIENT_MESSAGE_RATE.
   */
  const ACK_BATCH_MS = 100;
  /** Most event ids in one acknowledgement (the server's limit). */
  const ACK_IDS_MAX = 100;

  /**
   * What follows each cause of a connection's end: `then` is `retry` (reconnect after a backoff,
   * resuming), `stop`, or `expired` (stop, and ask for a fresh token); `says(detail)` is the
   * status text. The causes and what the server means by them: docs/protocol.md, "How
   * connections end".
   */
  const CAUSES = {
    network: { then: 'retry', says: () => 'connection lost' },
    unreachable: { then: 'retry', says: () => 'could not connect' },
    shutdown: { then: 'retry', says: () => 'server shutting down' },
    dropped: { then: 'retry', says: (detail) => detail }, // slow consumer, ping timeout
    user_limit: { then: 'retry', says: (detail) => detail },
    rate_limited: { then: 'retry', says: (detail) => detail },
    unavailable: { then: 'retry', says: (detail) => `server unavailable: ${detail}` },
    come_back_later: { then: 'retry', says: (detail) => detail },
    token_expired: { then: 'expired', says: () => 'token expired' },
    bad_request: { then: 'stop', says: (detail) => `bad request: ${detail}` },
    unauthorized: { then: 'stop', says: (detail) => `not authorized: ${detail}` },
    forbidden: { then: 'stop', says: forbidden },
    replaced: {
      then: 'stop',
      says: () =>
        'replaced by a newer connection of this user; not reconnecting (that would replace it in turn)',
    },
    disconnected: { then: 'stop', says: () => 'disconnected by an administrator; not reconnecting' },
    other: { then: 'stop', says: (detail) => `closed: ${detail}` },
  };

  /**
   * The open (or opening) connection: { transport, closing, openedAt, gotEvent, close(), send?,
   * ack(body), unacked }.
   */
  let connection = null;
  /** The session Connect started: { transport, attempts, timer, ticker }, or null. */
  let session = null;
  let lastEventId = null;

  /** The status for a 403 (WebSocket 4403): which check refused, in the server's words too. */
  function forbidden(detail) {
    if (/origin/i.test(detail)) {
      return `forbidden: this page's origin is not allowed by CORS_ORIGINS (${detail})`;
    }
    if (/user_id/.test(detail)) return `forbidden: the user id is not the token's (${detail})`;
    return `forbidden: ${detail}`;
  }

  function setLastEventId(id) {
    lastEventId = id || null;
    const shown = $('last-event-id');
    shown.textContent = lastEventId ?? 'none yet';
    shown.title = lastEventId ?? '';
  }

  function selectedTransport() {
    return document.querySelector('input[name="transport"]:checked')?.value ?? 'websocket';
  }

  function setConnectionStatus(state, text) {
    const status = $('connection-status');
    status.dataset.state = state;
    status.textContent = text;
    const busy = state === 'open' || state === 'connecting' || state === 'waiting';
    $('connect-button').disabled = busy;
    $('disconnect-button').disabled = !busy;
    for (const input of document.querySelectorAll(
      '#connect-form input, #connect-form fieldset input',
    )) {
      input.disabled = busy;
    }
    $('send-form').hidden = !(state === 'open' && connection?.transport === 'websocket');
  }

  /**
   * `path?user_id=…&token=…&last_event_id=…` (the last only if `resume`), and the same with the
   * token masked, for display.
   */
  function connectTarget(path, resume) {
    const params = new URLSearchParams();
    const user = $('connect-user').value.trim();
    const token = $('connect-token').value.trim();
    if (user) params.set('user_id', user);
    if (token) params.set('token', token);
    if (resume && lastEventId) params.set('last_event_id', lastEventId);
    const query = params.toString();
    if (token) params.set('token', '…');
    const shown = params.toString().replace('token=%E2%80%A6', 'token=…');
    return { url: query ? `${path}?${query}` : path, shown: shown ? `${path}?${shown}` : path };
  }

  /** Connect: starts a session, resuming only if the box is ticked. */
  function connect() {
    if (connection || session) return;
    const user = $('connect-user').value.trim();
    if (!user && !$('connect-token').value.trim()) {
      setConnectionStatus('error', 'enter a user id (or a token)');
      $('connect-user').focus();
      return;
    }
    store.set('user', user);
    store.set('transport', selectedTransport());
    session = { transport: selectedTransport(), attempts: 0, timer: null, ticker: null };
    openConnection($('connect-resume').checked);
  }

  /** Opens the session's next connection. */
  function openConnection(resume) {
    if (session.transport === 'sse') connectSse(resume);
    else connectWebSocket(resume);
  }

  /** Disconnect: closes the connection, or cancels the reconnect that is waiting. */
  function disconnect() {
    if (connection) {
      connection.close();
    } else if (session) {
      system(session.transport, 'reconnect cancelled');
      endSession('idle', 'not connected');
    }
  }

  /**
   * A new connection of the session; `close` ends it from the console, `send` sends a text frame
   * (WebSocket only), `ack` sends an acknowledgement body (`event_id` or `event_ids`).
   */
  function beginConnection(transport, close, { send, ack }) {
    const current = {
      transport,
      closing: false,
      openedAt: null,
      gotEvent: false,
      close() {
        this.closing = true;
        close();
      },
      send,
      ack,
      /** Events waiting to be acknowledged: { eventId, item }. */
      unacked: [],
    };
    connection = current;
    const attempt = session.attempts > 0 ? `reconnecting (attempt ${session.attempts + 1})…` : 'connecting…';
    setConnectionStatus('connecting', attempt);
    return current;
  }

  function connectionOpened(current, text) {
    current.openedAt = performance.now();
    setConnectionStatus('open', text);
    system(current.transport, 'connected');
  }

  /**
   * Acknowledges an event that asked for it (`"ack": true`), shown as `item`: soon, together with
   * the others due then.
   */
  function acknowledge(current, eventId, item) {
    item.dataset.ack = 'pending';
    current.unacked.push({ eventId, item });
    if (current.unacked.length === 1) setTimeout(() => flushAcks(current), ACK_BATCH_MS);
  }

  function flushAcks(current) {
    const due = current.unacked.splice(0);
    for (let start = 0; start < due.length; start += ACK_IDS_MAX) {
      sendAcks(current, due.slice(start, start + ACK_IDS_MAX));
    }
  }

  /** Sends one acknowledgement for `batch`, then says next to each event whether it went. */
  async function sendAcks(current, batch) {
    const ids = batch.map(({ eventId }) => eventId);
    let failure = null;
    try {
      await current.ack(ids.length === 1 ? { event_id: ids[0] } : { event_ids: ids });
    } catch (error) {
      failure = `ack failed: ${error?.message ?? error}`;
      system(current.transport, `${failure} (${ids.join(', ')})`, true);
    }
    for (const { item } of batch) {
      item.dataset.ack = failure ? 'failed' : 'acked';
      const badge = failure
        ? el('span', 'badge ack-failed', 'ack failed')
        : el('span', 'badge acked', 'acked');
      if (failure) badge.title = failure;
      item.querySelector('.meta').append(badge);
    }
  }

  /** The one place that decides, for both transports, what follows the end of a connection. */
  function connectionEnded(current, ending) {
    if (connection !== current) return;
    connection = null;
    if (current.closing || !session) {
      endSession('idle', 'not connected');
      return;
    }
    const lasted = current.openedAt !== null && performance.now() - current.openedAt >= STABLE_MS;
    if (current.gotEvent || lasted) session.attempts = 0;
    const cause = CAUSES[ending.cause] ?? CAUSES.other;
    const why = cause.says(ending.detail ?? '');
    if (cause.then === 'retry') {
      scheduleReconnect(why, ending.floorMs ?? 0);
    } else if (cause.then === 'expired') {
      tokenExpired(current.transport);
    } else {
      system(current.transport, `stopped: ${why}`, true);
      endSession('error', why);
    }
  }

  /**
   * Reconnects, resuming, after a random delay up to a cap that doubles with each attempt (full
   * jitter), and at least `floorMs` (a wait the server asked for); counts down in the status.
   */
  function scheduleReconnect(why, floorMs) {
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** session.attempts);
    const delay = Math.max(floorMs, Math.random() * cap);
    const due = performance.now() + delay;
    session.attempts += 1;
    system(session.transport, `reconnecting in ${seconds(delay)} s (${why})`, true);
    const countdown = () =>
      setConnectionStatus('waiting', `reconnecting in ${seconds(due - performance.now())} s (${why})`);
    countdown();
    session.ticker = setInterval(countdown, COUNTDOWN_MS);
    session.timer = setTimeout(() => {
      cancelReconnect();
      openConnection(true);
    }, delay);
  }

  function cancelReconnect() {
    clearTimeout(session.timer);
    clearInterval(session.ticker);
    session.timer = null;
    session.ticker = null;
  }

  function seconds(ms) {
    return (Math.max(0, ms) / 1000).toFixed(1);
  }

  function endSession(state, text) {
    if (session) cancelReconnect();
    session = null;
    setConnectionStatus(state, text);
  }

  /**
   * The token ran out. The console cannot mint one: it stops, ticks "resume" and puts the cursor
   * in the token field, so that a fresh token and Connect pick up where the session left off.
   */
  function tokenExpired(transport) {
    system(transport, 'stopped: token expired', true);
    if (transport === 'sse') {
      system(
        'sse',
        'an EventSource page would get a fresh token and open a new EventSource with ' +
          '?last_event_id= (a new EventSource forgets Last-Event-ID)',
      );
    }
    const resume = lastEventId ? ` — it resumes from ${lastEventId}` : '';
    endSession('error', `token expired: paste a fresh token and press Connect${resume}`);
    $('connect-resume').checked = true;
    const token = $('connect-token');
    token.focus();
    token.select();
  }

  function connectWebSocket(resume) {
    const target = connectTarget(config.ws_path, resume);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}${target.url}`);
    const close = () => socket.close(1000, 'closed from the console');
    const current = beginConnection('websocket', close, {
      send: (text) => socket.send(text),
      ack(body) {
        // A closed socket drops what it is given without a word: say it did not go.
        if (socket.readyState !== WebSocket.OPEN) throw new Error('the connection is closed');
        socket.send(JSON.stringify({ type: 'ack', ...body }));
      },
    });
    system('websocket', `opening ${target.shown}`);
    socket.addEventListener('open', () => connectionOpened(current, 'connected over WebSocket'));
    socket.addEventListener('message', (message) => onWebSocketMessage(current, message));
    socket.addEventListener('close', (event) => {
      const reason = event.reason ? ` · ${event.reason}` : '';
      system('websocket', `closed: code ${event.code}${reason}`, !current.closing);
      connectionEnded(current, websocketEnding(event, current.openedAt !== null));
    });
  }

  function onWebSocketMessage(current, message) {
    if (typeof message.data !== 'string') {
      addFrame({ transport: 'websocket', type: '(binary)', body: '(a binary frame)' });
      return;
    }
    const parsed = parseJson(message.data);
    const frame = parsed.ok && parsed.value && typeof parsed.value === 'object' ? parsed.value : null;
    if (frame && frame.event_type !== 'ack' && frame.event_id) {
      setLastEventId(frame.event_id);
      current.gotEvent = true;
    }
    const item = addFrame({
      transport: 'websocket',
      type: frame?.event_type,
      id: frame?.event_id,
      body: parsed.ok ? parsed.value : message.data,
    });
    if (frame?.ack === true && frame.event_id) acknowledge(current, frame.event_id, item);
  }

  /** The cause of a WebSocket's close, from its code and reason. */
  function websocketEnding({ code, reason }, opened) {
    if (code === 1006) return { cause: opened ? 'network' : 'unreachable' };
    if (code === 1008) return { cause: policyCause(reason), detail: reason };
    const byCode = {
      1001: 'shutdown',
      1011: 'unavailable',
      1012: 'unavailable',
      1013: 'unavailable',
      4001: 'token_expired',
      4003: 'disconnected',
      4400: 'bad_request',
      4401: 'unauthorized',
      4403: 'forbidden',
      4429: 'rate_limited',
      4503: 'unavailable',
    };
    const floorMs = code === 4429 ? retryAfterMs(reason) : 0;
    return { cause: byCode[code] ?? 'other', detail: reason || `close code ${code}`, floorMs };
  }

  /** The cause of a 1008 (policy) close, which only its reason tells apart. */
  function policyCause(reason) {
    if (reason.startsWith('replaced')) return 'replaced';
    if (/^(slow consumer|ping timeout)/.test(reason)) return 'dropped';
    if (/MAX_CONNECTIONS_PER_USER/.test(reason)) return 'user_limit';
    return 'other';
  }

  /** The wait in a 4429's reason (`…; retry after N s`), in milliseconds. */
  function retryAfterMs(reason) {
    const match = /retry after (\d+(?:\.\d+)?) s/.exec(reason);
    return match ? Number(match[1]) * 1000 : 0;
  }

  /** Reads an event stream (fetch, not EventSource: every event type, comment and id is seen). */
  async function connectSse(resume) {
    const target = connectTarget(config.sse_stream_path, resume);
    // Acknowledgements carry the stream's credentials (user_id, token), in the same query.
    const ackUrl = connectTarget(config.sse_ack_path, false).url;
    const abort = new AbortController();
    const current = beginConnection('sse', () => abort.abort(), {
      async ack(body) {
        const answer = await request(ackUrl, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        if (!answer.ok) {
          const detail = describeDetail(answer.body);
          throw new Error(`HTTP ${answer.status}${detail ? `: ${detail}` : ''}`);
        }
      },
    });
    system('sse', `opening ${target.shown}`);
    let ending;
    try {
      const response = await fetch(target.url, {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: abort.signal,
      });
      const type = response.headers.get('content-type') ?? '';
      if (response.ok && type.startsWith('text/event-stream')) {
        connectionOpened(current, 'connected over SSE');
        ending = await readEventStream(current, response);
      } else {
        ending = await sseRefusal(response);
      }
    } catch (error) {
      if (current.closing) system('sse', 'closed from the console');
      else system('sse', `stream failed: ${error?.message ?? error}`, true);
      ending = { cause: 'network', detail: error?.message ?? String(error) };
    }
    connectionEnded(current, ending);
  }

  /** The cause of a stream request refused with an HTTP error, shown with the server's answer. */
  async function sseRefusal(response) {
    const text = await response.text();
    const parsed = parseJson(text);
    const body = parsed.ok ? parsed.value : text;
    system('sse', `refused: HTTP ${response.status}`, true);
    addFrame({ transport: 'sse', type: `HTTP ${response.status}`, body });
    const detail = describeDetail(body) || `HTTP ${response.status}`;
    const byStatus = {
      400: 'bad_request',
      401: /expired/.test(detail) ? 'token_expired' : 'unauthorized',
      403: 'forbidden',
      502: 'unavailable',
      503: 'unavailable',
      504: 'unavailable',
    };
    return { cause: byStatus[response.status] ?? 'other', detail };
  }

  /** An error answer's `detail` as one line (a string, or a list of { loc, msg } issues). */
  function describeDetail(body) {
    const detail = body && typeof body === 'object' ? body.detail : body;
    if (typeof detail === 'string') return detail;
    if (!Array.isArray(detail)) return '';
    return detail
      .map((issue) => [issue?.loc?.at?.(-1), issue?.msg].filter((part) => part !== undefined).join(': '))
      .join('; ');
  }

  /** Reads an open event stream to its end; returns the cause of the end. */
  async function readEventStream(current, response) {
    const stream = { closeReason: null, farewell: null, retryMs: 0 };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = eventStreamParser((block) => onSseBlock(current, stream, block));
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    const reason = stream.closeReason ? ` · ${stream.closeReason}` : '';
    system('sse', `stream ended${reason}`, !current.closing);
    return sseEnding(stream);
  }

  /**
   * The cause of an event stream's end: its `close` event's reason; without one, come back later
   * (a refusal to retry, a shutdown, a dropped stream), after the `retry:` hint if the stream's
   * last words were a comment saying why.
   */
  function sseEnding({ closeReason, farewell, retryMs }) {
    if (closeReason) {
      const byReason = {
        token_expired: 'token_expired',
        replaced: 'replaced',
        disconnected: 'disconnected',
        slow_consumer: 'dropped',
      };
      return { cause: byReason[closeReason] ?? 'other', detail: closeReason.replaceAll('_', ' ') };
    }
    if (farewell) return { cause: 'come_back_later', detail: farewell, floorMs: retryMs };
    return { cause: 'come_back_later', detail: 'the stream ended' };
  }

  /**
   * Handles one block of the event stream, noting in `stream` its `retry:` hint, a comment that
   * may be its last words, and a `close` event's reason.
   */
  function onSseBlock(current, stream, block) {
    if (block.retry !== undefined && /^\d+$/.test(block.retry)) stream.retryMs = Number(block.retry);
    for (const comment of block.comments) {
      if (comment === 'keepalive') {
        $('connection-status').title = `last keepalive ${clock()}`;
      } else {
        system('sse', `comment: ${comment}`);
        stream.farewell = comment;
      }
    }
    if (block.id !== undefined) setLastEventId(block.id);
    if (block.data.length === 0) {
      if (block.id) {
        const retry = block.retry ? ` · retry ${block.retry} ms` : '';
        system('sse', `stream position ${block.id}${retry}`);
      }
      return;
    }
    stream.farewell = null;
    const type = block.event || 'message';
    const text = block.data.join('\n');
    const parsed = parseJson(text);
    const item = addFrame({
      transport: 'sse',
      type,
      id: block.id ?? (parsed.ok ? parsed.value?.event_id : undefined),
      body: parsed.ok ? parsed.value : text,
    });
    const event = parsed.ok ? parsed.value : null;
    if (event?.ack === true && event.event_id) acknowledge(current, event.event_id, item);
    if (type === 'close') stream.closeReason = (parsed.ok ? parsed.value?.reason : null) ?? 'close';
    else current.gotEvent = true;
  }

  /** An incremental `text/event-stream` parser (WHATWG rules); `onBlock` gets each block. */
  function eventStreamParser(onBlock) {
    let buffer = '';
    let block = freshBlock();

    function freshBlock() {
      return { data: [], comments: [], event: undefined, id: undefined, retry: undefined, lines: 0 };
    }

    function line(text) {
      if (text === '') {
        if (block.lines > 0) onBlock(block);
        block = freshBlock();
        return;
      }
      block.lines += 1;
      if (text.startsWith(':')) {
        block.comments.push(text.slice(1).trimStart());
        return;
      }
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') block.data.push(value);
      else if (field === 'event') block.event = value;
      else if (field === 'id' && !value.includes('\0')) block.id = value;
      else if (field === 'retry') block.retry = value;
    }

    return {
      push(chunk) {
        buffer += chunk;
        let start = 0;
        for (let i = 0; i < buffer.length; i += 1) {
          const char = buffer[i];
          if (char !== '\n' && char !== '\r') continue;
          if (char === '\r' && i === buffer.length - 1) break; // maybe \r\n split across chunks
          line(buffer.slice(start, i));
          if (char === '\r' && buffer[i + 1] === '\n') i += 1;
          start = i + 1;
        }
        buffer = buffer.slice(start);
      },
    };
  }

  $('connect-form').addEventListener('submit', (event) => {
    event.preventDefault();
    connect();
  });
  $('disconnect-button').addEventListener('click', disconnect);
  $('send-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('send-text');
    if (connection?.send && input.value) {
      connection.send(input.value);
      system('websocket', `sent: ${input.value}`);
      input.value = '';
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Push form

  const pushUser = $('push-user');
  const connectUser = $('connect-user');
  /** Whether the push form's user id follows the connect form's (until edited by hand). */
  let pushUserFollows = true;

  connectUser.addEventListener('input', () => {
    if (pushUserFollows) pushUser.value = connectUser.value.trim();
  });
  pushUser.addEventListener('input', () => {
    pushUserFollows = pushUser.value === '' || pushUser.value === connectUser.value.trim();
  });

  /** The data field as an object, or undefined (and the reason shown) when it is not one. */
  function validateData() {
    const area = $('push-data');
    const error = $('push-data-error');
    const text = area.value.trim();
    let problem = null;
    let value;
    if (!text) {
      problem = 'data is required: a JSON object, such as {"message": "hi"}';
    } else {
      const parsed = parseJson(text);
      if (!parsed.ok) problem = `not valid JSON: ${parsed.error.message}`;
      else if (!parsed.value || typeof parsed.value !== 'object' || Array.isArray(parsed.value)) {
        problem = 'data must be a JSON object, such as {"message": "hi"}';
      } else value = parsed.value;
    }
    area.classList.toggle('invalid', problem !== null);
    area.setAttribute('aria-invalid', String(problem !== null));
    error.hidden = problem === null;
    error.textContent = problem ?? '';
    $('push-button').disabled = problem !== null;
    return value;
  }

  function setPushStatus(state, text) {
    const status = $('push-status');
    status.dataset.state = state;
    status.textContent = text;
  }

  async function push(event) {
    event.preventDefault();
    const data = validateData();
    if (data === undefined) return;
    const body = { user_id: pushUser.value.trim(), data };
    const type = $('push-type').value.trim();
    const eventId = $('push-event-id').value.trim();
    if (type) body.event_type = type;
    if (eventId) body.event_id = eventId;
    if ($('push-ack').checked) body.ack = true;
    store.set('event_type', type);
    const button = $('push-button');
    button.disabled = true;
    setPushStatus('connecting', 'pushing…');
    const started = performance.now();
    try {
      const answer = await request(config.sse_path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...apiKeyHeaders() },
        body: JSON.stringify(body),
      });
      const took = Math.round(performance.now() - started);
      const result = $('push-result');
      result.hidden = false;
      result.dataset.status = String(answer.status);
      renderJson($('push-response'), answer.body);
      const outcome = answer.ok && answer.body?.status ? ` · ${answer.body.status}` : '';
      setPushStatus(answer.ok ? 'ok' : 'error', `HTTP ${answer.status}${outcome} · ${took} ms`);
    } catch (error) {
      setPushStatus('error', `failed: ${error?.message ?? error}`);
    } finally {
      validateData();
    }
  }

  $('push-form').addEventListener('submit', push);
  $('push-data').addEventListener('input', validateData);
  $('push-data').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $('push-form').requestSubmit();
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Stats

  /** Rates per second: { t (ms, performance clock), pushes, deliveries }, oldest first. */
  const samples = [];
  let previous = null;
  /** Webhooks lost for good, by counter: the last count seen and when it last grew. */
  const webhookLosses = { given_up: {}, dropped: {} };
  /** How long the webhooks stay red after a loss: the chart's minute. */
  const LOSS_SHOWN_MS = CHART_SECONDS * 1000;

  async function poll() {
    const started = performance.now();
    const [metrics, health] = await Promise.allSettled([
      request('/metrics', { headers: { Accept: 'application/json', ...apiKeyHeaders() } }),
      request('/health', { headers: { Accept: 'application/json' } }),
    ]);
    showHealth(health.status === 'fulfilled' ? health.value : null);
    showMetrics(
      metrics.status === 'fulfilled' ? metrics.value : null,
      health.status === 'fulfilled' ? health.value : null,
      performance.now(),
    );
    drawChart();
    setTimeout(poll, Math.max(50, POLL_MS - (performance.now() - started)));
  }

  function showHealth(answer) {
    const health = $('health');
    const body = answer && typeof answer.body === 'object' ? answer.body : null;
    if (!body) {
      health.dataset.state = 'bad';
      $('health-text').textContent = 'server unreachable';
      return;
    }
    health.dataset.state = body.status === 'healthy' ? 'ok' : 'bad';
    const broker = body.broker ? ` · ${body.broker} broker` : '';
    $('health-text').textContent = `${body.status ?? 'unknown'}${broker}`;
    const version = body.version || config.version;
    $('version').textContent = version ? `v${version}` : '';
    const cluster = body.cluster;
    $('cluster').hidden = !cluster;
    if (cluster) {
      $('cluster-node').textContent = cluster.node_id ?? '–';
      $('cluster-nodes').textContent = formatCount(cluster.nodes);
      const ws = formatCount(cluster.websocket_connections);
      const sse = formatCount(cluster.sse_connections);
      $('cluster-connections').textContent = `${formatCount(cluster.connections)} (WS ${ws} · SSE ${sse})`;
      $('cluster-users').textContent = formatCount(cluster.users);
    }
  }

  function showMetrics(answer, healthAnswer, now) {
    const note = $('stats-note');
    const metrics = answer?.ok && typeof answer.body === 'object' ? answer.body : null;
    const health = healthAnswer?.ok && typeof healthAnswer.body === 'object' ? healthAnswer.body : {};
    if (!metrics) {
      note.textContent =
        answer?.status === 401 || answer?.status === 403
          ? '/metrics needs an API key (METRICS_PUBLIC=false): fill in the push form’s'
          : 'metrics unavailable';
      note.dataset.state = 'error';
    } else {
      note.textContent = 'live, every second';
      note.dataset.state = 'ok';
    }
    const m = metrics ?? {};
    const byTransport = m.connections_by_transport ?? {};
    const websocket = byTransport.websocket ?? health.websocket_connections;
    const sse = byTransport.sse ?? health.sse_connections;
    const total = m.active_connections ?? health.connections;
    const users = m.users_online ?? health.users;
    $('stat-connections').textContent = formatCount(total);
    $('stat-websocket').textContent = formatCount(websocket);
    $('stat-sse').textContent = formatCount(sse);
    $('stat-users').textContent = formatCount(users);
    $('stat-uptime').textContent = formatUptime(m.uptime_seconds ?? health.uptime_seconds);
    showAcks(m.acks, m.client_acks_total);
    showWebhooks(m.webhooks, now);

    const accepted = m.events_accepted_total;
    const delivered = m.events_delivered_total;
    $('stat-pushes-total').textContent = formatCount(accepted);
    $('stat-deliveries-total').textContent = formatCount(delivered);
    if (!Number.isFinite(accepted) || !Number.isFinite(delivered)) {
      previous = null;
      return;
    }
    if (previous && accepted >= previous.accepted && delivered >= previous.delivered) {
      const seconds = Math.max(0.001, (now - previous.t) / 1000);
      const sample = {
        t: now,
        pushes: (accepted - previous.accepted) / seconds,
        deliveries: (delivered - previous.delivered) / seconds,
      };
      samples.push(sample);
      while (samples.length && now - samples[0].t > (CHART_SECONDS + 2) * 1000) samples.shift();
      $('stat-pushes').textContent = formatRate(sample.pushes);
      $('stat-deliveries').textContent = formatRate(sample.deliveries);
    }
    previous = { t: now, accepted, delivered };
    $('chart').dataset.samples = String(samples.length);
  }

  /** The acknowledgement tracker's counts (`acks` of /metrics); hidden if the server has none. */
  function showAcks(acks, received) {
    $('acks').hidden = !acks;
    if (!acks) return;
    for (const key of ['pending', 'acked', 'expired', 'evicted']) {
      $(`acks-${key}`).textContent = formatCount(acks[key]);
    }
    $('acks-pending').title = `${formatCount(acks.pending_bytes)} bytes`;
    $('acks-received').textContent = Number.isFinite(received)
      ? `· ${formatCount(received)} received from clients`
      : '';
  }

  /**
   * The webhook sender's health (`webhooks` of /metrics), red for a minute after webhooks were
   * given up or dropped; hidden if the server has none.
   */
  function showWebhooks(webhooks, now) {
    const box = $('webhooks');
    box.hidden = !webhooks;
    if (!webhooks) return;
    const state = $('webhooks-state');
    state.textContent = webhooks.enabled ? 'on' : 'off';
    state.dataset.state = webhooks.enabled ? 'on' : 'off';
    for (const key of ['sent', 'failed_attempts', 'given_up', 'dropped', 'queued']) {
      $(`webhooks-${key}`).textContent = formatCount(webhooks[key]);
    }
    $('webhooks-queued').title = `${formatCount(webhooks.queued_bytes)} bytes`;
    let lost = false;
    for (const [key, loss] of Object.entries(webhookLosses)) {
      if (Number.isFinite(loss.count) && webhooks[key] > loss.count) loss.grewAt = now;
      loss.count = webhooks[key];
      const recent = loss.grewAt !== undefined && now - loss.grewAt < LOSS_SHOWN_MS;
      $(`webhooks-${key}`).dataset.state = recent ? 'bad' : '';
      lost ||= recent;
    }
    box.dataset.state = lost ? 'bad' : '';
    const error = $('webhooks-error');
    error.hidden = !webhooks.last_error;
    error.textContent = webhooks.last_error ? `last error: ${webhooks.last_error}` : '';
  }

  /** A round upper bound for the chart: 1, 2 or 5 times a power of ten. */
  function niceMax(value) {
    if (!(value > 1)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  function drawChart() {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const left = 36;
    const right = width - 6;
    const top = 8;
    const bottom = height - 18;
    const now = performance.now();
    const max = niceMax(Math.max(0, ...samples.map((s) => Math.max(s.pushes, s.deliveries))));
    const x = (t) => right - ((now - t) / (CHART_SECONDS * 1000)) * (right - left);
    const y = (v) => bottom - (v / max) * (bottom - top);

    ctx.font = `11px ${color('--sans') || 'sans-serif'}`;
    ctx.lineWidth = 1;
    ctx.strokeStyle = color('--line');
    ctx.fillStyle = color('--muted');
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (const fraction of [0, 0.5, 1]) {
      const value = max * fraction;
      const yy = Math.round(y(value)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(right, yy);
      ctx.stroke();
      ctx.fillText(formatRate(value), left - 6, yy);
    }
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'center';
    for (const ago of [45, 30, 15]) {
      ctx.fillText(`−${ago}s`, x(now - ago * 1000), height - 4);
    }
    ctx.textAlign = 'left';
    ctx.fillText(`−${CHART_SECONDS}s`, left, height - 4);
    ctx.textAlign = 'right';
    ctx.fillText('now', right, height - 4);

    const visible = samples.filter((s) => now - s.t <= CHART_SECONDS * 1000 + POLL_MS);
    if (visible.length === 0) return;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 2, right - left, bottom - top + 4);
    ctx.clip();
    const series = [
      { key: 'deliveries', stroke: color('--deliver'), fill: true },
      { key: 'pushes', stroke: color('--push'), fill: false },
    ];
    // Starts a new path along one series.
    const trace = (key) => {
      ctx.beginPath();
      visible.forEach((sample, index) => {
        const px = x(sample.t);
        const py = y(sample[key]);
        if (index === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
    };
    for (const { key, stroke, fill } of series) {
      trace(key);
      if (fill) {
        ctx.save();
        ctx.lineTo(x(visible[visible.length - 1].t), bottom);
        ctx.lineTo(x(visible[0].t), bottom);
        ctx.closePath();
        ctx.globalAlpha = 0.14;
        ctx.fillStyle = stroke;
        ctx.fill();
        ctx.restore();
        trace(key);
      }
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.strokeStyle = stroke;
      ctx.stroke();
    }
    ctx.restore();
  }

  window.addEventListener('resize', drawChart);

  // ---------------------------------------------------------------------------------------------
  // Start

  function start() {
    $('push-path').textContent = `POST ${config.sse_path}`;
    if (config.version) $('version').textContent = `v${config.version}`;
    if (config.tokens_required) {
      $('token-hint').textContent = 'required (JWT auth is on) · sent as ?token=';
      $('connect-token').required = true;
    }
    if (config.api_keys_required) {
      $('key-hint').textContent = 'required · sent as Bearer';
    }
    const user = store.get('user', 'demo');
    connectUser.value = user;
    pushUser.value = user;
    const transport = store.get('transport', 'websocket');
    const radio = document.querySelector(`input[name="transport"][value="${transport === 'sse' ? 'sse' : 'websocket'}"]`);
    if (radio) radio.checked = true;
    $('push-type').value = store.get('event_type', 'message');
    validateData();
    updateFrameCount();
    setConnectionStatus('idle', 'not connected');
    poll();
  }

  start();
})();
