-- wrk script of the bench: the requests come from a file, the answers' statuses are counted.
--
-- BENCH_REQUESTS  a file, one request a line: METHOD <tab> PATH <tab> BODY [<tab> Header: value]...
-- BENCH_MODE      "cycle" (each thread goes round the list, from its own starting point) or
--                 "once" (the lines are shared out between the threads, each sent once: a thread
--                 that runs out stops sending and says so; the bench then discards the load)
-- BENCH_THREADS   wrk's -t (to share out the lines)
--
-- done() prints one line the bench reads:
--   BENCH_RESULT requests=N duration_us=N p50_us=N p99_us=N exhausted=N errors=N statuses=200:N,303:N

local threads = {}
local started = 0

function setup(thread)
  thread:set("tid", started)
  started = started + 1
  table.insert(threads, thread)
end

local function fields_of(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do
    table.insert(fields, field)
  end
  return fields
end

function init(args)
  local mode = os.getenv("BENCH_MODE") or "cycle"
  local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
  once = (mode == "once")
  reqs = {}
  local n = 0
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    if line ~= "" then
      if not once or (n % nthreads) == tid then
        local f = fields_of(line)
        local headers = {}
        for k = 4, #f do
          local name, value = f[k]:match("^([^:]+):%s*(.*)$")
          if name then headers[name] = value end
        end
        local body = f[3]
        if body == "" then body = nil end
        table.insert(reqs, wrk.format(f[1], f[2], headers, body))
      end
      n = n + 1
    end
  end
  index = once and 0 or (tid % #reqs)
  statuses = {}
  exhausted = 0
end

function request()
  if once then
    if index >= #reqs then
      exhausted = 1
      wrk.thread:stop()
      return reqs[#reqs]
    end
    index = index + 1
    return reqs[index]
  end
  index = (index % #reqs) + 1
  return reqs[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  local exhausted_threads = 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
    exhausted_threads = exhausted_threads + thread:get("exhausted")
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, status .. ":" .. count)
  end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d exhausted=%d errors=%d statuses=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    exhausted_threads, errors, table.concat(parts, ",")))
end
