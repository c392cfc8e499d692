"""The Lua scripts behind `RemoteFlights`: each is one round trip and atomic in Redis.

Every write first checks that the lock still holds this lead's owner id and that the flight stream
still opens with this lead's token (compare-and-set), so a leader that stalled past its lock and
was replaced can never write into, or release, its successor's flight.

Redis Cluster runs a script only when all its KEYS share one slot, and a script may touch no other key:
every key here carries the flight's digest as its hash tag (`lock:{<digest>}`, `flight:{<digest>}`,
`e/<model>/<tenant>/{<digest>}`), and a script without an entry to read or store is handed the lock key
again in that place (never '', whose slot is another) with an argument saying to leave it alone.
"""

from __future__ import annotations

# KEYS: entry (the lock key when there is none to look up), lock, stream. ARGV: owner, lock ttl ms, lead
# token, stream ttl ms, '1' to look the entry up first ('0': no entry).
# {1, value}: the answer is stored (no lock taken). {2}: the caller leads (lock taken, a fresh stream
# opened: an old flight's leftovers must not be read as this one's). {3}: another replica leads.
# One round trip where a lookup and a lock would take two, and nothing stored in between is missed.
CLAIM = """
if ARGV[5] == '1' then
  local stored = redis.call('GET', KEYS[1])
  if stored then return {1, stored} end
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {3} end
redis.call('DEL', KEYS[3])
redis.call('XADD', KEYS[3], '*', 't', 's', 'o', ARGV[1], 'l', ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {2}
"""

# KEYS: lock, stream, entry (the lock key when there is none). ARGV: owner, lead token, stream ttl ms,
# lock ttl ms ('0': release the lock), entry ttl ms ('0': store no entry), then (type, data) pairs to
# append. Appends and refreshes only while the lock and the stream are this lead's; with an entry, also
# stores the data of the last pair (the end message carries the encoded entry: sent once, stored and streamed).
WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if not first or first[2][6] ~= ARGV[2] then return 0 end
for i = 6, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[5] ~= '0' then
  redis.call('SET', KEYS[3], ARGV[#ARGV], 'PX', ARGV[5])
end
if ARGV[4] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""
