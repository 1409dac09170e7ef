-- wrk script for bench/run. The scenario and its parameters come from the
-- environment:
--   BENCH_SCENARIO  hello, get_hot, get_cold, list, create_user, create_post
--                   or mix (90% get_cold reads, 10% create_user writes)
--   BENCH_ID_MAX    users seeded with ids 1..BENCH_ID_MAX
--   BENCH_HOT_IDS   ids that get_hot cycles through (1..BENCH_HOT_IDS)
--   BENCH_TAG       a prefix that keeps emails unique across runs
-- Every email is TAG-THREAD-COUNTER@bench.example, so no two requests of a
-- run share one. done() prints one BENCH_RESULT line that bench/run parses.

local scenario = os.getenv("BENCH_SCENARIO") or "hello"
local id_max = tonumber(os.getenv("BENCH_ID_MAX") or "10000")
local hot_ids = tonumber(os.getenv("BENCH_HOT_IDS") or "10")
local tag = os.getenv("BENCH_TAG") or "bench"
local pages = math.max(1, math.floor(id_max / 20))

local json_headers = { ["Content-Type"] = "application/json" }

local threads_started = 0

function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_id", threads_started)
end

local counter = 0

function init(args)
  -- thread_id is set by setup() before init() runs in each thread.
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

local function get_user(max)
  return wrk.format("GET", "/api/v1/users/" .. math.random(1, max))
end

local function create_user()
  counter = counter + 1
  local email = string.format("%s-%d-%d@bench.example", tag, thread_id or 0, counter)
  local body = '{"name":"Bench User","email":"' .. email .. '","age":30}'
  return wrk.format("POST", "/api/v1/users", json_headers, body)
end

local post_body = '{"title":"Benchmark post","content":"A short post written by the benchmark."}'

local function create_post()
  local path = "/api/v1/users/" .. math.random(1, id_max) .. "/posts"
  return wrk.format("POST", path, json_headers, post_body)
end

local builders = {
  hello = function() return wrk.format("GET", "/") end,
  get_hot = function() return get_user(hot_ids) end,
  get_cold = function() return get_user(id_max) end,
  list = function()
    return wrk.format("GET", "/api/v1/users?page=" .. math.random(1, pages) .. "&limit=20")
  end,
  create_user = create_user,
  create_post = create_post,
  mix = function()
    if math.random() < 0.1 then
      return create_user()
    end
    return get_user(id_max)
  end,
}

local build = builders[scenario]
if build == nil then
  error("unknown BENCH_SCENARIO " .. scenario)
end

request = build

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
