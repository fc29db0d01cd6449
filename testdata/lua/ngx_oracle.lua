-- Allocations at known depths inside nginx, each with debug.traceback()
-- taken on the allocating line as the oracle for `ljleak leaks`' Lua call
-- chains (tests/leaks_lua.rs, testdata/nginx/oracle.conf): an
-- ngx.timer.at callback, and a request handler after the yield and resume
-- of a cosocket read. Every block is kept in `kept`, so it stays
-- outstanding; `tracebacks[size]` holds the oracle (lines joined by `|`)
-- for GET /oracle?size=N. Line numbers matter only through the oracle.
local ffi = require "ffi"
ffi.cdef [[
void *malloc(size_t size);
]]
local C = ffi.C

local M = {}
local kept = {}
local tracebacks = {}

local function record(n, tb)
    tracebacks[n] = (tb:gsub("\n", "|"))
end

-- 1. A timer callback -> helper -> allocation.
local function timer_leaf(n)
    local p = C.malloc(n); record(n, debug.traceback())
    kept[#kept + 1] = p
end
local function timer_helper(n)
    timer_leaf(n)
    return true
end
local function on_timer(premature, n)
    if premature then
        return
    end
    timer_helper(n)
    kept[#kept + 1] = n
end

function M.timer(n)
    local ok, err = ngx.timer.at(0, on_timer, n)
    ngx.say(ok and "started" or err)
end

-- 2. A cosocket: the handler yields in connect and receive, and allocates
-- after it is resumed, in the frame that read and one level below.
local function keep_reply(n, body)
    local t = { body, n }
    local p = C.malloc(n); record(n, debug.traceback())
    kept[#kept + 1] = p
    return t
end
local function fetch_and_keep(n, port)
    local sock = ngx.socket.tcp()
    sock:settimeout(5000)
    assert(sock:connect("127.0.0.1", port))
    assert(sock:send("GET /data HTTP/1.0\r\nHost: localhost\r\n\r\n"))
    local body = assert(sock:receive("*a"))
    sock:close()
    local p = C.malloc(n + 500); record(n + 500, debug.traceback())
    kept[#kept + 1] = p
    keep_reply(n, body)
    return #body
end

function M.cosocket(n)
    local got = fetch_and_keep(n, tonumber(ngx.var.server_port))
    ngx.say(got)
end

function M.oracle(n)
    ngx.print(tracebacks[n] or "")
end

return M
