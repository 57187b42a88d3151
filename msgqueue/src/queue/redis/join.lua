-- Makes sure a consumer group exists, creating it at the tail ('$') or the oldest entry ('0').
-- KEYS[1]: the log stream; KEYS[2]: the hash of groups' last-seen times.
-- ARGV[1]: group; ARGV[2]: '$' or '0'; ARGV[3]: now (ms); ARGV[4]: the default group's name.
-- A default group that never delivered anything and has no consumer is handed over: the new group starts at the
-- oldest entry and the default group goes, so messages pushed before any consumer joined are not pinned by a group
-- nobody reads. Returns 1 if the group was created, 0 if it existed.
local log, seen = KEYS[1], KEYS[2]
local name, start, now, default = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hand_over = false
if redis.call('EXISTS', log) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', log)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == name then
      redis.call('HSET', seen, name, now)
      return 0
    end
    if f['name'] == default and f['last-delivered-id'] == '0-0' and f['pending'] == 0 and f['consumers'] == 0 then
      hand_over = true
    end
  end
end
if hand_over and name ~= default then
  start = '0'
  redis.call('XGROUP', 'DESTROY', log, default)
  redis.call('HDEL', seen, default)
end
redis.call('XGROUP', 'CREATE', log, name, start, 'MKSTREAM')
redis.call('HSET', seen, name, now)
return 1
