-- Reads a topic's history (see append.lua for how it is kept).
-- KEYS[1]: the topic's history state (hash: e = epoch, n = newest offset); KEYS[2]: its history stream.
-- ARGV[1]: now (ms); ARGV[2]: milliseconds the topic retains messages; ARGV[3]: 'from', 'last' or 'unacked';
-- ARGV[4]: with 'from', the first offset wanted (0: the oldest retained); ARGV[5]: most entries returned.
-- Returns {epoch ('' if the topic has no history), newest offset, oldest retained offset, entries, acked offset},
-- entries being [id, [t, time, p, payload]] from the first offset wanted (with 'unacked': the one after the ack),
-- or the newest ones with 'last', oldest first.
-- Expired entries at the head are dropped first, as append.lua does, so the oldest retained one is live.
local state, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', state, 'e')
if not epoch then
  return {'', 0, 1, {}, 0}
end
local latest = tonumber(redis.call('HGET', state, 'n') or '0')
local acked = tonumber(redis.call('HGET', state, 'a') or '0')
local oldest = tonumber(ARGV[1]) - tonumber(ARGV[2])
local first = latest + 1
while true do
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not head then
    break
  end
  if tonumber(head[2][2]) >= oldest then
    first = tonumber(string.sub(head[1], 3))
    break
  end
  redis.call('XDEL', stream, head[1])
end
local entries
if ARGV[3] == 'last' then
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', ARGV[5])
  entries = {}
  for i = #newest, 1, -1 do
    entries[#entries + 1] = newest[i]
  end
elseif ARGV[3] == 'unacked' then
  entries = redis.call('XRANGE', stream, '0-' .. (acked + 1), '+', 'COUNT', ARGV[5])
else
  entries = redis.call('XRANGE', stream, '0-' .. ARGV[4], '+', 'COUNT', ARGV[5])
end
return {epoch, latest, first, entries, acked}
