-- Takes scheduled pushes into the schedule, deduplicating producers' retries, within a byte bound.
-- KEYS[1]: the schedule (sorted set: score = due time in ms, member = '<due:15>-<arrival:20>', zero-padded so
--   entries due at the same time sort in arrival order); KEYS[2]: the hash of payloads by member; KEYS[3]: the prefix
--   of the per-producer high-water-mark keys of scheduled pushes; KEYS[4]: the arrival counter; KEYS[5]: the payload
--   bytes the schedule holds.
-- ARGV[1]: seconds a producer's mark is remembered; ARGV[2]: most payload bytes the schedule may hold; then
--   quadruples of producer id, seq, due time (ms), payload.
-- Returns one flag per push: 1 stored, 0 a duplicate of a push already taken, 2 refused because the schedule is full
-- (its seq is not marked, so the same push can be taken once there is room).
local marks, ttl, max = KEYS[3], ARGV[1], tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[5]) or '0')
local out = {}
for i = 3, #ARGV, 4 do
  local producer, seq, due, payload = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local mark = tonumber(redis.call('GET', marks .. producer) or '0')
  if mark > 0 and seq <= mark then
    out[#out + 1] = 0
  elseif used + #payload > max then
    out[#out + 1] = 2
  else
    redis.call('SET', marks .. producer, string.format('%d', seq), 'EX', ttl)
    local n = redis.call('INCR', KEYS[4])
    local member = string.format('%015d-%020d', due, n)
    redis.call('ZADD', KEYS[1], due, member)
    redis.call('HSET', KEYS[2], member, payload)
    used = redis.call('INCRBY', KEYS[5], #payload)
    out[#out + 1] = 1
  end
end
return out
