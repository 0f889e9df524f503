-- page: read part of a list without a reply too large for the connection: the elements from
-- index ARGV[1], as many as fit in ARGV[2] bytes (at least one), at most ARGV[3].
-- KEYS[1] list         a worker's in-flight list (its own, to re-read, or a dead one's)
-- ARGV[1] start        index of the first element (0: the head)
-- ARGV[2] budget       bytes the elements may add up to (the first is returned whatever its size)
-- ARGV[3] count        most elements returned
-- Returns {elements, more}: the elements, head first (none past the list's end), and 1 when
-- the list goes on after them, else 0.
local start = tonumber(ARGV[1])
local kept, _, looked = read_bounded(KEYS[1], start, tonumber(ARGV[3]), tonumber(ARGV[2]), math.huge)
return {kept, start + looked < redis.call('LLEN', KEYS[1]) and 1 or 0}
