-- wrk script for benchmarks/serving.py.
--   wrk ... -s benchmarks/post.lua URL -- BODIES_FILE API_KEY
-- POSTs the JSON bodies of BODIES_FILE (one per line) round-robin, with
-- "Authorization: Bearer API_KEY" (no such header when API_KEY is "-"), and
-- prints one machine-readable summary line "WRK_JSON {...}" (latencies in
-- microseconds) when the run is done.

local prepared = {}
local next_index = 0

function init(args)
  local path, key = args[1], args[2]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key ~= "-" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
  for line in io.lines(path) do
    if #line > 0 then
      prepared[#prepared + 1] = wrk.format(nil, nil, nil, line)
    end
  end
  if #prepared == 0 then
    error("no request bodies in " .. path)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
