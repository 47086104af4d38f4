-- The digest of every entry of some per-job event streams, computed where the data is, so an
-- audit can compare each job's stream with the global one without reading both in full.
-- KEYS: per-job event streams. Returns one list per key: event_id, sha1 hex, event_id, ...
-- An entry's digest is the SHA-1 of its field names and values joined by "\30" (record
-- separator), in stored order; statemachine.history computes the same on the global copy.
local result = {}
for index, key in ipairs(KEYS) do
    local digests = {}
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
        local fields = entry[2]
        local event_id = ''
        for position = 1, #fields, 2 do
            if fields[position] == 'event_id' then
                event_id = fields[position + 1]
            end
        end
        digests[#digests + 1] = event_id
        digests[#digests + 1] = redis.sha1hex(table.concat(fields, '\30'))
    end
    result[index] = digests
end
return result
