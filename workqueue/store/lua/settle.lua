-- settle: apply a batch of outcomes to messages in one worker's in-flight list, all at once.
-- KEYS[1] in_flight    that worker's in-flight list
-- KEYS[2] pending      the queue list
-- KEYS[3] delayed      sorted set of retries scored by due time (ms)
-- KEYS[4] dead_letter  the dead-letter list
-- KEYS[5] done         sorted set of completed ids scored by when they may be forgotten (ms)
-- KEYS[6] stats        hash of counters
-- KEYS[7] workers      sorted set of worker ids scored by heartbeat deadline (ms)
-- KEYS[8] settled      hash of worker id -> sequence number of its last applied settle
-- KEYS[9] sessions     hash of worker id -> its current session number
-- KEYS[10] landing     that worker's landing list (see woken.lua)
-- ARGV[1] delivery     'reliable': an outcome applies only if its message is still in KEYS[1]
--                      (else another worker recovered it and owns it now); 'simple': always
-- ARGV[2] dedup_ttl_ms how long a completed id is remembered
-- ARGV[3] worker id    whose in-flight list KEYS[1] is
-- ARGV[4] mode         'own': the worker settling its own outcomes, numbered by ARGV[5]; a
--                      call whose number was applied already (a resend after a lost reply)
--                      changes nothing, and one whose number is not the next is refused
--                      (GAP) and changes nothing. 'recover': another worker taking back the messages of
--                      one presumed dead; nothing happens while its heartbeat is alive, and it
--                      is deregistered once its list is empty
-- ARGV[5] sequence     with 'own': the number of this settle call, counting up from 1
-- ARGV[6] session      with 'own': the worker's session. In reliable delivery a call of an
--                      older session is refused with FENCED and changes nothing: the worker was
--                      presumed dead meanwhile and its messages recovered (they are someone
--                      else's now), or the call was delayed in the network past a rejoin (the
--                      worker resends its outcomes in the new session)
-- ARGV[7] n           how many outcomes follow
-- ARGV[8..] n outcomes, four values each: op, raw, new_raw, arg
--   done     completed; arg = message id (remembered for de-duplication)
--   dup      skipped as already completed
--   retry    new_raw waits in delayed for arg ms
--   dead     new_raw goes to the dead-letter list; arg = '1' when found by recovery
--   requeue  new_raw goes back to the queue's tail (recovery)
--   release  raw goes back to the queue's head untouched (never started; send in reverse order)
-- then what rides with some outcomes, four values each: kind, the outcome's number (from 1),
-- the index of its first key in KEYS, a value; ordered by outcome number:
--   emit     a follow-up (value: the message) for the queue whose list and stats are KEYS[i],
--            KEYS[i+1]: pushed only when this call completes the outcome's message first (its
--            id was not completed before), so a resend or a second copy pushes nothing
--   join     with the emit before it: its follow-up (value: its member name) joins the group
--            whose hash, members, completion queue, that queue's stats and the index of the
--            groups of its queue are KEYS[i..i+4], unless that group finished already
--   member   the outcome's message (value: its member name) is a member of the group at
--            KEYS[i..i+4]: its end, completed or dead, is counted once (finish_group)
-- KEYS[11..] the keys the extras name
-- Returns one flag per outcome: 1 if it applied, 0 if its message was no longer held; an empty
-- array when nothing was done (a resend, or the worker being recovered turned out alive).
local now = now_ms()
local argv = ARGV  -- a local: this script's loops run once per message settled
local reliable = argv[1] == 'reliable'
local worker = argv[3]
local own = argv[4] == 'own'
local sequence = tonumber(argv[5])
local first = 8
local n = tonumber(argv[7])
local extras_at = first + 4 * n

if own then
  if reliable and session_ended(KEYS[9], worker, argv[6]) then return redis.error_reply(FENCED) end
  local last = tonumber(redis.call('HGET', KEYS[8], worker) or '0') or 0
  if last >= sequence then
    return {}
  end
  -- One before this one has not been applied: refused for a reason that clears (NOSCRIPT after
  -- a script flush, BUSY, MISCONF) while this one, pipelined behind it, got through. Applying
  -- this one now would make that one look applied when the worker resends it: refuse, and the
  -- worker resends both, in order.
  if sequence > last + 1 then
    return redis.error_reply('GAP settle ' .. sequence .. ' is not the next one, ' .. (last + 1))
  end
