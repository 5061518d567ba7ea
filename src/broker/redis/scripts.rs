//! The cluster's atomic steps, as Lua scripts run inside Redis, and their typed results.
//!
//! Each script is one atomic step for the whole cluster: assigning positions, storing and
//! publishing ([`PUBLISH`], which also keeps stored payload records within HISTORY_MAX_BYTES), joining or catching up a connection ([`JOIN`]), leaving ([`LEAVE`]), a node's
//! heartbeat with the reaping of dead nodes ([`HEARTBEAT`]), a node (re)registering its
//! connections ([`RESET`]), and listing or disconnecting a user's connections ([`CONNECTIONS`]).
//!
//! Every script is called with one key, the shard's prefix (`KEYS[1]`), and the command that
//! publishes on its channels (`ARGV[1]`: `PUBLISH`, or `SPUBLISH` in a Redis Cluster). Names follow
//! [`super::wire`]; the scripts build them from the prefix. In a Redis Cluster the prefix carries
//! the partition's hash tag, so every name a script touches is in the slot of its declared key,
//! and Redis routes (or redirects, `MOVED`) the call before anything runs.
//! Time comes from Redis (`TIME`), so nodes need no synchronised clocks.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers: Redis time and the reaping of one node's presence.
const PRELUDE: &str = r#"
local prefix, publish = KEYS[1], ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function node_of(field)
  return string.match(field, '^(.*)/')
end
local function alive(node)
  return redis.call('EXISTS', prefix .. 'n:' .. node) == 1
end
-- Records a user's departure (the `user.disconnected` webhook it owes): `g:<user>` =
-- '<node>/<connection> <due ms> <reason>', kept a day, and the user in `gz` scored by when a
-- heartbeat may report it if the node that left does not (`sweep`). Keeps an existing record.
local function depart(user, token, reason, due, sweep_at)
  local key = prefix .. 'g:' .. user
  if redis.call('EXISTS', key) == 1 then return end
  redis.call('SET', key, token .. ' ' .. due .. ' ' .. reason, 'PX', 86400000)
  redis.call('ZADD', prefix .. 'gz', sweep_at, user)
end
-- Whether `user` has a connection on a live node.
local function connected(user)
  for _, field in ipairs(redis.call('HKEYS', prefix .. 'p:' .. user)) do
    local field_node = node_of(field)
    if field_node and alive(field_node) then return true end
  end
  return false
end
-- Forgets a departure record (the user came back, or its webhook is being sent).
local function undepart(user)
  redis.call('DEL', prefix .. 'g:' .. user)
  redis.call('ZREM', prefix .. 'gz', user)
end
-- Forgets every connection `node` had, and the node itself. With `reason`, each user left with
-- no connection gets a departure record due `due` (to be swept from `sweep_at`).
local function reap(node, reason, due, sweep_at)
  local users_key = prefix .. 'nu:' .. node
  for _, user in ipairs(redis.call('SMEMBERS', users_key)) do
    local presence = prefix .. 'p:' .. user
    local left, last = 0, nil
    for _, field in ipairs(redis.call('HKEYS', presence)) do
      if node_of(field) == node then
        redis.call('HDEL', presence, field)
        last = field
      else
        left = left + 1
      end
    end
    if left == 0 then
      redis.call('SREM', prefix .. 'online', user)
      if reason and last then depart(user, last, reason, due, sweep_at) end
    end
  end
  redis.call('DEL', users_key)
  redis.call('SREM', prefix .. 'nodes', node)
end
-- A user's stream meta, created with `candidate` as epoch when absent (and any leftover history
-- of a lost meta dropped, so positions restart cleanly).
local function stream_meta(user, candidate, meta_ttl)
  local meta = prefix .. 'm:' .. user
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = candidate
    redis.call('HSET', meta, 'e', epoch, 'p', 0)
    redis.call('DEL', prefix .. 's:' .. user, prefix .. 'i:' .. user)
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  return meta, epoch
end
"#;

