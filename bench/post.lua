-- wrk script for bench/bench.py: POST one body file, report one parseable line.
-- usage: wrk -s bench/post.lua URL -- BODY_FILE
bad = 0  -- global: done() reads it from each thread with get()

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method, wrk.body = "POST", f:read("*a")
  f:close()
end

function response(status)
  if status ~= 200 then bad = bad + 1 end
end

local all = {}
function setup(thread) all[#all + 1] = thread end

function done(summary, latency)
  local failed = 0
  for _, t in ipairs(all) do failed = failed + t:get("bad") end
  local e = summary.errors
  print(string.format("BENCH requests=%d seconds=%.3f p50=%.3f p99=%.3f non200=%d errors=%d",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, failed, e.connect + e.read + e.write + e.timeout))
end
