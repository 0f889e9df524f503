-- prelude: helpers shared by the scripts; the script registry (scripts.py) puts this text
-- before each script, so every script below may call them.

-- The Redis clock in whole milliseconds: one clock for every host, so no clock skew.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The id of a stored element, or nil when it has none. Our encoder writes the id first, so a
-- pattern finds it; anything else (hand-written JSON) is decoded in full, under pcall, so that
-- no element, however broken or deep, can make a script fail.
local function message_id(raw)
  local id = string.match(raw, '^{"id":"([^"\\]*)"')
  if id then return id end
  local ok, fields = pcall(cjson.decode, raw)
  if ok and type(fields) == 'table' and type(fields.id) == 'string' then return fields.id end
  return nil
end
