-- requeue: move dead letters back to the queue's tail for another round of tries.
-- KEYS[1] dead_letter  the dead-letter list
-- KEYS[2] pending      the queue list
-- KEYS[3] stats        hash of counters
-- ARGV[1..]            pairs: the dead entry as stored, the message to push (attempts reset)
-- Each entry is removed and its rewrite pushed in this one step, so a message is never in both
-- lists nor in neither. A requeued message counts as `requeued` (the stats balance adds it).
-- Returns how many moved (an entry no longer in the list, taken by a concurrent call, is skipped).
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
if moved > 0 then redis.call('HINCRBY', KEYS[3], 'requeued', moved) end
return moved
