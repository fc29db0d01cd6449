-- Small graphs with weak tables, cycles, self references and a thread
-- that references itself (tests/refs.rs compares every retained size with
-- a brute-force computation). Prints `addr NAME 0x…` for the objects of
-- interest, then follows the checkpoint protocol of tests/common/mod.rs.
-- The collector is stopped so that `lonely`, held only by a weak table,
-- is still in the heap (unreachable) when ljleak looks.
-- Scripts find checkpoint.lua next to themselves.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local checkpoint = require "checkpoint"
collectgarbage()
collectgarbage("stop")

local function addr(name, o)
    io.write("addr ", name, " ", tostring(o):match("0x%x+"), "\n")
end

local function build()
    -- Weak values: `lonely` is held only weakly, `shared` also strongly.
    local weakv = setmetatable({}, { __mode = "v" })
    local lonely = { "only weakly held" }
    local shared = { 1, 2, 3 }
    weakv[1] = lonely
    weakv.shared = shared
    weakv.s = "strings are never weak " .. tostring(weakv)
    WEAKV, SHARED = weakv, shared
    addr("weakv", weakv)
    addr("lonely", lonely)
    addr("shared", shared)

    -- Weak keys: keys held elsewhere stay, values are held strongly.
    local weakk = setmetatable({}, { __mode = "k" })
    KEYS = {}
    for i = 1, 5 do
        local k = { i }
        KEYS[i] = k
        weakk[k] = { value = i, pad = { i, i, i } }
    end
    WEAKK = weakk
    addr("weakk", weakk)
    addr("key1", KEYS[1])
    addr("val1", weakk[KEYS[1]])
    -- A key nothing else holds: the next cycle clears its entry.
    local dead = { "dead value" }
    weakk[{}] = dead
    addr("deadval", dead)
    -- A value that refers to its own key: marked through the table every
    -- cycle (no ephemerons), so kept for good.
    local weakloop = setmetatable({}, { __mode = "k" })
    local lk = {}
    local lv = { key = lk }
    weakloop[lk] = lv
    WEAKLOOP = weakloop
    addr("loopval", lv)

    -- Both weak.
    WEAKKV = setmetatable({}, { __mode = "kv" })
    WEAKKV[KEYS[2]] = SHARED
    addr("weakkv", WEAKKV)

    -- A cycle held from one global, and a self-referencing table.
    local a, b = { name = "a" }, { name = "b" }
    a.next, b.next = b, a
    CYCLE = a
    addr("cycle_a", a)
    addr("cycle_b", b)
    local selfref = { payload = { 1, 2, 3, 4, 5, 6, 7, 8 } }
    selfref.self = selfref
    SELFREF = selfref
    addr("selfref", selfref)

    -- A suspended coroutine whose stack holds the coroutine itself.
    local co = coroutine.create(function()
        local me = coroutine.running()
        local mine = { "held by the thread's stack" }
        coroutine.yield(me, mine)
    end)
    local _, me = coroutine.resume(co)
    assert(me == co)
    CO = co
    addr("thread", co)
end
build()

checkpoint("small", false)
