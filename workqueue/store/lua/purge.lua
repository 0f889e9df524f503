-- purge: remove dead letters for good, counting them as `purged` (the stats balance does not
-- read the dead-letter list, so it stays exact; `dead_lettered` keeps counting what went there).
-- KEYS[1] dead_letter  the dead-letter list
-- KEYS[2] stats        hash of counters
-- ARGV[1] mode         'all': the whole list; 'some': one copy of each entry in ARGV[2..]
-- ARGV[2..]            with 'some': the entries as stored
-- Returns how many were removed (an entry already gone is skipped).
local removed = 0
if ARGV[1] == 'all' then
  removed = redis.call('LLEN', KEYS[1])
  redis.call('UNLINK', KEYS[1])
elseif ARGV[1] == 'some' then
  for i = 2, #ARGV do
    removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
else
  return redis.error_reply('purge: unknown mode ' .. tostring(ARGV[1]))
end
if removed > 0 then redis.call('HINCRBY', KEYS[2], 'purged', removed) end
return removed
