-- The digest of every entry of some per-job event streams, computed where the data is, so an
-- audit can compare each job's stream with the global one without reading both in full.
-- KEYS: per-job event streams. Returns one list per key: entry id, event_id, sha1 hex, ...
-- An entry's digest is the SHA-1 of its field names and values in stored order, each framed
-- as "<byte length>:<bytes>" (so no value can pass for two); statemachine.history computes
-- the same on the global copy.
local result = {}
for index, key in ipairs(KEYS) do
    local digests = {}
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
        local fields = entry[2]
        local framed = {}
        local event_id = ''
        for position = 1, #fields do
            framed[position] = #fields[position] .. ':' .. fields[position]
            if position % 2 == 1 and fields[position] == 'event_id' then
                event_id = fields[position + 1] or ''
            end
        end
        digests[#digests + 1] = entry[1]
        digests[#digests + 1] = event_id
        digests[#digests + 1] = redis.sha1hex(table.concat(framed))
    end
    result[index] = digests
end
return result
