-- heartbeat: register a worker as alive, or deregister it on a clean exit.
-- KEYS[1] workers      sorted set of worker ids scored by heartbeat deadline (ms, Redis clock)
-- KEYS[2] in_flight    the worker's in-flight list
-- KEYS[3] settled      hash of worker id -> last applied settle sequence number
-- ARGV[1] worker id
-- ARGV[2] action       'beat': alive for ARGV[3] more ms; 'leave': deregister, which succeeds
--                      only if the worker holds nothing (else recovery could not find its list)
-- ARGV[3] timeout_ms   with 'beat': how long the worker may stay silent before it is presumed dead
-- Returns 1 when done, 0 when leaving was refused because messages are still held.
if ARGV[2] == 'beat' then
  redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[3]), ARGV[1])
  return 1
end
if redis.call('LLEN', KEYS[2]) > 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
