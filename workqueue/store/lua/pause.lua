-- pause: pause or resume a queue. While the key exists, workers take no new messages.
-- KEYS[1] paused       string key whose existence means paused
-- ARGV[1] action       'pause': create it holding ARGV[2] (kept if it exists: the first pause
--                      time stays); 'resume': delete it
-- ARGV[2] since        with 'pause': the Unix time in seconds, as text
-- Returns 1 when the state changed, 0 when it was so already.
if ARGV[1] == 'pause' then
  if redis.call('SET', KEYS[1], ARGV[2], 'NX') then return 1 end
  return 0
elseif ARGV[1] == 'resume' then
  return redis.call('DEL', KEYS[1])
end
return redis.error_reply('pause: unknown action ' .. tostring(ARGV[1]))
