-- Coroutines with known retained sizes, for tests/threads.rs.
-- Usage: luajit threads_retained.lua N M K SIZE
--   N coroutines each hold, in a local on their stack, a table (made with
--   table.new(K, 0), so its array part is K + 1 slots and never resized)
--   of K cdata of SIZE bytes that nothing else references; they stop at
--   line 19. M coroutines hold nothing and stop at line 24. Then the
--   script prints `ready retained` and blocks reading stdin.
local N = tonumber(arg[1]) or 5
local M = tonumber(arg[2]) or 3
local K = tonumber(arg[3]) or 100
local SIZE = tonumber(arg[4]) or 200
local ffi = require "ffi"
local new_tab = require "table.new"
local ctype = ffi.typeof("uint8_t[" .. SIZE .. "]")

local function holder(k)
    local t = new_tab(k, 0)
    for i = 1, k do t[i] = ctype() end
    coroutine.yield()                     -- line 19: the holders stop here
    return t
end

local function idle()
    coroutine.yield()                     -- line 24: the idle ones here
end

local cos = {}
for _ = 1, N do
    local co = coroutine.create(holder)
    assert(coroutine.resume(co, K))
    cos[#cos + 1] = co
end
for _ = 1, M do
    local co = coroutine.create(idle)
    assert(coroutine.resume(co))
    cos[#cos + 1] = co
end
collectgarbage()
collectgarbage()
print("ready retained")
io.stdout:flush()
io.read(1)
return cos
