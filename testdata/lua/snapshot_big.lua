-- A heap of about MB megabytes of live objects for scripts/bench-snapshot.sh:
-- per KB, a unique ~900-byte string in a small table, plus, every 16th
-- record, a cdata and a closure (so every type the census counts is there).
-- usage: luajit snapshot_big.lua TESTDATA_DIR MB; checkpoint protocol of
-- tests/common/mod.rs.
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local cp = require("checkpoint").checkpoint
local ffi = require "ffi"
local mb = tonumber(arg[2] or 512)
local pad = ("x"):rep(900)
local keep = {}
for i = 1, mb * 1024 do
    local r = { pad .. i }
    if i % 16 == 0 then
        r[2] = ffi.new("char[?]", 64)
        r[3] = function() return i end
    end
    keep[i] = r
end
cp("big", true)
while true do
    cp("again", false)
end
