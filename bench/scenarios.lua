-- wrk script for bench/run. The scenario and its parameters come from the
-- environment:
--   BENCH_SCENARIO  hello, get_hot, get_cold, list, create_user, create_post
--                   or mix (90% get_cold reads, 10% create_user writes)
--   BENCH_ID_MAX    users seeded with ids 1..BENCH_ID_MAX
--   BENCH_HOT_IDS   ids that get_hot cycles through (1..BENCH_HOT_IDS)
--   BENCH_TAG       a prefix that keeps emails unique across runs
--   BENCH_RATE      if set, paces the run to this many requests/s in all
--                   (see delay() below)
--   BENCH_THREADS   wrk threads of the run, which share BENCH_RATE evenly
--   BENCH_SEND_FOR  if set, no request is sent after this many seconds, and
--                   the rest of the run only waits for responses
--   BENCH_COUNT_STATUS  if "1", counts 201, 503 and other statuses
-- Every email is TAG-THREAD-COUNTER@bench.example, so no two requests of a
-- run share one. done() prints one BENCH_RESULT line that bench/run parses,
-- and one BENCH_STATUS line when statuses are counted.

local scenario = os.getenv("BENCH_SCENARIO") or "hello"
local id_max = tonumber(os.getenv("BENCH_ID_MAX") or "10000")
local hot_ids = tonumber(os.getenv("BENCH_HOT_IDS") or "10")
local tag = os.getenv("BENCH_TAG") or "bench"
local rate = tonumber(os.getenv("BENCH_RATE") or "")
local wrk_threads = tonumber(os.getenv("BENCH_THREADS") or "1")
local send_for = tonumber(os.getenv("BENCH_SEND_FOR") or "")
local count_status = os.getenv("BENCH_COUNT_STATUS") == "1"
local pages = math.max(1, math.floor(id_max / 20))

if rate ~= nil and rate <= 0 then
  error("invalid BENCH_RATE " .. rate .. ": expected requests/s above 0")
end

local json_headers = { ["Content-Type"] = "application/json" }

local threads_started = 0
local thread_list = {}

function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_id", threads_started)
  thread_list[threads_started] = thread
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

-- Pacing: wrk calls delay() before each request of a connection, the first
-- one included, and sends the request that many milliseconds later. Each
-- thread keeps one schedule of send times, rate/threads per second, and a
-- ready connection takes the next free slot. So each connection sends on
-- average once every connections/rate seconds. A plain random delay with
-- that mean would fall short of the rate, because each response's latency
-- adds to the gap.
--
-- This still paces a closed loop: a connection waits for its response
-- before wrk calls delay() for its next request. A stalled server therefore also holds
-- back the requests due meanwhile, and their waiting is never measured
-- (coordinated omission). A paced run shows the latency at moderate load,
-- not the latency of an open loop at a fixed arrival rate.
if rate ~= nil or send_for ~= nil then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *now);
  ]]
  local clock_monotonic = 1
  local timespec = ffi.new("bench_timespec")

  local function now_ms()
    ffi.C.clock_gettime(clock_monotonic, timespec)
    return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
  end

  -- wrk takes whole milliseconds, so rounding up with a probability equal
  -- to the fraction keeps the mean delay exact.
  local function whole_ms(delay_ms)
    local whole = math.floor(delay_ms)
    if math.random() < delay_ms - whole then
      whole = whole + 1
    end
    return whole
  end

  -- The schedule may lag the clock by catch_up_ms, so timers that fire a
  -- little late do not lower the rate. Slots missed in a longer stall are
  -- dropped, not sent in a burst.
  local catch_up_ms = 5
  -- Past BENCH_SEND_FOR, a connection waits longer than any run lasts.
  local idle_ms = 3600 * 1000
  local gap_ms = rate and 1000 * wrk_threads / rate
  local next_send = nil
  local stop_at = nil

  function delay()
    local current = now_ms()
    if send_for ~= nil then
      stop_at = stop_at or current + send_for * 1000
      if current >= stop_at then
        return idle_ms
      end
    end
    if gap_ms == nil then
      return 0
    end
    next_send = math.max(next_send or current, current - catch_up_ms)
    local wait = next_send - current
    next_send = next_send + gap_ms
    if wait <= 0 then
      return 0
    end
    return whole_ms(wait)
  end
end

-- Status counts are globals so that done() can read them from each thread
-- with thread:get(). wrk parses headers and bodies only when response() is
-- defined, so it is defined only when BENCH_COUNT_STATUS is "1".
responses_201 = 0
responses_503 = 0
responses_other = 0

if count_status then
  function response(status, headers, body)
    if status == 201 then
      responses_201 = responses_201 + 1
    elseif status == 503 then
      responses_503 = responses_503 + 1
    else
      responses_other = responses_other + 1
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%.0f p99_us=%.0f " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
  if count_status then
    local created, unavailable, other = 0, 0, 0
    for _, thread in ipairs(thread_list) do
      created = created + thread:get("responses_201")
      unavailable = unavailable + thread:get("responses_503")
      other = other + thread:get("responses_other")
    end
    io.write(string.format("BENCH_STATUS created=%d unavailable=%d other=%d\n",
      created, unavailable, other))
  end
end
