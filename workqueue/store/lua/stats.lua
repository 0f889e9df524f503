-- stats: one consistent reading of a queue: lengths, each worker's in-flight list and liveness,
-- the age of the oldest pending message, the pause flag, and the counters.
-- KEYS[1] pending, KEYS[2] delayed, KEYS[3] dead_letter, KEYS[4] stats, KEYS[5] workers,
-- KEYS[6] paused
-- KEYS[7..] the in-flight list and the landing list of each worker named in ARGV, in the
--           same order (two keys a worker); a message in a landing list counts as held
-- ARGV[1..] the ids of the registered workers, as the caller read them just before
-- Returns {0} when the registered workers changed meanwhile (read them again and retry), else
-- {1, {pending, delayed, dead, paused, oldest_ms}, {held, alive, held, alive, ...}, {counter_name, value, ...}}:
-- held and alive (1 or 0) per worker of ARGV, in order; oldest_ms is the age of the head of the
-- queue by the Redis clock (0 when the queue is empty, nil when the head has no readable
-- `created_at`).
local now = now_ms()
local registered = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
if #registered / 2 ~= #ARGV then return {0} end
local deadline = {}
for i = 1, #registered, 2 do deadline[registered[i]] = tonumber(registered[i + 1]) end
for _, id in ipairs(ARGV) do
  if not deadline[id] then return {0} end
end

-- created_at (Unix seconds) of a stored element, or nil. Our encoder writes it third, so a
-- pattern finds it; a small element written otherwise is decoded in full, under pcall, so that
-- no element can make this script fail (a big one is not: stats must stay quick).
local function created_at(raw)
  local text = string.match(raw, '^{"id":"[^"\\]*","attempts":%d+,"created_at":([-+.%deE]+)[,}]')
  local value = tonumber(text)
  if not text and #raw <= 65536 then
    local ok, fields = pcall(cjson.decode, raw)
    if ok and type(fields) == 'table' and type(fields.created_at) == 'number' then value = fields.created_at end
  end
  if value and value == value and value > 0 and value < 1e12 then return value end
  return nil
end

local oldest_ms = 0
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local created = created_at(head)
  if created then oldest_ms = math.max(0, now - math.floor(created * 1000)) else oldest_ms = false end
end

local workers = {}
-- A key that is not a list (written by hand) holds nothing of ours; recovery drops its worker.
local function length(key)
  if redis.call('TYPE', key).ok == 'list' then return redis.call('LLEN', key) end
  return 0
end
for j, id in ipairs(ARGV) do
  workers[#workers + 1] = length(KEYS[5 + 2 * j]) + length(KEYS[6 + 2 * j])
  workers[#workers + 1] = deadline[id] > now and 1 or 0
end
local paused = redis.call('EXISTS', KEYS[6])
local counts = {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('LLEN', KEYS[3]), paused, oldest_ms}
return {1, counts, workers, redis.call('HGETALL', KEYS[4])}
