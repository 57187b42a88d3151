-- Appends a batch of pushes to the log, deduplicating reliable producers' retries.
-- KEYS[1]: the log stream; KEYS[2]: the prefix of the per-producer high-water-mark keys; KEYS[3]: the hash of
-- groups' last-seen times; KEYS[4]: the calling process's batch counter.
-- ARGV[1]: seconds a producer's mark (and the batch counter) is remembered; ARGV[2]: now (ms); ARGV[3]: the default
--   group's name; ARGV[4]: this batch's number; ARGV[5]: '1' to apply it even if earlier batches are missing
--   (the counter was lost); then triples of producer id ('' for compat pushes, which skip dedup), seq, payload.
-- Returns {stored, duplicates}; {-1, 0} if this batch was applied before (its reply was lost); {-2, 0} if an earlier
-- batch of the process is missing (it failed while this one was in flight: it is sent again first).
-- Entry ids are 0-<offset>, so offsets increase by one and survive trimming.
-- A new queue starts with the default group at its oldest entry, so what is pushed before any consumer joined
-- waits for one (as on disk).
local log, marks, ttl = KEYS[1], KEYS[2], ARGV[1]
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
local number = tonumber(ARGV[4])
if number <= last then
  return {-1, 0}
end
if number ~= last + 1 and ARGV[5] ~= '1' then
  return {-2, 0}
end
redis.call('SET', KEYS[4], ARGV[4], 'EX', ttl)
if redis.call('EXISTS', log) == 0 then
  redis.call('XGROUP', 'CREATE', log, ARGV[3], '0', 'MKSTREAM')
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
end
local high, dirty = {}, {}
local stored, duplicates = 0, 0
for i = 6, #ARGV, 3 do
  local producer, seq, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local fresh = true
  if producer ~= '' then
    local mark = high[producer]
    if mark == nil then
      mark = tonumber(redis.call('GET', marks .. producer) or '0')
    end
    local n = tonumber(seq)
    if n <= mark then
      fresh = false
    else
      mark = n
      dirty[producer] = true
    end
    high[producer] = mark
  end
  if fresh then
    redis.call('XADD', log, '0-*', 'p', payload)
    stored = stored + 1
  else
    duplicates = duplicates + 1
  end
end
for producer in pairs(dirty) do
  redis.call('SET', marks .. producer, string.format('%d', high[producer]), 'EX', ttl)
end
return {stored, duplicates}
