-- Takes over a group's deliveries whose lease ran out (or that a departed consumer released), burying those
-- delivered too often.
-- KEYS[1]: the log stream; KEYS[2]: the dead-letter stream.
-- ARGV[1]: group; ARGV[2]: consumer; ARGV[3]: lease (ms); ARGV[4]: most to take; ARGV[5]: max deliveries;
-- ARGV[6]: now (ms); ARGV[7]: most dead letters kept.
-- Returns {claimed entries (as XCLAIM returns them), buried count}.
local log, dead = KEYS[1], KEYS[2]
local group, consumer, lease = ARGV[1], ARGV[2], ARGV[3]
local max_deliveries = tonumber(ARGV[5])
local take, buried = {}, 0
for _, e in ipairs(redis.call('XPENDING', log, group, 'IDLE', lease, '-', '+', ARGV[4])) do
  if e[4] >= max_deliveries then
    local entry = redis.call('XRANGE', log, e[1], e[1])[1]
    if entry then
      redis.call('XADD', dead, 'MAXLEN', ARGV[7], '*', 'id', e[1], 'group', group, 'reason', 'max',
        'deliveries', e[4], 'time', ARGV[6], 'p', entry[2][2])
    end
    redis.call('XACK', log, group, e[1])
    buried = buried + 1
  else
    take[#take + 1] = e[1]
  end
end
if #take == 0 then
  return {{}, buried}
end
return {redis.call('XCLAIM', log, group, consumer, lease, unpack(take)), buried}
