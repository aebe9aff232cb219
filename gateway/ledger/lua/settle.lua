-- settle.lua: end a call: charge its exact price, release the rest, write its CDR, atomically.
--
-- KEYS: the nine call-scoped keys (acct, call, leases, allot, minutes of the call's month, audit,
--       cdr, outbox, purchases).
-- ARGV: 1 call id, 2 seq, 3 answered (1/0), 4 duration from answer in ms, 5 end reason,
--       6 timestamp (ISO 8601), 7 retention s of the settled call record, 8 CDR extras (JSON:
--       start/answer/end times and anything else the report needs), 9 the caller's time in ms (for
--       the UTC day of the daily spend; the script needs no lease time, so it skips TIME).
-- Returns: 'ok|reason|charge|billed_s|minutes_s|balance|reserved|debit' (ok 0 with reason
--       unknown_call when no such call was reserved).
-- Guarantees: charge = the deck's price of the call (fee once, increments rounded up) for its
--       duration capped at the time granted, never more than was held, so the balance never goes
--       below zero; the CDR is appended in the same script as the final debit; a second settle
--       (a retry, or the sweeper racing a late BYE) returns the first result and changes nothing.

local call_id = ARGV[1]
local c, rs, meta = load_call(K.call, 'rs', 'meta')
if not c or c.st == ST.refused then return enc({0, 'unknown_call', 0, 0, 0, 0, 0, 0}) end
if c.st == ST.done then return rs end

local ts = ARGV[6]
local answered = ARGV[3] == '1'
local dur_ms = math.max(tonumber(ARGV[4]), 0)
local amount, billed_s, mins = 0, 0, 0
if answered then
  local secs = math.min(ceil_div(dur_ms, 1000), c.g)
  amount = math.min(used_money(c, secs), c.held)
  billed_s = billed_total(c, secs)
  if c.mg > 0 then mins = math.min(ceil_div(math.min(secs, c.mg), 60) * 60, c.mg) end
end

local a = acct_load()
a.reserved = a.reserved - (c.held - c.com)
a.live = a.live - 1
debit(a, amount - c.com, day_of(tonumber(ARGV[9])), call_id, tonumber(ARGV[2]), ts, 'settle')
acct_save(a)
if c.mg > 0 then
  redis.call('HINCRBY', K.minutes, c.bucket .. ':held', fmt(-c.mg))
  if mins > 0 then redis.call('HINCRBY', K.minutes, c.bucket .. ':used', fmt(mins)) end
end
redis.call('ZREM', K.leases, call_id)

local paid = paid_label(c)
redis.call('XADD', K.cdr, '*', 'call', call_id, 'answered', ARGV[3], 'duration_ms', fmt(dur_ms),
  'billed_s', fmt(billed_s), 'charge', fmt(amount), 'minutes_s', fmt(mins), 'paid', paid,
  'rate', fmt(c.rate), 'fee', fmt(c.fee), 'inc1', fmt(c.inc1), 'inc2', fmt(c.inc2),
  'end_reason', ARGV[5], 'ts', ts, 'meta', meta or '{}', 'extra', ARGV[8])

local r = enc({1, 'ok', amount, billed_s, mins, a.balance, a.reserved, amount - c.com})
c.st, c.com = ST.done, amount
redis.call('HSET', K.call, 's', pack_call(c), 'rs', r)
redis.call('EXPIRE', K.call, tonumber(ARGV[7]))
return r
