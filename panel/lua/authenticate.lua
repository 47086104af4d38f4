-- One round trip from a credential (an API token or a browser session) to its user, and, for
-- a submission by API token, the per-user rate-limit count. The count is made here, only once
-- the credential and its user are known to allow the request, so it counts exactly what the
-- separate INCR used to count, without a second round trip. Everything is read fresh on every
-- request: a revoked token, a removed user or a changed role takes effect at once.
--
-- KEYS[1]  the credential's hash: <ns>:token:<sha256> or <ns>:session:<sha256>
-- ARGV[1]  the user key prefix, <ns>:user:
-- ARGV[2]  "" (count nothing), or the rate key prefix <ns>:rate:<kind>:
-- ARGV[3]  the rate key suffix, :<window>
-- ARGV[4]  the rate key's lifetime in seconds
-- ARGV[5]  now, epoch ms (a token past its expires_at is not counted)
-- ARGV[6..] the roles whose requests are counted
--
-- Returns {} for an unknown credential, else {credential fields (flat), {role, created_at,
-- password_changed_at}, count (0: not counted)}.
local credential = redis.call('HGETALL', KEYS[1])
if #credential == 0 then
  return {}
end
local fields = {}
for i = 1, #credential, 2 do
  fields[credential[i]] = credential[i + 1]
end
local name = fields['user']
local user = {}
if name and #name <= 64 and string.find(name, '^[a-z0-9][a-z0-9_.@%-]*$') then
  user = redis.call('HMGET', ARGV[1] .. name, 'role', 'created_at', 'password_changed_at')
end
local count = 0
if ARGV[2] ~= '' and user[1] then
  local expires = fields['expires_at']
  local live = expires == nil or expires == ''
  if not live and tonumber(expires) then
    live = tonumber(ARGV[5]) < tonumber(expires)
  end
  local counted = false
  for i = 6, #ARGV do
    if user[1] == ARGV[i] then
      counted = true
    end
  end
  if live and counted then
    local key = ARGV[2] .. name .. ARGV[3]
    count = redis.call('INCR', key)
    redis.call('EXPIRE', key, tonumber(ARGV[4]))
  end
end
return {credential, user, count}
