-- POST an application/x-www-form-urlencoded body with a fixed Authorization header.
-- Environment: BENCH_BODY (the form body), BENCH_AUTH (the whole Authorization value,
-- e.g. "Basic ..."), BENCH_PATH. Nothing varies per request, so wrk builds it once.
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.body = os.getenv("BENCH_BODY") or ""
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
