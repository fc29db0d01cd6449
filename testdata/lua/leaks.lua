-- Endpoints for `ljleak leaks` tests (testdata/nginx/leaks.conf). Line
-- numbers matter: the tests look for the Lua frame of the allocating line.
local ffi = require "ffi"
ffi.cdef [[
void *malloc(size_t size);
void free(void *ptr);
]]

local M = {}

local kept = {}   -- /lualeak: a table and a 4096-byte cdata per request

-- Leaks `size` bytes of C memory per call: the pointer is dropped.
function M.cleak(size)
    local p = ffi.C.malloc(size)
    ngx.say(p ~= nil and "leaked" or "failed")
end

-- Same allocation, freed: nothing outstanding.
function M.cok(size)
    local p = ffi.C.malloc(size)
    ffi.C.free(p)
    ngx.say("ok")
end

-- LuaJIT-allocator leak: grows a global list.
function M.lualeak()
    kept[#kept + 1] = { ffi.new("uint8_t[4096]") }
    ngx.say(#kept)
end

function M.reset()
    kept = {}
    collectgarbage()
    ngx.say("ok")
end

-- /cleak_interp: cleak kept out of the JIT compiler. Sampling tests make
-- hundreds of requests, enough for LuaJIT to compile cleak, and compiled
-- traces have no unwind info (their stacks end at `[jit code]`).
function M.cleak_interp(size)
    local p = ffi.C.malloc(size) -- interpreted
    ngx.say(p ~= nil and "leaked" or "failed")
end
jit.off(M.cleak_interp)

-- /cdelay: the same malloc, freed `ms` milliseconds later (after the
-- tracer has read the allocation: its free must still be seen).
function M.cdelay(size, ms)
    local p = ffi.C.malloc(size)
    ngx.sleep(ms / 1000)
    ffi.C.free(p)
    ngx.say("ok")
end

return M
