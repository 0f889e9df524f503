-- expired: list workers whose heartbeat ran out, by the Redis clock (no clock skew between hosts).
-- KEYS[1] workers      sorted set of worker ids scored by heartbeat deadline (ms)
-- ARGV[1] limit        how many to return at most
local now = now_ms()
return redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