/// Publishes events. ARGV (after the publish command): history size, history TTL ms, meta TTL ms, epoch candidate,
/// HISTORY_MAX_BYTES, payload record TTL ms, then items, each one of:
/// - `E`, user, event_id, upstream ('1' when the id came from the upstream), envelope: one user's
///   event, kept inline in their history and published on their channel;
/// - `L`, the same, then a record id: as `E`, but kept in history by reference to a payload record
///   holding the envelope (large events, so that HISTORY_MAX_BYTES bounds them);
/// - `G`, record id, event_id, upstream, record ('' when an earlier item of the group carried
///   it), more ('1' when later items of the same group follow), the heads' part before the user's
///   id and after it, count, then per user: user, the user's id as the head has it (a JSON
///   string). A chunk of one event for several users sharing a payload: the record is stored
///   once, each user's history entry holds their head and the record's id, and one message on
///   the groups channel carries the heads' common parts once and the users with a connection,
///   with the record if no earlier message of the group carried it.
///
/// Returns per user, in order, `{duplicate 0|1, epoch, position, delivered}`.
///
/// Kept cheap per event (the position, the stream's meta once per user and script, the
/// publication, the user's connections, the history entry and its id): key lifetimes are renewed
/// at most every quarter of their TTL (and set that much longer), and the history is trimmed to
/// `size` in steps of 16 events (the join and the duplicate check honour `size` exactly).
const PUBLISH_BODY: &str = r#"
local size, ttl, meta_ttl, candidate = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local max_bytes, record_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
-- A user's keys have their lifetimes renewed at most once per `slack` ms (and then for that much
-- longer): most events cost no PEXPIRE. Ages are checked against each entry's time, so the
-- longer life is never visible.
local slack = math.floor(math.min(ttl, meta_ttl) / 4)
-- Trimming to `size` is done in steps of `trim_step` events: until then up to that many older
-- entries stay, invisible (readers and the duplicate check honour `size` exactly).
local trim_step = 16
local live_nodes = {}
-- The user's connections on live nodes (each node's liveness looked up once per script).
local function connections(presence)
  local count = 0
  for _, field in ipairs(redis.call('HKEYS', presence)) do
    local node = node_of(field)
    if node then
      if live_nodes[node] == nil then live_nodes[node] = alive(node) end
      if live_nodes[node] then count = count + 1 end
    end
  end
  return count
end
-- Per user, once per script: key names, epoch, and whether the lifetimes were renewed.
local streams = {}
local function stream_of(user)
  local st = streams[user]
  if st then return st end
  st = {meta = prefix .. 'm:' .. user, s = prefix .. 's:' .. user, ids = prefix .. 'i:' .. user,
        channel = prefix .. 'c:' .. user, presence = prefix .. 'p:' .. user}
  local got = redis.call('HMGET', st.meta, 'e', 'x')
  st.epoch = got[1]
  if not st.epoch then
    -- A new stream, or a lost one: positions restart under a new epoch, leftovers go.
    st.epoch = candidate
    redis.call('HSET', st.meta, 'e', st.epoch, 'p', 0)
    redis.call('DEL', st.s, st.ids)
  end
  st.renew = now - tonumber(got[2] or '0') >= slack
  streams[user] = st
  return st
end
-- Renews the lifetimes of the user's keys, at most once per `slack` (when an event was stored:
-- a script holding only duplicates for the user renews nothing, and records nothing of it).
local function renew(st)
  if not st.renew then return end
  redis.call('HSET', st.meta, 'x', now)
  redis.call('PEXPIRE', st.meta, meta_ttl + slack)
  if size > 0 then
    redis.call('PEXPIRE', st.s, ttl + slack)
    redis.call('PEXPIRE', st.ids, ttl + slack)
  end
  st.renew = false
end
-- The new event's position; for a repeated upstream id still in history, nil and the original's
-- outcome instead.
local function sequence(st, id, upstream)
  if size > 0 and upstream == '1' then
    local at = tonumber(redis.call('HGET', st.ids, id))
    if at then
      local head = tonumber(redis.call('HGET', st.meta, 'p'))
      local entry = at > head - size and redis.call('XRANGE', st.s, at .. '-0', at .. '-0')[1]
      if entry and now - tonumber(entry[2][6]) < ttl then
        return nil, {1, st.epoch, at, tonumber(entry[2][4])}
      end
    end
  end
  return redis.call('HINCRBY', st.meta, 'p', 1)
