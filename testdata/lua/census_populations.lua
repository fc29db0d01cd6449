-- Builds known populations, one phase at a time, with a full GC before each
-- checkpoint so the per-type deltas between phases are exactly the
-- populations (tests/census.rs holds the expected figures).
-- usage: luajit census_populations.lua TESTDATA_DIR
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local cp = require("checkpoint").checkpoint
local ffi = require "ffi"
local tnew = require "table.new"
local buffer = require "string.buffer"
-- Traces would appear in any hot loop; keep the JIT for the trace phase only.
jit.off()

-- Everything a phase keeps goes into preallocated holders, so holders never
-- grow during a phase.
local keep = tnew(4096, 0)
local function hold(x) keep[#keep + 1] = x end
-- Warm up every library path and ctype parse used below, so later phases
-- allocate only their populations.
local ct_int4 = ffi.typeof("int[4]")
local ct_vla = ffi.typeof("char[?]")
local warm = { ct_int4(), ct_vla(1), tnew(7, 4), tnew(100, 0), string.format("%040d", 0), buffer.new() }
warm = nil
local function mk(a, b) return function() return a + b end end
local function body()
    local x = 0
    local f = function() x = x + 1 return x end
    coroutine.yield(f)
end
local cos = tnew(16, 0)

cp("base", true)

for _ = 1, 1000 do hold({}) end
cp("empty_tables", true)            -- +1000 tables of sizeof(GCtab)

for _ = 1, 100 do hold(tnew(7, 4)) end
cp("sized_tables", true)            -- +100 tables: colocated array of 8 + 4 nodes

for _ = 1, 50 do hold(tnew(100, 0)) end
cp("array_tables", true)            -- +50 tables with a separate array of 101

for i = 1, 500 do hold(string.format("%040d", i)) end
cp("strings", true)                 -- +500 strings of length 40

for _ = 1, 100 do hold(ct_int4()) end
cp("fixed_cdata", true)             -- +100 cdata int[4]

for i = 1, 20 do hold(ct_vla(1000 + i)) end
cp("vla_cdata", true)               -- +20 cdata char[1001..1020]

for i = 1, 100 do hold(mk(i, i)) end
cp("closures", true)                -- +100 Lua functions with 2 upvalues, +200 closed upvalues

for i = 1, 10 do
    local co = coroutine.create(body)
    local _, f = coroutine.resume(co)
    cos[i] = co
    hold(f)
end
cp("coroutines", true)              -- +10 threads, +10 functions, +10 open upvalues

for i = 1, 10 do
    local b = buffer.new()
    b:put(string.rep("a", 1000))     -- the repeated string is garbage; the buffer keeps a copy
    hold(b)
end
cp("buffers", true)                 -- +10 userdata owning their buffer memory

jit.on()
local s = 0
for i = 1, 200000 do s = s + i % 7 end
hold(s)
cp("traces", true)                  -- JIT traces from the hot loop

io.write("done\n")
io.flush()
