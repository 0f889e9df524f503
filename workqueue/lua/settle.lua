-- settle: apply a batch of outcomes to messages held in an in-flight list, all at once.
-- KEYS[1] in_flight    the holder's in-flight list
-- KEYS[2] pending      the queue list
-- KEYS[3] delayed      sorted set of retries scored by due time (ms)
-- KEYS[4] dead_letter  the dead-letter list
-- KEYS[5] done         sorted set of completed ids scored by when they may be forgotten (ms)
-- KEYS[6] stats        hash of counters
-- KEYS[7] workers      sorted set of worker ids scored by heartbeat deadline (ms)
-- ARGV[1] delivery     'reliable': an outcome applies only if its message is still in KEYS[1]
--                      (else another worker recovered it and owns it now); 'simple': always
-- ARGV[2] dedup_ttl_ms how long a completed id is remembered
-- ARGV[3] holder       '' for the holder itself; a worker id when recovering that worker: then
--                      nothing happens while its heartbeat is alive, and it is deregistered
--                      once its in-flight list is empty
-- ARGV[4..] outcomes, four values each: op, raw, new_raw, arg
--   done     completed; arg = message id (remembered for de-duplication)
--   dup      skipped as already completed
--   retry    new_raw waits in delayed for arg ms
--   dead     new_raw goes to the dead-letter list; arg = '1' when found by recovery
--   requeue  new_raw goes back to the queue's tail (recovery)
--   release  raw goes back to the queue's head untouched (never started; send in reverse order)
-- Returns one flag per outcome: 1 if it applied, 0 if its message was no longer held (another
-- worker recovered it); an empty array when the recovered holder turned out to be alive.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reliable = ARGV[1] == 'reliable'
local holder = ARGV[3]

if holder ~= '' then
  local deadline = redis.call('ZSCORE', KEYS[7], holder)
  if deadline and tonumber(deadline) > now then
    return {}
  end
end

local applied = {}
for i = 4, #ARGV, 4 do
  local op, raw, new_raw, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local held = (not reliable) or redis.call('LREM', KEYS[1], 1, raw) == 1
  if op == 'done' then
    if held then
      redis.call('HINCRBY', KEYS[6], 'completed', 1)
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), arg)
    elseif not redis.call('ZSCORE', KEYS[5], arg) then
      -- Recovered away while we worked: remember the id so the copy back in circulation is
      -- skipped (and counted there as a duplicate), but do not count a completion twice.
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), arg)
    end
  elseif held then
    if op == 'dup' then
      redis.call('HINCRBY', KEYS[6], 'duplicates_skipped', 1)
    elseif op == 'retry' then
      -- An identical copy already waiting collapses into one member: count it as a duplicate.
      if redis.call('ZADD', KEYS[3], now + tonumber(arg), new_raw) == 1 then
        redis.call('HINCRBY', KEYS[6], 'retried', 1)
      else
        redis.call('HINCRBY', KEYS[6], 'duplicates_skipped', 1)
      end
    elseif op == 'dead' then
      redis.call('RPUSH', KEYS[4], new_raw)
      redis.call('HINCRBY', KEYS[6], 'dead_lettered', 1)
      if arg == '1' then redis.call('HINCRBY', KEYS[6], 'recovered', 1) end
    elseif op == 'requeue' then
      redis.call('RPUSH', KEYS[2], new_raw)
      redis.call('HINCRBY', KEYS[6], 'recovered', 1)
    elseif op == 'release' then
      redis.call('LPUSH', KEYS[2], raw)
    else
      return redis.error_reply('settle: unknown op ' .. op)
    end
  end
  applied[#applied + 1] = held and 1 or 0
end

-- Forget ids whose de-duplication window has passed (O(log n) when none has).
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)

if holder ~= '' and redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[7], holder)
end
return applied
