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

-- Up to `count` elements of list `key` from index `start` (0-based), as many as fit in `budget`
-- bytes, and always the first: a reply never much larger than the budget, so that a server's
-- client-output-buffer-limit does not cut it (the worker lowers the budget when one is cut).
-- Read in chunks sized by what the budget has left, since LRANGE copies all it returns.
-- Elements longer than `largest` are set apart in `oversized` and spend none of the budget.
-- Returns the elements kept, the oversized ones, and how many elements were looked at.
local function read_bounded(key, start, count, budget, largest)
  local kept, oversized, n_kept, n_over, looked, bytes = {}, {}, 0, 0, 0, 0
  local chunk = math.min(count, 16)
  while looked < count do
    local got = redis.call('LRANGE', key, start + looked, start + looked + chunk - 1)
    for i = 1, #got do
      local element = got[i]
      local size = #element
      if size > largest then
        n_over = n_over + 1
        oversized[n_over] = element
      elseif n_kept > 0 and bytes + size > budget then
        return kept, oversized, looked
      else
        n_kept = n_kept + 1
        kept[n_kept] = element
        bytes = bytes + size
      end
      looked = looked + 1
    end
    if #got < chunk then break end
    local average = n_kept > 0 and bytes / n_kept or 1
    chunk = math.min(count - looked, math.max(1, math.floor((budget - bytes) / math.max(average, 1))))
  end
  return kept, oversized, looked
end

-- Base64 of a short string (the table is built here, not in the prelude: every call of every
-- script runs the prelude).
local function base64(s)
  local digits = {}
  for i = 0, 63 do
    digits[i] = string.sub('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', i + 1, i + 1)
  end
  local out, n, len = {}, 0, #s
  for i = 1, len, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    n = n + 1
    out[n] = digits[math.floor(v / 262144)] .. digits[math.floor(v / 4096) % 64] ..
      (i + 1 <= len and digits[math.floor(v / 64) % 64] or '=') .. (i + 2 <= len and digits[v % 64] or '=')
  end
  return table.concat(out)
end

-- Dead-letter an element too large to be a message without sending it to any worker (it might
-- not fit in a reply, nor, escaped, in a Redis string): its first 4 KiB as base64, its size and
-- its SHA-1, as message.py's dead_letter_malformed keeps an element over KEEP_WHOLE.
local function dead_letter_oversized(dead_letter, stats, element, limit, now)
  local error = 'malformed message: too large: ' .. #element .. ' bytes, over MAX_MESSAGE_BYTES (' .. limit .. ')'
  redis.call('RPUSH', dead_letter, '{"error":' .. cjson.encode(error) .. ',"raw_base64":"' ..
    base64(string.sub(element, 1, 4096)) .. '","truncated":true,"size":' .. #element .. ',"sha1":"' ..
    redis.sha1hex(element) .. '","dead_lettered_at":' .. string.format('%d.%03d', math.floor(now / 1000), now % 1000) .. '}')
  redis.call('HINCRBY', stats, 'dead_lettered', 1)
end

-- Groups (Queue.push_many with a group): a hash of counts and settings, and the set of the
-- members that have not ended ("<queue> <id>"). A member is counted once, at its first end.
-- Hash fields: name; total, completed, dead; on_complete (the queue of the completion message),
-- completion (that message, its counts still to fill in), pushing (how many push_many calls
-- of several script calls each are still pushing members: the group cannot finish meanwhile),
-- finished_at (ms, once the completion was pushed: never again).

-- Add a member to a group that has not finished (a follow-up of one of its members).
local function join_group(group, members, member)
  if redis.call('EXISTS', group) == 0 or redis.call('HEXISTS', group, 'finished_at') == 1 then return end
  if redis.call('SADD', members, member) == 1 then redis.call('HINCRBY', group, 'total', 1) end
end

-- Count a member's end (`how`: 'completed' or 'dead'), if it had not ended before; returns
-- whether it had not.
local function end_member(group, members, member, how)
  if redis.call('SREM', members, member) == 0 then return false end
  redis.call('HINCRBY', group, how, 1)
  return true
end

-- The counts in a completion message as the producer encoded it, before they are known.
local UNKNOWN_COUNTS = '"total":-1,"completed":-1,"dead":-1'

-- Once no member is left and no producer is still pushing members, push its completion message to
-- its queue with the counts filled in, and mark the group finished, so it is pushed once. A
-- finished group is kept `ttl_ms` for Queue.group(), then expires; so does its name in the
-- queue's index of groups (`groups`, its name scored by the group's expiry).
local function finish_group(group, members, done_queue, done_stats, groups, now, ttl_ms)
  if redis.call('SCARD', members) > 0 then return end
  local state = redis.call('HMGET', group, 'pushing', 'finished_at', 'completion', 'total', 'completed', 'dead', 'name')
  if (tonumber(state[1]) or 1) > 0 or state[2] or not state[3] then return end
  local template = state[3]
  local from, to = string.find(template, UNKNOWN_COUNTS, 1, true)
  if not from then return end  -- not a completion of ours: the producer wrote it, so never
  local counts = '"total":' .. (tonumber(state[4]) or 0) .. ',"completed":' .. (tonumber(state[5]) or 0) ..
    ',"dead":' .. (tonumber(state[6]) or 0)
  redis.call('HSET', group, 'finished_at', now)
  redis.call('RPUSH', done_queue, string.sub(template, 1, from - 1) .. counts .. string.sub(template, to + 1))
  redis.call('HINCRBY', done_stats, 'produced', 1)
  redis.call('PEXPIRE', group, ttl_ms)
  if state[7] then redis.call('ZADD', groups, now + ttl_ms, state[7]) end
end
