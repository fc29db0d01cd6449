-- Endpoints of testdata/nginx/mem.conf. The two timer callbacks sit on
-- lines the test names: keep `slow_a` on line 6 and `slow_b` on line 10.
local _M = {}

-- Timer callback A (line 6).
local function slow_a(premature)
end

-- Timer callback B (line 10).
local function slow_b(premature)
end

function _M.fill()
    local d = ngx.shared[ngx.var.arg_dict]
    local n = tonumber(ngx.var.arg_n)
    local v = string.rep("v", tonumber(ngx.var.arg_size))
    for i = 1, n do
        assert(d:set("key" .. i, v))
    end
    ngx.say(d:capacity(), " ", d:free_space())
end

function _M.space()
    local d = ngx.shared[ngx.var.arg_dict]
    ngx.say(d:capacity(), " ", d:free_space())
end

local held = {}

local function hold_one(premature, port)
    if premature then return end
    local s = ngx.socket.tcp()
    local ok, err = s:connect("127.0.0.1", port)
    if not ok then
        ngx.log(ngx.ERR, "connect: ", err)
        return
    end
    held[#held + 1] = s -- never closed, never put back in a pool
    ngx.sleep(3600)
end

function _M.hold()
    local port = tonumber(ngx.var.arg_port)
    for _ = 1, tonumber(ngx.var.arg_n) do
        assert(ngx.timer.at(0, hold_one, port))
    end
    ngx.say("ok")
end

function _M.timers()
    local n = tonumber(ngx.var.arg_n)
    for _ = 1, n do
        assert(ngx.timer.at(3600, slow_a))
        assert(ngx.timer.at(3600, slow_b))
    end
    ngx.say(ngx.timer.pending_count())
end

return _M
