-- Appends a batch of pushes to the log, deduplicating reliable producers' retries.
-- KEYS[1]: the log stream; KEYS[2]: the prefix of the per-producer high-water-mark keys; KEYS[3]: the hash of
-- groups' last-seen times; KEYS[4]: the calling process's batch counter; KEYS[5]: the prefix of each topic's
-- history state (a hash: e = epoch, n = newest offset); KEYS[6]: the prefix of each topic's history stream.
-- ARGV[1]: seconds a producer's mark (and the batch counter) is remembered; ARGV[2]: now (ms); ARGV[3]: the default
--   group's name; ARGV[4]: this batch's number; ARGV[5]: '1' to apply it even if earlier batches are missing
--   (the counter was lost); ARGV[6]: the epoch of a topic whose history starts in this batch; then groups of six:
--   producer id ('' for compat pushes, which skip dedup), seq, topic ('' when the message keeps no history),
--   messages the topic retains, milliseconds it retains them, payload.
-- A message with a topic gets the topic's next offset, stored with it in the log (fields e and o) and in the
-- topic's history stream (id 0-<offset>, fields t = time, p = payload), trimmed to its size; the topic's keys
-- expire once nothing was published to it for its retention time, and its next message starts a new epoch.
-- Returns {stored, duplicates, placed}, placed holding {epoch, offset} for each push with a topic, in order ({'', 0}
-- for a duplicate); {-1, 0, {}} if this batch was applied before (its reply was lost); {-2, 0, {}} if an earlier
-- batch of the process is missing (it failed while this one was in flight: it is sent again first).
-- Entry ids are 0-<offset>, so offsets increase by one and survive trimming.
-- A new queue starts with the default group at its oldest entry, so what is pushed before any consumer joined
-- waits for one (as on disk).
local log, marks, ttl = KEYS[1], KEYS[2], ARGV[1]
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
local number = tonumber(ARGV[4])
if number <= last then
  return {-1, 0, {}}
end
if number ~= last + 1 and ARGV[5] ~= '1' then
  return {-2, 0, {}}
end
redis.call('SET', KEYS[4], ARGV[4], 'EX', ttl)
if redis.call('EXISTS', log) == 0 then
  redis.call('XGROUP', 'CREATE', log, ARGV[3], '0', 'MKSTREAM')
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
end
local high, dirty = {}, {}
local stored, duplicates, placed = 0, 0, {}
local now = tonumber(ARGV[2])
for i = 7, #ARGV, 6 do
  local producer, seq, topic, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 5]
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
  if fresh and topic ~= '' then
    local state, stream, ttl = KEYS[5] .. topic, KEYS[6] .. topic, ARGV[i + 4]
    local epoch = redis.call('HGET', state, 'e')
    if not epoch then
      epoch = ARGV[6]
      redis.call('DEL', stream)
      redis.call('HSET', state, 'e', epoch)
    end
    local offset = redis.call('HINCRBY', state, 'n', 1)
    redis.call('XADD', stream, 'MAXLEN', ARGV[i + 3], '0-' .. offset, 't', ARGV[2], 'p', payload)
    local oldest = now - tonumber(ttl)
    while true do
      local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
      if not head or tonumber(head[2][2]) >= oldest then
        break
      end
      redis.call('XDEL', stream, head[1])
    end
    redis.call('PEXPIRE', state, ttl)
    redis.call('PEXPIRE', stream, ttl)
    redis.call('XADD', log, '0-*', 'p', payload, 'e', epoch, 'o', offset)
    placed[#placed + 1] = {epoch, offset}
    stored = stored + 1
  elseif fresh then
    redis.call('XADD', log, '0-*', 'p', payload)
    stored = stored + 1
  else
    if topic ~= '' then
      placed[#placed + 1] = {'', 0}
    end
    duplicates = duplicates + 1
  end
end
for producer in pairs(dirty) do
  redis.call('SET', marks .. producer, string.format('%d', high[producer]), 'EX', ttl)
end
return {stored, duplicates, placed}
