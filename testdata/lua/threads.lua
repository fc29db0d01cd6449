-- Coroutines suspended at known lines, for the frames and threads tests.
-- Usage: luajit threads.lua N M
--   N coroutines stop in coroutine.yield inside `inner` (through a vararg
--   function and a pcall), M stop in an __index metamethod (a continuation
--   frame). The script prints each kind's debug.traceback on one line
--   (`tb a ...`, `tb b ...`, newlines as `|`), the main thread's traceback
--   (`tb main ...`), `ready threads`, then blocks reading stdin.
local N = tonumber(arg[1]) or 3
local M = tonumber(arg[2]) or 2

local function inner(i)
    local v = coroutine.yield(i)          -- line 12: group a stops here
    return v
end

local function mid(i)
    return inner(i) + 1                   -- line 17
end

local function outer_a(...)
    local ok, r = pcall(mid, ...)          -- line 21
    return ok, r
end

local meta = {
    __index = function(t, k)
        local v = coroutine.yield(k)      -- line 27: group b stops here
        return v
    end,
}

local function outer_b()
    local t = setmetatable({}, meta)
    local x = t.missing                   -- line 34
    return x
end

local function flat(s)
    return (s:gsub("\n", "|"):gsub("\t", ""))
end

local cos = {}
for i = 1, N do
    local co = coroutine.create(outer_a)
    assert(coroutine.resume(co, i))
    cos[#cos + 1] = co
end
for _ = 1, M do
    local co = coroutine.create(outer_b)
    assert(coroutine.resume(co))
    cos[#cos + 1] = co
end
print("tb a " .. flat(debug.traceback(cos[1])))
if M > 0 then print("tb b " .. flat(debug.traceback(cos[N + 1]))) end
io.stdout:flush()
local tb = flat(debug.traceback("", 1)); print("tb main " .. tb); print("ready threads"); io.stdout:flush(); io.read(0) -- line 56
print("total " .. collectgarbage("count") * 1024)
io.read(1)
