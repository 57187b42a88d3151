-- Acks a topic's messages up to an offset (an inbox's user handled them): they are deleted from its history stream
-- and the ack (field a of the topic's history state) never moves back or beyond the newest offset.
-- KEYS[1]: the topic's history state; KEYS[2]: its history stream.
-- ARGV[1]: the epoch of the offset ('' for the current one); ARGV[2]: the offset.
-- Returns {epoch, ack} after the call ({'', 0} if the topic has no history); another epoch's ack changes nothing.
local state, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', state, 'e')
if not epoch then
  return {'', 0}
end
local acked = tonumber(redis.call('HGET', state, 'a') or '0')
if ARGV[1] == '' or ARGV[1] == epoch then
  local latest = tonumber(redis.call('HGET', state, 'n') or '0')
  local wanted = math.min(tonumber(ARGV[2]), latest)
  if wanted > acked then
    acked = wanted
    redis.call('HSET', state, 'a', acked)
    redis.call('XTRIM', stream, 'MINID', '0-' .. (acked + 1))
  end
end
return {epoch, acked}
