-- Several jobs' snapshot hashes in one answer, so an audit checks a batch of jobs with one
-- reply to read instead of one per job (each reply costs the client more than Redis).
-- KEYS: job snapshot hashes. Returns one flat field/value list per key (empty if missing).
local result = {}
for index, key in ipairs(KEYS) do
    result[index] = redis.call('HGETALL', key)
end
return result
