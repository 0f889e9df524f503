-- heartbeat: register a worker as alive, or deregister it on a clean exit.
-- KEYS[1] workers      sorted set of worker ids scored by heartbeat deadline (ms, Redis clock)
-- KEYS[2] in_flight    the worker's in-flight list
-- KEYS[3] settled      hash of worker id -> last applied settle sequence number
-- ARGV[1] worker id
-- ARGV[2] timeout_ms   how long the worker may stay silent before it is presumed dead;
--                      0 deregisters it, which succeeds only if it holds nothing
-- Returns 1 when done, 0 when a deregistration was refused because messages are still held.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout_ms = tonumber(ARGV[2])
if timeout_ms > 0 then
  redis.call('ZADD', KEYS[1], now + timeout_ms, ARGV[1])
  return 1
end
if redis.call('LLEN', KEYS[2]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
