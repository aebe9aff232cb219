-- expire.lua: settle a call whose lease ran out because the gateway process holding it died.
--
-- KEYS: the ten call-scoped keys (acct, call, leases, allot, minutes of the call's month, spend of
--       today, audit, cdr, outbox, purchases).
-- ARGV: 1 call id, 2 timestamp (ISO 8601), 3 retention s of the settled call record.
-- Returns: 'ok|reason|charge|billed_s|minutes_s|balance|reserved|debit'; ok 0 with reason
--       'not_due' (the lease was renewed: the call is alive) or 'gone' (already settled).
-- Guarantees: acts only once the lease (Redis time) is past; the chunk held is charged as used
--       (the owner may have let the call run to the end of it), minutes held count as used, the
--       CDR is marked 'interrupted'; idempotent with settle: whichever runs first wins.

local call_id = ARGV[1]
local c = load_call(K.call)
if not c or c.st == 'done' or c.st == 'refused' then
  redis.call('ZREM', K.leases, call_id)
  return enc({0, 'gone', 0, 0, 0, 0, 0, 0})
end
local lease = redis.call('ZSCORE', K.leases, call_id)
if lease and tonumber(lease) > now_ms() then return enc({0, 'not_due', 0, 0, 0, 0, 0, 0}) end

local ts = ARGV[2]
local amount = c.held
local secs = c.g
if c.pays == 'included' then secs = 0 end
local billed_s = 0
if secs > 0 then billed_s = billed_total(c, secs) end

redis.call('HINCRBY', K.acct, 'reserved', fmt(-(c.held - c.com)))
local bal = debit(amount - c.com, call_id, c.seq + 1, ts, 'expired')
redis.call('HINCRBY', K.acct, 'live', fmt(-1))
if c.mg > 0 then
  redis.call('HINCRBY', K.minutes, c.bucket .. ':held', fmt(-c.mg))
  redis.call('HINCRBY', K.minutes, c.bucket .. ':used', fmt(c.mg))
end
redis.call('ZREM', K.leases, call_id)

local paid = c.pays
if c.pays == 'plan' and c.cf >= 0 then
  if c.cf == 0 then paid = 'credits' else paid = 'plan+credits' end
end
redis.call('XADD', K.cdr, '*', 'call', call_id, 'answered', '?', 'duration_ms', fmt(secs * 1000),
  'billed_s', fmt(billed_s), 'charge', fmt(amount), 'minutes_s', fmt(c.mg), 'paid', paid,
  'rate', fmt(c.rate), 'fee', fmt(c.fee), 'inc1', fmt(c.inc1), 'inc2', fmt(c.inc2),
  'end_reason', 'interrupted', 'ts', ts, 'meta', c.meta, 'extra', '{}')

local reserved = int(redis.call('HGET', K.acct, 'reserved'))
local r = enc({1, 'ok', amount, billed_s, c.mg, bal, reserved, amount - c.com})
redis.call('HSET', K.call, 'st', 'done', 'rs', r, 'com', fmt(amount))
redis.call('EXPIRE', K.call, tonumber(ARGV[3]))
return r
