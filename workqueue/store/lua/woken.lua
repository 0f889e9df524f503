-- woken: runs right behind a BLMOVE from the queue to this worker's landing list (sent in the
-- same write, so Redis runs it as soon as the BLMOVE returns, even if the worker is frozen or
-- its connection gone by then), hands the message over and says whether it was completed
-- already. It is kept this small because it is on the idle pickup path; the next fetch takes
-- anything more.
-- KEYS[1] landing      this worker's landing list: what the BLMOVE moved, if anything
-- KEYS[2] in_flight    this worker's in-flight list
-- KEYS[3] done         sorted set of completed ids
-- KEYS[4] sessions     hash of worker id -> its current session number
-- KEYS[5] pending      the queue list
-- KEYS[6] paused       exists while the queue is paused
-- KEYS[7] dead_letter  the dead-letter list, for an element too large to be a message
-- KEYS[8] stats        hash of counters (dead_lettered)
-- ARGV[1] delivery     'reliable' (the message joins KEYS[2]) or 'simple' (it is popped: at
--                      most once)
-- ARGV[2] worker id    whose lists KEYS[1] and KEYS[2] are
-- ARGV[3] session      the session the wait was sent in
-- ARGV[4] limit        MAX_MESSAGE_BYTES; an element longer than ARGV[5] is dead-lettered
-- ARGV[5] largest      here, never sent (see fetch.lua)
-- Returns {} when BLMOVE timed out (or its message went back), else {message, duplicate}:
-- duplicate is 1 when its id was completed; {size} when the element was too large to be a
-- message, and was dead-lettered.
--
-- A wait can end after its session did: the worker froze mid-wait and was presumed dead (and
-- its list recovered), or the request was delayed in the network and arrived after the worker
-- had rejoined. Its message is then nobody's, and goes back to the queue's head untouched.
-- So does one moved while the queue is paused (a worker waits only when it holds nothing).
local message = redis.call('RPOP', KEYS[1])  -- the one BLMOVE pushed on the right, if any
-- An older one left by a wait whose woken never ran (its connection died in between) goes back.
empty_landing(KEYS[1], KEYS[5], 'RIGHT', 'LEFT')
if not message then return {} end
if session_ended(KEYS[4], ARGV[2], ARGV[3]) or redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('LPUSH', KEYS[5], message)
  return {}
end
if #message > tonumber(ARGV[5]) then
  dead_letter_oversized(KEYS[7], KEYS[8], message, ARGV[4], now_ms())
  return {#message}
end
if ARGV[1] == 'reliable' then redis.call('RPUSH', KEYS[2], message) end
local id = message_id(message)
if id and redis.call('ZSCORE', KEYS[3], id) then return {message, 1} end
return {message, 0}
