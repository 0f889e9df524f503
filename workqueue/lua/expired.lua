-- expired: list workers whose heartbeat ran out, by the Redis clock (no clock skew between hosts).
-- KEYS[1] workers      sorted set of worker ids scored by heartbeat deadline (ms)
-- ARGV[1] limit        how many to return at most
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
