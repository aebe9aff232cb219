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

local call_id = ARGV[1]
local c, rs = load_call(K.call, 'rs')
if c and c.st == ST.done then return rs end

local ts = ARGV[9]
c = {fee = tonumber(ARGV[2]), rate = tonumber(ARGV[3]), inc1 = tonumber(ARGV[4]),
     inc2 = tonumber(ARGV[5]), pays = PAYS.credits, seq = 0, cf = 0, mg = 0, g = 0, pg = 0, held = 0, fin = 1}
local answered = ARGV[6] == '1'
local dur_ms = math.max(tonumber(ARGV[7]), 0)
local amount, billed_s = 0, 0
if answered then
  local secs = ceil_div(dur_ms, 1000)
  amount = seg_charge(c, secs, true)
  billed_s = billed(c, secs)
end
local a = acct_load()
local collect = math.max(math.min(amount, a.balance - a.reserved), 0)
debit(a, collect, day_of(now_ms()), call_id, 0, ts, 'fail-open')
acct_save(a)
redis.call('XADD', K.cdr, '*', 'call', call_id, 'answered', ARGV[6], 'duration_ms', fmt(dur_ms),
  'billed_s', fmt(billed_s), 'charge', fmt(collect), 'minutes_s', '0', 'paid', 'credits',
  'rate', fmt(c.rate), 'fee', fmt(c.fee), 'inc1', fmt(c.inc1), 'inc2', fmt(c.inc2),
  'end_reason', ARGV[8], 'ts', ts, 'meta', ARGV[11], 'extra', ARGV[12],
  'uncollected', fmt(amount - collect))
local r = enc({1, 'ok', collect, billed_s, amount - collect, a.balance, a.reserved, collect})
c.st, c.com = ST.done, collect
redis.call('HSET', K.call, 's', pack_call(c), 'rs', r, 'meta', ARGV[11])
redis.call('EXPIRE', K.call, tonumber(ARGV[10]))
return r
