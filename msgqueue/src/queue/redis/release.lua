-- A consumer went away: hands its unacked deliveries back to its group, to be taken over at once, and forgets it.
-- KEYS[1]: the log stream. ARGV[1]: group; ARGV[2]: consumer; ARGV[3]: idle time (ms) to give the deliveries, beyond
-- any lease, so the next claim takes them; ARGV[4]: the name holding released deliveries.
-- Returns how many deliveries were handed back.
local log, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local released = 0
while true do
  local pending = redis.call('XPENDING', log, group, '-', '+', 1000, consumer)
  if #pending == 0 then break end
  local ids = {}
  for i, e in ipairs(pending) do ids[i] = e[1] end
  redis.call('XCLAIM', log, group, ARGV[4], 0, unpack(ids), 'IDLE', ARGV[3], 'JUSTID')
  released = released + #ids
end
redis.call('XGROUP', 'DELCONSUMER', log, group, consumer)
return released
