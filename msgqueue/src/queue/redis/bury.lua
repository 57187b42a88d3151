-- Turns a delivery a consumer refused (NACK) into a dead letter and settles it for its group.
-- KEYS[1]: the log stream; KEYS[2]: the dead-letter stream.
-- ARGV[1]: group; ARGV[2]: entry id; ARGV[3]: reason code; ARGV[4]: now (ms); ARGV[5]: most dead letters kept.
-- Returns 1 if the delivery was pending and is now a dead letter, 0 if it was unknown or settled already.
local log, dead = KEYS[1], KEYS[2]
local group, id = ARGV[1], ARGV[2]
local pending = redis.call('XPENDING', log, group, id, id, 1)[1]
if not pending then
  return 0
end
local entry = redis.call('XRANGE', log, id, id)[1]
if entry then
  redis.call('XADD', dead, 'MAXLEN', ARGV[5], '*', 'id', id, 'group', group, 'reason', ARGV[3],
    'deliveries', pending[4], 'time', ARGV[4], 'p', entry[2][2])
end
redis.call('XACK', log, group, id)
return 1