else
  local deadline = redis.call('ZSCORE', KEYS[7], worker)
  if deadline and tonumber(deadline) > now then
    return {}
  end
end

forget_expired(KEYS[5], now)  -- the first write: see the prelude

-- Which messages are still held. Fast path: outcomes usually come in the order the messages
-- were taken, so they are the head of the in-flight list and one LTRIM removes them all. In
-- simple delivery the list is normally empty (it holds only messages adopted after a lost
-- reply), and an outcome always applies. The same pass checks every op: every check comes
-- before the first write, since a script that fails half-way keeps its writes.
local known = {done = true, dup = true, retry = true, dead = true, requeue = true, release = true}
local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
local in_order = #head == n
for j = 1, n do
  local i = first + (j - 1) * 4
  local op = argv[i]
  if not known[op] then return redis.error_reply('settle: unknown op ' .. tostring(op)) end
  if in_order and head[j] ~= argv[i + 1] then in_order = false end
end
local all_held = in_order or (#head == 0 and not reliable)
if in_order then
  redis.call('LTRIM', KEYS[1], n, -1)
end
-- Otherwise (several children finish in their own order) the list is read from its head (the
-- first slice is the head read above), until every outcome's message is found or the list
-- ends: held_of[j] says whether outcome j's message was there (outcomes naming one element
-- twice take its copies in turn, as one LREM each would). The elements read before the last
-- one found that stay are put back in order: one pass over the list's head, where an LREM per
-- outcome read it once each.
local held_of = {}
if not all_held then
  local wanted, missing = {}, n
  for j = 1, n do
    local raw = argv[first + (j - 1) * 4 + 1]
    wanted[raw] = (wanted[raw] or 0) + 1
  end
  local found, kept, cut, at, elements, asked = {}, {}, 0, 0, head, n
  local slice = math.max(2 * n, 64)
  while true do  -- bounded by the list's length
    for k = 1, #elements do
      local raw = elements[k]
      local count = wanted[raw]
      if count and count > 0 then
        wanted[raw] = count - 1
        found[raw] = (found[raw] or 0) + 1
        missing = missing - 1
        cut = at + k
        if missing == 0 then break end
      else
        kept[#kept + 1] = raw
      end
    end
    if missing == 0 or #elements < asked then break end  -- all found, or the list ended
    at, asked = at + #elements, slice
    elements = redis.call('LRANGE', KEYS[1], at, at + slice - 1)
  end
  for j = 1, n do
    local raw = argv[first + (j - 1) * 4 + 1]
    local count = found[raw]
    held_of[j] = (count and count > 0) or not reliable
    if count and count > 0 then found[raw] = count - 1 end
  end
  if cut > 0 then
    redis.call('LTRIM', KEYS[1], cut, -1)
    -- kept holds every element read that stays; those after the cut are still in the list
    local survivors = cut - (n - missing)
    for i = survivors, 1, -1000 do  -- in slices, last first: LPUSH puts each at the head
      local from = math.max(1, i - 999)
      local part = {}
      for k = i, from, -1 do part[#part + 1] = kept[k] end
      redis.call('LPUSH', KEYS[1], unpack(part))
    end
  end
end

-- The outcomes whose follow-ups are pushed only if they complete their message first: whether
-- they do is read before this call remembers any id.
-- One ZMSCORE for them all; an id twice in this call is fresh the first time only.
local emitting, emitting_ids, count_emitting = {}, {}, 0
for i = extras_at, #argv, 4 do
  local j = tonumber(argv[i + 1])
  if argv[i] == 'emit' and not emitting[j] then
    emitting[j] = true
    count_emitting = count_emitting + 1
    emitting_ids[count_emitting] = argv[first + (j - 1) * 4 + 3]
  end
end
local fresh = {}  -- outcome number -> true when it completes its message first
if count_emitting > 0 then
  local scores, seen, k = redis.call('ZMSCORE', KEYS[5], unpack(emitting_ids)), {}, 0
  for j = 1, n do
    if emitting[j] then
      k = k + 1
      local id = emitting_ids[k]
      fresh[j] = not scores[k] and not seen[id]
      seen[id] = true
    end
  end
end

local completed, duplicates_skipped, retried, dead_lettered, recovered = 0, 0, 0, 0, 0
local done_args, done_count = {}, 0
local forget_at = tostring(now + tonumber(argv[2]))  -- once: a number would be converted to text again for every id
local applied = {}
for j = 1, n do
  local i = first + (j - 1) * 4
  local op = argv[i]
  local held = all_held or held_of[j]
  if op == 'done' then
    if held then
      completed = completed + 1
      done_args[done_count + 1] = forget_at
      done_args[done_count + 2] = argv[i + 3]
      done_count = done_count + 2
    elseif not redis.call('ZSCORE', KEYS[5], argv[i + 3]) then
      -- Recovered away while we worked: remember the id so the copy back in circulation is
      -- skipped (and counted there as a duplicate), but do not count a completion twice.
      done_args[done_count + 1] = forget_at
      done_args[done_count + 2] = argv[i + 3]
      done_count = done_count + 2
    end
  elseif held then
    local new_raw, arg = argv[i + 2], argv[i + 3]
    if op == 'dup' then
      duplicates_skipped = duplicates_skipped + 1
    elseif op == 'retry' then
      -- An identical copy already waiting collapses into one member: count it as a duplicate.
      if redis.call('ZADD', KEYS[3], now + tonumber(arg), new_raw) == 1 then
        retried = retried + 1
      else
        duplicates_skipped = duplicates_skipped + 1
      end
    elseif op == 'dead' then
      redis.call('RPUSH', KEYS[4], new_raw)
      dead_lettered = dead_lettered + 1
      if arg == '1' then recovered = recovered + 1 end
    elseif op == 'requeue' then
      redis.call('RPUSH', KEYS[2], new_raw)
      recovered = recovered + 1
    elseif op == 'release' then
      redis.call('LPUSH', KEYS[2], argv[i + 1])
    end
  end
  applied[j] = held and 1 or 0
end

-- In slices: unpack() of more than a few thousand values overflows Lua's stack.
for i = 1, done_count, 1000 do
  redis.call('ZADD', KEYS[5], unpack(done_args, i, math.min(i + 999, done_count)))
end
-- What rides with the outcomes, in their order: a group is checked for its end after each
-- member; follow-ups are pushed after, in one RPUSH per queue (their order kept).
local pushes, targets = {}, {}
for i = extras_at, #argv, 4 do
  local kind, j, at, value = argv[i], tonumber(argv[i + 1]), tonumber(argv[i + 2]), argv[i + 3]
  local op = argv[first + (j - 1) * 4]
  if kind == 'emit' then
    if fresh[j] then
      local list = pushes[at]
      if not list then
        list = {}
        pushes[at] = list
        targets[#targets + 1] = at
      end
      list[#list + 1] = value
    end
  elseif kind == 'join' then
    if fresh[j] then join_group(KEYS[at], KEYS[at + 1], value) end
  elseif kind == 'member' then
    -- A done or a duplicate is completed (its id is remembered); a dead one counts only if the
    -- dead-lettering applied here. Retries and recoveries back to the queue have not ended.
    local ended = nil
    if op == 'done' or (op == 'dup' and applied[j] == 1) then
      ended = 'completed'
    elseif op == 'dead' and applied[j] == 1 then
      ended = 'dead'
    end
    if ended and end_member(KEYS[at], KEYS[at + 1], value, ended) then
      finish_group(KEYS[at], KEYS[at + 1], KEYS[at + 2], KEYS[at + 3], KEYS[at + 4], now, tonumber(argv[2]))
    end
  end
end

for _, at in ipairs(targets) do
  local list = pushes[at]
  for i = 1, #list, 1000 do  -- in slices: unpack() of more than a few thousand values overflows Lua's stack
    redis.call('RPUSH', KEYS[at], unpack(list, i, math.min(i + 999, #list)))
  end
  redis.call('HINCRBY', KEYS[at + 1], 'produced', #list)
end

local counts = {completed = completed, duplicates_skipped = duplicates_skipped, retried = retried,
                dead_lettered = dead_lettered, recovered = recovered}
for name, count in pairs(counts) do
  if count > 0 then redis.call('HINCRBY', KEYS[6], name, count) end
end
if own then
  redis.call('HSET', KEYS[8], worker, sequence)
else
  -- A message a wait of the dead worker moved, whose woken script never ran: never started.
  empty_landing(KEYS[10], KEYS[2], 'RIGHT', 'LEFT')
  if redis.call('LLEN', KEYS[1]) == 0 then
    deregister(KEYS[7], KEYS[8], KEYS[9], worker)  -- its session ends with it
  end
end
return applied
