-- wrk: every request a POST with a 1 KiB body (wrk adds its content-length), for
-- `WRK_SCRIPT=scripts/wrk-post-1k.lua scripts/stat-proxy ...`: an upload's cost per request.
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
