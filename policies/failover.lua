-- failover: a zero-downtime switch of the primary (stolon's, or Patroni's with
-- --manager patroni). This file is the procedure:
-- the steps in the order they run, each with the undo that runs if anything after it
-- fails or a signal arrives. What each step does is in lua/failover.lua (docs:
-- README "failover", docs/architecture.md).
--
-- To change it for your site, start from this file
-- (`stolon-pgbouncer policy show failover > site-failover.lua`), edit the steps below,
-- and run `stolon-pgbouncer failover --policy site-failover.lua ...`. A step is any
-- function: it fails by raising or by returning nil, err; then no later step runs and
-- every undo registered so far runs in reverse order (shielded from signals, each
-- bounded by --cleanup-timeout). policies/examples/ has a site policy that adds a step.
local failover = require "failover"

local f = failover.prepare(arg)
local p = f:new_pipeline()

-- 1. Pre-flight: nothing is touched unless the cluster can lose its primary
--    (stolon: master healthy, enough healthy synchronous standbys, one to spare;
--    Patroni: a running leader whose REST API answers, and a candidate replica:
--    running, in sync under synchronous_mode, no nofailover, within
--    maximum_lag_on_failover) and every pauser answers.
p:step("check_cluster_healthy", f:step "check_cluster_healthy")
p:step("health_check_clients", f:step "health_check_clients")

-- 2. Exclusion: the failover lock in etcd (etcd's own mutex keys, so `etcdctl lock` and
--    the original tool are excluded too). Released last.
p:step("acquire_lock", f:step "acquire_lock"):defer("release_lock", f:step "release_lock")

-- 3. Make stolon react fast: shorten its sleepInterval (compare-and-swap, the
--    original recorded first); restored afterwards unless someone else changed it.
--    Patroni has no such step: it acts on a switchover request at once.
if not f.patroni then
  p:step("shorten_sleep_interval", f:step "shorten_sleep_interval")
    :defer("restore_sleep_interval", f:step "restore_sleep_interval")
end

-- 4. PAUSE every PgBouncer: first wait for the moment that puts step 5 just before
--    the sentinel's next read (--align-to-sentinel), then the front (--extra-pauser)
--    ones, then the keepers', each pause carrying its expiry and the failover's pause
--    lease. RESUME on the way out: keepers first, then the front ones.
p:step("pause", f:step "pause"):defer("resume", f:step "resume")

-- 5. Switch. stolon: mark the master keeper failed (forceFail, or --stolonctl), and
--    wait until stolon reports a new healthy master with its synchronous standbys.
--    Patroni: POST /switchover {leader, candidate} to the leader's REST API, and wait
--    until the leader key names the candidate running as primary (the DCS is the
--    truth, not the reply: a refusal fails the step, a 503 does not).
if f.patroni then
  p:step("switchover", f:step "switchover")
else
  p:step("failkeeper", f:step "failkeeper")
end
p:step("wait_for_recovery", f:step "wait_for_recovery")

-- 6. Optional (--write-probe): a write through the new master before anything resumes.
p:step("write_probe", f:step "write_probe")

-- 7. PgBouncers that sent clients straight to the old primary: wait (--routing-timeout)
-- until their supervise has re-pointed them, so no RESUME sends a login there.
p:step("wait_for_routing", f:step "wait_for_routing")

return f:run(p)
