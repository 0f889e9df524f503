-- push: append messages to the queue and count them as produced, in one step.
-- KEYS[1] pending      the queue list
-- KEYS[2] stats        hash of counters
-- ARGV[1..]            the encoded messages, oldest first (at most a few thousand per call)
redis.call('RPUSH', KEYS[1], unpack(ARGV))
redis.call('HINCRBY', KEYS[2], 'produced', #ARGV)
return #ARGV
