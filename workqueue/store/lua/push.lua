-- push: add messages to the queue, or with a delay to the delayed set, and count them as
-- produced; with a group, make them its members; all in one step.
-- KEYS[1] pending      the queue list
-- KEYS[2] stats        hash of counters
-- KEYS[3] delayed      sorted set of messages waiting for their due time (ms); only with a
--                      delay or a group (a producer's user may be allowed no other keys)
-- with a group (see the prelude's groups):
-- KEYS[4] group        the group's hash
-- KEYS[5] members      the set of its members that have not ended
-- KEYS[6] done_queue   the list of the queue its completion message goes to
-- KEYS[7] done_stats   that queue's counters
-- KEYS[8] groups       the index of this queue's groups (a new one is listed, +inf while open)
-- ARGV[1] delay_ms     0: at the queue's tail now; else due that many ms from now
-- ARGV[2] group        '' (no group), or which part of a push of members this call is:
--                      'add'   to a group that exists and has not finished (Queue.push)
--                      'once'  all of one push_many: starts the group, or joins one not finished
--                              with the same on_complete
--                      'open'  the first of several calls of one push_many (as once; the group
--                              counts one more push under way, and cannot finish until it ends)
--                      'more'  a middle one ('add'); 'close' the last one (one push fewer under way)
-- ARGV[3] on_complete  with a group: the name of the queue of KEYS[6]
-- ARGV[4] completion   with once or open: the completion message, counts unknown (prelude)
-- ARGV[5] ttl_ms       with a group: how long a finished group is kept
-- ARGV[6] name         with a group: its name
-- ARGV[7..]            the encoded messages, oldest first (at most a few thousand per call);
--                      with a group, each followed by its member name
-- Returns how many messages were pushed; with a group, an error naming GROUP when it finished
-- already (or, with add, does not exist) or goes to another on_complete: nothing is pushed then.
local delay, mode = tonumber(ARGV[1]), ARGV[2]
local first, step = 7, 1
local starts = mode == 'once' or mode == 'open'
if mode ~= '' then
  step = 2
  local state = redis.call('HMGET', KEYS[4], 'on_complete', 'finished_at')
  if state[2] then return redis.error_reply('GROUP finished already: a finished group takes no members') end
  if not state[1] then
    if not starts then return redis.error_reply('GROUP does not exist: start it with push_many(group=...)') end
    redis.call('HSET', KEYS[4], 'name', ARGV[6], 'on_complete', ARGV[3], 'completion', ARGV[4], 'total', 0, 'completed', 0,
      'dead', 0, 'pushing', 0)
    -- Listed while open; finished groups whose records expired are forgotten here, a few at a time.
    local now = now_ms()
    local expired = redis.call('ZRANGE', KEYS[8], '-inf', now, 'BYSCORE', 'LIMIT', 0, 100)
    if #expired > 0 then redis.call('ZREM', KEYS[8], unpack(expired)) end
    redis.call('ZADD', KEYS[8], 'inf', ARGV[6])
  elseif state[1] ~= ARGV[3] then
    return redis.error_reply('GROUP sends its completion to another queue: ' .. state[1])
  end
  if mode == 'open' then redis.call('HINCRBY', KEYS[4], 'pushing', 1) end
end
local messages, count = {}, 0
for i = first, #ARGV, step do
  count = count + 1
  messages[count] = ARGV[i]
end
if delay > 0 then
  -- An identical message already waiting collapses into one member: a duplicate, as in settle.
  local due, collapsed = now_ms() + delay, 0
  for i = 1, count do collapsed = collapsed + 1 - redis.call('ZADD', KEYS[3], due, messages[i]) end
  if collapsed > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates_skipped', collapsed) end
elseif count > 0 then
  redis.call('RPUSH', KEYS[1], unpack(messages))
end
redis.call('HINCRBY', KEYS[2], 'produced', count)
if mode ~= '' then
  local added = 0
  for i = first + 1, #ARGV, 2 do added = added + redis.call('SADD', KEYS[5], ARGV[i]) end
  if added > 0 then redis.call('HINCRBY', KEYS[4], 'total', added) end
  if mode == 'close' then redis.call('HINCRBY', KEYS[4], 'pushing', -1) end
  if mode == 'close' or mode == 'once' then
    finish_group(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], now_ms(), tonumber(ARGV[5]))
  end
end
return count
