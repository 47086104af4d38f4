-- Read new entries for a consumer of a jobs stream WITHOUT blocking, each with the snapshot
-- of the job it names, in one round trip (the agent otherwise reads the snapshot right after).
-- Not for Redis Cluster: the snapshots' keys come from the entries, so they cannot be
-- declared upfront (no `#!lua flags=no-cluster` line either: Redis 6.2 cannot parse it).
--
-- KEYS[1] the jobs stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] the snapshot key prefix (prov:job:)
-- Returns {entry_id, fields, snapshot fields}... for each entry read ({} when none), where
-- the snapshot is {} when the entry's job id cannot be read or has no snapshot. The job id is
-- only a hint: the agent reads it again from the entry and uses the snapshot only when the
-- two agree, and it verifies the envelope before it acts on anything.

local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
local result = {}
if not reply then
  return result
end
for _, entry in ipairs(reply[1][2]) do
  local fields = entry[2]
  local snapshot = {}
  for i = 1, #fields, 2 do
    if fields[i] == 'envelope' then
      local ok, envelope = pcall(cjson.decode, fields[i + 1])
      local job_id = ok and type(envelope) == 'table' and envelope['job_id']
      -- A ULID, as the agent will insist: nothing else becomes part of a key name.
      if type(job_id) == 'string' and #job_id == 26 and
          string.match(job_id, '^[0-7][0-9A-HJKMNP-TV-Z]+$') then
        -- pcall: the entries are ours already, so one odd key must not fail the batch.
        local found = redis.pcall('HGETALL', ARGV[4] .. job_id)
        if type(found) == 'table' and found.err == nil then
          snapshot = found
        end
      end
      break
    end
  end
  table.insert(result, {entry[1], fields, snapshot})
end
return result
