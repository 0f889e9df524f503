-- woken: runs right behind a BLMOVE from the queue to the tail of this worker's in-flight list
-- (sent in the same write), and says whether the message it moved was completed already. It is
-- kept this small because it is on the idle pickup path; the next fetch takes anything more.
-- KEYS[1] in_flight    this worker's in-flight list
-- KEYS[2] done         sorted set of completed ids
-- ARGV[1] delivery     'reliable' (leave the message in KEYS[1]) or 'simple' (pop it back out:
--                      at most once)
-- Returns {} when BLMOVE timed out, else {message, done}: done is 1 when its id was completed.
local message
if ARGV[1] == 'reliable' then message = redis.call('LINDEX', KEYS[1], -1) else message = redis.call('RPOP', KEYS[1]) end
if not message then return {} end
-- Our encoder writes the id first; anything else (hand-written JSON) is decoded in full.
local id = string.match(message, '^{"id":"([^"\\]*)"')
if not id then
  local ok, fields = pcall(cjson.decode, message)
  if ok and type(fields) == 'table' and type(fields.id) == 'string' then id = fields.id end
end
if id and redis.call('ZSCORE', KEYS[2], id) then return {message, 1} end
return {message, 0}
