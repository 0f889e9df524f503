-- fetch: move due retries back to the queue, then take up to COUNT messages from its head.
-- KEYS[1] pending      the queue list
-- KEYS[2] in_flight    this worker's in-flight list (ignored in simple delivery)
-- KEYS[3] delayed      sorted set of retries scored by due time (ms)
-- ARGV[1] count        how many messages to take at most
-- ARGV[2] delivery     'reliable' (move into KEYS[2]) or 'simple' (pop: at most once)
-- Returns {wait_ms, message...}. wait_ms is 0 when messages were taken; otherwise the ms until
-- the next retry is due, or -1 when none is waiting, so an idle worker knows how long to block.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Bounded so one call never stalls Redis; the rest are promoted by the next fetch.
local due = redis.call('ZRANGE', KEYS[3], '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('RPUSH', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[3], unpack(due))
end

local count = tonumber(ARGV[1])
local taken
if ARGV[2] == 'reliable' then
  taken = redis.call('LRANGE', KEYS[1], 0, count - 1)
  if #taken > 0 then
    redis.call('LTRIM', KEYS[1], #taken, -1)
    redis.call('RPUSH', KEYS[2], unpack(taken))
  end
else
  taken = redis.call('LPOP', KEYS[1], count) or {}
end

local wait_ms = 0
if #taken == 0 then
  wait_ms = -1
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #first > 0 then
    wait_ms = math.max(1, tonumber(first[2]) - now)
  end
end
table.insert(taken, 1, wait_ms)
return taken
