-- Allocations at known depths, each with debug.traceback() taken on the
-- allocating line as the oracle for `ljleak leaks`' Lua call chains
-- (tests/leaks_lua.rs). Every case leaks one block of a size no other case
-- uses. Prints `ready`, waits for a line, runs every case printing
-- `oracle SIZE<TAB>TRACEBACK` (lines joined by `|`), prints `done`, then
-- waits for EOF. Line numbers matter only through the oracle.
local ffi = require "ffi"
ffi.cdef [[
void *malloc(size_t size);
void free(void *ptr);
]]
local C = ffi.C
local kept = {}
local function out(size, tb)
    io.write("oracle ", size, "\t", (tb:gsub("\n", "|")), "\n")
end

-- 1. Interpreted code, three levels deep.
local function interp_leaf(n)
    local p = C.malloc(n); out(n, debug.traceback())
    kept[#kept + 1] = p
end
local function interp_mid(n)
    interp_leaf(n)
    return true
end
local function interp_top(n)
    interp_mid(n)
    return true
end

-- 2. ffi.C.malloc and ffi.new straight from interpreted code, a table
-- constructor on the line before (the VM's saved PC is that line's).
local function after_table(n)
    local t = { n, n + 1 }
    local p = C.malloc(n); out(n, debug.traceback())
    kept[#kept + 1] = p
    return t
end
local function new_after_table(n)
    local t = { n, n + 2 }
    local c = ffi.new("uint8_t[?]", n); out(n, debug.traceback())
    kept[#kept + 1] = c
    return t
end

-- 3. A metamethod.
local mt = {
    __index = function(_, n)
        local p = C.malloc(n); out(n, debug.traceback())
        kept[#kept + 1] = p
        return true
    end,
}
local function via_index(n)
    local obj = setmetatable({}, mt)
    return obj[n]
end

-- 4. pcall.
local function in_pcall(n)
    local p = C.malloc(n); out(n, debug.traceback())
    kept[#kept + 1] = p
end
local function via_pcall(n)
    local ok = pcall(in_pcall, n)
    return ok
end

-- 5. A vararg function.
local function vararg(...)
    local n = select(1, ...)
    local p = C.malloc(n); out(n, debug.traceback())
    kept[#kept + 1] = p
end
local function via_vararg(n)
    vararg(n, "x", "y")
    return true
end

-- 6. A coroutine resumed from Lua.
local function in_coroutine(n)
    local p = C.malloc(n); out(n, debug.traceback())
    kept[#kept + 1] = p
    coroutine.yield()
end
local function via_coroutine(n)
    local co = coroutine.create(in_coroutine)
    coroutine.resume(co, n)
    return co
end

-- 7. A JIT-compiled callee: the last iteration allocates the leak, inside
-- the trace, then leaves it to take the traceback on the same line.
local function hot(i, last, n)
    local p = C.malloc(i == last and n or 8); if i == last then out(n, debug.traceback()) end
    if i == last then kept[#kept + 1] = p else C.free(p) end
end
local function run_hot(n)
    for i = 1, 400 do
        hot(i, 400, n)
    end
    return true
end

for _, f in ipairs({ interp_top, interp_mid, interp_leaf, after_table, new_after_table,
    via_index, via_pcall, via_vararg, via_coroutine }) do
    jit.off(f, true)
end

io.write("ready\n")
io.flush()
io.read("*l")
interp_top(100103)
after_table(100207)
new_after_table(100311)
via_index(100419)
via_pcall(100523)
via_vararg(100627)
via_coroutine(100733)
run_hot(100831)
io.write("done\n")
io.flush()
io.read("*a")
