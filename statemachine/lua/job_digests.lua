-- Every entry of some per-job event streams in one comparable string, so an audit compares
-- each job's stream with the global one in one round trip per batch of jobs.
-- KEYS: per-job event streams. Returns one list per key: entry id, form, entry id, form, ...
-- An entry's form is "J", its number of fields, "|", and its field names and values joined
-- by "\30" (statemachine.history.digest_entry builds the same from the global copy, and
-- compares a job whose global entries hold that byte outside Redis).
local result = {}
for index, key in ipairs(KEYS) do
    local digests = {}
    for _, entry in ipairs(redis.call('XRANGE', key, '-', '+')) do
        local fields = entry[2]
        digests[#digests + 1] = entry[1]
        digests[#digests + 1] = 'J' .. #fields .. '|' .. table.concat(fields, '\30')
    end
    result[index] = digests
end
return result
