-- late_settle.lua: record a call that ran while the ledger was unreachable (bounded fail-open).
--
-- KEYS: the nine call-scoped keys (acct, call, leases, allot, minutes, audit, cdr, outbox,
--       purchases).
-- ARGV: 1 call id, 2 connection fee, 3 rate per minute, 4 initial increment s, 5 subsequent
--       increment s, 6 answered (1/0), 7 duration ms, 8 end reason, 9 timestamp, 10 retention s,
--       11 meta (JSON), 12 CDR extras (JSON).
-- Returns: 'ok|reason|charge|billed_s|uncollected|balance|reserved|debit'.
-- Guarantees: the call is charged by the deck's rule but never beyond the balance available now
--       (the balance never goes negative); what could not be collected is written in the CDR as
--       'uncollected', not lost silently; one CDR per call id even if the recovery is retried.
--       When the call's reserve did land (its reply was lost, so the gateway ran the call offline),
--       that reservation is settled here: it is released, what it already committed counts as
--       paid, the call is priced by the terms and plan split it was reserved with, and its lease
--       and its place among the live calls go, so the sweeper cannot charge it a second time.

local call_id = ARGV[1]
local c, rs = load_call(K.call, 'rs')
if c and c.st == ST.done then return rs end

local ts = ARGV[9]
local answered = ARGV[6] == '1'
local dur_ms = math.max(tonumber(ARGV[7]), 0)
local secs = ceil_div(dur_ms, 1000)
local a = acct_load()
local amount, billed_s, mins, paid, seq = 0, 0, 0, 'credits', 0
if c and (c.st == ST.held or c.st == ST.live) then
  -- The reservation exists: release it, and charge what it has not already committed.
  a.reserved = a.reserved - (c.held - c.com)
  a.live = a.live - 1
  if answered then
    amount = used_money(c, secs)
    billed_s = billed_total(c, secs)
    if c.mg > 0 then mins = math.min(ceil_div(math.min(secs, c.mg), 60) * 60, c.mg) end
  end
  if c.mg > 0 then
    redis.call('HINCRBY', K.minutes, c.bucket .. ':held', fmt(-c.mg))
    if mins > 0 then redis.call('HINCRBY', K.minutes, c.bucket .. ':used', fmt(mins)) end
  end
  redis.call('ZREM', K.leases, call_id)
  paid, seq = paid_label(c), c.seq + 1
else
  c = {fee = tonumber(ARGV[2]), rate = tonumber(ARGV[3]), inc1 = tonumber(ARGV[4]),
       inc2 = tonumber(ARGV[5]), pays = PAYS.credits, seq = 0, cf = 0, mg = 0, g = 0, pg = 0, held = 0,
       com = 0, fin = 1}
  if answered then
    amount = seg_charge(c, secs, true)
    billed_s = billed(c, secs)
  end
end
local due = math.max(amount - c.com, 0)
local collect = math.max(math.min(due, a.balance - a.reserved), 0)
debit(a, collect, day_of(now_ms()), call_id, seq, ts, 'fail-open')
acct_save(a)
local charge = c.com + collect
redis.call('XADD', K.cdr, '*', 'call', call_id, 'answered', ARGV[6], 'duration_ms', fmt(dur_ms),
  'billed_s', fmt(billed_s), 'charge', fmt(charge), 'minutes_s', fmt(mins), 'paid', paid,
  'rate', fmt(c.rate), 'fee', fmt(c.fee), 'inc1', fmt(c.inc1), 'inc2', fmt(c.inc2),
  'end_reason', ARGV[8], 'ts', ts, 'meta', ARGV[11], 'extra', ARGV[12],
  'uncollected', fmt(due - collect))
local r = enc({1, 'ok', charge, billed_s, due - collect, a.balance, a.reserved, collect})
c.st, c.com, c.seq = ST.done, charge, seq
redis.call('HSET', K.call, 's', pack_call(c), 'rs', r, 'meta', ARGV[11])
redis.call('EXPIRE', K.call, tonumber(ARGV[10]))
return r
