-- register: add a queue's name to the registry of queues on this Redis (idempotent), so that
-- `workqueue queues` lists it without KEYS or SCAN.
-- KEYS[1] registry     set of queue names (one key for every queue)
-- ARGV[1] queue        the queue's name
-- Returns 1 when it was new, 0 when it was listed already. A listed queue writes nothing, so a
-- worker re-registering after an error is not refused while Redis is full.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
return redis.call('SADD', KEYS[1], ARGV[1])
