-- wrk script of benchmarks/serving.py --client wrk: each request a streamed POST /v1/completions.
--
--     wrk -t 2 -c 256 -d 10s --timeout 120s -s benchmarks/wrk_post.lua http://127.0.0.1:PORT -- MEAN PROMPT_JSON
--
-- MEAN: the mean max_tokens; each request draws its own from [MEAN/2, 3 MEAN/2] and a seed of its
-- own, as the Python client does (equal lengths would end every stream at once, in waves).
-- PROMPT_JSON: the prompt as a JSON string, quotes included.
-- No response() callback: wrk then reads the streamed body without handing it to Lua, which is
-- what keeps this client light. serving.py counts the characters from the server's /metrics.
-- done() prints one line, WRK_RESULT {json}, with wrk's own counts.

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

function init(args)
   mean = tonumber(args[1]) or 1000
   prompt = args[2] or '"ROMEO:"'
   seed = (thread_index or 0) * 1000000
   math.randomseed(seed + 7)
   headers = {["Content-Type"] = "application/json"}
end

function request()
   seed = seed + 1
   local length = math.random(math.max(1, math.floor(mean / 2)), math.max(1, math.floor(mean * 3 / 2)))
   local body = string.format('{"prompt": %s, "max_tokens": %d, "temperature": 0.8, "seed": %d, "stream": true}',
                              prompt, length, seed)
   return wrk.format("POST", "/v1/completions", headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format('WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "errors": '
                          .. '{"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
                          .. '"response_p50_ms": %.2f, "response_p99_ms": %.2f}\n',
                          summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
                          e.status, e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
