-- prelude: helpers shared by the scripts; the script registry (scripts.py) puts this text
-- before each script, so every script below may call them.

-- The Redis clock in whole milliseconds: one clock for every host, so no clock skew.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Forget completed ids whose de-duplication window has passed, the oldest first and at most a
-- thousand a call, so that no call stalls Redis. Every script that must run while Redis is full
-- calls this before any other write: Redis refuses a script whose first write is a command it
-- denies when full (ZADD, RPUSH, HSET, LMOVE...), and lets one through that wrote before, and
-- these two commands it allows. So a full Redis frees what it can on every worker request.
local function forget_expired(done, now)
  if redis.call('ZCOUNT', done, '-inf', now) > 1000 then
    redis.call('ZREMRANGEBYRANK', done, 0, 999)
  else
    redis.call('ZREMRANGEBYSCORE', done, '-inf', now)
  end
end

-- A request made in a session that has ended is refused with this (outages.is_fenced).
local FENCED = 'FENCED this worker session ended'

-- Whether `session` (as the request sent it) is not the worker's current one in `sessions`.
local function session_ended(sessions, worker, session)
  return redis.call('HGET', sessions, worker) ~= session
end

-- Move everything a worker's landing list holds to `target` (`from_side`, `to_side`: LMOVE's).
-- A landing key written by hand as another type holds nothing of ours and must stop nothing:
-- redis.pcall turns its WRONGTYPE into a value that ends the loop (TYPE would need an ACL grant).
local function empty_landing(landing, target, from_side, to_side)
  while type(redis.pcall('LMOVE', landing, target, from_side, to_side)) == 'string' do end
end

-- Take a worker off the registry, its settle numbers and its session: whatever it sends now is refused.
local function deregister(workers, settled, sessions, worker)
  redis.call('ZREM', workers, worker)
  redis.call('HDEL', settled, worker)
  redis.call('HDEL', sessions, worker)
end

-- The id of a stored element, or nil when it has none. Our encoder writes the id first, so a
-- pattern finds it; anything else (hand-written JSON) is decoded in full, under pcall, so that
-- no element, however broken or deep, can make a script fail.
local function message_id(raw)
  local id = string.match(raw, '^{"id":"([^"\\]*)"')
  if id then return id end
  local ok, fields = pcall(cjson.decode, raw)
  if ok and type(fields) == 'table' and type(fields.id) == 'string' then return fields.id end
  return nil
end
