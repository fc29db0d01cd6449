-- A large heap for the benchmark: about N live objects (tables, strings,
-- cdata, closures in equal parts).
-- usage: luajit census_big.lua TESTDATA_DIR N
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local cp = require("checkpoint").checkpoint
local ffi = require "ffi"
local n = tonumber(arg[2] or 1000000)
local keep = {}
for i = 1, n / 4 do
    keep[#keep + 1] = { i }
    keep[#keep + 1] = "s" .. i
    keep[#keep + 1] = ffi.new("char[?]", 16 + i % 64)
    keep[#keep + 1] = function() return i end
end
cp("big", true)
-- Keep serving checkpoints until stdin closes.
while true do
    cp("again", false)
end
