-- wrk script for benchmarks/load.py's wrk_load: POST one file's bytes on every request, check
-- each answer, and print one line `WRK_JSON {...}` with the counts and latency percentiles.
--
--   wrk -t1 -cN -dS --latency -s benchmarks/wrk_post.lua URL -- BODY_FILE CONTENT_TYPE LABEL
--
-- An answer counts as good only when it is a 200 whose JSON names LABEL as its "label" (the
-- label the ONNX FP32 reference gives this image): a server that answers fast but wrongly
-- does not earn throughput.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  -- Defining init replaces wrk's own, which would have formatted the request: do it here.
  request_bytes = wrk.format("POST", nil, {["Content-Type"] = args[2]}, body)
  label_pattern = '"label"%s*:%s*"' .. args[3] .. '"'
  good, bad, first_bad = 0, 0, ""
end

function request()
  return request_bytes
end

function response(status, headers, body)
  if status == 200 and string.find(body, label_pattern) then
    good = good + 1
  else
    bad = bad + 1
    if bad == 1 then
      first_bad = status .. " " .. string.sub(body, 1, 160)
    end
  end
end

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
  local good_total, bad_total, example = 0, 0, ""
  for _, thread in ipairs(threads) do
    good_total = good_total + thread:get("good")
    bad_total = bad_total + thread:get("bad")
    if example == "" then example = thread:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "good": %d, "bad": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "first_bad": %s}\n',
    summary.requests, summary.duration, good_total, bad_total, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, json_string(example)))
end
