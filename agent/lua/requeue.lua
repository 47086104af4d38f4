-- Re-queue a job whose retry is due, as one atomic step.
--
-- KEYS[1] job snapshot hash, KEYS[2] retry schedule (sorted set), KEYS[3] the target's stream.
-- ARGV[1] job id, ARGV[2] now (epoch ms).
-- The job's current entry is copied to a fresh entry that becomes the one carrying the job
-- (snapshot `entry_id`), so exactly one entry can continue it, and the schedule entry goes.
-- Returns {1, new_entry_id}, {0, why} when there is nothing to do, {-1, why} when the job's
-- entry is gone and the job cannot be continued (it stays scheduled for the caller).

local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then
  return {0, 'not scheduled'}
end
if tonumber(score) > tonumber(ARGV[2]) then
  return {0, 'not due'}
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'retry_wait' then
  -- Cancelled or otherwise moved on: the schedule entry is stale.
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {0, 'state ' .. tostring(state)}
end
local entry_id = redis.call('HGET', KEYS[1], 'entry_id')
local entries = redis.call('XRANGE', KEYS[3], entry_id, entry_id)
if #entries == 0 then
  -- Left scheduled: the caller fails the job and unschedules it in one step, so a failure
  -- in between leaves it to the next pass instead of stuck with no schedule.
  return {-1, 'stream entry ' .. tostring(entry_id) .. ' is gone'}
end
local new_id = redis.call('XADD', KEYS[3], '*', unpack(entries[1][2]))
redis.call('HSET', KEYS[1], 'entry_id', new_id)
redis.call('ZREM', KEYS[2], ARGV[1])
return {1, new_id}
