// docs/examples/websocket-reconnect.js: a WebSocket client that renews its token and resumes
// without gaps. The page defines PUSH_URL ('https://push.example.com'), fetchToken() (a fresh
// subscriber token from your backend), handle(event), reloadStateFromYourBackend() and
// reportStopped(why).
let lastEventId = localStorage.getItem('lastEventId');
let failures = 0;                                // attempts in a row that got nowhere: the backoff

async function connect() {
  let token;
  try { token = await fetchToken(); } catch { return retryLater(0); }
  const query = new URLSearchParams({ token });
  if (lastEventId) query.set('last_event_id', lastEventId);
  const ws = new WebSocket(`${PUSH_URL.replace(/^http/, 'ws')}/ws?${query}`);
  const started = Date.now();
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event_type === 'ack') return;      // replies to our own frames
    failures = 0;
    if (event.event_type === 'resync') reloadStateFromYourBackend();
    else handle(event);
    lastEventId = event.event_id;                // also for resync: it is a resume point
    localStorage.setItem('lastEventId', lastEventId);
  };
  ws.onclose = ({ code, reason }) => {
    if ([4400, 4401, 4403, 4003].includes(code) || reason === 'replaced by a newer connection') {
      reportStopped(`${code} ${reason}`);        // retrying will not help
    } else if (code === 4001 && Date.now() - started > 1000) {
      connect();                                 // token expired: a fresh one, resume at once
    } else {                                     // 4429 says how long to wait at least
      const retryAfter = /retry after (\d+) s/.exec(reason);
      retryLater(retryAfter ? retryAfter[1] * 1000 : 0);
    }
  };
}

function retryLater(atLeastMs) {                 // capped exponential backoff, full jitter
  const backoff = Math.random() * Math.min(30000, 1000 * 2 ** failures++);
  setTimeout(connect, Math.max(atLeastMs, backoff));
}

connect();
