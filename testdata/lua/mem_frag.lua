-- `ljleak mem` test: ~200 MB of tables and strings, nine in ten dropped and
-- collected, so LuaJIT's allocator keeps most of its arenas as free chunks
-- between the survivors. Prints "ready mem", then waits on stdin.
local keep, all = {}, {}
for i = 1, 600000 do
    -- ~340 bytes a pair: a 4-slot table and a unique 250-byte string.
    all[i] = { i, i + 1, i + 2, (tostring(i) .. string.rep("m", 250)) }
end
for i = 1, #all, 10 do
    keep[#keep + 1] = all[i]
end
all = nil
collectgarbage()
collectgarbage()
io.write("ready mem ", #keep, "\n")
io.flush()
io.read()
