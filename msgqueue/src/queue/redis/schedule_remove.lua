-- Deletes delivered entries of the schedule and gives their bytes back to its bound. An entry delivered twice (its
-- claim expired while the first process was still pushing it) is deleted, and counted, once.
-- KEYS[1]: the claimed entries; KEYS[2]: the hash of payloads; KEYS[3]: the payload bytes the schedule holds.
-- ARGV: the members to delete.
local freed = 0
for _, member in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], member)
  local len = redis.call('HSTRLEN', KEYS[2], member)
  if redis.call('HDEL', KEYS[2], member) == 1 then
    freed = freed + len
  end
end
if freed > 0 and redis.call('DECRBY', KEYS[3], freed) < 0 then
  redis.call('SET', KEYS[3], 0)
end
return freed
