-- wrk script for bench/ingest.py: every request posts a distinct, pre-signed Stripe event.
-- Usage: wrk ... -s bench/wrk_events.lua URL -- DIR
-- Thread N reads DIR/events-N.txt ("<Stripe-Signature>\t<body>" per line) and sends each
-- line once; if the run outlasts the file it starts over and counts a wrap (duplicates).

local threads = {}
local created = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
  table.insert(threads, thread)
end

local prepared = {}
local index = 0
wrapped = 0

function init(args)
  local path = args[1] .. "/events-" .. tid .. ".txt"
  for line in io.lines(path) do
    local signature, body = line:match("^([^\t]+)\t(.*)$")
    prepared[#prepared + 1] = wrk.format("POST", "/webhooks/stripe", {
      ["Content-Type"] = "application/json",
      ["Stripe-Signature"] = signature,
    }, body)
  end
end

function request()
  index = index + 1
  if index > #prepared then
    index = 1
    wrapped = wrapped + 1
  end
  return prepared[index]
end

function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"mean_us":%.1f,"max_us":%d,"wrapped":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, wraps))
end
