-- Requests that park in ngx.sleep, for the threads test (threads.conf).
local M = { waiting = 0 }

function M.hold(secs)
    M.waiting = M.waiting + 1
    ngx.sleep(secs)                       -- line 6: every held request is here
    M.waiting = M.waiting - 1
    ngx.say("done")
end

return M
