-- GET BENCH_PATH with "Authorization: DPoP <BENCH_TOKEN>" and a fresh DPoP proof per
-- request, as real clients send: line i of BENCH_PROOFS_FILE (one proof per line, each made
-- for this method and URL). Every proof is sent once (each_line.lua); a second use would
-- be a replay, refused.
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN")
LINES_ENV = "BENCH_PROOFS_FILE"
function format_line(line)
  return wrk.format("GET", path, { ["Authorization"] = "DPoP " .. token, ["DPoP"] = line })
end
dofile(os.getenv("BENCH_LUA_DIR") .. "/each_line.lua")
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
