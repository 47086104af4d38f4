-- Move one delivery to an integration's dead letters: acknowledge it and record it, at once.
--
-- KEYS[1] the stream it was read from (prov:events or the group's redrive stream)
-- KEYS[2] the group's dead-letter stream
-- ARGV[1] consumer group, ARGV[2] entry id in KEYS[1], ARGV[3] "1" to also delete the entry
--         (a redrive entry, which exists only to be delivered), ARGV[4..] dead entry fields
-- Returns the dead entry's id, or "" when the entry was no longer pending: then it was
-- settled already (a retried call whose first answer was lost), and nothing is added twice.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return ''
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
if ARGV[3] == '1' then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return id
