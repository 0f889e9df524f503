-- heartbeat: join (start a new session), stay registered, or leave on a clean exit.
-- KEYS[1] workers      sorted set of worker ids scored by heartbeat deadline (ms, Redis clock)
-- KEYS[2] in_flight    the worker's in-flight list
-- KEYS[3] settled      hash of worker id -> last applied settle sequence number
-- KEYS[4] sessions     hash of worker id -> its current session number
-- KEYS[5] landing      the worker's landing list (see woken.lua)
-- KEYS[6] done         sorted set of completed ids (the expired are forgotten first, so that
--                      this script runs, and frees memory, while Redis is full)
-- ARGV[1] worker id
-- ARGV[2] action       'join': start session ARGV[4], registered for ARGV[3] ms; 'beat': alive
--                      for ARGV[3] more ms; 'leave': deregister, which succeeds only if the
--                      worker holds nothing (else recovery could not find its list)
-- ARGV[3] timeout_ms   how long the worker may stay silent before it is presumed dead
-- ARGV[4] session      with 'join' the new session's number, else the worker's current one
-- ARGV[5] previous     with 'join': the last session the worker knows it joined (0: none)
-- ARGV[6] next         with 'join': the number its next settle will carry. Settles apply in
--                      number order (settle.lua), so when the worker starts afresh (its first
--                      join) or its claim was lost (it drops every outcome not applied), the
--                      numbers before this one are settled as far as Redis need know
-- Returns, for 'join', 1 when the worker's claim on what it holds survived (its session was
-- still ARGV[5] or one it tried to join since), 0 when it was presumed dead meanwhile and
-- recovered: what it held is someone else's now. For 'beat' 1; for 'leave' 1 when done, 0 when
-- refused because messages are held. A request of an older session is refused with FENCED.
local worker, action = ARGV[1], ARGV[2]
local stored = redis.call('HGET', KEYS[4], worker)
local now = now_ms()
forget_expired(KEYS[6], now)  -- the first write: see the prelude
if action == 'join' then
  local session, current = tonumber(ARGV[4]), tonumber(stored or '0') or 0  -- any text: none
  -- A join delayed in the network, arriving after a newer one, must not undo it. The number
  -- is in the reply for a new process reusing a worker id, to join above it.
  if current >= session then return redis.error_reply('FENCED a newer session of this worker joined: ' .. stored) end
  local previous = tonumber(ARGV[5])
  local kept = previous == 0 or current >= previous
  -- A message a wait moved whose woken script never ran is ours: hand it over with the list.
  empty_landing(KEYS[5], KEYS[2], 'LEFT', 'RIGHT')
  redis.call('HSET', KEYS[4], worker, ARGV[4])  -- as sent: the other scripts compare strings
  if not kept or previous == 0 then redis.call('HSET', KEYS[3], worker, tonumber(ARGV[6]) - 1) end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), worker)
  return kept and 1 or 0
end
if stored ~= ARGV[4] then
  if action == 'leave' then return 1 end  -- not registered as this session: nothing to leave
  return redis.error_reply(FENCED)
end
if action == 'beat' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), worker)
  return 1
end
empty_landing(KEYS[5], KEYS[2], 'LEFT', 'RIGHT')
if redis.call('LLEN', KEYS[2]) > 0 then
  return 0
end
deregister(KEYS[1], KEYS[3], KEYS[4], worker)
return 1
