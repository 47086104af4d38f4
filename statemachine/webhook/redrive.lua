-- Send dead letters back to their forwarder: each one leaves the dead-letter stream and
-- enters the redrive stream in the same step, so a crash can neither lose nor copy it.
--
-- KEYS[1] the group's dead-letter stream, KEYS[2] the group's redrive stream
-- ARGV    dead entry ids
-- Returns how many were moved (an id no longer in the dead letters is skipped).
local moved = 0
for _, id in ipairs(ARGV) do
  local entries = redis.call('XRANGE', KEYS[1], id, id)
  if #entries == 1 then
    local fields = entries[1][2]
    local out = {}
    for i = 1, #fields, 2 do
      local name = fields[i]
      if name == 'stream_id' or name == 'event_id' or name == 'job_id' then
        out[#out + 1] = name
        out[#out + 1] = fields[i + 1]
      end
    end
    out[#out + 1] = 'dead_id'
    out[#out + 1] = id
    redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
