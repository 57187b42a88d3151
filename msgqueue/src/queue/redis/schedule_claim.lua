-- Claims due entries of the schedule for the calling msgqueue process, which pushes them into the log and then
-- deletes them; a claim that is not deleted by its lease's end (the process died) goes back to the schedule.
-- KEYS[1]: the schedule (see schedule_put.lua); KEYS[2]: the claimed entries (score = lease end in ms); KEYS[3]: the
--   hash of payloads.
-- ARGV[1]: now (ms); ARGV[2]: the lease end for new claims (ms); ARGV[3]: most entries to claim.
-- Returns {next, members, payloads, waiting}: the earliest time (ms) something may need doing (-1 if nothing waits),
-- the claimed members and their payloads in due order, and the entries scheduled or claimed.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], tonumber(string.sub(member, 1, 15)), member)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local members, payloads = {}, {}
for _, member in ipairs(due) do
  local payload = redis.call('HGET', KEYS[3], member)
  redis.call('ZREM', KEYS[1], member)
  if payload then
    redis.call('ZADD', KEYS[2], ARGV[2], member)
    members[#members + 1] = member
    payloads[#payloads + 1] = payload
  end
end
local wake = -1
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local at = tonumber(first[2])
    if wake < 0 or at < wake then
      wake = at
    end
  end
end
return {wake, members, payloads, redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])}
