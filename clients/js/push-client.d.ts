// Type declarations of push-client.js.

/** The client's version: the server's. */
export const VERSION: string;

/** One event as the server pushes it. */
export interface PushEvent<Data = unknown> {
  event_type: string;
  event_id: string;
  user_id: string;
  timestamp: number;
  /** Present when the upstream asked for an acknowledgement (see `ack()` and `autoAck`). */
  ack?: true;
  data: Data;
}

/** What a `resync` event says: the history could not be replayed from the client's point. */
export interface ResyncDetail {
  reason: string;
  last_event_id: string;
  epoch: string | null;
  position: number | null;
}

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface PushClientOptions {
  /** The user (`?user_id=`), when the server runs without subscriber tokens. */
  userId?: string;
  /** A subscriber token, or a function returning a fresh one (asked again before `exp`). */
  token?: string | (() => string | Promise<string>);
  /** `auto` (default): WebSocket, falling back to SSE when WebSockets cannot open (see README). */
  transport?: 'websocket' | 'sse' | 'auto';
  /** Reconnection backoff: a random wait up to min(maxDelayMs, initialDelayMs × 2^attempt). */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
  /** Reconnect with a fresh token this long before a JWT's `exp` (default 30000). */
  refreshBeforeExpiryMs?: number;
  /** An SSE stream silent (not even a keepalive) this long is reopened; 0: never (default 45000). */
  sseIdleTimeoutMs?: number;
  /** Acknowledge every event pushed with `"ack": true` as soon as it is dispatched. */
  autoAck?: boolean;
  /** Resume point to start from (e.g. one saved in localStorage). */
  lastEventId?: string | null;
  /** The server's paths, when it is configured with others. */
  wsPath?: string;
  ssePath?: string;
  ackPath?: string;
  /** Implementations to use instead of the globals (tests, older runtimes). */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

/** Why a connection ended (see the README's table), or `closed` for the app's `close()`. */
export type Cause =
  | 'network'
  | 'shutdown'
  | 'dropped'
  | 'user_limit'
  | 'rate_limited'
  | 'unavailable'
  | 'ended'
  | 'token_expired'
  | 'token_refresh'
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'replaced'
  | 'disconnected'
  | 'closed'
  | 'other';

export interface StateDetail {
  state: ClientState;
  /** Why the last connection ended (`reconnecting` while waiting, `closed`), else null. */
  cause: Cause | 'token' | null;
  /** The server's words (a close reason, an error detail), else null. */
  reason: string | null;
  /** While `reconnecting` after an end: the wait before the next attempt, in milliseconds. */
  delayMs?: number;
  /** When an attempt starts: its URL, with the token masked. */
  url?: string;
}

export interface ErrorDetail {
  error: Error;
  /** The client stopped for good (a refusal that will not heal). */
  final: boolean;
  /** A connection's end (as in `StateDetail`), or `ack`, `token`, `frame`. */
  cause: Cause | 'ack' | 'token' | 'frame';
}

/** A frame as it arrived (for tools that show the wire). */
export interface FrameDetail {
  transport: 'websocket' | 'sse';
  /** The text of a WebSocket frame or an SSE block's data (null for an id-only block). */
  data?: string | null;
  /** SSE: the block's `event:` and `id:`. */
  event?: string;
  id?: string | null;
  /** SSE: a comment line. */
  comment?: string;
  /** SSE: the HTTP status of a refused request (`data` is its body). */
  status?: number;
}

export interface PushClientEventMap {
  message: CustomEvent<PushEvent>;
  resync: CustomEvent<ResyncDetail>;
  state: CustomEvent<StateDetail>;
  error: CustomEvent<ErrorDetail>;
  frame: CustomEvent<FrameDetail>;
}

export class PushClient extends EventTarget {
  constructor(baseUrl: string, options?: PushClientOptions);
  readonly lastEventId: string | null;
  readonly state: ClientState;
  readonly transport: 'websocket' | 'sse';
  connect(): void;
  close(reason?: string): void;
  send(text: string): void;
  /** Resolves to whether the acknowledgement was sent; never rejects. */
  ack(eventIds: string | string[]): Promise<boolean>;
  addEventListener<K extends keyof PushClientEventMap>(
    type: K,
    listener: (event: PushClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PushClientEventMap>(
    type: K,
    listener: (event: PushClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
}

export function backoffDelay(
  attempt: number,
  policy: { initialDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;

export function jwtExpiry(token: unknown): number | null;

export class SseParser {
  constructor(
    onEvent: (event: { id: string | null; event: string; data: string | null }) => void,
    onComment?: (text: string) => void,
  );
  /** The last `retry:` hint, in milliseconds, or null. */
  retry: number | null;
  push(text: string): void;
}
