-- locate: where the message with one id is now, read at one instant; bounded, it changes nothing.
-- KEYS[1] pending      the queue list
-- KEYS[2] delayed      sorted set of failed messages, by due time (ms)
-- KEYS[3] dead_letter  the dead-letter list
-- KEYS[4] done         sorted set of completed ids, by when they may be forgotten (ms)
-- KEYS[5] workers      sorted set of worker ids, by heartbeat deadline (ms)
-- KEYS[6..] the in-flight list and the landing list of each worker named in ARGV[3..], in the
--           same order (two keys a worker)
-- ARGV[1] id           the message id looked for
-- ARGV[2] limit        most elements looked at in each of the pending list, the delayed set, the
--                      dead-letter list and all in-flight lists together
-- ARGV[3..]            the ids of the registered workers, as the caller read them just before
-- Returns {0} when the registered workers changed meanwhile (read them again and retry), else
-- {1, hits, looked}: hits, at most 10, each {place, where, stored}: 'pending' and its index
-- from the head; 'in_flight' and the worker id; 'delayed' and its due time (ms); 'dead' and its
-- index from the newest; 'completed' and when its id is forgotten (ms), stored false. looked:
-- {pending looked at, pending length, delayed looked at, delayed size, dead looked at, dead
-- length, in flight looked at, in flight held}.
-- Cost: one anchored pattern per element looked at (a hand-written element up to 64 KiB is
-- decoded in full, under pcall, so no element can make this fail), elements read 50 at a time.
local wanted, limit = ARGV[1], tonumber(ARGV[2])
local CHUNK, MOST_HITS = 50, 10

local registered = redis.call('ZRANGE', KEYS[5], 0, -1)
if #registered ~= #ARGV - 2 then return {0} end
local listed = {}
for _, id in ipairs(registered) do listed[id] = true end
for i = 3, #ARGV do
  if not listed[ARGV[i]] then return {0} end
end

local function id_of(raw)
  local id = string.match(raw, '^{"id":"([^"\\]*)"')
  if id then return id end
  if #raw > 65536 then return nil end
  local ok, fields = pcall(cjson.decode, raw)
  if ok and type(fields) == 'table' and type(fields.id) == 'string' then return fields.id end
  return nil
end

local hits = {}
local function hit(place, where, stored)
  if #hits < MOST_HITS then hits[#hits + 1] = {place, where, stored} end
end

-- A key that is not a list (written by hand) holds nothing of ours.
local function length(key)
  if redis.call('TYPE', key).ok == 'list' then return redis.call('LLEN', key) end
  return 0
end

-- Look at up to `most` elements of list `key` from its head, or from its tail when `newest`;
-- returns how many were looked at.
local function walk(key, most, place, where, newest)
  local total = length(key)
  local looked = 0
  while looked < math.min(most, total) do
    local size = math.min(CHUNK, most - looked)
    local got
    if newest then
      got = redis.call('LRANGE', key, -(looked + size), -(looked + 1))
      for i = #got, 1, -1 do
        if id_of(got[i]) == wanted then hit(place, where or (looked + #got - i), got[i]) end
      end
    else
      got = redis.call('LRANGE', key, looked, looked + size - 1)
      for i = 1, #got do
        if id_of(got[i]) == wanted then hit(place, where or (looked + i - 1), got[i]) end
      end
    end
    if #got == 0 then break end
    looked = looked + #got
  end
  return looked, total
end

local pending_looked, pending_total = walk(KEYS[1], limit, 'pending', nil, false)

local delayed_total = redis.call('ZCARD', KEYS[2])
local delayed_looked = 0
while delayed_looked < math.min(limit, delayed_total) do
  local got = redis.call('ZRANGE', KEYS[2], delayed_looked, delayed_looked + math.min(CHUNK, limit - delayed_looked) - 1, 'WITHSCORES')
  if #got == 0 then break end
  for i = 1, #got, 2 do
    if id_of(got[i]) == wanted then hit('delayed', got[i + 1], got[i]) end
  end
  delayed_looked = delayed_looked + #got / 2
end

local dead_looked, dead_total = walk(KEYS[3], limit, 'dead', nil, true)

local held_looked, held_total = 0, 0
for j = 3, #ARGV do
  for _, key in ipairs({KEYS[2 * j], KEYS[2 * j + 1]}) do
    local looked, total = walk(key, limit - held_looked, 'in_flight', ARGV[j], false)
    held_looked, held_total = held_looked + looked, held_total + total
  end
end

local forget_at = redis.call('ZSCORE', KEYS[4], wanted)
if forget_at then hit('completed', forget_at, false) end

return {1, hits, {pending_looked, pending_total, delayed_looked, delayed_total, dead_looked, dead_total, held_looked, held_total}}
