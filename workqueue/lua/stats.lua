-- stats: one consistent reading of a queue: lengths, live workers, in-flight total, counters.
-- KEYS[1] pending, KEYS[2] delayed, KEYS[3] dead_letter, KEYS[4] stats, KEYS[5] workers
-- KEYS[6..] the in-flight list of each worker named in ARGV, in the same order
-- ARGV[1..] the ids of the registered workers, as the caller read them just before
-- Returns {0} when the registered workers changed meanwhile (read them again and retry), else
-- {1, pending, delayed, dead, live_workers, in_flight, counter_name, value, ...}.
local now = now_ms()
local registered = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
if #registered / 2 ~= #ARGV then return {0} end
local expected = {}
for _, id in ipairs(ARGV) do expected[id] = true end
local live = 0
for i = 1, #registered, 2 do
  if not expected[registered[i]] then return {0} end
  if tonumber(registered[i + 1]) > now then live = live + 1 end
end
local in_flight = 0
-- A key that is not a list (written by hand) holds nothing of ours; recovery drops its worker.
for i = 6, #KEYS do
  if redis.call('TYPE', KEYS[i]).ok == 'list' then in_flight = in_flight + redis.call('LLEN', KEYS[i]) end
end
local reply = {1, redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('LLEN', KEYS[3]), live, in_flight}
for _, value in ipairs(redis.call('HGETALL', KEYS[4])) do reply[#reply + 1] = value end
return reply
