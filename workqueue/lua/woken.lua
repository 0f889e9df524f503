-- woken: runs right behind a BLMOVE from the queue to the tail of this worker's in-flight list
-- (sent in the same write, so Redis runs it as soon as the BLMOVE returns, even if the worker
-- is frozen by then), and says whether the message it moved was completed already. It is kept
-- this small because it is on the idle pickup path; the next fetch takes anything more.
-- KEYS[1] in_flight    this worker's in-flight list
-- KEYS[2] done         sorted set of completed ids
-- KEYS[3] workers      sorted set of registered worker ids
-- KEYS[4] pending      the queue list
-- KEYS[5] paused       exists while the queue is paused
-- ARGV[1] delivery     'reliable' (leave the message in KEYS[1]) or 'simple' (pop it back out:
--                      at most once)
-- ARGV[2] worker id    whose in-flight list KEYS[1] is
-- Returns {} when BLMOVE timed out (or its message went back), else {message, duplicate}: duplicate is 1
-- when its id was completed.
--
-- No message may stay in the list of a worker that is not registered: recovery finds lists
-- only through KEYS[3]. A worker frozen mid-wait can be presumed dead and deregistered while
-- its BLMOVE is still pending; that happens only once its list was empty, so whatever the list
-- holds now was moved by that BLMOVE, and goes back to the queue's head, in order.
--
-- A worker waits only when it holds nothing and has settled everything, so its list holds
-- nothing it started: while the queue is paused, a message its wait moved goes back the same way.
if not redis.call('ZSCORE', KEYS[3], ARGV[2]) or redis.call('EXISTS', KEYS[5]) == 1 then
  while redis.call('LMOVE', KEYS[1], KEYS[4], 'RIGHT', 'LEFT') do end
  return {}
end
local message
if ARGV[1] == 'reliable' then message = redis.call('LINDEX', KEYS[1], -1) else message = redis.call('RPOP', KEYS[1]) end
if not message then return {} end
local id = message_id(message)
if id and redis.call('ZSCORE', KEYS[2], id) then return {message, 1} end
return {message, 0}
