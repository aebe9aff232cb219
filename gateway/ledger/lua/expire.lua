-- expire.lua: settle a call whose lease ran out because the gateway process holding it died.
--
-- KEYS: the nine call-scoped keys (acct, call, leases, allot, minutes of the call's month, audit,
--       cdr, outbox, purchases).
-- ARGV: 1 call id, 2 timestamp (ISO 8601), 3 retention s of the settled call record.
-- Returns: 'ok|reason|charge|billed_s|minutes_s|balance|reserved|debit'; ok 0 with reason
--       'not_due' (the lease was renewed: the call is alive) or 'gone' (already settled).
-- Guarantees: acts only once the lease (Redis time) is past; the chunk held is charged as used
--       (the owner may have let the call run to the end of it), minutes held count as used, the
--       CDR is marked 'interrupted'; idempotent with settle: whichever runs first wins.

local call_id = ARGV[1]
local c, meta = load_call(K.call, 'meta')
if not c or c.st == ST.done or c.st == ST.refused then
  redis.call('ZREM', K.leases, call_id)
  return enc({0, 'gone', 0, 0, 0, 0, 0, 0})
end
local now = now_ms()
local lease = redis.call('ZSCORE', K.leases, call_id)
if lease and tonumber(lease) > now then return enc({0, 'not_due', 0, 0, 0, 0, 0, 0}) end

local ts = ARGV[2]
local amount = c.held
local secs = c.g
if c.pays == PAYS.included then secs = 0 end
local billed_s = 0
if secs > 0 then billed_s = billed_total(c, secs) end

local a = acct_load()
a.reserved = a.reserved - (c.held - c.com)
a.live = a.live - 1
debit(a, amount - c.com, day_of(now), call_id, c.seq + 1, ts, 'expired')
acct_save(a)
if c.mg > 0 then
  redis.call('HINCRBY', K.minutes, c.bucket .. ':held', fmt(-c.mg))
  redis.call('HINCRBY', K.minutes, c.bucket .. ':used', fmt(c.mg))
end
redis.call('ZREM', K.leases, call_id)

local paid = paid_label(c)
redis.call('XADD', K.cdr, '*', 'call', call_id, 'answered', '?', 'duration_ms', fmt(secs * 1000),
  'billed_s', fmt(billed_s), 'charge', fmt(amount), 'minutes_s', fmt(c.mg), 'paid', paid,
  'rate', fmt(c.rate), 'fee', fmt(c.fee), 'inc1', fmt(c.inc1), 'inc2', fmt(c.inc2),
  'end_reason', 'interrupted', 'ts', ts, 'meta', meta or '{}', 'extra', '{}')

local r = enc({1, 'ok', amount, billed_s, c.mg, a.balance, a.reserved, amount - c.com})
c.st, c.com = ST.done, amount
redis.call('HSET', K.call, 's', pack_call(c), 'rs', r)
redis.call('EXPIRE', K.call, tonumber(ARGV[3]))
return r
