-- One job transition as one atomic step (docs/architecture.md §4), or a chain of them recorded at once
-- (verify, validate and start, when an agent has nothing to wait for between them).
--
-- KEYS[1] job snapshot hash, KEYS[2] job events stream, KEYS[3] global events stream,
-- KEYS[4..] keys used by side effects (referenced by index from ARGV[5]).
-- ARGV[1] expected state ("" for a job that does not exist yet)
-- ARGV[2] expected last_hash (the event's prev), so two actors can never both build on it
-- ARGV[3] the events, in order, JSON array of field arrays [[name, value, ...], ...]
-- ARGV[4] snapshot fields to set, same shape
-- ARGV[5] side effects, JSON array of ops: ["xack", key_index, group, id],
--         ["zadd", key_index, score, member], ["zrem", key_index, member],
--         ["xadd", key_index, fields_array], ["hset", key_index, fields_array],
--         ["below", key_index, limit, name, "counter"|"set"] (a guard: nothing is written
--         unless the counter's value or the set's size is under limit),
--         ["incr", key_index, lifetime_s], ["sadd", key_index, member],
--         ["srem", key_index, member]
-- ARGV[6] further snapshot fields that must hold, JSON array [name, value, ...]: bookkeeping
--         that changes without an event (the entry carrying the job), so a stale actor
--         (an agent that lost its lease) cannot record the outcome of another's run
-- Returns {1, job_stream_id, events_stream_id (of the last event), xadd ids...},
-- {0, actual_state, last_event_id} on a conflict, or {2, name} when a guard's limit is reached.

local function conflict()
  local state = redis.call('HGET', KEYS[1], 'state') or ''
  return {0, state, redis.call('HGET', KEYS[1], 'last_event_id') or ''}
end

local state = redis.call('HGET', KEYS[1], 'state') or ''
local last_hash = redis.call('HGET', KEYS[1], 'last_hash') or ''
if state ~= ARGV[1] or last_hash ~= ARGV[2] then
  return conflict()
end
local expected = cjson.decode(ARGV[6])
for i = 1, #expected, 2 do
  if (redis.call('HGET', KEYS[1], expected[i]) or '') ~= expected[i + 1] then
    return conflict()
  end
end

-- Check every side effect before the first write: Redis does not roll back a script.
local ops = cjson.decode(ARGV[5])
local known = {xack = 5, zadd = 5, zrem = 4, xadd = 3, hset = 3, below = 6, incr = 4, sadd = 4,
  srem = 4}
for _, op in ipairs(ops) do
  local arity = known[op[1]]
  if arity == nil or #op < arity - 1 or KEYS[op[2]] == nil then
    return redis.error_reply('bad side effect ' .. tostring(op[1]))
  end
end

-- Guards, also before the first write: a step over a limit leaves no trace at all.
for _, op in ipairs(ops) do
  if op[1] == 'below' then
    local held
    if op[5] == 'set' then
      held = redis.call('SCARD', KEYS[op[2]])
    else
      held = tonumber(redis.call('GET', KEYS[op[2]]) or '0') or 0
    end
    if held >= tonumber(op[3]) then
      return {2, op[4]}
    end
  end
end

-- Appended entries first: a run's last log lines go with the event that ends the run, and
-- readers that merge the two streams by time (the SSE stream) must never see the event with
-- an earlier time than the output before it (the clock may tick within the script).
local appended = {}
for _, op in ipairs(ops) do
  if op[1] == 'xadd' then
    table.insert(appended, redis.call('XADD', KEYS[op[2]], '*', unpack(op[3])))
  end
end

local job_stream_id, events_stream_id
for _, event in ipairs(cjson.decode(ARGV[3])) do
  job_stream_id = redis.call('XADD', KEYS[2], '*', unpack(event))
  events_stream_id = redis.call('XADD', KEYS[3], '*', unpack(event))
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[4])))

for _, op in ipairs(ops) do
  local kind, key = op[1], KEYS[op[2]]
  if kind == 'xack' then
    redis.call('XACK', key, op[3], op[4])
  elseif kind == 'zadd' then
    redis.call('ZADD', key, op[3], op[4])
  elseif kind == 'zrem' then
    redis.call('ZREM', key, op[3])
  elseif kind == 'hset' then
    redis.call('HSET', key, unpack(op[3]))
  elseif kind == 'incr' then
    redis.call('INCR', key)
    redis.call('EXPIRE', key, op[3])
  elseif kind == 'sadd' then
    redis.call('SADD', key, op[3])
  elseif kind == 'srem' then
    redis.call('SREM', key, op[3])
  end
end
local result = {1, job_stream_id, events_stream_id}
for _, entry_id in ipairs(appended) do
  table.insert(result, entry_id)
end
return result
