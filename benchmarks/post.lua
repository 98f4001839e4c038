-- wrk script for benchmarks/http_ingest.py: POST bodies read from $BENCH_BODIES (one per line), in turn.
-- Requests are formatted once in init(), so wrk spends no time building them.
-- done() prints one JSON line, prefixed "BENCH ", that the Python driver parses.

local requests = {}
local index = 0

function init(args)
  local path = os.getenv("BENCH_BODIES")
  local content_type = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
  local headers = { ["Content-Type"] = content_type }
  if os.getenv("BENCH_CONNECTION_CLOSE") == "1" then
    headers["Connection"] = "close" -- a new connection for every request
  end
  local file = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  for line in file:lines() do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  file:close()
  assert(#requests > 0, "no bodies in " .. path)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
