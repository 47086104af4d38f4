-- Send dead letters back to their forwarder: each one leaves the dead-letter stream and
-- enters the redrive stream in the same step, so a crash can neither lose nor copy it.
--
-- KEYS[1] the group's dead-letter stream, KEYS[2] the group's redrive stream,
-- KEYS[3] the event stream (prov:events)
-- ARGV    dead entry ids
-- Returns {how many were moved, then the ids of dead letters whose event is no longer in the
-- event stream (trimmed by `audit archive`)}: those cannot be delivered again by anyone, so
-- they are deleted instead of moved (otherwise each redrive would bury them again).
-- An id no longer in the dead letters is skipped.
local moved = 0
local gone = {}
for _, id in ipairs(ARGV) do
  local entries = redis.call('XRANGE', KEYS[1], id, id)
  if #entries == 1 then
    local fields = entries[1][2]
    local out = {}
    local stream_id = ''
    for i = 1, #fields, 2 do
      local name = fields[i]
      if name == 'stream_id' or name == 'event_id' or name == 'job_id' then
        out[#out + 1] = name
        out[#out + 1] = fields[i + 1]
      end
      if name == 'stream_id' then
        stream_id = fields[i + 1]
      end
    end
    -- pcall: a stream_id that is no stream id (only a forged entry has one) is gone too.
    local found = redis.pcall('XRANGE', KEYS[3], stream_id, stream_id)
    if type(found) == 'table' and found.err == nil and #found == 1 then
      out[#out + 1] = 'dead_id'
      out[#out + 1] = id
      redis.call('XADD', KEYS[2], '*', unpack(out))
      moved = moved + 1
    else
      gone[#gone + 1] = id
    end
    redis.call('XDEL', KEYS[1], id)
  end
end
return {moved, unpack(gone)}
