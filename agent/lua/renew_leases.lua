-- Renew the lease of entries this consumer still owns, and only those.
--
-- KEYS[1] the job stream. ARGV[1] the consumer group, ARGV[2] this consumer, ARGV[3..] ids.
-- An entry another agent has already reclaimed is left alone (re-claiming it would steal
-- it back mid-run); its id is returned so the caller can stop the run it no longer owns.
-- Returns the ids that were NOT renewed.
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 1 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
