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
   * line about the connection ({ transport, text, error }).
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

  /** The open (or opening) connection: { transport, closing, close(), send?() }, or null. */
  let connection = null;
  let lastEventId = null;

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
    const busy = state === 'open' || state === 'connecting';
    $('connect-button').disabled = busy;
    $('disconnect-button').disabled = !busy;
    for (const input of document.querySelectorAll(
      '#connect-form input, #connect-form fieldset input',
    )) {
      input.disabled = busy;
    }
    $('send-form').hidden = !(state === 'open' && connection?.transport === 'websocket');
  }

  /** `path?user_id=…&token=…&last_event_id=…`, and the same with the token masked, for display. */
  function connectTarget(path) {
    const params = new URLSearchParams();
    const user = $('connect-user').value.trim();
    const token = $('connect-token').value.trim();
    if (user) params.set('user_id', user);
    if (token) params.set('token', token);
    if ($('connect-resume').checked && lastEventId) params.set('last_event_id', lastEventId);
    const query = params.toString();
    if (token) params.set('token', '…');
    const shown = params.toString().replace('token=%E2%80%A6', 'token=…');
    return { url: query ? `${path}?${query}` : path, shown: shown ? `${path}?${shown}` : path };
  }

  function connect() {
    if (connection) return;
    const user = $('connect-user').value.trim();
    if (!user && !$('connect-token').value.trim()) {
      setConnectionStatus('error', 'enter a user id (or a token)');
      $('connect-user').focus();
      return;
    }
    store.set('user', user);
    store.set('transport', selectedTransport());
    if (selectedTransport() === 'sse') connectSse();
    else connectWebSocket();
  }

  function disconnect() {
    connection?.close();
  }

  function connectWebSocket() {
    const target = connectTarget(config.ws_path);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}${target.url}`);
    const current = {
      transport: 'websocket',
      closing: false,
      opened: false,
      close() {
        this.closing = true;
        socket.close(1000, 'closed from the console');
      },
      send(text) {
        socket.send(text);
      },
    };
    connection = current;
    setConnectionStatus('connecting', 'connecting…');
    system('websocket', `opening ${target.shown}`);
    socket.addEventListener('open', () => {
      current.opened = true;
      setConnectionStatus('open', 'connected over WebSocket');
      system('websocket', 'connected');
    });
    socket.addEventListener('message', (message) => {
      if (typeof message.data !== 'string') {
        addFrame({ transport: 'websocket', type: '(binary)', body: '(a binary frame)' });
        return;
      }
      const parsed = parseJson(message.data);
      const frame = parsed.ok && parsed.value && typeof parsed.value === 'object' ? parsed.value : null;
      if (frame && frame.event_type !== 'ack' && frame.event_id) setLastEventId(frame.event_id);
      addFrame({
        transport: 'websocket',
        type: frame?.event_type,
        id: frame?.event_id,
        body: parsed.ok ? parsed.value : message.data,
      });
    });
    socket.addEventListener('close', (event) => {
      const clean = current.closing || event.code === 1000;
      let text = `closed: code ${event.code}${event.reason ? ` · ${event.reason}` : ''}`;
      if (!current.opened && event.code === 1006) {
        text = 'the handshake failed (no token or a wrong one, an origin not in CORS_ORIGINS, a limit, or the server is unreachable)';
      }
      system('websocket', text, !clean);
      if (connection === current) {
        connection = null;
        setConnectionStatus(clean ? 'idle' : 'error', clean ? 'not connected' : `closed (${event.code})`);
      }
    });
  }

  /** Reads an event stream (fetch, not EventSource: every event type, comment and id is seen). */
  async function connectSse() {
    const target = connectTarget(config.sse_stream_path);
    const abort = new AbortController();
    const current = {
      transport: 'sse',
      closing: false,
      close() {
        this.closing = true;
        abort.abort();
      },
    };
    connection = current;
    setConnectionStatus('connecting', 'connecting…');
    system('sse', `opening ${target.shown}`);
    let ended = null;
    let failed = false;
    try {
      const response = await fetch(target.url, {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: abort.signal,
      });
      const type = response.headers.get('content-type') ?? '';
      if (!response.ok || !type.startsWith('text/event-stream')) {
        const text = await response.text();
        const parsed = parseJson(text);
        failed = true;
        system('sse', `refused: HTTP ${response.status}`, true);
        addFrame({ transport: 'sse', type: `HTTP ${response.status}`, body: parsed.ok ? parsed.value : text });
        return;
      }
      setConnectionStatus('open', 'connected over SSE');
      system('sse', 'connected');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = eventStreamParser((block) => {
        const reason = onSseBlock(block);
        if (reason) ended = reason;
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      failed = !current.closing;
      system('sse', `stream ended${ended ? ` · ${ended}` : ''}`, failed);
    } catch (error) {
      if (current.closing) {
        system('sse', 'closed from the console');
      } else {
        failed = true;
        system('sse', `stream failed: ${error?.message ?? error}`, true);
      }
    } finally {
      if (connection === current) {
        connection = null;
        setConnectionStatus(failed ? 'error' : 'idle', failed ? `ended${ended ? ` (${ended})` : ''}` : 'not connected');
      }
    }
  }

  /** Handles one block of the event stream; returns the reason of a `close` event, if it is one. */
  function onSseBlock(block) {
    for (const comment of block.comments) {
      if (comment === 'keepalive') {
        $('connection-status').title = `last keepalive ${clock()}`;
      } else {
        system('sse', `comment: ${comment}`);
      }
    }
    if (block.id !== undefined) setLastEventId(block.id);
    if (block.data.length === 0) {
      if (block.id) {
        const retry = block.retry ? ` · retry ${block.retry} ms` : '';
        system('sse', `stream position ${block.id}${retry}`);
      }
      return null;
    }
    const type = block.event || 'message';
    const text = block.data.join('\n');
    const parsed = parseJson(text);
    addFrame({
      transport: 'sse',
      type,
      id: block.id ?? (parsed.ok ? parsed.value?.event_id : undefined),
      body: parsed.ok ? parsed.value : text,
    });
    return type === 'close' ? (parsed.ok ? parsed.value?.reason : null) ?? 'close' : null;
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
