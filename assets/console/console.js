// The web console's script (inlined into index.html by the server; no external asset, no build
// step). Four parts: the connection (the official client, loaded from this server's /client.js,
// whose every frame, comment and id is shown), the frame list, the push form, and the stats
// poller with its chart.
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
  // The official client, served by this server at CLIENT_PATH (the file web apps import), does
  // the connecting: reconnecting with backoff, resuming, stopping on refusals, acknowledging. The
  // console shows what it does: every frame as it arrived (its `frame` events), its states as the
  // status line and as lines in the list. Connect makes a client; it lasts until Disconnect or
  // until it stops by itself.

  /** Where this server serves the official client. */
  const CLIENT_PATH = '/client.js';
  /** Upper bound of the first reconnect delay; it doubles with each attempt, to BACKOFF_MAX_MS. */
  const BACKOFF_FIRST_MS = 500;
  /** Largest upper bound of a reconnect delay. */
  const BACKOFF_MAX_MS = 30000;
  /** Milliseconds between two updates of the "reconnecting in N s" countdown. */
  const COUNTDOWN_MS = 100;

  /** The client module, once loaded. */
  let clientModule = null;
  /** The client Connect made, until it is closed or stops. */
  let client = null;
  /** The countdown of a reconnection the client is waiting for. */
  let ticker = null;
  /** Attempts since the client was last open. */
  let attempts = 0;
  let lastEventId = null;

  const TRANSPORT_NAMES = { websocket: 'WebSocket', sse: 'SSE' };

  /** The status for a stop: what the server said, and what to do about it. */
  function stopped({ cause, reason }) {
    const says = {
      bad_request: () => `bad request: ${reason}`,
      unauthorized: () => `not authorized: ${reason}`,
      forbidden: () => forbidden(reason),
      not_found: () => `not found: ${reason}`,
      replaced: () =>
        'replaced by a newer connection of this user; not reconnecting (that would replace it in turn)',
      disconnected: () => 'disconnected by an administrator; not reconnecting',
    };
    return (says[cause] ?? (() => `closed: ${reason}`))();
  }

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
    $('send-form').hidden = !(state === 'open' && client?.transport === 'websocket');
  }

  /** Connect: a client for the form's user, resuming only if the box is ticked. */
  async function connect() {
    if (client) return;
    const user = $('connect-user').value.trim();
    const token = $('connect-token').value.trim();
    if (!user && !token) {
      setConnectionStatus('error', 'enter a user id (or a token)');
      $('connect-user').focus();
      return;
    }
    store.set('user', user);
    store.set('transport', selectedTransport());
    try {
      clientModule ??= await import(CLIENT_PATH);
    } catch (error) {
      setConnectionStatus('error', `the client (${CLIENT_PATH}) could not be loaded: ${error}`);
      return;
    }
    if (client) return;
    attempts = 0;
    client = new clientModule.PushClient(location.origin, {
      userId: user || undefined,
      token: token || undefined,
      transport: selectedTransport(),
      wsPath: config.ws_path,
      ssePath: config.sse_stream_path,
      ackPath: config.sse_ack_path,
      reconnect: { initialDelayMs: BACKOFF_FIRST_MS, maxDelayMs: BACKOFF_MAX_MS },
      lastEventId: $('connect-resume').checked ? lastEventId : null,
    });
    const current = client;
    current.addEventListener('frame', ({ detail }) => {
      if (client === current) showFrame(current, detail);
    });
    current.addEventListener('state', ({ detail }) => {
      if (client === current) showState(current, detail);
    });
    current.addEventListener('error', ({ detail }) => {
      if (client === current && !detail.final && detail.cause === 'frame') {
        system(current.transport, `error: ${detail.error.message}`, true);
      }
    });
    current.connect();
  }

  /** Disconnect: closes the connection, or cancels the reconnection that is waiting. */
  function disconnect() {
    if (!client) return;
    const waiting = client.state === 'reconnecting';
    system(client.transport, waiting ? 'reconnect cancelled' : 'closed from the console');
    client.close();
  }

  /** One of the client's states, as the status line and a line in the list. */
  function showState(current, { state, cause, reason, delayMs, url }) {
    const transport = current.transport;
    stopCountdown();
    if (url !== undefined) {
      attempts += 1;
      system(transport, `opening ${url.replace(/^[a-z]+:\/\/[^/]+/, '')}`);
      const text = attempts > 1 ? `reconnecting (attempt ${attempts})…` : 'connecting…';
      setConnectionStatus('connecting', text);
    } else if (state === 'open') {
      attempts = 0;
      setConnectionStatus('open', `connected over ${TRANSPORT_NAMES[transport]}`);
      system(transport, 'connected');
    } else if (state === 'reconnecting') {
      countdown(transport, reason, delayMs);
    } else if (state === 'closed') {
      client = null;
      if (cause === 'closed') setConnectionStatus('idle', 'not connected');
      else if (cause === 'token_expired') tokenExpired(transport);
      else {
        const why = stopped({ cause, reason });
        system(transport, `stopped: ${why}`, true);
        setConnectionStatus('error', why);
      }
    }
    setLastEventId(current.lastEventId);
  }

  /** Says when the client reconnects, counting down in the status. */
  function countdown(transport, why, delayMs) {
    const due = performance.now() + delayMs;
    system(transport, `reconnecting in ${seconds(delayMs)} s (${why})`, true);
    const show = () =>
      setConnectionStatus('waiting', `reconnecting in ${seconds(due - performance.now())} s (${why})`);
    show();
    ticker = setInterval(show, COUNTDOWN_MS);
  }

  function stopCountdown() {
    clearInterval(ticker);
    ticker = null;
  }

  function seconds(ms) {
    return (Math.max(0, ms) / 1000).toFixed(1);
  }

  /**
   * The token ran out. The console cannot mint one: it stops, ticks "resume" and puts the cursor
   * in the token field, so that a fresh token and Connect pick up where the client left off.
   */
  function tokenExpired(transport) {
    system(transport, 'stopped: token expired', true);
    const resume = lastEventId ? ` — it resumes from ${lastEventId}` : '';
    setConnectionStatus('error', `token expired: paste a fresh token and press Connect${resume}`);
    $('connect-resume').checked = true;
    const token = $('connect-token');
    token.focus();
    token.select();
  }

  /** One frame as it arrived: an event, a reply, or (SSE) a position, comment or refusal. */
  function showFrame(current, frame) {
    const transport = frame.transport;
    if (frame.comment !== undefined) {
      if (frame.comment === 'keepalive') $('connection-status').title = `last keepalive ${clock()}`;
      else system(transport, `comment: ${frame.comment}`);
      return;
    }
    if (frame.status !== undefined) {
      system(transport, `refused: HTTP ${frame.status}`, true);
      const parsed = parseJson(frame.data);
      addFrame({ transport, type: `HTTP ${frame.status}`, body: parsed.ok ? parsed.value : frame.data });
      return;
    }
    if (frame.data === null) {
      system(transport, `stream position ${frame.id}`);
      return;
    }
    const parsed = parseJson(frame.data);
    const event = parsed.ok && parsed.value && typeof parsed.value === 'object' ? parsed.value : null;
    if (event?.event_type === 'position') {
      system(transport, `stream position ${event.event_id}`);
      return;
    }
    const item = addFrame({
      transport,
      type: transport === 'sse' ? frame.event : event?.event_type,
      id: frame.id ?? event?.event_id,
      body: parsed.ok ? parsed.value : frame.data,
    });
    if (event?.ack === true && event.event_id) acknowledge(current, event.event_id, item);
    // The client takes the frame in right after this: show where it now resumes from.
    queueMicrotask(() => setLastEventId(current.lastEventId));
  }

  /** Acknowledges an event that asked for it (`"ack": true`), then says so next to it. */
  async function acknowledge(current, eventId, item) {
    item.dataset.ack = 'pending';
    const sent = await current.ack(eventId);
    item.dataset.ack = sent ? 'acked' : 'failed';
    const badge = sent ? el('span', 'badge acked', 'acked') : el('span', 'badge ack-failed', 'ack failed');
    if (!sent) system(current.transport, `ack failed (${eventId})`, true);
    item.querySelector('.meta').append(badge);
  }

  $('connect-form').addEventListener('submit', (event) => {
    event.preventDefault();
    connect();
  });
  $('disconnect-button').addEventListener('click', disconnect);
  $('send-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('send-text');
    if (client?.transport === 'websocket' && client.state === 'open' && input.value) {
      client.send(input.value);
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
      $('token-hint').textContent = 'required (JWT auth is on) · WebSocket: ?token=, SSE: Bearer';
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
