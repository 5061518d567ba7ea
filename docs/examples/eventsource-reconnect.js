// docs/examples/eventsource-reconnect.js: an EventSource that survives token expiry and offline
// periods. The page defines PUSH_URL ('https://push.example.com'), fetchToken() (a fresh
// subscriber token from your backend), handle(event), reloadStateFromYourBackend() and
// reportStopped(why).
let lastEventId = localStorage.getItem('lastEventId');
let failures = 0;                                // attempts in a row that got nowhere: the backoff

async function connect() {
  let token;
  try { token = await fetchToken(); } catch { return retryLater(); }
  const query = new URLSearchParams({ token });
  if (lastEventId) query.set('last_event_id', lastEventId);
  const source = new EventSource(`${PUSH_URL}/sse/stream?${query}`);
  const onEvent = (message) => {
    failures = 0;
    const event = JSON.parse(message.data);
    if (event.event_type === 'resync') reloadStateFromYourBackend();
    else handle(event);
    lastEventId = message.lastEventId;           // the event's event_id; resync's too
    localStorage.setItem('lastEventId', lastEventId);
  };
  // Other event types arrive under their own name: add them here.
  for (const type of ['message', 'resync']) source.addEventListener(type, onEvent);
  source.addEventListener('close', (message) => {  // the server ended the stream on purpose
    const { reason } = JSON.parse(message.data);
    if (reason === 'slow_consumer') return;      // the browser reconnects and resumes by itself
    source.close();
    if (reason === 'token_expired') connect();   // a fresh token, resuming from lastEventId
    else reportStopped(reason);                  // 'replaced', 'disconnected': do not come back
  });
  // The browser gave up (CLOSED), e.g. on a 401 when it came back with a token that expired
  // while it was offline: start over with a fresh one.
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) retryLater();
  });
}

function retryLater() {                          // capped exponential backoff, full jitter
  setTimeout(connect, Math.random() * Math.min(30000, 1000 * 2 ** failures++));
}

connect();
