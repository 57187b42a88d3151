-- Housekeeping, run by every msgqueue instance about once a second (idempotent): marks the groups that have
-- consumers here as seen (and a group it never saw as seen now), drops groups nobody has consumed from for the idle
-- TTL, trims the log below the slowest group's floor (its oldest unacked entry, or the entry after the last it was
-- handed), and forgets consumers with nothing pending that have been idle for the TTL (left behind by killed
-- instances).
-- KEYS[1]: the log stream; KEYS[2]: the hash of groups' last-seen times.
-- ARGV[1]: now (ms); ARGV[2]: idle TTL (ms); then the names of the groups with consumers in this instance.
-- Returns {dropped group names, per group {name, lag, pending}, bytes Redis uses for the log}.
local log, seen = KEYS[1], KEYS[2]
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('HSET', seen, ARGV[i], ARGV[1])
end
if redis.call('EXISTS', log) == 0 then
  return {{}, {}, 0}
end
local function seq(id)
  return tonumber(string.match(id, '%-(%d+)$'))
end
local dropped, groups = {}, {}
local floor = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', log)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local name = f['name']
  local last_seen = tonumber(redis.call('HGET', seen, name) or '-1')
  if last_seen < 0 then
    redis.call('HSET', seen, name, ARGV[1])
    last_seen = now
  end
  if now - last_seen > ttl then
    redis.call('XGROUP', 'DESTROY', log, name)
    redis.call('HDEL', seen, name)
    dropped[#dropped + 1] = name
  else
    local low
    if f['pending'] > 0 then
      low = seq(redis.call('XPENDING', log, name)[2])
    else
      low = seq(f['last-delivered-id']) + 1
    end
    if floor == nil or low < floor then floor = low end
    -- Consumers of instances that died (SIGKILL) stay in the group; once their deliveries were claimed by others
    -- and they have been idle for the TTL, forget them.
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', log, name)) do
      local cf = {}
      for i = 1, #c, 2 do cf[c[i]] = c[i + 1] end
      if cf['pending'] == 0 and cf['idle'] > ttl then
        redis.call('XGROUP', 'DELCONSUMER', log, name, cf['name'])
      end
    end
    local lag = f['lag']
    if not lag then lag = -1 end
    groups[#groups + 1] = {name, lag, f['pending']}
  end
end
if floor ~= nil then
  redis.call('XTRIM', log, 'MINID', string.format('0-%d', floor))
else
  -- No group left: nothing waits for any entry.
  redis.call('XTRIM', log, 'MAXLEN', 0)
end
return {dropped, groups, redis.call('MEMORY', 'USAGE', log) or 0}
