-- One round trip from a credential (an API token or a browser session) to its user.
-- Everything is read fresh on every request: a revoked token, a removed user or a changed role
-- takes effect at once.
--
-- KEYS[1]  the credential's hash: <ns>:token:<sha256> or <ns>:session:<sha256>
-- ARGV[1]  the user key prefix, <ns>:user:
--
-- Returns {} for an unknown credential, else {credential fields (flat), {role, created_at,
-- password_changed_at}}.
local credential = redis.call('HGETALL', KEYS[1])
if #credential == 0 then
  return {}
end
local name
for i = 1, #credential, 2 do
  if credential[i] == 'user' then
    name = credential[i + 1]
  end
end
local user = {}
if name and #name <= 64 and string.find(name, '^[a-z0-9][a-z0-9_.@%-]*$') then
  user = redis.call('HMGET', ARGV[1] .. name, 'role', 'created_at', 'password_changed_at')
end
return {credential, user}
