-- GET BENCH_PATH with a fixed Authorization header (BENCH_AUTH, the whole value): the
-- same request every time, so wrk builds it once.
wrk.method = "GET"
wrk.path = os.getenv("BENCH_PATH") or "/"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
