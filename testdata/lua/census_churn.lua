-- Allocates garbage and checkpoints without collecting, so checkpoints land
-- in every GC state (propagate, sweep-string, sweep, pause...).
-- usage: luajit census_churn.lua TESTDATA_DIR ROUNDS
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local cp = require("checkpoint").checkpoint
local ffi = require "ffi"
local live = {}
for round = 1, tonumber(arg[2] or 30) do
    for i = 1, 3000 do
        local t = { i, tostring(i + round * 100000) }
        if i % 3 == 0 then t[3] = ffi.new("char[?]", 64 + i % 50) end
        if i % 10 == 0 then live[#live + 1] = t end
    end
    if #live > 5000 then live = {} end
    collectgarbage("step", round % 4)
    cp("round" .. round, false)
end
io.write("done\n")
io.flush()
