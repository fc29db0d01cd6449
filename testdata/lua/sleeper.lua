-- Requests that park, for the threads test (threads.conf): in ngx.sleep, or
-- in a cosocket receive from a peer that never sends (the classic stuck
-- light thread).
local M = { waiting = 0 }

function M.hold(secs)
    M.waiting = M.waiting + 1
    ngx.sleep(secs)                       -- line 8: every held request is here
    M.waiting = M.waiting - 1
    ngx.say("done")
end

function M.recv(port)
    local sock = ngx.socket.tcp()
    sock:settimeout(60000)
    assert(sock:connect("127.0.0.1", port))
    M.waiting = M.waiting + 1
    local line = sock:receive("*l")       -- line 18: stuck reading
    M.waiting = M.waiting - 1
    ngx.say(line or "closed")
end

return M
