-- Move one delivery to an integration's dead letters: acknowledge it and record it, at once.
--
-- KEYS[1] the stream it was read from (prov:events or the group's redrive stream)
-- KEYS[2] the group's dead-letter stream
-- ARGV[1] consumer group, ARGV[2] entry id in KEYS[1], ARGV[3] "1" to also delete the entry
--         (a redrive entry, which exists only to be delivered), ARGV[4] "1" to record it even
--         when it is no longer pending, ARGV[5..] dead entry fields
-- Returns {dead entry id or "", 1 if the entry was pending (and is now acknowledged) else 0}.
-- An entry no longer pending was settled by someone else (the group was re-created, another
-- consumer acknowledged it) or by an earlier call whose answer was lost: the first try of a
-- burial records it all the same, so no event vanishes; a retry does not, so none is doubled.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 0 and ARGV[4] ~= '1' then
  return {'', 0}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
if ARGV[3] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return {id, acked}
