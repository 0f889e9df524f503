-- fetch: move due retries back to the queue, take up to COUNT messages from its head, and say
-- which of them were already completed (duplicates), so no extra round trip is needed for that.
-- KEYS[1] pending      the queue list
-- KEYS[2] in_flight    this worker's in-flight list
-- KEYS[3] delayed      sorted set of retries scored by due time (ms)
-- KEYS[4] done         sorted set of completed ids
-- KEYS[5] workers      sorted set of worker ids scored by heartbeat deadline (ms)
-- KEYS[6] paused       exists while the queue is paused: nothing is taken then
-- KEYS[7] sessions     hash of worker id -> its current session number
-- KEYS[8] dead_letter  the dead-letter list, for elements too large to be messages
-- KEYS[9] stats        hash of counters (dead_lettered)
-- ARGV[1] count        how many messages to take from the queue at most (and no more than
--                      an even share among the live workers in KEYS[5] of what waits and
--                      what this worker holds; at least one)
-- ARGV[2] delivery     'reliable' (move them into KEYS[2]) or 'simple' (pop them: at most once)
-- ARGV[3] worker id    whose in-flight list KEYS[2] is
-- ARGV[4] timeout_ms   its heartbeat timeout: registering in the same step as taking messages
--                      keeps every non-empty in-flight list listed in KEYS[5], for recovery
-- ARGV[5] session      the worker's session: a fetch of an older one (delayed in the network,
--                      or from a worker presumed dead) is refused with FENCED and takes nothing,
--                      so nothing enters a live worker's list unknown to it
-- ARGV[6] budget       bytes the messages taken may add up to (the first is taken whatever
--                      its size): a reply a client-output-buffer-limit does not cut
-- ARGV[7] limit        MAX_MESSAGE_BYTES; an element longer than ARGV[8] (the limit and the
-- ARGV[8] largest      room failed tries may add) is no message: it is dead-lettered here,
--                      never sent (prelude: dead_letter_oversized)
-- Returns {wait_ms, messages, duplicates}: duplicates lists the positions (from 1) in messages
-- of those whose id was completed already or appears earlier in this batch. wait_ms is 0 when
-- something was taken; otherwise the ms until the next retry is due, or -1 when none is waiting; -2 when the queue
-- is paused (due retries still return to the queue, to wait there). When elements were
-- dead-lettered as too large, {0, messages, duplicates, their sizes}, messages perhaps none.
if session_ended(KEYS[7], ARGV[3], ARGV[5]) then return redis.error_reply(FENCED) end
local now = now_ms()
local reliable = ARGV[2] == 'reliable'
forget_expired(KEYS[4], now)  -- the first write: see the prelude
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), ARGV[3])

-- Bounded so one call never stalls Redis; the rest are promoted by the next fetch.
local due = redis.call('ZRANGE', KEYS[3], '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('RPUSH', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[3], unpack(due))
end

if redis.call('EXISTS', KEYS[6]) == 1 then return {-2} end

local count = tonumber(ARGV[1])
-- No more than an even share of the queue among the live workers, counting what this worker
-- holds already (a batch asked for ahead): after a pause (a stalled machine, a burst of pushes)
-- the first worker to ask would otherwise take the whole backlog and run it in turn while the
-- others wait for work. A drain's batches stay full: there the share is far larger.
if count > 1 then
  local live = redis.call('ZCOUNT', KEYS[5], now, '+inf')
  if live > 1 then
    local held = reliable and redis.call('LLEN', KEYS[2]) or 0
    local share = math.ceil((redis.call('LLEN', KEYS[1]) + held) / live) - held
    count = math.min(count, math.max(1, share))
  end
end
local taken, oversized, looked = {}, {}, 0
if count > 0 then
  taken, oversized, looked = read_bounded(KEYS[1], 0, count, tonumber(ARGV[6]), tonumber(ARGV[8]))
  if looked > 0 then
    redis.call('LTRIM', KEYS[1], looked, -1)
    if reliable and #taken > 0 then redis.call('RPUSH', KEYS[2], unpack(taken)) end
    for i = 1, #oversized do dead_letter_oversized(KEYS[8], KEYS[9], oversized[i], ARGV[7], now) end
  end
end

local sizes = nil  -- of the elements dead-lettered as too large, for the worker's log
if #oversized > 0 then
  sizes = {}
  for i = 1, #oversized do sizes[i] = #oversized[i] end
  if #taken == 0 then return {0, {}, {}, sizes} end
end
if #taken == 0 then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #first > 0 then return {math.max(1, tonumber(first[2]) - now)} end
  return {-1}
end

-- One ZMSCORE for the whole batch: a redis.call per message would cost more than the check.
-- This loop runs for every message a worker takes: counters rather than #t (a search in Lua
-- 5.1), and the taken table itself goes back as the reply rather than a copy of it.
local ids, positions, found = {}, {}, 0
for i = 1, #taken do
  local id = message_id(taken[i])
  if id then
    found = found + 1
    ids[found] = id
    positions[found] = i
  end
end
local duplicates, count_duplicates = {}, 0
if found > 0 then
  local scores = redis.call('ZMSCORE', KEYS[4], unpack(ids))
  local seen = {}
  for j = 1, found do
    local id = ids[j]
    if scores[j] or seen[id] then
      count_duplicates = count_duplicates + 1
      duplicates[count_duplicates] = positions[j]
    end
    seen[id] = true
  end
end
if sizes then return {0, taken, duplicates, sizes} end
return {0, taken, duplicates}