end
-- Drops the entries that fell out of the last `size` (every `trim_step` events), with their ids.
local function trim(st, position)
  local last = position - size
  if last <= 0 or last % trim_step ~= 0 then return end
  local old = redis.call('XRANGE', st.s, '-', last .. '-0', 'COUNT', 1000)
  if #old == 0 then return end
  local names, positions = {}, {}
  for k, entry in ipairs(old) do
    names[k] = entry[2][8]
    positions[k] = string.match(entry[1], '^(%d+)')
  end
  local held = redis.call('HMGET', st.ids, unpack(names))
  local gone = {}
  for k, name in ipairs(names) do
    -- The id may name a newer event by now (re-pushed after the duplicate window).
    if held[k] == positions[k] then gone[#gone + 1] = name end
  end
  if #gone > 0 then redis.call('HDEL', st.ids, unpack(gone)) end
  redis.call('HSET', st.meta, 'di', names[#names], 'dp', positions[#positions])
  redis.call('XTRIM', st.s, 'MINID', (last + 1) .. '-0')
end
-- Appends an event to the user's history: `v` is its envelope, or its head when `record` names
-- the record holding the rest.
local function remember(st, position, id, v, record, delivered)
  if size > 0 then
    if record then
      redis.call('XADD', st.s, position .. '-0', 'v', v, 'd', delivered, 't', now, 'i', id, 'r', record)
    else
      redis.call('XADD', st.s, position .. '-0', 'v', v, 'd', delivered, 't', now, 'i', id)
    end
    redis.call('HSET', st.ids, id, position)
  end
  renew(st)
  if size > 0 then trim(st, position) end
end
local records, stored_bytes = prefix .. 'dq', prefix .. 'db'
local stored = false
-- Stores a payload record, counted against HISTORY_MAX_BYTES.
local function store(id, record)
  local key = prefix .. 'd:' .. id
  redis.call('HSET', key, 'v', record)
  redis.call('PEXPIRE', key, record_ttl)
  redis.call('RPUSH', records, now .. ' ' .. #record .. ' ' .. id)
  redis.call('INCRBY', stored_bytes, #record)
  redis.call('PEXPIRE', records, record_ttl)
  redis.call('PEXPIRE', stored_bytes, record_ttl)
  stored = true
end
-- Forgets the records whose time ran out, then drops the oldest while the stored bytes exceed
-- HISTORY_MAX_BYTES (the newest record always stays).
local function settle()
  local total = tonumber(redis.call('GET', stored_bytes) or '0')
  local left = redis.call('LLEN', records)
  while left > 0 do
    local at, bytes, id = string.match(redis.call('LINDEX', records, 0), '^(%d+) (%d+) (.+)$')
    if now - tonumber(at) < record_ttl and (total <= max_bytes or left == 1) then break end
    redis.call('LPOP', records)
    redis.call('DEL', prefix .. 'd:' .. id)
    total = redis.call('DECRBY', stored_bytes, bytes)
    left = left - 1
  end
end
local out = {}
local i = 8
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'E' or kind == 'L' then
    local user, id, upstream, envelope = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local record = nil
    if kind == 'L' then
      record = ARGV[i + 5]
      i = i + 6
    else
      i = i + 5
    end
    local st = stream_of(user)
    local position, original = sequence(st, id, upstream)
    if original then
      out[#out + 1] = original
    else
      local receivers = redis.call(publish, st.channel,
        'E ' .. st.epoch .. ' ' .. position .. ' ' .. envelope)
      local delivered = 0
      if receivers > 0 then delivered = connections(st.presence) end
      if record then
        store(record, envelope)
        remember(st, position, id, '', record, delivered)
      else
        remember(st, position, id, envelope, nil, delivered)
      end
      out[#out + 1] = {0, st.epoch, position, delivered}
    end
  else
    local record, id, upstream, payload, more = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local before, after = ARGV[i + 6], ARGV[i + 7]
    local first, count = i + 9, tonumber(ARGV[i + 8])
    i = first + 2 * count
    local fresh, members = false, {}
    for j = first, i - 1, 2 do
      local user, named = ARGV[j], ARGV[j + 1]
      local head = before .. named .. after
      local st = stream_of(user)
      local position, original = sequence(st, id, upstream)
      if original then
        out[#out + 1] = original
      else
        fresh = true
        -- A node with a connection of the user is subscribed to the groups channel.
        local delivered = connections(st.presence)
        if delivered > 0 then
          members[#members + 1] = st.epoch .. ' ' .. position .. ' ' .. #user .. ' ' .. #named .. '\n' .. user .. named
        end
        remember(st, position, id, head, record, delivered)
        out[#out + 1] = {0, st.epoch, position, delivered}
      end
    end
    if payload ~= '' and (fresh or more == '1') then store(record, payload) end
    if #members > 0 then
      local key = prefix .. 'd:' .. record
      local held = redis.call('HMGET', key, 'v', 's')
      local message = 'G ' .. record .. ' ' .. #members .. ' ' .. #before .. ' ' .. #after .. '\n'
        .. before .. after .. table.concat(members)
      if held[1] and not held[2] then
        message = message .. held[1]
        redis.call('HSET', key, 's', '1')
      end
      redis.call(publish, prefix .. 'g', message)
    end
  end
end
if stored then settle() end
return out
"#;

/// Joins a connection to its user's stream, or catches one up. ARGV (after the publish command):
/// history size,
/// history TTL ms, meta TTL ms, epoch candidate, user, resume point ('' for none), the point's
/// epoch and position when it has the shape of a position token ('' otherwise), node,
/// connection, presence value, per-user limit (0: no presence change, a catch-up), replace
/// ('1': over the limit, the oldest connection is kicked), then the ids of payload records the
/// node has at hand (named but not sent).
/// Returns `{'limit', count}` or `{'ok', epoch, head, arrived, resync reason, event count, then per
/// event: position, envelope or head, record id ('' for an envelope), then per record they name
/// that the node does not have at hand: id, record}` with the events after the point, each record once. When the point's stream was lost
/// but the current one is whole from its start, the reason is `epoch_changed`, `head` is 0 (the
/// resync point) and every event of the current stream follows. When a record the events need is
/// gone (dropped for HISTORY_MAX_BYTES), the reason is `expired` (or `epoch_changed`) and no event
/// follows.
///
/// `arrived` says what the join means for the user's presence (the `user.connected` webhook): ''
/// when the user had connections, came back within the grace of a departure (whose pending
/// `g:` record it deletes: no webhook either way), or for a catch-up; 'first' when the user had
/// none; or the pending departure record `<node>/<connection> <due ms> <reason>` when its grace
/// had passed but its node had not reported it yet (or, when the user's last connection was on a
/// dead node not reaped yet, `<that connection> <now> network_error`): the joining node reports
/// that departure, then the arrival.
const JOIN_BODY: &str = r#"
local size, ttl, meta_ttl, candidate = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local user, from, token_epoch, token_position = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local node, connection, value, limit, replace = ARGV[10], ARGV[11], ARGV[12], tonumber(ARGV[13]), ARGV[14]
local arrived = ''
if limit > 0 then
  local presence = prefix .. 'p:' .. user
  local fields = redis.call('HGETALL', presence)
  local live, dead = {}, nil
  for i = 1, #fields, 2 do
    local field_node = node_of(fields[i])
    if field_node and (field_node == node or alive(field_node)) then
      live[#live + 1] = {fields[i], tonumber(string.match(fields[i + 1], ' (%d+)$')) or 0}
    else
      redis.call('HDEL', presence, fields[i])
      dead = fields[i]
    end
  end
  if #live >= limit then
    if replace ~= '1' then return {'limit', #live} end
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for i = 1, #live - limit + 1 do
      redis.call('HDEL', presence, live[i][1])
      redis.call(publish, prefix .. 'c:' .. user, 'K ' .. live[i][1])
    end
  end
  if #live == 0 then
    arrived = 'first'
    local gone = redis.call('GET', prefix .. 'g:' .. user)
    if gone then
      undepart(user)
      local due = tonumber(string.match(gone, '^%S+ (%d+) ')) or 0
      if now_ms() < due then arrived = '' else arrived = gone end
    elseif dead then
      -- The user's last connection was on a node that died and was not reaped yet: its
      -- departure is owed (the reaping will find nothing of it left).
      arrived = dead .. ' ' .. now_ms() .. ' network_error'
    end
  end
  redis.call('HSET', presence, node .. '/' .. connection, value)
  redis.call('SADD', prefix .. 'nu:' .. node, user)
  redis.call('SADD', prefix .. 'online', user)
end
local meta, epoch = stream_meta(user, candidate, meta_ttl)
local head = tonumber(redis.call('HGET', meta, 'p'))
local at_hand = {}
for k = 15, #ARGV do at_hand[ARGV[k]] = true end
-- History entries as the reply lists them: the count, then position, envelope or head, record
-- id per event, then each record they name once (unless at hand); nil when one of those records
-- is gone from Redis (at hand or not: the history's bounds are the same on every node).
local function replay(entries)
  local events, records, seen = {#entries}, {}, {}
  for _, entry in ipairs(entries) do
    local record = entry[2][10] or ''
    events[#events + 1] = tonumber(string.match(entry[1], '^(%d+)'))
    events[#events + 1] = entry[2][2]
    events[#events + 1] = record
    if record ~= '' and not seen[record] then
      seen[record] = true
      local key = prefix .. 'd:' .. record
      if at_hand[record] then
        if redis.call('EXISTS', key) == 0 then return nil end
      else
        local held = redis.call('HGET', key, 'v')
        if not held then return nil end
        records[#records + 1] = record
        records[#records + 1] = held
      end
    end
  end
  for _, part in ipairs(records) do events[#events + 1] = part end
  return events
end
local function answer(reason, events)
  local out = {'ok', epoch, head, arrived, reason}
  for _, event in ipairs(events or {0}) do out[#out + 1] = event end
  return out
end
if from == '' then return answer('') end
if token_epoch == epoch and tonumber(token_position) == head then return answer('') end
if size == 0 then return answer('history_disabled') end
local stream, ids = prefix .. 's:' .. user, prefix .. 'i:' .. user
local after = tonumber(redis.call('HGET', ids, from))
-- An id out of the last `size` whose entry lingers until the next trimming step is forgotten as
-- if it had been trimmed (the newest one out, the point just before the window, still resumes).
if after and after < head - size then after = nil end
if not after and redis.call('HGET', meta, 'di') == from then
  after = tonumber(redis.call('HGET', meta, 'dp'))
end
if not after then
  if token_epoch == '' then return answer('unknown_event_id') end
  local position = tonumber(token_position)
  if token_epoch ~= epoch or position > head then
    -- The client's stream is gone (Redis lost it). If the current one is still whole from its
    -- first event, the resync point is its start and everything in it follows the notice.
    local entries = redis.call('XRANGE', stream, '1-0', '+')
    local first = entries[1]
    if head == 0 or head > size or not first or first[1] ~= '1-0' or now_ms() - tonumber(first[2][6]) >= ttl then
      return answer('epoch_changed')
    end
    local events = replay(entries)
    if events then head = 0 end
    return answer('epoch_changed', events)
  end
  after = position
end
if after >= head then return answer('') end
-- Entries older than the last `size` may linger until the next trimming step: never replayed.
if after < head - size then return answer('expired') end
local entries = redis.call('XRANGE', stream, '(' .. after .. '-0', '+')
local first = entries[1]
if not first or first[1] ~= (after + 1) .. '-0' or now_ms() - tonumber(first[2][6]) >= ttl then
  return answer('expired')
end
local events = replay(entries)
if not events then return answer('expired') end
return answer('', events)
"#;

/// Forgets connections that left. ARGV (after the publish command): node, presence grace ms
/// (0: departures are reported at once, or presence webhooks are off), lease ms, then per
/// connection: user, connection, reason.
/// Returns, for each connection that was its user's last on a live node, `user, <node>/<connection>,
/// reason, state`: state 'gone' (no grace: report the departure now) or 'grace' (a departure
/// record `g:<user>` = `<node>/<connection> <due ms> <reason>` now waits out the grace; the node
/// reports it with [`GONE`] after the grace, unless a join took it meanwhile; if the node does
/// not (it stopped or died), a heartbeat of any node reports it a lease later). A connection
/// already forgotten (a retried call) reports nothing.
const LEAVE_BODY: &str = r#"
local node, grace, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local user, connection, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local presence = prefix .. 'p:' .. user
  local token = node .. '/' .. connection
  local removed = redis.call('HDEL', presence, token)
  local fields = redis.call('HKEYS', presence)
  local mine, live = false, 0
  for _, field in ipairs(fields) do
    local field_node = node_of(field)
    if field_node == node then mine = true end
    if field_node and (field_node == node or alive(field_node)) then live = live + 1 end
  end
  if not mine then redis.call('SREM', prefix .. 'nu:' .. node, user) end
  if #fields == 0 then redis.call('SREM', prefix .. 'online', user) end
  if removed == 1 and live == 0 then
    local state = 'gone'
    if grace > 0 then
      state = 'grace'
      local due = now_ms() + grace
      redis.call('DEL', prefix .. 'g:' .. user)
      depart(user, token, reason, due, due + lease)
    end
    out[#out + 1] = user
    out[#out + 1] = token
    out[#out + 1] = reason
    out[#out + 1] = state
  end
end
return out
"#;

/// Reports departures whose grace passed. ARGV (after the publish command): per departure: user,
/// `<node>/<connection>`. Returns the users whose departure record is still that connection's
/// (deleting it) and who have no connection on a live node: nobody came back, and no join
/// reported it.
const GONE_BODY: &str = r#"
local out = {}
for i = 2, #ARGV, 2 do
  local key, token = prefix .. 'g:' .. ARGV[i], ARGV[i + 1] .. ' '
  local gone = redis.call('GET', key)
  if gone and string.sub(gone, 1, #token) == token then
    undepart(ARGV[i])
    if not connected(ARGV[i]) then out[#out + 1] = ARGV[i] end
  end
end
return out
"#;

/// Renews this node's lease with its counts, reaps nodes whose lease ran out, and returns the
/// cluster's counts. ARGV (after the publish command): node, lease ms, websocket connections, SSE connections,
/// users, presence webhooks ('1'/'0').
/// Returns `{live nodes, websocket connections, SSE connections, users online, registered,
/// departures}`; `registered` is 0 when this node had been reaped meanwhile (its lease ran out
/// while it was alive, e.g. paused): it must register its connections again. With presence
/// webhooks, a reaped node's users left with no connection get a departure record, taken over
/// a lease later (unless the node, back from an outage, registers them again first), and `departures` lists (user, record) for up to 1,000 records past the time a heartbeat may take
/// them (their node stopped or died before reporting them): this node reports them.
const HEARTBEAT_BODY: &str = r#"
local node, lease, presence = ARGV[2], tonumber(ARGV[3]), ARGV[7] == '1'
local registered = redis.call('SISMEMBER', prefix .. 'nodes', node)
redis.call('HSET', prefix .. 'n:' .. node, 'ws', ARGV[4], 'sse', ARGV[5], 'users', ARGV[6])
redis.call('PEXPIRE', prefix .. 'n:' .. node, lease)
redis.call('SADD', prefix .. 'nodes', node)
local nodes, ws, sse = 0, 0, 0
for _, other in ipairs(redis.call('SMEMBERS', prefix .. 'nodes')) do
  local counts = redis.call('HMGET', prefix .. 'n:' .. other, 'ws', 'sse')
  if counts[1] then
    nodes = nodes + 1
    ws = ws + tonumber(counts[1])
    sse = sse + tonumber(counts[2])
  elseif presence then
    -- A node that died (or lost Redis for longer than its lease): its users with no other
    -- connection owe a departure, reported a lease later unless the node registers them again
    -- meanwhile (a node back from an outage does so at once).
    local now = now_ms()
    reap(other, 'network_error', now, now + lease)
  else
    reap(other)
  end
end
-- Departures whose node did not report them (it stopped or died): reported by this node.
local swept = {}
if presence then
  local gz = prefix .. 'gz'
  for _, user in ipairs(redis.call('ZRANGEBYSCORE', gz, '-inf', now_ms(), 'LIMIT', 0, 1000)) do
    local gone = redis.call('GET', prefix .. 'g:' .. user)
    undepart(user)
    if gone and not connected(user) then
      swept[#swept + 1] = user
      swept[#swept + 1] = gone
    end
  end
end
return {nodes, ws, sse, redis.call('SCARD', prefix .. 'online'), registered, swept}
"#;

/// A user's connections on live nodes, and optionally disconnects them all (their nodes close them
/// when they read `X` on the user's channel). ARGV (after the publish command): user, disconnect
/// ('1'/'0').
/// Returns `{field, value, field, value, ...}` as in the presence hash.
const CONNECTIONS_BODY: &str = r#"
local user = ARGV[2]
local fields = redis.call('HGETALL', prefix .. 'p:' .. user)
local live = {}
for i = 1, #fields, 2 do
  local node = node_of(fields[i])
  if node and alive(node) then
    live[#live + 1] = fields[i]
    live[#live + 1] = fields[i + 1]
  end
end
if ARGV[3] == '1' and #live > 0 then
  redis.call(publish, prefix .. 'c:' .. user, 'X')
end
return live
"#;

/// (Re)registers this node's connections: optionally forgets all it had first (after a restart
/// or an outage, when leaves may have been lost), and optionally drops its lease (shutdown).
/// ARGV (after the publish command): node, forget ('1'/'0'), drop lease ('1'/'0'), lease ms,
/// presence grace ms (-1: presence webhooks off), then per connection: user, connection,
/// presence value. With presence webhooks, users the forgetting leaves with no connection get a
/// departure record (reason `shutdown` on shutdown, `network_error` after an outage: their
/// LEAVE was lost), which a heartbeat reports after the grace and a lease unless they come back;
/// the users registered again owe none.
const RESET_BODY: &str = r#"
local node, grace = ARGV[2], tonumber(ARGV[6])
if ARGV[3] == '1' then
  if grace >= 0 then
    -- Connections that ended while the link was down (or at shutdown) left no LEAVE behind.
    local due = now_ms() + grace
    local reason = 'network_error'
    if ARGV[4] == '1' then reason = 'shutdown' end
    reap(node, reason, due, due + tonumber(ARGV[5]))
  else
    reap(node)
  end
end
if ARGV[4] == '1' then
  redis.call('DEL', prefix .. 'n:' .. node)
else
  -- Registered with a lease at once, so that the node is reaped if it dies before a heartbeat.
  redis.call('SADD', prefix .. 'nodes', node)
  redis.call('HSETNX', prefix .. 'n:' .. node, 'ws', 0)
  redis.call('HSETNX', prefix .. 'n:' .. node, 'sse', 0)
  redis.call('PEXPIRE', prefix .. 'n:' .. node, ARGV[5])
end
for i = 7, #ARGV, 3 do
  -- Still connected here: no departure is owed for the user.
  if grace >= 0 then undepart(ARGV[i]) end
  redis.call('HSET', prefix .. 'p:' .. ARGV[i], node .. '/' .. ARGV[i + 1], ARGV[i + 2])
  redis.call('SADD', prefix .. 'nu:' .. node, ARGV[i])
  redis.call('SADD', prefix .. 'online', ARGV[i])
end
return 0
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Publishes events (see `PUBLISH_BODY`).
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| script(PUBLISH_BODY));
/// Joins or catches up a connection (see `JOIN_BODY`).
pub static JOIN: LazyLock<Script> = LazyLock::new(|| script(JOIN_BODY));
/// Forgets connections that left (see `LEAVE_BODY`).
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| script(LEAVE_BODY));
/// Reports departures whose grace passed (see `GONE_BODY`).
pub static GONE: LazyLock<Script> = LazyLock::new(|| script(GONE_BODY));
/// A node's heartbeat (see `HEARTBEAT_BODY`).
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| script(HEARTBEAT_BODY));
/// A user's connections, optionally disconnecting them (see `CONNECTIONS_BODY`).
pub static CONNECTIONS: LazyLock<Script> = LazyLock::new(|| script(CONNECTIONS_BODY));
/// (Re)registers a node's connections (see `RESET_BODY`).
pub static RESET: LazyLock<Script> = LazyLock::new(|| script(RESET_BODY));
