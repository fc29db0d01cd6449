-- A heap of about OBJECTS live objects for scripts/bench-refs.sh: records
-- of a table, a unique string, a cdata, and a closure with its upvalue
-- (5 objects each), grouped 100 to a bucket table under a module, so the
-- graph has depth and many holders. Checkpoint protocol of
-- tests/common/mod.rs.
-- Scripts find checkpoint.lua next to themselves.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local checkpoint = require "checkpoint"
local ffi = require "ffi"
local OBJECTS = tonumber(arg[1]) or 1000000

local function build()
    local M = { buckets = {} }
    local bucket
    for i = 1, math.floor(OBJECTS / 5) do
        if i % 100 == 1 then
            bucket = {}
            M.buckets[#M.buckets + 1] = bucket
        end
        local n = i
        bucket[#bucket + 1] = {
            name = "record-" .. i,
            data = ffi.new("uint8_t[32]"),
            get = function() return n end,
        }
    end
    package.loaded["bench"] = M
end
build()
checkpoint("bench", true)
