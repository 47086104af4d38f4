-- Mark a job for cancellation unless it already ended. KEYS[1] the job snapshot hash.
-- Returns the job's state at that moment ("" when there is no such job).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return ''
end
if state ~= 'succeeded' and state ~= 'failed' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return state
